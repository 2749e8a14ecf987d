"""Closed-form bounds and the exact low-dimensional Bayes accuracy, against integration and each other."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy.stats import norm

from veil.client_sdk.distributions import BasisMixtureDistribution, BetaDistribution, GaussianDistribution
from veil.privacy_analysis import bounds
from veil.privacy_analysis.bounds import (
    bound_from_pairwise_tv,
    bound_from_tv_to_mean,
    exact_bayes_attribution,
    isotropic_gaussian_accuracy,
    isotropic_gaussian_bc,
    isotropic_gaussian_tv,
    linked_bc,
    linked_tv_upper,
    tv_sandwich,
    tv_to_mean_from_loglik,
    two_user_accuracy,
)
from veil.privacy_analysis.distances import bhattacharyya, total_variation


def _quad_max(users, priors, lo: float, hi: float, points=None) -> float:
    def f(x: float) -> float:
        pt = np.array([[x]])
        return max(p * float(np.exp(d.log_prob(pt))) for p, d in zip(priors, users, strict=True))

    return integrate.quad(f, lo, hi, limit=1000, points=points, epsabs=1e-12, epsrel=1e-10)[0]


@pytest.mark.parametrize("delta", [0.0, 0.4, 1.5, 4.0])
def test_exact_attribution_of_two_gaussians_is_phi_delta_over_two(delta: float) -> None:
    one = [GaussianDistribution([[0.0]], [[0.7]]), GaussianDistribution([[0.7 * delta]], [[0.7]])]
    assert exact_bayes_attribution(one) == pytest.approx(norm.cdf(delta / 2), abs=1e-9)
    two = [
        GaussianDistribution([[0.0, 0.0]], [[1.0, 2.0]]),
        GaussianDistribution([[0.6 * delta, 1.6 * delta]], [[1.0, 2.0]]),
    ]
    assert exact_bayes_attribution(two) == pytest.approx(norm.cdf(delta / 2), abs=1e-5)


def test_exact_one_dimensional_attribution_matches_quadrature_with_priors() -> None:
    users = [
        GaussianDistribution([[0.0]], [[1.0]]),
        GaussianDistribution([[0.5]], [[0.3]]),
        GaussianDistribution([[-1.0]], [[2.5]]),
        BasisMixtureDistribution(
            [GaussianDistribution([[-2.0]], [[0.5]]), GaussianDistribution([[2.0]], [[0.5]])], [0.3, 0.7]
        ),
    ]
    priors = np.array([0.4, 0.1, 0.3, 0.2])
    want = _quad_max(users, priors, -40, 40, points=[-3, -2, -1, 0, 0.5, 1, 2, 3])
    assert exact_bayes_attribution(users, priors) == pytest.approx(want, abs=1e-8)


def test_exact_beta_attribution_matches_quadrature() -> None:
    users = [BetaDistribution([[a]], [[b]]) for a, b in [(0.6, 0.9), (2.0, 5.0), (5.0, 2.0), (3.0, 3.0)]]
    want = _quad_max(users, np.full(4, 0.25), 0.0, 1.0, points=[0.1, 0.3, 0.5, 0.7, 0.9])
    assert exact_bayes_attribution(users) == pytest.approx(want, abs=1e-7)


def test_exact_two_dimensional_beta_attribution_matches_two_dimensional_integration() -> None:
    users = [
        BetaDistribution([[2.0, 3.0]], [[5.0, 2.0]]),
        BetaDistribution([[4.0, 2.0]], [[2.0, 2.0]]),
        BetaDistribution([[3.0, 6.0]], [[3.0, 3.0]]),
    ]
    g = (np.arange(1500) + 0.5) / 1500  # midpoint rule; densities are smooth for parameters >= 2
    xx = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 1, 2)
    dens = np.stack([np.exp(u.log_prob(xx)) for u in users])
    want = dens.max(axis=0).mean() / 3
    assert exact_bayes_attribution(users) == pytest.approx(want, abs=2e-5)


def test_identical_users_give_chance_and_higher_dimensions_are_refused() -> None:
    p = BetaDistribution([[2.0]], [[3.0]])
    assert exact_bayes_attribution([p] * 5) == pytest.approx(0.2, abs=1e-12)
    assert exact_bayes_attribution([p]) == 1.0
    big = GaussianDistribution(np.zeros((1, 3)), np.ones((1, 3)))
    with pytest.raises(ValueError, match="Monte Carlo"):
        exact_bayes_attribution([big, big])
    with pytest.raises(ValueError, match="priors"):
        exact_bayes_attribution([p, p], priors=[0.5, 0.6])


def test_closed_forms_agree_with_each_other() -> None:
    d = np.linspace(0, 6, 13)
    assert np.allclose(isotropic_gaussian_tv(d), 2 * norm.cdf(d / 2) - 1, atol=1e-14)
    assert np.allclose(two_user_accuracy(isotropic_gaussian_tv(d)), isotropic_gaussian_accuracy(d))
    lo, hi = tv_sandwich(isotropic_gaussian_bc(d))
    assert np.all(lo <= isotropic_gaussian_tv(d) + 1e-15) and np.all(isotropic_gaussian_tv(d) <= hi + 1e-15)
    # T linked uploads of an isotropic Gaussian pair: Delta -> sqrt(T) Delta, BC -> BC^T.
    assert np.allclose(linked_bc(isotropic_gaussian_bc(d), 4), isotropic_gaussian_bc(2 * d))
    assert np.all(linked_tv_upper(isotropic_gaussian_bc(d), 4) >= isotropic_gaussian_tv(2 * d) - 1e-15)
    with pytest.raises(ValueError, match="T must be"):
        linked_bc(0.5, 0)


def test_two_user_bounds_are_tight() -> None:
    p, q = GaussianDistribution([[0.0, 0.0]], [[1.0, 1.0]]), GaussianDistribution([[1.0, 0.5]], [[1.0, 1.0]])
    tv = total_variation(p, q)
    acc = exact_bayes_attribution([p, q])
    assert bound_from_pairwise_tv(np.array([[0, tv], [tv, 0]])) == pytest.approx(acc, abs=1e-5)
    # TV(P, (P+Q)/2) = TV(P, Q)/2 for both users.
    assert bound_from_tv_to_mean(np.array([tv / 2, tv / 2])) == pytest.approx(acc, abs=1e-5)


@settings(max_examples=15, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0.3, 8.0), st.floats(0.3, 8.0)), min_size=2, max_size=4),
    st.integers(0, 2**31 - 1),
)
def test_both_upper_bounds_dominate_the_exact_accuracy(params, seed) -> None:
    users = [BetaDistribution([[a]], [[b]]) for a, b in params]
    k = len(users)
    priors = np.random.default_rng(seed).dirichlet(np.ones(k))
    exact = exact_bayes_attribution(users, priors, grid=801)
    tv = np.zeros((k, k))
    for i in range(k):
        for j in range(i + 1, k):
            tv[i, j] = tv[j, i] = total_variation(users[i], users[j])
    assert bound_from_pairwise_tv(tv, priors) >= exact - 1e-7
    # The mean law as a shared-basis mixture: TV(P_k, P_bar) exactly in one dimension.
    mean = BasisMixtureDistribution(users, priors)
    tv_mean = np.array([2 * exact_bayes_attribution([u, mean], grid=801) - 1 for u in users])
    assert bound_from_tv_to_mean(tv_mean, priors) >= exact - 1e-7
    assert exact >= priors.max() - 1e-9
    pairs = zip(users[:-1], users[1:], np.diag(tv, 1), strict=True)
    assert all(1 - bhattacharyya(u, v) <= t + 1e-7 for u, v, t in pairs)


def test_tv_to_mean_from_loglik_matches_the_exact_value() -> None:
    rng = np.random.default_rng(0)
    users = [GaussianDistribution([[m]], [[1.0]]) for m in (0.0, 1.0, 2.5)]
    labels = np.sort(rng.integers(3, size=30000))
    x = np.concatenate([users[k].sample(rng, size=int(np.sum(labels == k))) for k in range(3)])
    ll = np.stack([u.log_prob(x) for u in users], 1)
    est, se = tv_to_mean_from_loglik(ll + 7.0, labels)  # a per-row offset cancels
    mean = BasisMixtureDistribution(users, np.full(3, 1 / 3))
    want = np.mean([2 * exact_bayes_attribution([u, mean]) - 1 for u in users])
    assert abs(est - want) < 4 * se


def test_doctests() -> None:
    assert doctest.testmod(bounds).failed == 0
