"""The one home of the privacy maths: closed forms against integration, bounds against numerical TV, and
the phone, the audit and the batched audit paths pinned to the same single-pair functions."""

from __future__ import annotations

import ast
import doctest
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special, stats

from veil.client_sdk.distributions import (
    FAMILIES,
    BasisMixtureDistribution,
    BetaDistribution,
    GaussianDistribution,
    divergences,
)
from veil.client_sdk.distributions.divergences import (
    UnequalCovarianceError,
    gaussian_mu,
    gaussian_shift_bc,
    gaussian_shift_tv,
    hellinger_from_bc,
    log_bc,
    log_bc_beta,
    log_bc_lower_bound,
    mixture_tv_bound,
    tv_bound,
    tv_bounds_from_bc,
    tv_bounds_from_log_bc,
)
from veil.client_sdk.policy_guard import PolicyGuard


# ---------------------------------------------------------------------------------------------- references
def _law(d) -> tuple:
    """``(pdf, lo, hi, points)`` of a one-coordinate Gaussian, Beta or mixture of those, from scipy.

    ``points`` mark where the density lives, so the adaptive quadrature cannot miss a narrow peak.
    """
    if isinstance(d, BasisMixtureDistribution):
        parts = [_law(c) for c in d.basis]
        return (
            lambda x: sum(w * f(x) for w, (f, *_) in zip(d.weights, parts, strict=True)),
            min(part[1] for part in parts),
            max(part[2] for part in parts),
            [x for part in parts for x in part[3]],
        )
    if isinstance(d, GaussianDistribution):
        m, s = float(d.loc[0, 0]), float(d.std[0, 0])
        return stats.norm(m, s).pdf, m - 40.0 * s, m + 40.0 * s, [m + k * s for k in (-6, -3, -1, 0, 1, 3, 6)]
    return stats.beta(float(d.alpha[0, 0]), float(d.beta[0, 0])).pdf, 0.0, 1.0, []


def _quad(f, lo: float, hi: float, points: list[float]) -> float:
    inside = sorted({x for x in points if lo < x < hi})
    return integrate.quad(f, lo, hi, points=inside or None, limit=400, epsabs=1e-12, epsrel=1e-10)[0]


def _bc_numeric(p, q) -> float:
    (fp, lo_p, hi_p, pts_p), (fq, lo_q, hi_q, pts_q) = _law(p), _law(q)
    return _quad(lambda x: math.sqrt(fp(x) * fq(x)), max(lo_p, lo_q), min(hi_p, hi_q), pts_p + pts_q)


def _tv_numeric(p, q) -> float:
    (fp, lo_p, hi_p, pts_p), (fq, lo_q, hi_q, pts_q) = _law(p), _law(q)
    return 0.5 * _quad(lambda x: abs(fp(x) - fq(x)), min(lo_p, lo_q), max(hi_p, hi_q), pts_p + pts_q)


def _gauss(m, s) -> GaussianDistribution:
    return GaussianDistribution(np.reshape(m, (1, -1)), np.reshape(s, (1, -1)))


def _beta(a, b) -> BetaDistribution:
    return BetaDistribution(np.reshape(a, (1, -1)), np.reshape(b, (1, -1)))


def _coordinate(d, j: int):
    if isinstance(d, GaussianDistribution):
        return _gauss(d.loc[0, j], d.std[0, j])
    return _beta(d.alpha[0, j], d.beta[0, j])


# ---------------------------------------------------------------------------------------------- formulas
@pytest.mark.parametrize(
    ("p", "q"),
    [
        (_gauss([0.3, -1.0], [0.7, 2.0]), _gauss([-0.4, 0.5], [1.3, 0.4])),
        (_beta([2.0, 0.6], [5.0, 0.8]), _beta([3.5, 3.0], [2.0, 1.5])),  # 0.6, 0.8: singular densities
        (_beta([1.0], [1.0]), _beta([20.0], [30.0])),
    ],
)
def test_log_bc_is_the_sum_over_coordinates_of_the_integrated_coefficient(p, q) -> None:
    per_coordinate = [math.log(_bc_numeric(_coordinate(p, j), _coordinate(q, j))) for j in range(p.shape[1])]
    assert log_bc(p, q) == pytest.approx(sum(per_coordinate), rel=1e-7, abs=1e-10)


