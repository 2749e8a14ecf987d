from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.privacy_analysis.attribution import wilson_interval
from veil.privacy_analysis.linkage import adjusted_rand_index, kmeans, linkage_attack


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
