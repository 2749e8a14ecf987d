"""The k-anonymous prototype codebook on the phone: choice, k_min, persistence, version checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from veil.client_sdk.distributions import (
    Codebook,
    CodebookMismatchError,
    GaussianDistribution,
    PrototypeDistribution,
    choose_prototype,
    enforce_k_min,
    load_distribution,
)
from veil.privacy_analysis.attribution import bayes_attribution_fast, linked_attribution


def book(k: int = 5, k_min: int = 2, seed: int = 0) -> Codebook:
    return Codebook(np.random.default_rng(seed).normal(size=(k, 1, 8)), k_min=k_min)


def test_version_follows_the_contents() -> None:
    a = book()
    assert a.version == book().version and len(a.version) == 16
    moved = a.prototypes.copy()
    moved[0, 0, 0] += 1e-9
    assert a.with_prototypes(moved).version != a.version
    assert a.with_active([True, True, False, True, True]).version != a.version
    assert Codebook(a.prototypes, k_min=3).version != a.version


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prototypes": np.zeros((3, 8))}, "3-D"),
        ({"prototypes": np.zeros((3, 1, 8)), "active": [False] * 3}, "at least one active"),
        ({"prototypes": np.zeros((3, 1, 8)), "active": [True] * 2}, "shape"),
        ({"prototypes": np.zeros((3, 1, 8)), "k_min": 0}, "k_min"),
        ({"prototypes": np.full((3, 1, 8), np.nan)}, "finite"),
    ],
)
def test_codebook_rejects_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Codebook(**kwargs)


def test_choice_is_the_lowest_mean_loss_among_usable_prototypes() -> None:
    b = book().with_active([True, False, True, True, True])
    losses = np.array([[3.0, 0.1, 2.0, 5.0, 4.0], [3.0, 0.1, 1.0, 5.0, 4.0]])
    assert choose_prototype(losses, b) == 2  # prototype 1 is retired, whatever its loss
    assert choose_prototype(losses.mean(0), b) == 2
    assert choose_prototype(np.array([1.0, np.nan, 1.0, 2.0, 3.0]), b) == 0  # ties: lowest index
    with pytest.raises(ValueError, match="shape"):
        choose_prototype(np.zeros(4), b)


def test_enforce_k_min_leaves_only_groups_of_at_least_k_min() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        k, users, k_min = 8, 60, int(rng.integers(2, 12))
        b = book(k, k_min)
        losses = rng.random((users, k)) + rng.random(k)[None, :]
        choices, final = enforce_k_min(losses, b)
        counts = np.bincount(choices, minlength=k)
        assert np.all(counts[final.active] >= k_min)
        assert np.all(counts[~final.active] == 0)
        masked = np.where(final.active[None, :], losses, np.inf)
        assert np.array_equal(choices, masked.argmin(axis=1))  # everyone has its best usable prototype


def test_enforce_k_min_needs_enough_phones() -> None:
    with pytest.raises(ValueError, match="at least that many phones"):
        enforce_k_min(np.zeros((2, 5)), book(k_min=3))


def test_attribution_of_a_codebook_population_is_groups_over_users_however_many_uploads_are_linked() -> None:
    b = book(k=4, k_min=1)
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(4), 10)  # 40 users, 4 groups of 10
    dists = [PrototypeDistribution(b, int(g)) for g in groups]
    assert bayes_attribution_fast(dists, 20, rng).accuracy == pytest.approx(4 / 40, abs=0.03)
    assert linked_attribution(dists, 8, 5, rng).accuracy == pytest.approx(4 / 40, abs=0.05)
    free = [GaussianDistribution(b.prototypes[g] + rng.normal(size=(1, 8)), np.ones((1, 8))) for g in groups]
    assert linked_attribution(free, 8, 5, rng).accuracy > 0.5  # individual means are linked away


def test_prototype_distribution_samples_its_prototype_and_learns_nothing_by_gradient() -> None:
    b = book()
    d = PrototypeDistribution(b, 3, noise_std=1e-3)
    x = d.sample(np.random.default_rng(0), size=100)
    assert np.abs(x - b.prototypes[3]).max() < 1e-2
    assert np.array_equal(b.decode(x), np.full(100, 3))
    assert d.unconstrained() == {} and d.sample_vjp(x, x) == {}
    with pytest.raises(ValueError, match="no continuous parameters"):
        d.with_unconstrained({"mean": np.zeros((1, 8))})
    with pytest.raises(ValueError, match="not usable"):
        PrototypeDistribution(b.with_active([True, True, True, False, True]), 3)


def test_saved_choice_round_trips_and_a_new_codebook_is_refused(tmp_path: Path) -> None:
    b = book()
    d = PrototypeDistribution(b, 1, noise_std=0.01)
    d.save(tmp_path / "p.npz")
    back = load_distribution(tmp_path / "p.npz")
    assert isinstance(back, PrototypeDistribution)
    assert back.index == 1 and back.noise_std == 0.01 and back.codebook.version == b.version
    back.check_codebook(b)
    trained = b.with_prototypes(b.prototypes + 0.1)
    with pytest.raises(CodebookMismatchError, match=f"{b.version}.*{trained.version}"):
        back.check_codebook(trained)
    b.save(str(tmp_path / "book.npz"))
    assert Codebook.load(str(tmp_path / "book.npz")).version == b.version


def test_a_tampered_codebook_file_is_refused(tmp_path: Path) -> None:
    b = book()
    arrays = dict(b.arrays())
    arrays["codebook.prototypes"] = b.prototypes + 1.0
    np.savez(tmp_path / "book.npz", **arrays)
    with pytest.raises(ValueError, match="does not match its contents"):
        Codebook.load(str(tmp_path / "book.npz"))
