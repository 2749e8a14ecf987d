"""Gaussian DP for pairs of users: closed forms against the empirical likelihood-ratio test."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from veil.client_sdk.distributions import BetaDistribution, GaussianDistribution
from veil.privacy_analysis import gdp
from veil.privacy_analysis.distances import total_variation
from veil.privacy_analysis.gdp import (
    empirical_tradeoff,
    gaussian_pair_mu,
    gdp_delta,
    gdp_epsilon,
    gdp_tradeoff,
    linked_mu,
    mu_from_tv,
    privacy_profile_mc,
)


def _pair(delta: float, dim: int = 3) -> tuple[GaussianDistribution, GaussianDistribution]:
    std = np.linspace(0.5, 1.5, dim).reshape(1, dim)
    shift = np.zeros((1, dim))
    shift[0, -1] = delta * std[0, -1]
    return GaussianDistribution(np.zeros((1, dim)), std), GaussianDistribution(shift, std)


def test_mu_is_the_mahalanobis_distance() -> None:
    p = GaussianDistribution([[0.0, 0.0]], [[2.0, 0.5]])
    q = GaussianDistribution([[2.0, 0.5]], [[2.0, 0.5]])
    assert gaussian_pair_mu(p, q) == pytest.approx(np.sqrt(2.0))
    wide = GaussianDistribution([[2.0, 0.5]], [[4.0, 0.5]])
    with pytest.raises(ValueError, match="covariance='pooled'"):
        gaussian_pair_mu(p, wide)
    assert gaussian_pair_mu(p, wide, covariance="pooled") == pytest.approx(np.hypot(2.0 / np.sqrt(10.0), 1.0))
    with pytest.raises(ValueError, match="two Gaussians"):
        gaussian_pair_mu(p, BetaDistribution([[2.0, 2.0]], [[2.0, 2.0]]))  # type: ignore[arg-type]


@pytest.mark.parametrize("mu", [0.3, 1.0, 2.5])
def test_delta_profile_matches_the_empirical_likelihood_ratio_test(mu: float) -> None:
    p, q = _pair(mu)
    eps = np.array([0.0, 0.25, 0.5, 1.0, 2.0])
    n = 60000
    emp = privacy_profile_mc(p, q, eps, rng=np.random.default_rng(0), n_samples=n)
    assert np.allclose(emp, gdp_delta(eps, mu), atol=4 * 0.5 / np.sqrt(n))
    # delta(0) is the total variation.
    assert gdp_delta(0.0, mu) == pytest.approx(total_variation(p, q), abs=1e-12)


@pytest.mark.parametrize("mu", [0.5, 1.5])
def test_tradeoff_matches_the_empirical_roc(mu: float) -> None:
    p, q = _pair(mu, dim=2)
    alphas = np.array([0.01, 0.05, 0.1, 0.3, 0.5, 0.8])
    n = 60000
    beta = empirical_tradeoff(p, q, alphas, rng=np.random.default_rng(1), n_samples=n)
    want = gdp_tradeoff(alphas, mu)
    tol = 5 * np.sqrt(want * (1 - want) / n) + 0.01 * alphas  # beta noise plus threshold noise
    assert np.all(np.abs(beta - want) <= tol), (beta, want)


@settings(max_examples=40, deadline=None)
@given(st.floats(0.05, 6.0), st.floats(1e-9, 0.3))
def test_epsilon_inverts_delta(mu: float, delta: float) -> None:
    eps = gdp_epsilon(delta, mu)
    if eps == 0.0:
        assert gdp_delta(0.0, mu) <= delta
    else:
        assert gdp_delta(eps, mu) == pytest.approx(delta, rel=1e-6, abs=1e-14)
        assert gdp_delta(0.5 * eps, mu) > delta


def test_profile_is_monotone_and_identical_laws_cost_nothing() -> None:
    eps = np.linspace(0, 8, 50)
    d = gdp_delta(eps, 1.3)
    assert np.all(np.diff(d) <= 1e-15) and d[0] > d[-1] >= 0
    assert np.all(gdp_delta(eps, 0.0) == 0.0)
    assert gdp_epsilon(1e-5, 0.0) == 0.0
    assert np.allclose(gdp_tradeoff(np.linspace(0, 1, 11), 0.0), 1 - np.linspace(0, 1, 11))
    assert float(gdp_delta(50.0, 1.0)) == 0.0  # no overflow for large eps


def test_linked_uploads_scale_mu_by_sqrt_t() -> None:
    # T linked uploads of a 1-D Gaussian user are one draw of the T-fold product law.
    p, q = GaussianDistribution([[0.0]], [[1.0]]), GaussianDistribution([[0.4]], [[1.0]])
    mu = gaussian_pair_mu(p, q)
    pt, qt = (
        GaussianDistribution(np.zeros((1, 9)), np.ones((1, 9))),
        GaussianDistribution(np.full((1, 9), 0.4), np.ones((1, 9))),
    )
    assert linked_mu(mu, 9) == pytest.approx(gaussian_pair_mu(pt, qt)) == pytest.approx(1.2)
    assert mu_from_tv(total_variation(pt, qt)) == pytest.approx(1.2, rel=1e-9)
    assert norm.cdf(linked_mu(mu, 9) / 2) == pytest.approx((1 + float(gdp_delta(0.0, 1.2))) / 2)
    with pytest.raises(ValueError, match="T must be"):
        linked_mu(mu, 0)


def test_profile_of_a_non_gaussian_pair_starts_at_its_tv() -> None:
    p, q = BetaDistribution([[2.0]], [[5.0]]), BetaDistribution([[3.0]], [[3.0]])
    d0 = float(privacy_profile_mc(p, q, 0.0, rng=np.random.default_rng(2), n_samples=60000))
    assert d0 == pytest.approx(total_variation(p, q), abs=4 * 0.5 / np.sqrt(60000))


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="mu must be"):
        gdp_delta(1.0, -1.0)
    with pytest.raises(ValueError, match="delta must lie"):
        gdp_epsilon(0.0, 1.0)
    with pytest.raises(ValueError, match="alpha"):
        gdp_tradeoff(1.5, 1.0)


def test_doctests() -> None:
    assert doctest.testmod(gdp).failed == 0
