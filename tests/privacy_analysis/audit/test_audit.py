"""The audit: closed forms it must reproduce, the policy verdict, the stream audit and the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from veil.client_sdk.distributions import BetaDistribution, GaussianDistribution
from veil.privacy_analysis.audit import AuditConfig, run_audit
from veil.privacy_analysis.audit.policy import Policy
from veil.privacy_analysis.audit.report import write_audit_report
from veil.privacy_analysis.audit.spec import UtilityPoint, generate_population, parse_spec
from veil.privacy_analysis.audit.stream import audit_stream, silhouette, stream_only_summary

REQUIRED_KEYS = {
    "users",
    "chance",
    "bayes_attribution_accuracy",
    "bayes_ci",
    "upper_bound",
    "linked",
    "identifiable",
    "attacks",
    "policy",
    "pairwise_tv",
}
FAST = {"attack_users": 4, "attack_uploads_per_user": 10}


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def test_two_isotropic_gaussians_match_phi_of_half_delta() -> None:
    delta = 1.3
    dists = [
        GaussianDistribution([[0.0, 0.0]], [[1.0, 1.0]]),
        GaussianDistribution([[delta, 0.0]], [[1.0, 1.0]]),
    ]
    prior = GaussianDistribution([[delta / 2, 0.0]], [[1.0, 1.0]])
    cfg = AuditConfig(uploads_per_user=4000, linked=(1, 4), seed=1, **FAST)
    result = run_audit(dists, cfg, prior=prior)
    out = json.loads(json.dumps(result.to_json()))  # JSON-serialisable throughout
    assert set(out) >= REQUIRED_KEYS
    lo, hi = out["bayes_ci"]
    assert lo <= _phi(delta / 2) <= hi
    assert out["upper_bound"] >= lo
    assert out["chance"] == 0.5 and out["users"] == 2
    # T linked uploads: Delta grows to sqrt(T) Delta.
    four = out["linked"]["4"]
    assert four["ci_low"] - 0.02 <= _phi(2 * delta / 2) <= four["ci_high"] + 0.02
    # Pairwise TV and Gaussian-DP mu are exact here.
    assert out["pairwise_tv"]["max"] == pytest.approx(2 * _phi(delta / 2) - 1, abs=1e-6)
    assert out["gdp"]["mu_max"] == pytest.approx(delta)
    assert out["gdp"]["linked_mu"]["4"] == pytest.approx(2 * delta)
    assert out["tv_to_prior"]["max"] == pytest.approx(2 * _phi(delta / 4) - 1, abs=1e-9)
    assert out["identifiable"] is True
    assert out["policy"] == {"ok": True, "limits": Policy().to_json(), "violations": []}


def test_static_embeddings_are_attributed_and_identical_users_sit_at_chance() -> None:
    rng = np.random.default_rng(0)
    static = [GaussianDistribution(rng.normal(size=(1, 8)), np.full((1, 8), 1e-4)) for _ in range(6)]
    result = run_audit(static, AuditConfig(uploads_per_user=50, linked=(1,), **FAST))
    assert result.bayes["accuracy"] == 1.0
    assert all(a["accuracy"] == 1.0 for a in result.attacks if a["name"] == "bayes_known_parameters")
    same = [GaussianDistribution(np.zeros((1, 8)), np.ones((1, 8))) for _ in range(5)]
    flat = run_audit(same, AuditConfig(uploads_per_user=400, linked=(1, 8), **FAST))
    assert flat.bayes["ci"][0] <= 0.2 <= flat.bayes["ci"][1]
    assert flat.linked[8]["ci_low"] <= 0.2 <= flat.linked[8]["ci_high"]
    assert flat.pairwise_tv["max"] == pytest.approx(0.0, abs=1e-12)
    assert flat.upper_bound == pytest.approx(0.2, abs=1e-9)


def test_one_dimensional_beta_audit_is_exact_and_matches_monte_carlo() -> None:
    dists = [BetaDistribution([[a]], [[b]]) for a, b in ((2.0, 5.0), (5.0, 2.0), (3.0, 3.0))]
    result = run_audit(dists, AuditConfig(uploads_per_user=3000, linked=(1,), attacks=False))
    bayes = result.bayes
    assert bayes["method"] == "exact" and bayes["ci"] == [bayes["accuracy"]] * 2
    lo, hi = bayes["monte_carlo"]["ci"]
    assert lo <= bayes["accuracy"] <= hi
    assert result.gdp is None  # Gaussian-DP is reported for Gaussian users only


def test_policy_violations_and_fail_closed_limits() -> None:
    dists, prior = generate_population("gaussian", 8, 4, 1.0, seed=2)
    policy = Policy(max_bayes_attribution=0.3, max_gdp_mu=100.0, max_linked_attribution=0.5, linked_t=16)
    cfg = AuditConfig(uploads_per_user=100, linked=(1, 2), attacks=False, policy=policy)
    assert 16 in cfg.linked  # the policy's T is evaluated too
    result = run_audit(dists, cfg, prior=prior)
    rules = [v.rule for v in result.violations]
    assert rules == ["max_bayes_attribution", "max_linked_attribution"] and not result.ok
    assert result.to_json()["policy"]["ok"] is False
    beta, beta_prior = generate_population("beta", 4, 2, 0.5, seed=0)
    unmeasurable = run_audit(
        beta, AuditConfig(uploads_per_user=20, linked=(1,), attacks=False, policy=Policy(max_gdp_mu=1.0))
    )
    assert [v.message for v in unmeasurable.violations] == [
        "largest pairwise Gaussian-DP mu: not measurable for this input (limit 1)"
    ]


def test_basis_mixture_population_is_not_identifiable() -> None:
    spec = parse_spec(
        {
            "family": "basis_mixture",
            "generator": {"users": 12, "dim": 1, "spread": 1.0, "basis_size": 3, "seed": 0},
        }
    )
    result = run_audit(
        spec.distributions, AuditConfig(uploads_per_user=20, linked=(1,), attacks=False), prior=spec.prior
    )
    assert result.identifiability["identifiable"] is False
    assert result.identifiability["rank"] <= 3
    assert result.tv_to_prior["max"] <= 1.0


def test_attacks_use_given_uploads_and_texts() -> None:
    rng = np.random.default_rng(3)
    dists = [GaussianDistribution(rng.normal(size=(1, 4)) * 3, np.ones((1, 4))) for _ in range(3)]
    owners = np.repeat(np.arange(3), 12)
    uploads = np.stack([dists[o].sample(rng) for o in owners])
    texts = [f"user {o} writes like user {o}" for o in owners]
    result = run_audit(
        dists, AuditConfig(uploads_per_user=50, linked=(1,)), texts=texts, uploads=uploads, owners=owners
    )
    names = [a["name"] for a in result.attacks]
    assert "stylometric" in names and "bayes_known_parameters" in names
    assert result.attacks_context == {"users": 3, "uploads": 36, "source": "given uploads"}
    with pytest.raises(ValueError, match="together"):
        run_audit(dists, AuditConfig(), uploads=uploads)


def test_large_populations_sample_the_pairwise_and_attack_sections() -> None:
    dists, _ = generate_population("gaussian", 80, 3, 0.3, seed=1)
    cfg = AuditConfig(uploads_per_user=10, linked=(1,), pairwise_users=20, identifiability_users=30, **FAST)
    result = run_audit(dists, cfg)
    assert result.pairwise_tv["sampled"] and result.pairwise_tv["n_users"] == 20
    assert result.pairwise_matrix is None
    assert result.attacks_context["users"] == 4 and result.attacks_context["sampled"]
    assert result.identifiability["n"] == 30
    # Gaussian-DP mu uses every pair (one shared std): the naive maximum.
    locs = np.stack([d.loc.ravel() for d in dists])
    naive = max(np.linalg.norm(locs[i] - locs[j]) for i in range(80) for j in range(i))
    assert result.gdp["mu_max"] == pytest.approx(naive, rel=1e-9) and not result.gdp["sampled"]


@pytest.mark.parametrize(
    "kwargs",
    [{"uploads_per_user": 0}, {"linked": ()}, {"linked": (0, 2)}, {"attack_users": 1}, {"policy": "strict"}],
)
def test_bad_config_raises(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        AuditConfig(**kwargs)


def test_silhouette_matches_the_naive_definition() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    labels = rng.integers(0, 4, size=40)
    labels[0] = 9  # a singleton cluster scores 0
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    scores = []
    for i in range(40):
        own = labels == labels[i]
        if own.sum() == 1:
            scores.append(0.0)
            continue
        a = d[i, own].sum() / (own.sum() - 1)
        b = min(d[i, labels == c].mean() for c in set(labels) if c != labels[i])
        scores.append((b - a) / max(a, b))
    assert silhouette(x, labels) == pytest.approx(np.mean(scores), rel=1e-7)


def test_stream_audit_flags_static_embeddings_not_fresh_samples() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 1, 6)) * 4
    static = [centres[i % 4] for i in range(100)]
    report = audit_stream(static, ["next_word"] * 100)
    assert report["duplicate_fraction"] == 1.0 and report["distinct_embeddings"] == 4
    assert report["clusters"]["best_silhouette"] > 0.9 and report["clusters"]["best_k"] == 4
    assert any("static embedding" in f for f in report["findings"])
    prior = GaussianDistribution(np.zeros((1, 6)), np.ones((1, 6)))
    fresh = list(prior.sample(rng, size=100))
    users = [prior, GaussianDistribution(np.full((1, 6), 0.1), np.ones((1, 6)))]
    quiet = audit_stream(fresh, dists=users)
    assert quiet["duplicate_fraction"] == 0.0 and quiet["clusters"]["best_silhouette"] < 0.3
    assert 0.5 <= quiet["expected_bayes_accuracy"] < 0.6
    summary = stream_only_summary(quiet, Policy(max_bayes_attribution=0.5))
    assert set(summary) >= REQUIRED_KEYS and summary["policy"]["ok"] is False


def test_report_has_every_plot_and_the_json(tmp_path: Path) -> None:
    dists, prior = generate_population("gaussian", 5, 2, 1.0, seed=0)
    cfg = AuditConfig(uploads_per_user=30, linked=(1, 2, 4), policy=Policy(max_bayes_attribution=0.2), **FAST)
    utility = [UtilityPoint("spread 0.5", 0.61, 0.3), UtilityPoint("spread 1.0", 0.66, 0.5)]
    result = run_audit(dists, cfg, prior=prior, utility=utility)
    html_path, json_path = write_audit_report(result.to_json(), tmp_path / "out", result.pairwise_matrix)
    page = html_path.read_text()
    for title in (
        "linked uploads",
        "Practical attacks",
        "Privacy-utility frontier",
        "Pairwise total variation",
    ):
        assert title in page
    assert page.count("data:image/png;base64,") == 4
    assert "Policy violated" in page
    assert json.loads(json_path.read_text())["users"] == 5
    # Without utility figures or a matrix: no frontier and no heatmap.
    bare = write_audit_report({**result.to_json(), "utility": []}, tmp_path / "bare")[0].read_text()
    assert bare.count("data:image/png;base64,") == 2
