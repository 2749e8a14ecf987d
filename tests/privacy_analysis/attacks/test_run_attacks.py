from __future__ import annotations

import json

import numpy as np
import pytest
from attack_populations import draw_uploads, neutral_texts, population
from scipy.stats import norm

from veil.client_sdk.distributions import GaussianDistribution
from veil.privacy_analysis.attacks import (
    ATTACKS,
    BayesConfig,
    GMMConfig,
    KMeansConfig,
    LearnedConfig,
    run_attacks,
)
from veil.privacy_analysis.attacks.bayes import bayes_attack


def _two_gaussians(delta: float, dim: int = 3) -> list[GaussianDistribution]:
    mu = np.zeros((1, dim))
    mu2 = mu.copy()
    mu2[0, 0] = delta
    return [GaussianDistribution(mu, np.ones((1, dim))), GaussianDistribution(mu2, np.ones((1, dim)))]


def test_default_attacks_and_json_output() -> None:
    rng = np.random.default_rng(0)
    dists = population("gaussian", 3, 2, 2, 1.0, rng)
    uploads, owners = draw_uploads(dists, 150, rng)
    results = run_attacks(dists, uploads, owners, rng)
    assert [r.name for r in results] == [a for a in ATTACKS if a != "stylometric"]
    with_text = run_attacks(dists, uploads, owners, rng, texts=neutral_texts(150, rng))
    assert [r.name for r in with_text] == list(ATTACKS)
    for res in with_text:
        doc = json.loads(json.dumps(res.as_dict()))
        assert set(doc) == {"name", "accuracy", "ci", "chance", "details"}
        assert doc["ci"][0] <= doc["accuracy"] <= doc["ci"][1]
        assert doc["chance"] == pytest.approx(1 / 3)
        assert 0.0 <= doc["details"]["bayes_accuracy_same_uploads"] <= 1.0


def test_flat_uploads_selected_attacks_and_configs() -> None:
    rng = np.random.default_rng(1)
    dists = population("beta", 2, 2, 3, 1.0, rng)
    uploads, owners = draw_uploads(dists, 100, rng)
    flat = uploads.reshape(100, 6)
    cfgs = {
        "linkage_gmm": GMMConfig(n_init=1, max_iter=3, tol=0.0),
        "learned_attributor": LearnedConfig(l2=1.0),
    }
    a = run_attacks(
        dists, flat, owners, np.random.default_rng(2), attacks=["linkage_gmm", "bayes_known_parameters"]
    )
    b = run_attacks(
        dists, uploads, owners, np.random.default_rng(2), attacks=["bayes_known_parameters", "linkage_gmm"]
    )
    assert [r.name for r in a] == ["bayes_known_parameters", "linkage_gmm"]
    assert [r.accuracy for r in a] == [r.accuracy for r in b]  # same rng, same result, either upload shape
    short = run_attacks(dists, uploads, owners, rng, attacks=["linkage_gmm"], configs=cfgs)
    assert short[0].details["em_iterations"] == 3 and not short[0].details["converged"]


def test_bayes_ceiling_matches_the_closed_form_for_two_gaussians() -> None:
    # Acc* = Phi(Delta / 2) for two isotropic Gaussians with equal priors (IDFREE_PL.md section 3.2).
    rng = np.random.default_rng(3)
    dists = _two_gaussians(1.5)
    uploads, owners = draw_uploads(dists, 20_000, rng)
    res = bayes_attack(dists, uploads, owners)
    exact = norm.cdf(0.75)
    assert res.ci[0] < exact < res.ci[1]
    assert res.details["expected_accuracy"] == pytest.approx(exact, abs=0.005)  # Rao-Blackwellised: tighter
    same = bayes_attack([dists[0], dists[0]], uploads, owners)
    assert same.details["anonymity_degree"] == pytest.approx(1.0)
    assert same.details["expected_accuracy"] == pytest.approx(0.5)


def test_owners_prior_is_the_ceiling_for_imbalanced_streams() -> None:
    # 90% of uploads from user 0 and users barely apart: the uniform rule wastes the prior.
    rng = np.random.default_rng(4)
    dists = _two_gaussians(0.3, dim=1)
    owners = (rng.random(4000) < 0.1).astype(np.int64)
    uploads = np.where(owners[:, None, None] == 0, dists[0].sample(rng, 4000), dists[1].sample(rng, 4000))
    uniform = bayes_attack(dists, uploads, owners)
    informed = bayes_attack(dists, uploads, owners, BayesConfig(prior="owners"))
    assert informed.accuracy > 0.88 > uniform.accuracy


def test_bad_inputs_are_refused_with_clear_errors() -> None:
    rng = np.random.default_rng(5)
    dists = population("gaussian", 3, 1, 2, 1.0, rng)
    uploads, owners = draw_uploads(dists, 30, rng)
    cases = [
        ({"dists": dists[:1]}, "at least 2 users"),
        ({"uploads": uploads[:2], "owners": owners[:2]}, "at least as many uploads as users"),
        ({"owners": owners[:-1]}, "owners must have shape"),
        ({"owners": owners + 3}, "owners must index"),
        ({"owners": owners.astype(float)}, "integer"),
        ({"uploads": uploads[..., :1]}, "uploads must have shape"),
        ({"attacks": ["bayes_known_parameters", "nope"]}, "unknown attacks"),
        ({"attacks": ["stylometric"]}, "needs texts"),
        ({"texts": ["a"] * 5}, "one text per upload"),
        ({"aux_fraction": 0.0}, "aux_fraction"),
        ({"configs": {"linkage_gmm": KMeansConfig()}}, "must be a GMMConfig"),
    ]
    for override, message in cases:
        kwargs = {"dists": dists, "uploads": uploads, "owners": owners, "rng": rng, **override}
        with pytest.raises(ValueError, match=message):
            run_attacks(**kwargs)
    with pytest.raises(ValueError, match="prior"):
        BayesConfig(prior="flat")
