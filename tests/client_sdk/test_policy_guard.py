"""The device-side policy guard: closed forms against integration, and projections that obey the policy."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.client_sdk.distributions import (
    BasisMixtureDistribution,
    BetaDistribution,
    GaussianDistribution,
)
from veil.client_sdk.distributions.divergences import UnequalCovarianceError
from veil.client_sdk.learning import OnDeviceLearner
from veil.client_sdk.policy_guard import (
    PolicyGuard,
    PolicyViolationError,
    gaussian_mu,
    log_bhattacharyya,
    tv_bound,
)


def _grid_tv_bc(p_pdf, q_pdf, lo: float, hi: float, n: int = 200_001) -> tuple[float, float]:
    x = np.linspace(lo, hi, n)
    p, q = p_pdf(x), q_pdf(x)
    dx = x[1] - x[0]
    return 0.5 * float(np.sum(np.abs(p - q)) * dx), float(np.sum(np.sqrt(p * q)) * dx)


def test_gaussian_closed_forms_match_integration() -> None:
    from scipy.stats import norm

    p = GaussianDistribution([[0.3]], [[0.7]])
    q = GaussianDistribution([[-0.4]], [[1.3]])
    tv, bc = _grid_tv_bc(norm(0.3, 0.7).pdf, norm(-0.4, 1.3).pdf, -15, 15)
    assert math.exp(log_bhattacharyya(p, q)) == pytest.approx(bc, rel=1e-6)
    assert tv <= tv_bound(p, q) + 1e-9
    # Equal stds: the TV is exact, 2 Phi(Delta/2) - 1, and mu is Delta.
    r = GaussianDistribution([[1.5]], [[0.7]])
    tv_eq, _ = _grid_tv_bc(norm(0.3, 0.7).pdf, norm(1.5, 0.7).pdf, -15, 15)
    assert tv_bound(p, r) == pytest.approx(tv_eq, abs=1e-6)
    assert gaussian_mu(p, r) == pytest.approx(1.2 / 0.7)
    with pytest.raises(UnequalCovarianceError):  # unequal stds: no finite mu exists...
        gaussian_mu(p, q)
    assert PolicyGuard(p, max_gdp_mu=5.0).check(q).value == math.inf  # ...which the guard reads as inf


def test_beta_bhattacharyya_matches_integration_and_beta_formula() -> None:
    from scipy.special import betaln
    from scipy.stats import beta

    p = BetaDistribution([[2.0, 0.8]], [[5.0, 1.7]])
    q = BetaDistribution([[3.5, 1.1]], [[2.0, 0.9]])
    total = 0.0
    for j in range(2):
        a1, b1, a2, b2 = p.alpha[0, j], p.beta[0, j], q.alpha[0, j], q.beta[0, j]
        total += betaln((a1 + a2) / 2, (b1 + b2) / 2) - 0.5 * (betaln(a1, b1) + betaln(a2, b2))
    assert log_bhattacharyya(p, q) == pytest.approx(total, rel=1e-10)
    one_p, one_q = BetaDistribution([[2.0]], [[5.0]]), BetaDistribution([[3.5]], [[2.0]])
    tv, bc = _grid_tv_bc(beta(2.0, 5.0).pdf, beta(3.5, 2.0).pdf, 0.0, 1.0)
    assert math.exp(log_bhattacharyya(one_p, one_q)) == pytest.approx(bc, rel=1e-5)
    assert tv <= tv_bound(one_p, one_q) + 1e-6


def test_mixture_bound_is_half_l1_of_weights() -> None:
    basis = [GaussianDistribution([[0.0]], [[1.0]]), GaussianDistribution([[3.0]], [[1.0]])]
    p, q = BasisMixtureDistribution(basis, [0.9, 0.1]), BasisMixtureDistribution(basis, [0.4, 0.6])
    assert tv_bound(p, q) == pytest.approx(0.5)
    other = BasisMixtureDistribution([GaussianDistribution([[1.0]], [[1.0]]), basis[1]], [0.4, 0.6])
    with pytest.raises(ValueError, match="basis"):
        tv_bound(p, other)


def test_guard_rejects_bad_configuration() -> None:
    prior = GaussianDistribution(np.zeros((1, 3)), np.ones((1, 3)))
    with pytest.raises(ValueError, match="at least one limit"):
        PolicyGuard(prior)
    with pytest.raises(ValueError, match="max_tv"):
        PolicyGuard(prior, max_tv=0.0)
    with pytest.raises(ValueError, match="max_gdp_mu"):
        PolicyGuard(prior, max_gdp_mu=-1.0)
    with pytest.raises(ValueError, match="Gaussian family only"):
        PolicyGuard(BetaDistribution([[2.0]], [[2.0]]), max_gdp_mu=1.0)
    guard = PolicyGuard(prior, max_tv=0.5)
    with pytest.raises(ValueError, match="shapes differ"):
        guard.check(GaussianDistribution(np.zeros((1, 2)), np.ones((1, 2))))
    with pytest.raises(ValueError, match="family"):
        guard.check(BetaDistribution(np.ones((1, 3)), np.ones((1, 3))))


def test_check_reports_the_binding_limit_and_enforce_refuses() -> None:
    prior = GaussianDistribution(np.zeros((1, 2)), np.ones((1, 2)))
    guard = PolicyGuard(prior, max_tv=0.99, max_gdp_mu=1.0)
    far = GaussianDistribution([[3.0, 0.0]], [[1.0, 1.0]])
    result = guard.check(far)
    assert not result.ok and result.measure == "gdp_mu_to_prior"
    assert result.value == pytest.approx(3.0) and result.limit == 1.0
    with pytest.raises(PolicyViolationError, match="gdp_mu_to_prior"):
        guard.enforce(far)
    near = GaussianDistribution([[0.5, 0.0]], [[1.0, 1.0]])
    assert guard.enforce(near) is near


def test_gaussian_mu_projection_is_the_closed_form_shrink() -> None:
    prior = GaussianDistribution([[1.0, -1.0]], [[2.0, 2.0]])
    guard = PolicyGuard(prior, max_gdp_mu=0.5)
    proposal = GaussianDistribution([[5.0, 2.0]], [[0.5, 3.0]])  # other stds: mu is infinite
    out = guard.project(proposal)
    np.testing.assert_allclose(out.std, prior.std)
    # Shrunk along the line to the prior mean until Delta == 0.5 (bisection to ~1e-12).
    delta = float(np.linalg.norm((proposal.loc - prior.loc) / prior.std))
    np.testing.assert_allclose(out.loc, prior.loc + (0.5 / delta) * (proposal.loc - prior.loc), atol=1e-9)


def _gaussians(dim: int):
    coord = st.floats(-4, 4, allow_nan=False)
    log_s = st.floats(-1.5, 1.5, allow_nan=False)
    return st.tuples(st.lists(coord, min_size=dim, max_size=dim), st.lists(log_s, min_size=dim, max_size=dim))


@settings(max_examples=60, deadline=None)
@given(
    prior=_gaussians(3),
    prop=_gaussians(3),
    max_tv=st.one_of(st.none(), st.floats(0.01, 1.0)),
    max_mu=st.one_of(st.none(), st.floats(0.05, 5.0)),
)
def test_gaussian_projection_always_satisfies_the_policy(prior, prop, max_tv, max_mu) -> None:
    if max_tv is None and max_mu is None:
        max_tv = 0.3
    p0 = GaussianDistribution([prior[0]], np.exp([prior[1]]))
    guard = PolicyGuard(p0, max_tv=max_tv, max_gdp_mu=max_mu)
    dist = GaussianDistribution([prop[0]], np.exp([prop[1]]))
    out = guard.project(dist)
    assert guard.check(out).ok
    if guard.check(dist).ok:
        assert out is dist
        return
    reset = GaussianDistribution(dist.loc, p0.std)
    if max_mu is not None and guard.check(reset).ok:
        np.testing.assert_array_equal(out.loc, dist.loc)  # resetting the std was enough
        return
    # As far along the line as allowed: a little further breaks the policy (or it is the prior).
    result = guard.check(out)
    assert out is guard.prior or result.value >= 0.97 * result.limit


@settings(max_examples=60, deadline=None)
@given(
    a=st.lists(st.floats(0.2, 30), min_size=4, max_size=4),
    b=st.lists(st.floats(0.2, 30), min_size=4, max_size=4),
    max_tv=st.floats(0.01, 1.0),
)
def test_beta_projection_always_satisfies_the_policy(a, b, max_tv) -> None:
    prior = BetaDistribution(np.full((2, 2), 4.0), np.full((2, 2), 4.0))
    guard = PolicyGuard(prior, max_tv=max_tv)
    dist = BetaDistribution(np.reshape(a, (2, 2)), np.reshape(b, (2, 2)))
    out = guard.project(dist)
    assert guard.check(out).ok
    if guard.check(dist).ok:
        assert out is dist


@settings(max_examples=60, deadline=None)
@given(w=st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3), max_tv=st.floats(0.01, 1.0))
def test_mixture_projection_mixes_weights_with_the_prior(w, max_tv) -> None:
    w_arr = np.asarray(w) + 1e-3
    w_arr /= w_arr.sum()
    basis = [GaussianDistribution([[float(k)]], [[1.0]]) for k in range(3)]
    prior = BasisMixtureDistribution(basis, [1 / 3, 1 / 3, 1 / 3])
    guard = PolicyGuard(prior, max_tv=max_tv)
    dist = BasisMixtureDistribution(basis, w_arr)
    out = guard.project(dist)
    assert guard.check(out).ok
    if guard.check(dist).ok:
        assert out is dist
    else:
        assert tv_bound(out, prior) == pytest.approx(max_tv, abs=1e-9)
        # The repaired weights lie on the segment between the prior's and the proposal's.
        t = (out.weights[0] - 1 / 3) / (w_arr[0] - 1 / 3) if abs(w_arr[0] - 1 / 3) > 1e-6 else None
        if t is not None:
            np.testing.assert_allclose(out.weights, (1 - t) / 3 + t * w_arr, atol=1e-9)


def test_learner_with_guard_stays_inside_the_policy() -> None:
    rng = np.random.default_rng(0)
    prior = GaussianDistribution(np.zeros((1, 4)), np.ones((1, 4)))
    guard = PolicyGuard(prior, max_gdp_mu=0.8)
    guarded = OnDeviceLearner(prior, lr=0.3, guard=guard)
    free = OnDeviceLearner(prior, lr=0.3)
    target = np.array([[3.0, -2.0, 1.0, 0.5]])
    for _ in range(40):
        for learner in (guarded, free):
            x = learner.distribution.sample(rng, size=4)
            learner.step(x, 2.0 * (x - target))  # gradient of ||x - target||^2: pulls the mean away
            assert learner is free or guard.check(learner.distribution).ok
    assert not guard.check(free.distribution).ok  # without the guard the policy breaks
    assert gaussian_mu(guarded.distribution, prior) == pytest.approx(0.8, rel=1e-6)


def test_learner_rejects_a_guard_of_the_wrong_type() -> None:
    prior = GaussianDistribution(np.zeros((1, 2)), np.ones((1, 2)))
    with pytest.raises(ValueError, match="guard"):
        OnDeviceLearner(prior, guard="strict")  # type: ignore[arg-type]


def test_guard_imports_neither_scipy_nor_torch() -> None:
    import veil.client_sdk.policy_guard as module

    tree = ast.parse(Path(module.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(name.split(".")[0] in {"scipy", "torch", "transformers"} for name in names), names
