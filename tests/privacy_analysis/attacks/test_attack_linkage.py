from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp
from scipy.stats import norm

from veil.privacy_analysis.attacks import AttackResult
from veil.privacy_analysis.attacks.base import prepare_features
from veil.privacy_analysis.attacks.clustering import (
    GMMConfig,
    KMeansConfig,
    _log_joint,
    fit_diagonal_gmm,
    gmm_linkage_attack,
    kmeans_linkage_attack,
)


def _mixture(rng: np.random.Generator, k: int, dim: int, n: int, sep: float) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(k, size=n)
    centres = sep * rng.normal(size=(k, dim))
    scales = np.exp(0.4 * rng.normal(size=(k, dim)))
    return centres[labels] + scales[labels] * rng.normal(size=(n, dim)), labels


def test_log_joint_matches_scipy_densities() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 3))
    w = np.array([0.2, 0.5, 0.3])
    mu, var = rng.normal(size=(3, 3)), np.exp(rng.normal(size=(3, 3)))
    naive = np.log(w)[None, :] + norm.logpdf(x[:, None, :], mu[None], np.sqrt(var)[None]).sum(-1)
    np.testing.assert_allclose(_log_joint(x, w, mu, var), naive, rtol=1e-10, atol=1e-10)


@settings(max_examples=15, deadline=None)
@given(
    k=st.integers(1, 5),
    dim=st.integers(1, 4),
    sep=st.floats(0.0, 4.0),
    duplicates=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_em_log_likelihood_never_decreases(k: int, dim: int, sep: float, duplicates: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, _ = _mixture(rng, k, dim, 150, sep)
    if duplicates:  # a stack of identical points invites a component to collapse onto it (variance floor)
        x[:20] = x[0]
    fit = fit_diagonal_gmm(x, k, rng, GMMConfig(n_init=2, max_iter=60, tol=0.0))
    steps = np.diff(fit.history)
    assert np.all(steps >= -1e-9 * np.maximum(1.0, np.abs(fit.history[:-1]))), steps.min()
    assert fit.weights.sum() == pytest.approx(1.0)
    assert np.all(fit.variances > 0) and np.all(np.isfinite(fit.means))
    # the reported log-likelihood is that of the returned parameters
    direct = logsumexp(_log_joint(x, fit.weights, fit.means, fit.variances), axis=1).mean()
    assert fit.log_likelihood == pytest.approx(direct, rel=1e-9)


def test_em_recovers_a_well_separated_mixture() -> None:
    rng = np.random.default_rng(1)
    means = np.array([[-6.0, 0.0], [0.0, 6.0], [6.0, 0.0]])
    stds = np.array([[1.0, 0.5], [0.5, 1.0], [1.0, 1.0]])
    labels = rng.choice(3, size=3000, p=[0.5, 0.3, 0.2])
    x = means[labels] + stds[labels] * rng.normal(size=(3000, 2))
    fit = fit_diagonal_gmm(x, 3, rng)
    order = np.argsort(fit.means[:, 0] + 0.1 * fit.means[:, 1])  # left, top, right
    np.testing.assert_allclose(fit.weights[order], [0.5, 0.3, 0.2], atol=0.03)
    np.testing.assert_allclose(fit.means[order], means, atol=0.1)
    np.testing.assert_allclose(np.sqrt(fit.variances[order]), stds, rtol=0.08)
    assert fit.converged


@pytest.mark.parametrize("attack", [kmeans_linkage_attack, gmm_linkage_attack])
def test_linkage_attacks_report_their_scores(attack: Callable[..., AttackResult]) -> None:
    rng = np.random.default_rng(2)
    x, labels = _mixture(rng, 4, 3, 400, sep=6.0)
    res = attack(x, labels, 4, rng)
    assert res.name in ("linkage_kmeans", "linkage_gmm")
    assert res.accuracy > 0.95 and res.details["ari"] > 0.9
    assert res.details["pairwise_precision"] > 0.9 and res.details["pairwise_recall"] > 0.9
    assert res.details["n_eval"] == 400 and res.chance == pytest.approx(0.25)
    assert res.ci[0] <= res.accuracy <= res.ci[1]
    assert res.predictions is not None and np.mean(res.predictions == labels) == pytest.approx(res.accuracy)


def test_gmm_beats_kmeans_when_users_differ_in_spread_not_location() -> None:
    # Same mean, very different scales: k-means cannot separate them, a Gaussian mixture can.
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1], 500)
    x = rng.normal(size=(1000, 4)) * np.where(labels == 0, 0.2, 3.0)[:, None]
    gmm = gmm_linkage_attack(x, labels, 2, rng)
    km = kmeans_linkage_attack(x, labels, 2, rng)
    assert gmm.accuracy > 0.95 > km.accuracy + 0.1


def test_linkage_inputs_and_configs_are_validated() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="k must be"):
        fit_diagonal_gmm(np.zeros((3, 2)), 4, rng)
    with pytest.raises(ValueError, match="finite"):
        fit_diagonal_gmm(np.full((3, 2), np.nan), 1, rng)
    with pytest.raises(ValueError, match="owners must have shape"):
        gmm_linkage_attack(np.zeros((5, 2)), np.zeros(4, dtype=int), 2, rng)
    with pytest.raises(ValueError, match="owners must index"):
        kmeans_linkage_attack(np.zeros((5, 2)), np.array([0, 1, 2, 0, 1]), 2, rng)
    with pytest.raises(ValueError, match="n_init"):
        GMMConfig(n_init=0)
    with pytest.raises(ValueError, match="var_floor"):
        GMMConfig(var_floor=0.0)
    with pytest.raises(ValueError, match="iters"):
        KMeansConfig(iters=0)


def test_attacker_preprocessing_uses_no_labels_and_logits_unit_interval_data() -> None:
    x = np.array([[0.1, 0.5], [0.5, 0.5], [0.9, 0.5]])
    z = prepare_features(x, logit_unit_interval=True, standardize=False)
    np.testing.assert_allclose(z[:, 0], np.log(x[:, 0] / (1 - x[:, 0])))
    s = prepare_features(x + 1.0, logit_unit_interval=True, standardize=True)  # outside (0, 1): no logit
    np.testing.assert_allclose(s[:, 0], (x[:, 0] - 0.5) / np.std(x[:, 0]))
    np.testing.assert_allclose(s[:, 1], 0.0)  # a constant coordinate is centred, not divided by 0
