from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.privacy_analysis.attribution import wilson_interval
from veil.privacy_analysis.linkage import (
    adjusted_rand_index,
    kmeans,
    kmeans_inertia,
    linkage_attack,
    matched_accuracy,
    name_clusters,
    pairwise_precision_recall,
)


def _naive_ari(a: np.ndarray, b: np.ndarray) -> float:
    # Pair-counting definition: agreements over all pairs, adjusted for chance.
    n = len(a)
    same_a = np.array([[a[i] == a[j] for j in range(n)] for i in range(n)])
    same_b = np.array([[b[i] == b[j] for j in range(n)] for i in range(n)])
    iu = np.triu_indices(n, 1)
    both = np.sum(same_a[iu] & same_b[iu])
    pa, pb = np.sum(same_a[iu]), np.sum(same_b[iu])
    total = len(iu[0])
    expected = pa * pb / total
    top = 0.5 * (pa + pb)
    return 1.0 if top == expected else float((both - expected) / (top - expected))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=3, max_size=25), st.integers(0, 10_000))
def test_ari_matches_pair_counting_definition(labels: list[int], seed: int) -> None:
    a = np.array(labels)
    b = np.random.default_rng(seed).integers(0, 3, size=a.size)
    assert adjusted_rand_index(a, b) == pytest.approx(_naive_ari(a, b), abs=1e-9)


def test_separated_users_are_fully_linked_and_identical_ones_are_not() -> None:
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(5), 40)
    centres = rng.normal(size=(5, 8)) * 20
    separated = centres[users] + rng.normal(size=(200, 8))
    res = linkage_attack(separated, users, rng)
    assert res.accuracy == 1.0 and res.adjusted_rand_index == pytest.approx(1.0)
    same = rng.normal(size=(200, 8))
    res = linkage_attack(same, users, rng)
    assert res.accuracy < 0.45 and abs(res.adjusted_rand_index) < 0.1
    assert res.chance == pytest.approx(0.2)


def test_kmeans_rejects_bad_k() -> None:
    with pytest.raises(ValueError, match="k must be"):
        kmeans(np.zeros((3, 2)), 4, np.random.default_rng(0))


def test_wilson_interval_contains_the_proportion() -> None:
    lo, hi = wilson_interval(30, 40)
    assert lo < 0.75 < hi
    assert wilson_interval(0, 10)[0] == 0.0
    with pytest.raises(ValueError):
        wilson_interval(1, 0)


def _naive_pairs(truth: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    pairs = [(i, j) for i in range(len(truth)) for j in range(i + 1, len(truth))]
    linked = [(i, j) for i, j in pairs if pred[i] == pred[j]]
    same = [(i, j) for i, j in pairs if truth[i] == truth[j]]
    both = [(i, j) for i, j in linked if truth[i] == truth[j]]
    return (len(both) / len(linked) if linked else 1.0), (len(both) / len(same) if same else 1.0)


def test_pairwise_precision_recall_on_hand_made_clusterings() -> None:
    truth = np.array([0, 0, 0, 1, 1, 2])
    # perfect clustering (names do not matter)
    assert pairwise_precision_recall(truth, np.array([5, 5, 5, 7, 7, 9])) == (1.0, 1.0)
    # everything in one cluster: all 4 same-user pairs found among 15 linked pairs
    assert pairwise_precision_recall(truth, np.zeros(6, dtype=int)) == pytest.approx((4 / 15, 1.0))
    # all singletons: nothing linked, so nothing wrongly linked, and no same-user pair found
    assert pairwise_precision_recall(truth, np.arange(6)) == (1.0, 0.0)
    # user 0 split in two, users 1 and 2 merged: linked pairs (0,1), (3,4), (3,5), (4,5); true (0,1), (3,4)
    assert pairwise_precision_recall(truth, np.array([0, 0, 1, 2, 2, 2])) == pytest.approx((2 / 4, 2 / 4))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=2, max_size=20), st.integers(0, 10_000))
def test_pairwise_precision_recall_match_pair_enumeration(labels: list[int], seed: int) -> None:
    truth = np.array(labels)
    pred = np.random.default_rng(seed).integers(0, 4, size=truth.size)
    assert pairwise_precision_recall(truth, pred) == pytest.approx(_naive_pairs(truth, pred))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=20), st.integers(0, 10_000), st.integers(1, 5))
def test_hungarian_naming_is_the_best_one_to_one_naming(
    labels: list[int], seed: int, n_clusters: int
) -> None:
    truth = np.array(labels)
    pred = np.random.default_rng(seed).integers(0, n_clusters, size=truth.size)
    users, clusters = np.unique(truth), np.unique(pred)
    best = 0
    # brute force over injective partial namings: every cluster gets a distinct user or none
    for perm in itertools.permutations([*users, *[None] * len(clusters)], len(clusters)):
        naming = dict(zip(clusters, perm, strict=True))
        best = max(best, sum(naming[p] == t for p, t in zip(pred, truth, strict=True)))
    named = name_clusters(truth, pred)
    assert np.sum(named == truth) == best
    assert matched_accuracy(truth, pred) == pytest.approx(best / truth.size)
    assert set(np.unique(named)) <= {*users.tolist(), -1}


def test_kmeans_inertia_is_the_within_cluster_sum_of_squares() -> None:
    x = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0]])
    assert kmeans_inertia(x, np.array([0, 0, 1])) == pytest.approx(2.0)
    assert kmeans_inertia(x, np.array([0, 1, 2])) == 0.0


def test_scores_reject_mismatched_labelings() -> None:
    with pytest.raises(ValueError, match="equal length"):
        pairwise_precision_recall(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="empty"):
        matched_accuracy(np.zeros(0), np.zeros(0))