def test_equal_std_gaussians_have_the_closed_forms() -> None:
    p, q = _gauss([0.2], [0.8]), _gauss([1.4], [0.8])
    delta = 1.2 / 0.8
    assert gaussian_mu(p, q) == pytest.approx(delta, rel=1e-14)
    assert math.exp(log_bc(p, q)) == pytest.approx(math.exp(-(delta**2) / 8), rel=1e-14)
    assert float(gaussian_shift_bc(delta)) == pytest.approx(math.exp(-(delta**2) / 8), rel=1e-14)
    exact = 2 * stats.norm.cdf(delta / 2) - 1
    assert float(gaussian_shift_tv(delta)) == pytest.approx(exact, rel=1e-13)
    assert tv_bound(p, q) == pytest.approx(exact, rel=1e-13)
    assert tv_bound(p, q) == pytest.approx(_tv_numeric(p, q), abs=1e-9)
    # Several coordinates: Delta is the Mahalanobis distance.
    p3, q3 = _gauss([0.0, 1.0, 2.0], [0.5, 1.0, 2.0]), _gauss([1.0, 1.0, 0.0], [0.5, 1.0, 2.0])
    assert gaussian_mu(p3, q3) == pytest.approx(math.sqrt(4.0 + 1.0), rel=1e-14)


