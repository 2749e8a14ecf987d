"""No attack beats the Bayes ceiling; point masses are attributed perfectly; identical users sit at chance.

Why the ceiling test is sound: with owners drawn i.i.d. from the uniform prior, conditional on the uploads
the owners are independent with P(owner = k | e) = pi(k | e). An attack that decides without looking at
the evaluated owners (the learned ones train on other uploads; the clusterings never see owners) has, for
each upload, success probability pi(guess | e) <= max_k pi(k | e), the Bayes rule's. So the paired
difference D = attack hits - Bayes hits on the same uploads has E[D | e] <= 0 and a variance at most the
number m of uploads where the two disagree (Bernstein's inequality bounds its tail). Hungarian naming of clusters picks the best of K! namings with
hindsight; that adds at most log(K!) to the exponent of the tail bound (union bound).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from attack_populations import draw_uploads, neutral_texts, population
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veil.client_sdk.distributions import GaussianDistribution
from veil.privacy_analysis.attacks import run_attacks
from veil.privacy_analysis.attacks.bayes import bayes_log_posteriors

ALL = ["bayes_known_parameters", "linkage_kmeans", "linkage_gmm", "learned_attributor", "stylometric"]


def beats_ceiling(hits: int, bayes_hits: int, disagreements: int, k: int, hungarian: bool) -> bool:
    """Bernstein tail bound at level 1e-4 (union over the K! namings when clusters are named with hindsight).

    Each paired term lies in [-1, 1], is non-zero only where the two rules disagree, and has conditional
    mean <= 0, so P(D > t) <= exp(-t^2 / (2 (m + t / 3))) for m disagreements; solving for t gives the margin.
    """
    log_terms = math.log(1e4) + (math.lgamma(k + 1) if hungarian else 0.0)
    margin = math.sqrt(2.0 * disagreements * log_terms) + 2.0 * log_terms / 3.0
    return hits - bayes_hits > margin


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    k=st.integers(2, 6),
    dim=st.integers(1, 4),
    n_tokens=st.integers(1, 2),
    family=st.sampled_from(["gaussian", "beta"]),
    spread=st.floats(0.05, 2.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_no_attack_beats_the_bayes_ceiling(
    k: int, dim: int, n_tokens: int, family: str, spread: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    dists = population(family, k, n_tokens, dim, spread, rng)
    uploads, owners = draw_uploads(dists, 120 * k, rng)
    texts = neutral_texts(owners.size, rng)  # style independent of the user: the ceiling still holds
    bayes = bayes_log_posteriors(dists, uploads).argmax(axis=1)
    for res in run_attacks(dists, uploads, owners, rng, texts=texts, aux_fraction=0.3):
        assert res.predictions is not None and res.predictions.shape == owners.shape
        ev = res.predictions >= 0
        hits = int(np.sum(res.predictions[ev] == owners[ev]))
        bayes_hits = int(np.sum(bayes[ev] == owners[ev]))
        assert res.accuracy == pytest.approx(hits / ev.sum())
        assert res.details["bayes_accuracy_same_uploads"] == pytest.approx(bayes_hits / ev.sum())
        disagreements = int(np.sum(res.predictions[ev] != bayes[ev]))
        hungarian = res.name.startswith("linkage")
        assert not beats_ceiling(hits, bayes_hits, disagreements, k, hungarian), (
            res.name,
            res.accuracy,
            bayes_hits / ev.sum(),
        )


def test_the_ceiling_check_catches_an_attack_that_peeks_at_the_owners() -> None:
    # An "attack" that copies the true owner 30% of the time must be flagged: the check has power.
    rng = np.random.default_rng(3)
    dists = population("gaussian", 4, 1, 2, 0.5, rng)
    uploads, owners = draw_uploads(dists, 600, rng)
    bayes = bayes_log_posteriors(dists, uploads).argmax(axis=1)
    cheat = np.where(rng.random(owners.size) < 0.3, owners, bayes)
    hits, bayes_hits = int(np.sum(cheat == owners)), int(np.sum(bayes == owners))
    assert beats_ceiling(hits, bayes_hits, int(np.sum(cheat != bayes)), 4, hungarian=False)


@pytest.mark.parametrize("family", ["gaussian", "beta"])
def test_static_embeddings_are_attributed_by_every_attack(family: str) -> None:
    rng = np.random.default_rng(11)
    dists = population(family, 6, 1, 8, 1.0, rng, static=True)
    uploads, owners = draw_uploads(dists, 600, rng)
    results = run_attacks(dists, uploads, owners, rng, texts=neutral_texts(600, rng))
    assert [r.name for r in results] == ALL
    for res in results:
        assert res.accuracy >= 0.99, (res.name, res.accuracy)
        assert res.chance == pytest.approx(1 / 6)
    linkage = {r.name: r for r in results if r.name.startswith("linkage")}
    for res in linkage.values():
        assert res.details["ari"] > 0.98 and res.details["pairwise_precision"] > 0.98


def test_identical_users_are_attributed_at_chance() -> None:
    rng = np.random.default_rng(5)
    k = 4
    dists = [GaussianDistribution(np.zeros((1, 3)), np.ones((1, 3)))] * k
    owners = np.repeat(np.arange(k), 400)
    uploads = np.concatenate([d.sample(rng, size=400) for d in dists])
    for res in run_attacks(dists, uploads, owners, rng, texts=neutral_texts(owners.size, rng)):
        # 4 sigma of a binomial proportion at 1/4 on the evaluated uploads, plus a little Hungarian optimism
        slack = 4 * math.sqrt(0.25 * 0.75 / res.details["n_eval"]) + 0.02
        assert abs(res.accuracy - 0.25) < slack, (res.name, res.accuracy)
        if res.name.startswith("linkage"):
            assert abs(res.details["ari"]) < 0.02
            assert res.details["pairwise_precision"] < 0.3
