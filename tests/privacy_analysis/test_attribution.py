"""Bayes attribution: Monte Carlo against closed forms and exact integration; the fast path against the
reference; linked uploads; the upper bounds against the estimates."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from veil.client_sdk.distributions import BasisMixtureDistribution, BetaDistribution, GaussianDistribution
from veil.privacy_analysis.attribution import (
    attribution_bounds,
    attribution_upper_bound,
    bayes_attribution,
    bayes_attribution_fast,
    exact_bayes_attribution,
    linked_attribution,
    log_likelihood_matrix,
    log_likelihood_matrix_fast,
    wilson_interval,
)


def _two_gaussians(delta: float, dim: int = 4, std: float = 0.5) -> list[GaussianDistribution]:
    shift = np.zeros((1, dim))
    shift[0, 0] = delta * std
    s = np.full((1, dim), std)
    return [GaussianDistribution(np.zeros((1, dim)), s), GaussianDistribution(shift, s)]


@pytest.mark.parametrize("delta", [0.5, 1.5, 3.0])
def test_two_isotropic_gaussians_attributed_at_phi_delta_over_two(delta: float) -> None:
    users, want = _two_gaussians(delta), norm.cdf(delta / 2)
    for fn in (bayes_attribution, bayes_attribution_fast):
        res = fn(users, 20000, np.random.default_rng(7))
        assert res.ci_low <= want <= res.ci_high, (fn.__name__, res)
        assert res.chance == 0.5 and res.n_uploads == 40000


def test_one_dimensional_beta_users_monte_carlo_matches_integration() -> None:
    users = [BetaDistribution([[a]], [[b]]) for a, b in [(2.0, 5.0), (5.0, 6.0), (0.8, 0.7), (6.0, 2.0)]]
    want = exact_bayes_attribution(users)
    for fn in (bayes_attribution, bayes_attribution_fast):
        res = fn(users, 10000, np.random.default_rng(3))
        assert res.ci_low <= want <= res.ci_high, (fn.__name__, res, want)


def test_static_embeddings_are_attributed_at_one_hundred_percent() -> None:
    rng = np.random.default_rng(0)
    means = rng.normal(size=(60, 1, 16))
    users = [GaussianDistribution(m, np.full((1, 16), 1e-6)) for m in means]
    assert bayes_attribution(users, 20, rng).accuracy == 1.0
    assert bayes_attribution_fast(users, 20, rng).accuracy == 1.0  # float64 is chosen automatically
    assert linked_attribution(users, 3, 5, rng).accuracy == 1.0


def test_identical_distributions_are_attributed_at_chance() -> None:
    p = BetaDistribution.from_mean_concentration(np.full((2, 3), 0.4), 6.0)
    users = [p] * 8
    for fn in (bayes_attribution, bayes_attribution_fast):
        res = fn(users, 500, np.random.default_rng(1))
        assert res.accuracy == pytest.approx(1 / 8) and res.chance == pytest.approx(1 / 8)
    # With a prior, the Bayes rule names the most likely user: accuracy = pi_max.
    priors = np.array([0.1, 0.5, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05])
    res = linked_attribution(users, 2, 2000, np.random.default_rng(2), priors=priors)
    assert res.chance == 0.5 and res.ci_low <= 0.5 <= res.ci_high


def _population(kind: str, rng: np.random.Generator) -> list:
    if kind == "gaussian":
        return [GaussianDistribution(rng.normal(size=(2, 3)), rng.uniform(0.5, 2, (2, 3))) for _ in range(6)]
    if kind == "gaussian_equal":
        s = rng.uniform(0.5, 2, (2, 3))
        return [GaussianDistribution(rng.normal(size=(2, 3)), s) for _ in range(6)]
    if kind == "beta":
        return [BetaDistribution(rng.uniform(0.5, 6, (2, 3)), rng.uniform(0.5, 6, (2, 3))) for _ in range(6)]
    if kind == "mixture":
        basis = [GaussianDistribution(rng.normal(size=(2, 3)), np.ones((2, 3))) for _ in range(4)]
        return [BasisMixtureDistribution(basis, w) for w in rng.dirichlet(np.ones(4), size=6)]
    # Mixed families have no vectorised path: the fallback.
    return [
        GaussianDistribution(np.full((2, 3), 0.5), np.full((2, 3), 0.3)),
        BetaDistribution(np.full((2, 3), 2.0), np.full((2, 3), 2.0)),
    ]


@pytest.mark.parametrize("kind", ["gaussian", "gaussian_equal", "beta", "mixture", "mixed"])
def test_fast_log_likelihood_equals_log_prob(kind: str) -> None:
    rng = np.random.default_rng(5)
    users = _population(kind, rng)
    x = np.concatenate([u.sample(rng, size=40) for u in users])
    ref = log_likelihood_matrix(users, x)
    assert np.allclose(log_likelihood_matrix_fast(users, x), ref, rtol=1e-12, atol=1e-9)
    f32 = log_likelihood_matrix_fast(users, x, dtype=np.float32)
    assert np.allclose(f32, ref, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("kind", ["gaussian", "gaussian_equal", "beta", "mixture", "mixed"])
def test_fast_attribution_agrees_with_the_reference(kind: str) -> None:
    users = _population(kind, np.random.default_rng(11))
    slow = bayes_attribution(users, 3000, np.random.default_rng(1))
    fast = bayes_attribution_fast(users, 3000, np.random.default_rng(2), chunk=1000)
    se = np.sqrt(slow.accuracy * (1 - slow.accuracy) / slow.n_uploads + 1e-12)
    assert abs(slow.accuracy - fast.accuracy) < 5 * np.sqrt(2) * se + 1e-9, (slow, fast)


def test_fast_path_spans_several_user_tiles() -> None:
    # More users than one column tile (1024): the running maximum across tiles must pick the right user.
    rng = np.random.default_rng(4)
    users = [GaussianDistribution(m, np.full((1, 8), 0.01)) for m in rng.normal(size=(2100, 1, 8))]
    assert bayes_attribution_fast(users, 2, rng).accuracy == 1.0


@pytest.mark.parametrize("delta", [0.3, 0.8])
def test_linked_accuracy_grows_with_t_and_matches_phi_sqrt_t_delta(delta: float) -> None:
    users = _two_gaussians(delta, dim=3)
    accs = []
    for t in (1, 4, 16):
        res = linked_attribution(users, t, 6000, np.random.default_rng(t))
        want = norm.cdf(np.sqrt(t) * delta / 2)
        assert res.ci_low <= want <= res.ci_high, (t, res, want)
        accs.append(res.accuracy)
    assert accs[0] < accs[1] < accs[2]


def test_linked_attribution_on_the_fallback_path_and_with_priors() -> None:
    users = _population("mixed", np.random.default_rng(0))
    one = linked_attribution(users, 1, 2000, np.random.default_rng(0)).accuracy
    five = linked_attribution(users, 5, 2000, np.random.default_rng(0)).accuracy
    assert five > one
    # Priors on a Gaussian pair: the Bayes rule with log prior; its accuracy is exact in closed form.
    p, q = _two_gaussians(1.0, dim=1, std=1.0)
    pi = np.array([0.8, 0.2])
    c = np.log(pi[0] / pi[1])  # decide q when x > 1/2 + c (Delta = 1, unit std)
    want = pi[0] * norm.cdf(0.5 + c) + pi[1] * norm.sf(-0.5 + c)
    res = linked_attribution([p, q], 1, 20000, np.random.default_rng(9), priors=pi)
    assert res.ci_low <= want <= res.ci_high


def _lowest_plausible(res) -> float:
    # A z = 4 Wilson lower end: the bounds can be tight (two users, or one user far from close twins),
    # so the 95% interval would fail one comparison in forty.
    return wilson_interval(round(res.accuracy * res.n_uploads), res.n_uploads, z=4.0)[0]


@pytest.mark.parametrize("kind", ["gaussian", "gaussian_equal", "beta", "mixture"])
def test_upper_bounds_dominate_the_monte_carlo_accuracy(kind: str) -> None:
    users = _population(kind, np.random.default_rng(21))
    mc = bayes_attribution_fast(users, 4000, np.random.default_rng(0))
    b = attribution_bounds(users, rng=np.random.default_rng(1), n_samples=20000)
    assert b.upper_bound >= _lowest_plausible(mc)
    assert b.pairwise is not None and b.tv_to_mean >= _lowest_plausible(mc)
    assert b.pairwise >= _lowest_plausible(mc)
    assert b.upper_bound == min(b.tv_to_mean, b.pairwise) <= 1.0


@settings(max_examples=10, deadline=None)
@given(st.integers(2, 6), st.floats(0.05, 3.0), st.integers(0, 2**31 - 1))
def test_upper_bound_dominates_for_random_gaussian_populations(k: int, spread: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    users = [GaussianDistribution(rng.normal(0, spread, (1, 4)), np.ones((1, 4))) for _ in range(k)]
    mc = bayes_attribution_fast(users, 2000, rng)
    assert attribution_upper_bound(users, rng=rng, n_samples=5000) >= _lowest_plausible(mc)


def test_close_users_have_bounds_near_chance_and_large_k_skips_pairwise() -> None:
    rng = np.random.default_rng(3)
    users = [GaussianDistribution(rng.normal(0, 0.01, (1, 4)), np.ones((1, 4))) for _ in range(10)]
    b = attribution_bounds(users, rng=rng)
    assert b.upper_bound < 0.1 + 0.03
    skipped = attribution_bounds(users, rng=rng, pairwise_limit=5, n_samples=1000)
    assert skipped.pairwise is None and "skipped" in skipped.pairwise_method


def test_bad_arguments_raise() -> None:
    users = _two_gaussians(1.0)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="at least 2"):
        bayes_attribution_fast(users[:1], 10, rng)
    with pytest.raises(ValueError, match="T must be"):
        linked_attribution(users, 0, 10, rng)
    with pytest.raises(ValueError, match=">= 1"):
        bayes_attribution_fast(users, 0, rng)
    with pytest.raises(ValueError, match="one shape"):
        bayes_attribution_fast([users[0], GaussianDistribution(np.zeros((1, 2)), np.ones((1, 2)))], 5, rng)