def test_beta_coefficient_agrees_with_scipy_betaln() -> None:
    rng = np.random.default_rng(3)
    a1, b1, a2, b2 = rng.uniform(0.3, 60.0, size=(4, 50))
    ours = log_bc_beta(a1[:, None], b1[:, None], a2[:, None], b2[:, None])  # (50,)
    scipy_version = log_bc_beta(a1[:, None], b1[:, None], a2[:, None], b2[:, None], betaln=special.betaln)
    naive = (
        special.betaln((a1 + a2) / 2, (b1 + b2) / 2) - (special.betaln(a1, b1) + special.betaln(a2, b2)) / 2
    )
    np.testing.assert_allclose(scipy_version, np.minimum(naive, 0.0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ours, scipy_version, rtol=1e-9, atol=1e-11)


def test_gaussian_coefficient_keeps_accuracy_for_nearly_equal_stds() -> None:
    eps = 1e-8
    p, q = _gauss([0.0], [1.0]), _gauss([0.0], [1.0 + eps])
    # log BC = -0.5 log1p(eps^2 / (2 (1 + eps))) = -eps^2 / (4 (1 + eps)) to relative O(eps^2).
    assert log_bc(p, q) == pytest.approx(-(eps**2) / (4 * (1 + eps)), rel=1e-9)
    lower, upper = tv_bounds_from_log_bc(log_bc(p, q))
    assert float(upper) == pytest.approx(math.sqrt(eps**2 / (2 * (1 + eps))), rel=1e-8)
    assert float(lower) == pytest.approx(eps**2 / (4 * (1 + eps)), rel=1e-8)


def test_tv_bounds_from_bc_and_from_log_bc_agree() -> None:
    bc = np.array([0.0, 1e-3, 0.3, 0.9, 1.0 - 1e-9, 1.0])
    with np.errstate(divide="ignore"):
        from_log = tv_bounds_from_log_bc(np.log(bc))
    for got, want in zip(tv_bounds_from_bc(bc), from_log, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-15)
    np.testing.assert_allclose(tv_bounds_from_bc(bc)[1], np.sqrt(1 - bc**2), rtol=1e-7, atol=1e-15)
    np.testing.assert_allclose(hellinger_from_bc(bc), np.sqrt(1 - bc), rtol=1e-12)
    assert str(float(tv_bounds_from_log_bc(0.0)[1])) == "0.0"  # +0.0, not -0.0


def test_mixture_bounds_hold_against_integration() -> None:
    basis = [_gauss([-2.0], [1.0]), _gauss([0.5], [0.7]), _beta([2.0], [3.0])]
    p = BasisMixtureDistribution(basis, [0.6, 0.3, 0.1])
    q = BasisMixtureDistribution(basis, [0.2, 0.3, 0.5])
    assert mixture_tv_bound(p, q) == pytest.approx(0.4, rel=1e-14)
    assert tv_bound(p, q) == mixture_tv_bound(p, q)
    assert _tv_numeric(p, q) <= mixture_tv_bound(p, q)
    w, v = p.weights, q.weights
    assert log_bc_lower_bound(p, q) == pytest.approx(math.log(np.sum(np.sqrt(w * v))), rel=1e-14)
    assert math.exp(log_bc_lower_bound(p, q)) <= _bc_numeric(p, q) + 1e-9
    other = BasisMixtureDistribution([_gauss([-1.0], [1.0]), *basis[1:]], [0.2, 0.3, 0.5])
    for fn in (mixture_tv_bound, tv_bound, log_bc_lower_bound):
        with pytest.raises(ValueError, match="same basis"):
            fn(p, other)
    with pytest.raises(ValueError, match="family"):
        log_bc(p, q)  # no closed form for mixtures


def _pair_1d(draw) -> tuple:
    if draw(st.booleans()):
        m = st.floats(-4.0, 4.0)
        log_s = st.floats(-1.5, 1.5)
        return _gauss([draw(m)], [math.exp(draw(log_s))]), _gauss([draw(m)], [math.exp(draw(log_s))])
    c = st.floats(1.0, 20.0)  # densities bounded on [0, 1]: the quadrature stays accurate
    return _beta([draw(c)], [draw(c)]), _beta([draw(c)], [draw(c)])


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_le_cam_sandwich_and_tv_bound_hold_against_numerical_tv(data) -> None:
    p, q = _pair_1d(data.draw)
    lbc = log_bc(p, q)
    assert lbc == log_bc(q, p) and tv_bound(p, q) == pytest.approx(tv_bound(q, p), rel=1e-12, abs=1e-15)
    assert 0.0 < math.exp(lbc) <= 1.0
    tv = _tv_numeric(p, q)
    lower, upper = tv_bounds_from_log_bc(lbc)
    assert float(lower) - 1e-8 <= tv <= float(upper) + 1e-8
    assert tv <= tv_bound(p, q) + 1e-8


@settings(max_examples=60, deadline=None)
@given(
    m=st.lists(st.floats(-3.0, 3.0), min_size=6, max_size=6),
    s=st.lists(st.floats(0.2, 5.0), min_size=6, max_size=6),
)
def test_several_coordinates_symmetry_and_ranges(m, s) -> None:
    pairs = [
        (_gauss(m[:3], s[:3]), _gauss(m[3:], s[3:])),
        (_beta(s[:3], s[3:]), _beta(s[3:], s[:3])),
    ]
    for p, q in pairs:
        assert log_bc(p, q) == pytest.approx(log_bc(q, p), rel=1e-12, abs=1e-15)
        assert log_bc(p, q) <= 0.0 and log_bc(p, p) == 0.0
        assert 0.0 <= tv_bound(p, q) <= 1.0 and tv_bound(p, p) == 0.0
    g_p, g_q = pairs[0]
    equal = _gauss(m[3:], s[:3])
    assert gaussian_mu(g_p, equal) == pytest.approx(gaussian_mu(equal, g_p), rel=1e-14)
    if not divergences.stds_equal(g_p.std, g_q.std):
        for a, b in ((g_p, g_q), (g_q, g_p)):
            with pytest.raises(UnequalCovarianceError):
                gaussian_mu(a, b)


# ---------------------------------------------------------------------------------------------- one behaviour
def _audit_gdp(dists) -> dict:
    from veil.privacy_analysis.audit.sections import measure_gdp

    return measure_gdp(list(dists), linked=(1,), pairwise_users=10, rng=np.random.default_rng(0))


def test_the_guard_and_the_audit_share_one_gaussian_mu() -> None:
    from veil.client_sdk import policy_guard
    from veil.privacy_analysis import gdp

    assert policy_guard.gaussian_mu is gdp.gaussian_pair_mu is gaussian_mu
    assert policy_guard.tv_bound is tv_bound and policy_guard.log_bhattacharyya is log_bc


@pytest.mark.parametrize("relative_std_change", [0.0, 1e-12, 1e-6, 0.3])
def test_unequal_stds_refused_alike_by_the_guard_and_the_audit(relative_std_change: float) -> None:
    from veil.privacy_analysis import gdp

    prior = _gauss([0.0, 1.0], [1.0, 0.5])
    dist = _gauss([0.4, 0.7], np.array([1.0, 0.5]) * (1.0 + relative_std_change))
    guard = PolicyGuard(prior, max_gdp_mu=2.0)
    audit = _audit_gdp([prior, dist])
    if relative_std_change <= divergences.EQUAL_STD_RTOL:
        mu = gaussian_mu(dist, prior)
        assert mu == pytest.approx(math.hypot(0.4, 0.3 / 0.5), rel=1e-9)
        assert gdp.gaussian_pair_mu(prior, dist) == pytest.approx(mu, rel=1e-15)
        assert guard.check(dist).value == pytest.approx(mu, rel=1e-15) and guard.check(dist).ok
        assert audit["finite"] and audit["mu_max"] == pytest.approx(mu, rel=1e-9)
        return
    for fn in (gaussian_mu, gdp.gaussian_pair_mu):
        with pytest.raises(UnequalCovarianceError, match="covariance='pooled'"):
            fn(dist, prior)
    check = guard.check(dist)
    assert check.value == math.inf and not check.ok
    repaired = guard.project(dist)
    assert guard.check(repaired).ok and np.array_equal(repaired.std, prior.std)
    assert not audit["finite"] and audit["mu_max"] is None
    assert audit["mu_pooled_max"] == pytest.approx(gaussian_mu(prior, dist, covariance="pooled"), rel=1e-15)


def test_pooled_summary_and_bad_arguments() -> None:
    p, q = _gauss([0.0, 0.0], [2.0, 0.5]), _gauss([2.0, 0.5], [4.0, 0.5])
    assert gaussian_mu(p, q, covariance="pooled") == pytest.approx(math.hypot(2.0 / math.sqrt(10.0), 1.0))
    assert issubclass(UnequalCovarianceError, ValueError)
    with pytest.raises(ValueError, match="covariance"):
        gaussian_mu(p, p, covariance="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="two Gaussians"):
        gaussian_mu(p, _beta([2.0, 2.0], [2.0, 2.0]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shapes differ"):
        tv_bound(p, _gauss([0.0], [1.0]))
    with pytest.raises(ValueError, match="family"):
        tv_bound(p, _beta([2.0, 2.0], [2.0, 2.0]))
    with pytest.raises(ValueError, match="UserDistribution"):
        log_bc(p, np.zeros((1, 2)))  # type: ignore[arg-type]


def test_a_gaussian_subclass_with_its_own_family_uses_the_gaussian_formulas() -> None:
    class Child(GaussianDistribution):
        family = "test_divergences_child"

    try:
        child, plain = Child([[0.5, 1.0]], [[1.0, 2.0]]), _gauss([0.0, 0.0], [1.0, 2.0])
        same_as_plain = _gauss([0.5, 1.0], [1.0, 2.0])
        assert divergences.resolve_family(child, divergences.LOG_BC) == "gaussian"
        assert log_bc(child, plain) == log_bc(same_as_plain, plain)
        assert tv_bound(child, plain) == tv_bound(same_as_plain, plain)
        assert gaussian_mu(child, plain) == gaussian_mu(same_as_plain, plain)
        assert PolicyGuard(plain, max_tv=0.9, max_gdp_mu=3.0).check(child).ok
    finally:
        FAMILIES.pop(Child.family, None)


# ---------------------------------------------------------------------------------------------- batched twins
def _population(kind: str, rng: np.random.Generator) -> list:
    if kind == "gaussian_equal":
        std = rng.uniform(0.5, 2.0, size=3)
        return [_gauss(rng.normal(size=3), std) for _ in range(6)]
    if kind == "gaussian":
        return [_gauss(rng.normal(size=3), rng.uniform(0.5, 2.0, 3)) for _ in range(6)]
    return [_beta(rng.uniform(0.5, 5.0, 4), rng.uniform(0.5, 5.0, 4)) for _ in range(6)]


@pytest.mark.parametrize("kind", ["gaussian_equal", "gaussian", "beta"])
def test_batched_privacy_analysis_versions_equal_the_single_pair_functions(kind: str) -> None:
    from veil.privacy_analysis import bounds
    from veil.privacy_analysis.distances import pairwise

    users = _population(kind, np.random.default_rng(7))
    bc = pairwise(users, "bc")
    hel = pairwise(users, "hellinger")
    tv = pairwise(users, "tv") if kind == "gaussian_equal" else None
    for i, p in enumerate(users):
        for j, q in enumerate(users):
            want = math.exp(log_bc(p, q))
            assert bc[i, j] == pytest.approx(want, rel=1e-10, abs=1e-14), (i, j)
            assert hel[i, j] == pytest.approx(float(hellinger_from_bc(want)), rel=1e-7, abs=1e-9), (i, j)
            if tv is not None:
                assert tv[i, j] == pytest.approx(tv_bound(p, q), rel=1e-10, abs=1e-14), (i, j)
            lower, upper = bounds.tv_sandwich(bc[i, j])
            assert (float(lower), float(upper)) == pytest.approx(
                tuple(map(float, tv_bounds_from_log_bc(log_bc(p, q)))), rel=1e-7, abs=1e-9
            )
    if kind == "gaussian_equal":
        mus = [gaussian_mu(p, q) for a, p in enumerate(users) for q in users[a + 1 :]]
        assert _audit_gdp(users)["mu_max"] == pytest.approx(max(mus), rel=1e-10)
        assert bounds.isotropic_gaussian_tv(np.array(mus)) == pytest.approx(
            [tv_bound(p, q) for a, p in enumerate(users) for q in users[a + 1 :]], rel=1e-13
        )


# ---------------------------------------------------------------------------------------------- the module
def test_divergences_import_only_numpy_the_standard_library_and_the_client_sdk() -> None:
    tree = ast.parse(Path(divergences.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    allowed = {"__future__", "math", "collections.abc", "typing", "numpy"}
    assert all(name in allowed or name.startswith("veil.client_sdk.") for name in names), names


def test_doctests() -> None:
    assert doctest.testmod(divergences).failed == 0
