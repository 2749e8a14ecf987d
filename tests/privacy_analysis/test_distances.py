"""Distances between user distributions: closed forms against numerical integration, MC against exact."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy.stats import norm

from veil.client_sdk.distributions import BasisMixtureDistribution, BetaDistribution, GaussianDistribution
from veil.privacy_analysis import distances
from veil.privacy_analysis.distances import (
    bhattacharyya,
    bhattacharyya_mc,
    hellinger,
    mixture_tv_bound,
    pairwise,
    total_variation,
    total_variation_estimate,
    total_variation_mc,
)


def _pdf(d, x: float) -> float:
    return float(np.exp(d.log_prob(np.array([[x]]))))


def _support(p, q) -> tuple[float, float]:
    if isinstance(p, BetaDistribution):
        return 0.0, 1.0
    return -60.0, 60.0


def _quad(f, lo: float, hi: float) -> float:
    return integrate.quad(f, lo, hi, limit=400, epsabs=1e-12, epsrel=1e-10)[0]


def _bc_numeric(p, q) -> float:
    return _quad(lambda x: np.sqrt(_pdf(p, x) * _pdf(q, x)), *_support(p, q))


def _tv_numeric(p, q) -> float:
    return 0.5 * _quad(lambda x: abs(_pdf(p, x) - _pdf(q, x)), *_support(p, q))


def _beta1(a: float, b: float) -> BetaDistribution:
    return BetaDistribution([[a]], [[b]])


def _gauss1(m: float, s: float) -> GaussianDistribution:
    return GaussianDistribution([[m]], [[s]])


@pytest.mark.parametrize(
    ("a1", "b1", "a2", "b2"), [(2.0, 5.0, 5.0, 6.0), (0.6, 0.8, 3.0, 1.5), (1.0, 1.0, 20.0, 30.0)]
)
def test_beta_bc_matches_beta_function_formula_and_integration(a1, b1, a2, b2) -> None:
    from scipy.special import beta as beta_fn

    p, q = _beta1(a1, b1), _beta1(a2, b2)
    formula = beta_fn((a1 + a2) / 2, (b1 + b2) / 2) / np.sqrt(beta_fn(a1, b1) * beta_fn(a2, b2))
    assert bhattacharyya(p, q) == pytest.approx(formula, rel=1e-10)
    assert bhattacharyya(p, q) == pytest.approx(_bc_numeric(p, q), abs=1e-7)


def test_beta_bc_is_product_over_coordinates() -> None:
    a1, b1 = np.array([[2.0, 0.7], [3.0, 9.0]]), np.array([[5.0, 0.9], [3.0, 1.0]])
    a2, b2 = np.array([[4.0, 1.2], [2.0, 8.0]]), np.array([[1.0, 0.5], [6.0, 2.0]])
    per = [
        _bc_numeric(_beta1(a1.flat[i], b1.flat[i]), _beta1(a2.flat[i], b2.flat[i])) for i in range(a1.size)
    ]
    assert bhattacharyya(BetaDistribution(a1, b1), BetaDistribution(a2, b2)) == pytest.approx(
        np.prod(per), abs=1e-7
    )


def test_gaussian_bc_closed_form_matches_integration_with_unequal_stds() -> None:
    p, q = _gauss1(0.3, 0.7), _gauss1(-1.1, 2.5)
    assert bhattacharyya(p, q) == pytest.approx(_bc_numeric(p, q), abs=1e-9)


def test_isotropic_gaussians_match_the_delta_formulas() -> None:
    std = np.full((2, 3), 0.5)
    p = GaussianDistribution(np.zeros((2, 3)), std)
    q = GaussianDistribution(np.array([[0.3, -0.2, 0.1], [0.0, 0.4, 0.0]]), std)
    delta = np.linalg.norm((p.loc - q.loc) / 0.5)
    assert total_variation(p, q) == pytest.approx(2 * norm.cdf(delta / 2) - 1, abs=1e-12)
    assert bhattacharyya(p, q) == pytest.approx(np.exp(-(delta**2) / 8), rel=1e-12)
    assert hellinger(p, q) == pytest.approx(np.sqrt(1 - np.exp(-(delta**2) / 8)), rel=1e-10)


@pytest.mark.parametrize(
    ("p", "q"),
    [
        (_gauss1(0.0, 1.0), _gauss1(0.5, 2.0)),
        (_gauss1(0.0, 1.0), _gauss1(0.0, 0.2)),
        (_beta1(0.5, 0.7), _beta1(2.0, 3.0)),
        (_beta1(2.0, 2.0), _beta1(2.0, 2.1)),
    ],
)
def test_one_dimensional_tv_is_exact(p, q) -> None:
    tv, se, method = total_variation_estimate(p, q)
    assert method == "exact 1-D" and se == 0.0
    assert tv == pytest.approx(_tv_numeric(p, q), abs=1e-8)


def test_tv_of_products_differing_in_one_coordinate_reduces_to_that_coordinate() -> None:
    a, b = np.array([[2.0, 3.0, 0.7]]), np.array([[5.0, 1.0, 0.9]])
    a2 = a.copy()
    a2[0, 1] = 4.5
    tv, _, method = total_variation_estimate(BetaDistribution(a, b), BetaDistribution(a2, b))
    assert method == "exact 1-D"
    assert tv == pytest.approx(_tv_numeric(_beta1(3.0, 1.0), _beta1(4.5, 1.0)), abs=1e-8)


def test_monte_carlo_tv_and_bc_agree_with_exact_values() -> None:
    rng = np.random.default_rng(0)
    p, q = _gauss1(0.0, 1.0), _gauss1(0.8, 1.7)
    est, se = total_variation_mc(p, q, rng, 40000)
    assert 0 < se <= 0.5 / np.sqrt(40000)
    assert abs(est - total_variation(p, q)) < 4 * se
    est, se = bhattacharyya_mc(p, q, rng, 40000)
    assert abs(est - bhattacharyya(p, q)) < 4 * se + 1e-12
    std = np.ones((1, 5))
    p5, q5 = GaussianDistribution(np.zeros((1, 5)), std), GaussianDistribution(np.full((1, 5), 0.3), std)
    est, se = total_variation_mc(p5, q5, rng, 40000)
    assert abs(est - total_variation(p5, q5)) < 4 * se


def test_monte_carlo_path_for_multivariate_unequal_stds() -> None:
    p = GaussianDistribution([[0.0, 0.0]], [[1.0, 1.0]])
    q = GaussianDistribution([[0.5, 0.2]], [[1.5, 0.8]])
    tv, se, method = total_variation_estimate(p, q, rng=np.random.default_rng(3), n_samples=40000)
    assert method == "Monte Carlo" and se > 0
    # Reference by 2-D integration of 0.5 |p - q| on a fine grid.
    g = np.linspace(-12, 12, 1201)
    xx = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 1, 2)
    diff = np.abs(np.exp(p.log_prob(xx)) - np.exp(q.log_prob(xx)))
    ref = 0.5 * diff.sum() * (g[1] - g[0]) ** 2
    assert abs(tv - ref) < 4 * se


def _random_pair(draw) -> tuple:
    family = draw(st.sampled_from(["gaussian", "beta"]))
    dim = draw(st.integers(1, 3))
    floats = st.floats(0.2, 6.0)
    arr = lambda: np.array([[draw(floats) for _ in range(dim)]])  # noqa: E731
    if family == "gaussian":
        return GaussianDistribution(arr() - 3, arr()), GaussianDistribution(arr() - 3, arr())
    return BetaDistribution(arr(), arr()), BetaDistribution(arr(), arr())


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_hellinger_sandwich_holds_for_random_pairs(data) -> None:
    p, q = _random_pair(data.draw)
    bc = bhattacharyya(p, q)
    tv, se, _ = total_variation_estimate(p, q, rng=np.random.default_rng(0), n_samples=8000)
    h2 = hellinger(p, q) ** 2
    assert h2 == pytest.approx(1 - bc, abs=1e-12)
    slack = 4 * se + 1e-9
    assert h2 - slack <= tv <= np.sqrt(max(0.0, 1 - bc * bc)) + slack


def test_shared_basis_mixtures_bound_and_numeric_values() -> None:
    basis = [_gauss1(-2.0, 1.0), _gauss1(0.5, 0.7), _gauss1(3.0, 1.2)]
    p = BasisMixtureDistribution(basis, [0.6, 0.3, 0.1])
    q = BasisMixtureDistribution(basis, [0.2, 0.3, 0.5])
    tv = total_variation(p, q)
    assert tv == pytest.approx(_tv_numeric(p, q), abs=1e-8)
    assert tv <= mixture_tv_bound(p, q) == pytest.approx(0.4)
    assert bhattacharyya(p, q) == pytest.approx(_bc_numeric(p, q), abs=1e-7)
    # A 2-D pair takes the Monte-Carlo path and is clipped by the bound.
    basis2 = [GaussianDistribution([[m, 0.0]], [[1.0, 1.0]]) for m in (-0.3, 0.0, 0.3)]
    p2 = BasisMixtureDistribution(basis2, [0.5, 0.25, 0.25])
    q2 = BasisMixtureDistribution(basis2, [0.45, 0.3, 0.25])
    assert total_variation(p2, q2) <= mixture_tv_bound(p2, q2) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="same basis"):
        mixture_tv_bound(p, BasisMixtureDistribution(basis[:2], [0.5, 0.5]))


def test_identical_distributions_and_far_apart_ones() -> None:
    p = BetaDistribution.from_mean_concentration(np.full((1, 4), 0.3), 8.0)
    assert total_variation(p, p) == 0.0 and bhattacharyya(p, p) == 1.0 and hellinger(p, p) == 0.0
    far_p = GaussianDistribution(np.zeros((1, 8)), np.full((1, 8), 1e-6))
    far_q = GaussianDistribution(np.ones((1, 8)), np.full((1, 8), 1e-6))
    assert total_variation(far_p, far_q) == 1.0 and bhattacharyya(far_p, far_q) == 0.0


@pytest.mark.parametrize("family", ["gaussian_equal", "gaussian", "beta", "mixture"])
def test_pairwise_matches_the_pairwise_functions(family: str) -> None:
    rng = np.random.default_rng(1)
    if family == "gaussian_equal":
        std = rng.uniform(0.5, 2, size=(1, 3))
        users = [GaussianDistribution(rng.normal(size=(1, 3)), std) for _ in range(5)]
    elif family == "gaussian":
        users = [GaussianDistribution(rng.normal(size=(1, 3)), rng.uniform(0.5, 2, (1, 3))) for _ in range(5)]
    elif family == "beta":
        users = [BetaDistribution(rng.uniform(0.5, 5, (2, 2)), rng.uniform(0.5, 5, (2, 2))) for _ in range(5)]
    else:
        basis = [_gauss1(m, 1.0) for m in (-2.0, 0.0, 2.0)]
        users = [BasisMixtureDistribution(basis, w) for w in rng.dirichlet(np.ones(3), size=4)]
    for measure, fn in (("bc", bhattacharyya), ("hellinger", hellinger), ("tv", total_variation)):
        if measure == "tv" and family in ("gaussian", "beta"):
            continue  # Monte-Carlo pairs: covered by the sandwich test, slow here
        m = pairwise(users, measure)
        assert m.shape == (len(users), len(users)) and np.allclose(m, m.T)
        for i in range(len(users)):
            for j in range(len(users)):
                want = fn(users[i], users[j])
                assert m[i, j] == pytest.approx(want, abs=1e-9), (measure, i, j)


def test_bad_inputs_raise_value_errors() -> None:
    p = _gauss1(0.0, 1.0)
    with pytest.raises(ValueError, match="one shape"):
        total_variation(p, GaussianDistribution(np.zeros((1, 2)), np.ones((1, 2))))
    with pytest.raises(ValueError, match="measure"):
        pairwise([p, p], "kl")
    with pytest.raises(ValueError, match="UserDistribution"):
        bhattacharyya(p, np.zeros((1, 1)))  # type: ignore[arg-type]


def test_doctests() -> None:
    assert doctest.testmod(distances).failed == 0
