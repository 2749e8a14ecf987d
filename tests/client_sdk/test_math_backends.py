"""Math backends of the reference client: the ONNX graphs (exported here) against the numpy reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from veil.client_sdk import BasisMixtureDistribution, BetaDistribution, GaussianDistribution
from veil.client_sdk.distributions.noise import beta_sample_from_noise, beta_vjp_from_noise
from veil.client_sdk.math_backends import Draw, LearningConfig, NumpyBackend, OnnxBackend
from veil.client_sdk.param_store import ClientState
from veil.client_sdk.policy_guard import PolicyGuard
from veil.client_sdk.runtime import ModelFileError
from veil.client_sdk.runtime.reference import learner_update

SHAPE = (2, 3)
RTOL, ATOL = 1e-5, 1e-6  # float32 graphs against float64 references


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx")
    from veil.models.onnx.export import export_onnx
    from veil.models.onnx.graphs import GraphShapes

    out = tmp_path_factory.mktemp("graphs")
    export_onnx(out, shapes=GraphShapes(n_tokens=SHAPE[0], dim=SHAPE[1], n_basis=3))
    return out


def gaussian(mean: float = 0.0, std: float = 0.5) -> GaussianDistribution:
    rng = np.random.default_rng(int(mean * 10) + 1)
    return GaussianDistribution(mean + 0.1 * rng.standard_normal(SHAPE), np.full(SHAPE, std))


def mixture(weights: list[float]) -> BasisMixtureDistribution:
    return BasisMixtureDistribution([gaussian(float(i), 0.3 + 0.1 * i) for i in range(3)], weights)


def test_gaussian_graphs_match_the_numpy_backend(graphs: Path) -> None:
    cfg = LearningConfig(lr=0.1, max_grad_norm=2.0)
    onnx_b, numpy_b = OnnxBackend(graphs, "gaussian", cfg), NumpyBackend(cfg)
    s_onnx = s_numpy = ClientState(gaussian())
    rng = np.random.default_rng(5)
    for step in range(5):
        seed = int(rng.integers(1 << 31))
        d_onnx = onnx_b.sample(s_onnx.distribution, np.random.default_rng(seed))
        d_numpy = numpy_b.sample(s_numpy.distribution, np.random.default_rng(seed))
        np.testing.assert_allclose(d_onnx.value, d_numpy.value, rtol=RTOL, atol=ATOL)
        grad = rng.standard_normal(SHAPE)
        s_onnx = onnx_b.update(s_onnx, d_onnx, grad)
        s_numpy = numpy_b.update(s_numpy, Draw(d_onnx.value), grad)
        for a, b in zip(
            s_onnx.distribution._arrays().values(), s_numpy.distribution._arrays().values(), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
        assert s_onnx.optimizer["t"] == s_numpy.optimizer["t"] == step + 1
        for moment in ("m", "v"):
            for k, v in s_numpy.optimizer[moment].items():
                np.testing.assert_allclose(s_onnx.optimizer[moment][k], v, rtol=RTOL, atol=ATOL)


def test_beta_graphs_match_the_construction_reference(graphs: Path) -> None:
    backend = OnnxBackend(graphs, "beta", LearningConfig(lr=0.05))
    dist = BetaDistribution(np.full(SHAPE, 2.0), np.full(SHAPE, 5.0))
    draw = backend.sample(dist, np.random.default_rng(3))
    p = dist.unconstrained()
    ref = beta_sample_from_noise(
        p["logit_mean"], p["log_concentration"], draw.noise["normal"], draw.noise["uniform"]
    )
    np.testing.assert_allclose(draw.value, ref[0], rtol=RTOL, atol=ATOL)
    grad = np.random.default_rng(4).standard_normal(SHAPE)
    new = backend.update(ClientState(dist), draw, grad)
    grads = beta_vjp_from_noise(
        p["logit_mean"], p["log_concentration"], draw.noise["normal"], draw.noise["uniform"], grad[None]
    )
    zeros = {k: np.zeros(SHAPE) for k in p}
    expected, _, _, t = learner_update(p, grads, anchor=p, adam_m=zeros, adam_v=zeros, adam_t=0, lr=0.05)
    got = new.distribution.unconstrained()
    for k in p:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-4, atol=1e-5)
    assert new.optimizer["t"] == t == 1


def test_mixture_graphs_match_the_numpy_backend(graphs: Path) -> None:
    dist = mixture([0.2, 0.3, 0.5])
    backend, reference = OnnxBackend(graphs, "basis_mixture"), NumpyBackend()
    draw = backend.sample(dist, np.random.default_rng(0))
    comps = [c for c in dist.basis]
    assert min(float(np.abs(draw.value - c.loc).max()) for c in comps) < 5 * 0.5  # near one component's mean
    grad = np.random.default_rng(1).standard_normal(SHAPE)
    a = backend.update(ClientState(dist), draw, grad).distribution.weights
    b = reference.update(ClientState(dist), draw, grad).distribution.weights
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("family", ["gaussian", "basis_mixture"])
def test_policy_graphs_agree_with_the_guard_and_updates_stay_inside(graphs: Path, family: str) -> None:
    if family == "gaussian":
        prior = gaussian(0.0, 0.5)
        guard = PolicyGuard(prior, max_tv=0.6, max_gdp_mu=1.5)
        cases = [prior, gaussian(0.3, 0.5), gaussian(2.0, 0.5), gaussian(0.1, 0.7)]
    else:
        prior = mixture([1 / 3, 1 / 3, 1 / 3])
        guard = PolicyGuard(prior, max_tv=0.2)
        cases = [prior, mixture([0.3, 0.3, 0.4]), mixture([0.8, 0.1, 0.1])]
    backend = OnnxBackend(graphs, family, LearningConfig(lr=0.5), guard)
    for dist in cases:
        got, want = backend.check(dist), guard.check(dist)
        assert got.ok == want.ok and got.measure == want.measure, (got, want)
        assert got.value == pytest.approx(want.value, rel=1e-4, abs=1e-6) or got.value == want.value
    assert not all(backend.check(d).ok for d in cases) and backend.check(prior).ok
    state = ClientState(prior)
    rng = np.random.default_rng(2)
    for _ in range(15):  # gradients pushing away from the prior
        draw = backend.sample(state.distribution, rng)
        state = backend.update(state, draw, -np.ones(SHAPE) * 5)
        assert backend.check(state.distribution).ok and guard.check(state.distribution).ok


def test_beta_policy_falls_back_to_the_numpy_guard(graphs: Path) -> None:
    prior = BetaDistribution(np.full(SHAPE, 2.0), np.full(SHAPE, 2.0))
    guard = PolicyGuard(prior, max_tv=0.3)
    backend = OnnxBackend(graphs, "beta", guard=guard)
    far = BetaDistribution(np.full(SHAPE, 9.0), np.full(SHAPE, 1.0))
    assert backend.check(prior).ok and not backend.check(far).ok


def test_bad_graphs_and_arguments_are_refused(graphs: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "graphs"
    shutil.copytree(graphs, copy)
    data = bytearray((copy / "gaussian_update.onnx").read_bytes())
    data[-5] ^= 0x01
    (copy / "gaussian_update.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="sha256"):
        OnnxBackend(copy, "gaussian")
    with pytest.raises(ModelFileError):
        OnnxBackend(tmp_path / "nowhere", "gaussian")
    with pytest.raises(ValueError, match="family"):
        OnnxBackend(graphs, "dirichlet")
    with pytest.raises(ValueError, match="trainable"):
        OnnxBackend(graphs, "gaussian", LearningConfig(trainable=("alpha",)))
    with pytest.raises(ValueError, match="prior"):
        OnnxBackend(graphs, "gaussian", guard=PolicyGuard(mixture([0.2, 0.3, 0.5]), max_tv=0.5))
    backend = OnnxBackend(graphs, "gaussian")
    with pytest.raises(ValueError, match="gaussian"):
        backend.sample(BetaDistribution(np.ones(SHAPE), np.ones(SHAPE)), np.random.default_rng(0))
