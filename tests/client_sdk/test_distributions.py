"""Numpy user distributions against scipy, finite differences and naive references."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.special as sc
import scipy.stats as st
from hypothesis import given, settings
from hypothesis import strategies as hs

from veil.client_sdk import (
    FAMILIES,
    BasisMixtureDistribution,
    BetaDistribution,
    GaussianDistribution,
    UserDistribution,
    load_distribution,
)
from veil.client_sdk.distributions import _special

SHAPE = (2, 3)


def make_beta(seed: int = 0, shape: tuple[int, int] = SHAPE) -> BetaDistribution:
    rng = np.random.default_rng(seed)
    return BetaDistribution(rng.uniform(0.5, 8.0, shape), rng.uniform(0.5, 8.0, shape))


def make_gaussian(seed: int = 0, shape: tuple[int, int] = SHAPE) -> GaussianDistribution:
    rng = np.random.default_rng(seed)
    return GaussianDistribution(rng.normal(0.0, 1.0, shape), rng.uniform(0.2, 1.5, shape))


def make_mixture(seed: int = 0) -> BasisMixtureDistribution:
    basis = [make_beta(seed), make_gaussian(seed + 1), make_beta(seed + 2)]
    return BasisMixtureDistribution(basis, [0.2, 0.5, 0.3])


ALL = [make_beta, make_gaussian, make_mixture]


# ---------------------------------------------------------------- special functions
@given(hs.floats(1e-3, 1e4))
def test_digamma_matches_scipy(z: float) -> None:
    assert _special.digamma(z) == pytest.approx(sc.digamma(z), rel=1e-13, abs=1e-13)


def test_lgamma_and_betainc_match_scipy() -> None:
    rng = np.random.default_rng(1)
    a, b = np.exp(rng.uniform(np.log(0.3), np.log(50), (2, 4000)))
    x = np.clip(rng.beta(a, b), 1e-4, 1 - 1e-4)
    np.testing.assert_allclose(_special.lgamma(a), sc.gammaln(a), rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(_special.betainc(a, b, x), sc.betainc(a, b, x), rtol=0, atol=1e-12)


def _fd_implicit(
    x: np.ndarray, a: np.ndarray, b: np.ndarray, h: float = 1e-5
) -> tuple[np.ndarray, np.ndarray]:
    """-(dF/da)/pdf from central differences of log(tail probability) with scipy's betainc/betaincc.

    Differencing the log keeps the truncation error small in far tails, where F ~ x^a varies fast.
    """
    upper = x > a / (a + b)

    def log_tail(aa: np.ndarray, bb: np.ndarray) -> np.ndarray:
        return np.log(np.where(upper, sc.betaincc(aa, bb, x), sc.betainc(aa, bb, x)))

    sign = np.where(upper, -1.0, 1.0)  # dF/da = -d(1-F)/da in the upper tail
    ratio = sign * np.exp(log_tail(a, b) - st.beta.logpdf(x, a, b))  # tail / pdf
    da = (log_tail(a * (1 + h), b) - log_tail(a * (1 - h), b)) / (2 * a * h)
    db = (log_tail(a, b * (1 + h)) - log_tail(a, b * (1 - h))) / (2 * b * h)
    return -ratio * da, -ratio * db


def test_beta_implicit_grad_matches_finite_differences_on_grid() -> None:
    vals = np.array([0.3, 0.7, 1.0, 2.5, 10.0, 50.0])
    xs = np.array([1e-4, 1e-2, 0.3, 0.5, 0.9, 0.99, 1 - 1e-4])
    a, b, x = (g.ravel() for g in np.meshgrid(vals, vals, xs, indexing="ij"))
    ref_a, ref_b = _fd_implicit(x, a, b)
    got_a, got_b = _special.beta_implicit_grad(x, a, b)
    np.testing.assert_allclose(got_a, ref_a, rtol=1e-6)
    np.testing.assert_allclose(got_b, ref_b, rtol=1e-6)


@settings(max_examples=200, deadline=None)
@given(hs.floats(0.3, 50.0), hs.floats(0.3, 50.0), hs.floats(1e-4, 1 - 1e-4))
def test_beta_implicit_grad_property(a: float, b: float, x: float) -> None:
    ref_a, ref_b = _fd_implicit(np.array(x), np.array(a), np.array(b))
    got_a, got_b = _special.beta_implicit_grad(x, a, b)
    assert got_a == pytest.approx(float(ref_a), rel=1e-6, abs=1e-12)
    assert got_b == pytest.approx(float(ref_b), rel=1e-6, abs=1e-12)


# ---------------------------------------------------------------- moments and densities
def test_beta_moments_and_density_match_scipy() -> None:
    d = make_beta()
    np.testing.assert_allclose(d.mean(), st.beta.mean(d.alpha, d.beta), rtol=1e-12)
    np.testing.assert_allclose(d.variance(), st.beta.var(d.alpha, d.beta), rtol=1e-12)
    x = d.sample(np.random.default_rng(0), 200_000)
    np.testing.assert_allclose(x.mean(0), d.mean(), atol=4e-3)
    np.testing.assert_allclose(x.var(0), d.variance(), rtol=0.03)
    ref = st.beta.logpdf(x[:1000], d.alpha, d.beta).sum(axis=(-2, -1))
    np.testing.assert_allclose(d.log_prob(x[:1000]), ref, rtol=1e-10)
    assert d.log_prob(x[0]).shape == ()
    edge = np.full(SHAPE, 0.5)
    edge[0, 0] = 1.5
    assert d.log_prob(edge) == -np.inf


def test_gaussian_moments_and_density_match_scipy() -> None:
    d = make_gaussian()
    x = d.sample(np.random.default_rng(0), 200_000)
    np.testing.assert_allclose(x.mean(0), d.mean(), atol=0.01)
    np.testing.assert_allclose(x.var(0), d.variance(), rtol=0.03)
    ref = st.norm.logpdf(x[:1000], d.loc, d.std).sum(axis=(-2, -1))
    np.testing.assert_allclose(d.log_prob(x[:1000]), ref, rtol=1e-12)


def test_mixture_log_prob_matches_naive_loop_and_moments() -> None:
    d = make_mixture()
    x = d.sample(np.random.default_rng(3), 100_000)
    naive = np.array(
        [
            np.log(sum(w * np.exp(c.log_prob(xi)) for w, c in zip(d.weights, d.basis, strict=True)))
            for xi in x[:200]
        ]
    )
    np.testing.assert_allclose(d.log_prob(x[:200]), naive, rtol=1e-10)
    np.testing.assert_allclose(x.mean(0), d.mean(), atol=0.01)
    np.testing.assert_allclose(x.var(0), d.variance(), rtol=0.03)


def test_mixture_sampling_frequencies_match_weights() -> None:
    basis = [GaussianDistribution(np.full(SHAPE, 10.0 * k), np.full(SHAPE, 0.1)) for k in range(4)]
    w = np.array([0.1, 0.2, 0.3, 0.4])
    x = BasisMixtureDistribution(basis, w).sample(np.random.default_rng(0), 40_000)
    freq = np.bincount(np.rint(x[:, 0, 0] / 10.0).astype(int), minlength=4) / len(x)
    np.testing.assert_allclose(freq, w, atol=0.01)


def test_log_prob_is_fast_and_vectorised() -> None:
    rng = np.random.default_rng(0)
    beta = BetaDistribution(np.full((1, 64), 2.0), np.full((1, 64), 5.0))
    gaussian = make_gaussian(shape=(1, 64))
    # Any points of the support will do for the Beta: its sampler (an inverse CDF) would take longer
    # to draw 100,000 samples than log_prob is allowed.
    for d, x in (
        (beta, rng.uniform(0.01, 0.99, (100_000, 1, 64))),
        (gaussian, gaussian.sample(rng, 100_000)),
    ):
        start = time.perf_counter()
        assert d.log_prob(x).shape == (100_000,)
        assert time.perf_counter() - start < 2.0  # about 0.2 s on one core; generous for slow CI


# ---------------------------------------------------------------- sample_vjp
def test_beta_sample_vjp_matches_quantile_finite_differences() -> None:
    """x(theta) = F^-1(u; alpha(theta), beta(theta)) with u fixed, differentiated numerically."""
    d = make_beta(5)
    u = np.random.default_rng(0).uniform(0.02, 0.98, SHAPE)
    x = sc.betaincinv(d.alpha, d.beta, u)
    g = np.random.default_rng(1).normal(size=SHAPE)
    got = d.sample_vjp(x, g)
    h = 1e-6
    for key, value in d.unconstrained().items():
        plus = d.with_unconstrained({key: value + h})
        minus = d.with_unconstrained({key: value - h})
        dx = (sc.betaincinv(plus.alpha, plus.beta, u) - sc.betaincinv(minus.alpha, minus.beta, u)) / (2 * h)
        np.testing.assert_allclose(got[key], g * dx, rtol=1e-5, atol=1e-9)


def test_gaussian_sample_vjp_matches_finite_differences() -> None:
    d = make_gaussian(2)
    eps = np.random.default_rng(0).normal(size=(4, *SHAPE))
    g = np.random.default_rng(1).normal(size=(4, *SHAPE))
    got = d.sample_vjp(d.loc + d.std * eps, g)
    h = 1e-6
    for key, value in d.unconstrained().items():
        fwd = [d.with_unconstrained({key: value + s}) for s in (h, -h)]
        xs = [f.loc + f.std * eps for f in fwd]
        np.testing.assert_allclose(got[key], (g * (xs[0] - xs[1]) / (2 * h)).sum(0), rtol=1e-6, atol=1e-9)


def test_mixture_straight_through_gradient_is_jacobian_of_mean() -> None:
    d = make_mixture(4)
    x = d.sample(np.random.default_rng(0), 3)
    g = np.random.default_rng(1).normal(size=x.shape)
    got = d.sample_vjp(x, g)["logits"]
    logits, h = d.unconstrained()["logits"], 1e-6
    ref = np.empty_like(logits)
    for j in range(len(logits)):
        step = np.eye(len(logits))[j] * h
        m_plus = d.with_unconstrained({"logits": logits + step}).mean()
        m_minus = d.with_unconstrained({"logits": logits - step}).mean()
        ref[j] = np.sum(g.sum(0) * (m_plus - m_minus) / (2 * h))
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------- parameters and persistence
@pytest.mark.parametrize("factory", ALL)
def test_unconstrained_round_trip_and_immutability(factory) -> None:
    d = factory()
    params = d.unconstrained()
    again = d.with_unconstrained(params)
    np.testing.assert_allclose(again.mean(), d.mean(), rtol=1e-12)
    np.testing.assert_allclose(d.with_unconstrained({}).variance(), d.variance(), rtol=1e-12)
    for value in d._arrays().values():
        if value.ndim:
            with pytest.raises(ValueError):
                value[(0,) * value.ndim] = 0.5
    x = d.sample(np.random.default_rng(0))
    assert x.shape == SHAPE and x.dtype == np.float64
    assert not np.array_equal(x, d.sample(np.random.default_rng(1)))


@pytest.mark.parametrize("factory", ALL)
def test_save_load_round_trip(tmp_path, factory) -> None:
    d = factory()
    path = tmp_path / "dist.npz"
    d.save(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["dist.npz"]
    loaded = load_distribution(path)
    assert type(loaded) is type(d) and FAMILIES[d.family] is type(d)
    x = d.sample(np.random.default_rng(0), 5)
    np.testing.assert_array_equal(loaded.log_prob(x), d.log_prob(x))
    assert type(type(d).load(path)) is type(d)


def test_load_rejects_wrong_or_unknown_family(tmp_path) -> None:
    path = tmp_path / "d.npz"
    make_beta().save(path)
    with pytest.raises(ValueError, match="expected 'gaussian'"):
        GaussianDistribution.load(path)
    np.savez(tmp_path / "x.npz", family=np.array("dirichlet"))
    with pytest.raises(ValueError, match="unknown family"):
        UserDistribution.load(tmp_path / "x.npz")
    np.savez(tmp_path / "y.npz", family=np.array("beta"), alpha=np.ones(SHAPE))
    with pytest.raises(ValueError, match="missing entry"):
        load_distribution(tmp_path / "y.npz")


ONES, NEG = np.ones(SHAPE), -np.ones(SHAPE)
BAD = {
    "beta alpha <= 0": lambda: BetaDistribution(NEG, ONES),
    "beta nan": lambda: BetaDistribution(np.full(SHAPE, np.nan), ONES),
    "beta inf": lambda: BetaDistribution(ONES, np.full(SHAPE, np.inf)),
    "beta 1-D": lambda: BetaDistribution(np.ones(3), np.ones(3)),
    "beta shapes differ": lambda: BetaDistribution(ONES, np.ones((3, 2))),
    "beta mean outside (0,1)": lambda: BetaDistribution.from_mean_concentration(ONES, 2.0),
    "gaussian std <= 0": lambda: GaussianDistribution(ONES, 0 * ONES),
    "gaussian nan mean": lambda: GaussianDistribution(np.full(SHAPE, np.nan), ONES),
    "gaussian shapes differ": lambda: GaussianDistribution(ONES, np.ones((2, 2))),
    "mixture empty basis": lambda: BasisMixtureDistribution([], []),
    "mixture negative weight": lambda: BasisMixtureDistribution([make_beta(), make_beta(1)], [1.5, -0.5]),
    "mixture weights sum": lambda: BasisMixtureDistribution([make_beta(), make_beta(1)], [0.5, 0.4]),
    "mixture weight count": lambda: BasisMixtureDistribution([make_beta()], [0.5, 0.5]),
    "mixture shapes differ": lambda: BasisMixtureDistribution(
        [make_beta(), make_beta(shape=(1, 3))], [0.5, 0.5]
    ),
    "mixture nested": lambda: BasisMixtureDistribution([make_mixture()], [1.0]),
    "log_prob shape": lambda: make_beta().log_prob(np.ones((3, 2))),
    "vjp shape": lambda: make_gaussian().sample_vjp(ONES, np.ones((1, *SHAPE))),
    "vjp x shape": lambda: make_mixture().sample_vjp(np.ones(3), np.ones(3)),
    "beta vjp outside": lambda: make_beta().sample_vjp(2 * ONES, ONES),
    "unknown param": lambda: make_beta().with_unconstrained({"mean": ONES}),
    "param shape": lambda: make_gaussian().with_unconstrained({"log_std": np.ones(3)}),
    "nan param": lambda: make_mixture().with_unconstrained({"logits": np.array([0.0, np.nan, 0.0])}),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_invalid_inputs_raise_value_error(case: str) -> None:
    with pytest.raises(ValueError, match=r"must|unknown"):
        BAD[case]()


def test_client_sdk_does_not_import_torch_or_scipy() -> None:
    code = "import veil.client_sdk, sys; assert 'torch' not in sys.modules and 'scipy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
