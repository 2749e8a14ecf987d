"""One parity matrix over every family: numpy, ONNX and torch, from one factory.

Each family declares what it supports (``UserDistribution.capabilities``); the matrix runs every check a
family declares and checks that a family refuses what it does not declare. Adding a family means adding
its factory line here; a family without one fails ``test_the_factory_covers_every_family``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from veil.client_sdk.distributions import (
    FAMILIES,
    BasisMixtureDistribution,
    BetaDistribution,
    Codebook,
    GaussianDistribution,
    PrototypeDistribution,
    UserDistribution,
)
from veil.client_sdk.math_backends import LearningConfig, NumpyBackend, OnnxBackend
from veil.client_sdk.param_store import ClientState
from veil.client_sdk.policy_guard import PolicyGuard
from veil.models.distributions import torch_twin
from veil.models.onnx.export import export_onnx
from veil.models.onnx.graphs import GraphShapes

SHAPE = (2, 3)
K = 3
RTOL, ATOL = 1e-5, 1e-6  # float32 graphs against float64 numpy


def _gaussian(rng: np.random.Generator) -> GaussianDistribution:
    return GaussianDistribution(rng.normal(size=SHAPE), rng.uniform(0.3, 0.8, SHAPE))


FACTORY: dict[str, Callable[[np.random.Generator], UserDistribution]] = {
    "gaussian": _gaussian,
    "beta": lambda rng: BetaDistribution(rng.uniform(1.0, 4.0, SHAPE), rng.uniform(1.0, 4.0, SHAPE)),
    "basis_mixture": lambda rng: BasisMixtureDistribution(
        [_gaussian(rng) for _ in range(K)], rng.dirichlet(np.ones(K))
    ),
    "prototype": lambda rng: PrototypeDistribution(
        Codebook(rng.normal(size=(K, *SHAPE)), [True, False, True]), 2, noise_std=0.05
    ),
}


def families(capability: str | None = None, *, without: bool = False) -> list[str]:
    names = sorted(FAMILIES)
    if capability is None:
        return names
    return [f for f in names if (capability in FAMILIES[f].capabilities) != without]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("matrix")
    export_onnx(out, shapes=GraphShapes(n_tokens=SHAPE[0], dim=SHAPE[1], n_basis=K, n_prototypes=K))
    return out


def _rng(family: str, salt: str = "") -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(f"{family}/{salt}".encode()))


def test_the_factory_covers_every_family() -> None:
    assert set(FACTORY) == set(FAMILIES)
    for name, make in FACTORY.items():
        dist = make(_rng(name))
        assert dist.family == name and dist.shape == SHAPE


@pytest.mark.parametrize("family", families())
def test_sample_is_the_same_function_of_the_same_noise_in_numpy_and_onnx(graphs: Path, family: str) -> None:
    dist = FACTORY[family](_rng(family))
    onnx, numpy = OnnxBackend(graphs, family), NumpyBackend()
    for seed in range(4):
        d_onnx = onnx.sample(dist, np.random.default_rng(seed))
        d_numpy = numpy.sample(dist, np.random.default_rng(seed))
        assert d_onnx.noise.keys() == d_numpy.noise.keys()
        np.testing.assert_allclose(d_onnx.value, d_numpy.value, rtol=RTOL, atol=ATOL)
    # and the distribution's own sampler draws the same noise the same way
    single = dist.sample(np.random.default_rng(3))
    np.testing.assert_array_equal(single, numpy.sample(dist, np.random.default_rng(3)).value)


@pytest.mark.parametrize("family", families())
def test_batched_samples_have_the_declared_noise_and_the_right_moments(family: str) -> None:
    dist = FACTORY[family](_rng(family))
    noise = dist.draw_noise(_rng(family, "noise"), 4)
    assert {k: v.shape for k, v in noise.items()} == dist.noise_shapes(4)
    x = dist.sample(_rng(family, "moments"), size=20_000)
    assert x.shape == (20_000, *SHAPE)
    se = np.sqrt(dist.variance() / x.shape[0])
    assert np.all(np.abs(x.mean(axis=0) - dist.mean()) < 5 * se + 1e-9)


@pytest.mark.parametrize("family", families("learn"))
def test_updates_agree_between_numpy_and_onnx(graphs: Path, family: str) -> None:
    cfg = LearningConfig(lr=0.05, max_grad_norm=3.0)
    onnx, numpy = OnnxBackend(graphs, family, cfg), NumpyBackend(cfg)
    s_onnx = s_numpy = ClientState(FACTORY[family](_rng(family)))
    rng = _rng(family, "steps")
    for step in range(3):
        seed = int(rng.integers(1 << 31))
        d_onnx = onnx.sample(s_onnx.distribution, np.random.default_rng(seed))
        d_numpy = numpy.sample(s_numpy.distribution, np.random.default_rng(seed))
        grad = rng.standard_normal(SHAPE)
        s_onnx, s_numpy = onnx.update(s_onnx, d_onnx, grad), numpy.update(s_numpy, d_numpy, grad)
        got, want = s_onnx.distribution.unconstrained(), s_numpy.distribution.unconstrained()
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=f"{name}, {step}")
        assert s_onnx.optimizer["t"] == s_numpy.optimizer["t"] == step + 1


@pytest.mark.parametrize("family", families("learn", without=True))
def test_families_that_do_not_learn_refuse_an_update(graphs: Path, family: str) -> None:
    dist = FACTORY[family](_rng(family))
    draw = NumpyBackend().sample(dist, _rng(family, "draw"))
    with pytest.raises(ValueError, match="no gradient update"):
        OnnxBackend(graphs, family).update(ClientState(dist), draw, np.zeros(SHAPE))


@pytest.mark.parametrize("family", families("policy_graph"))
def test_the_policy_graph_agrees_with_the_numpy_guard(graphs: Path, family: str) -> None:
    prior = FACTORY[family](_rng(family, "prior"))
    guard = PolicyGuard(prior, max_tv=0.5)
    onnx = OnnxBackend(graphs, family, guard=guard)
    rng = _rng(family, "users")
    for scale in (0.05, 0.3, 1.5):  # users around the prior: inside, near and outside the limit
        start = prior.unconstrained()
        dist = prior.with_unconstrained({k: v + scale * rng.normal(size=v.shape) for k, v in start.items()})
        want, got = guard.check(dist), onnx.check(dist)
        assert got.ok == want.ok and got.measure == want.measure
        assert got.value == pytest.approx(want.value, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("family", families("policy_graph", without=True))
def test_families_without_a_policy_graph_fall_back_or_refuse(graphs: Path, family: str) -> None:
    dist = FACTORY[family](_rng(family))
    with pytest.raises(ValueError, match="no policy graph"):
        dist.onnx_policy_feeds(dist)
    if "policy" in dist.capabilities:  # measured by the numpy guard instead
        guard = PolicyGuard(dist, max_tv=0.5)
        assert OnnxBackend(graphs, family, guard=guard).check(dist).ok


@pytest.mark.parametrize("family", families("torch"))
def test_the_torch_twin_is_the_same_law(family: str) -> None:
    dist = FACTORY[family](_rng(family))
    twin = torch_twin(dist)
    x = dist.sample(_rng(family, "x"), size=16)
    with torch.no_grad():
        log_prob = twin.log_prob(torch.from_numpy(x)).numpy()  # type: ignore[operator]
        drawn = twin.rsample(50_000).numpy()  # type: ignore[operator]
    np.testing.assert_allclose(log_prob, dist.log_prob(x), rtol=1e-9, atol=1e-9)
    se = np.sqrt(dist.variance() / drawn.shape[0])
    assert np.all(np.abs(drawn.mean(axis=0) - dist.mean()) < 5 * se + 1e-9)
    back = twin.to_numpy()  # type: ignore[operator]
    for name, value in dist.unconstrained().items():
        np.testing.assert_allclose(back.unconstrained()[name], value, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family", families("torch", without=True))
def test_families_without_a_torch_twin_refuse_one(family: str) -> None:
    with pytest.raises(ValueError, match="no torch twin"):
        torch_twin(FACTORY[family](_rng(family)))


def _central_difference(dist, name: str, value: np.ndarray, f) -> np.ndarray:
    """``d f(dist) / d value`` coordinate by coordinate, ``f`` a scalar of the distribution."""
    out = np.zeros_like(value)
    for idx in np.ndindex(value.shape):
        step = np.zeros_like(value)
        step[idx] = 1e-6
        out[idx] = (
            f(dist.with_unconstrained({name: value + step}))
            - f(dist.with_unconstrained({name: value - step}))
        ) / 2e-6
    return out


@pytest.mark.parametrize("family", families("learn"))
def test_numpy_gradients_are_the_derivative_of_the_noise_driven_sampler(family: str) -> None:
    """The pull-back of dL/dx against a finite difference of the sampler at fixed noise (the mixture's
    straight-through rule: of the mixture mean, by construction)."""
    dist = FACTORY[family](_rng(family))
    noise = dist.draw_noise(_rng(family, "vjp"), 3)
    grad = _rng(family, "g").standard_normal((3, *SHAPE))
    got = dist.sample_vjp(dist.sample_from_noise(noise), grad, noise)
    if family == "basis_mixture":
        f, tol = (lambda d: np.sum(grad.sum(axis=0) * d.mean())), 1e-7
    else:
        f, tol = (lambda d: np.sum(grad * d.sample_from_noise(noise))), 1e-6
    for name, value in dist.unconstrained().items():
        np.testing.assert_allclose(got[name], _central_difference(dist, name, value, f), rtol=1e-5, atol=tol)
