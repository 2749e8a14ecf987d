"""Parity of every exported ONNX graph with its numpy reference, and the Beta construction's accuracy.

Relative error is measured per output tensor as ``max|onnx - ref| / max|ref|`` (inputs are float32, the
references run in float64 on the same float32 values); the issue's bound is 1e-5.
"""

from __future__ import annotations

import json
import math
import zlib

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from veil.client_sdk import Adam, BasisMixtureDistribution, GaussianDistribution, OnDeviceLearner
from veil.client_sdk.distributions.noise import (
    BetaConstruction,
    beta_construction_tv_bound,
    beta_sample_from_noise,
    beta_vjp_from_noise,
    gaussian_sample_from_noise,
    marsaglia_tsang_rejection,
    mixture_sample_from_noise,
)
from veil.client_sdk.policy_guard import PolicyGuard, tv_bound
from veil.client_sdk.runtime import load_graphs
from veil.client_sdk.runtime.reference import learner_update
from veil.models.onnx.export import export_onnx
from veil.models.onnx.graphs import GraphShapes, build_graphs

RTOL = 1e-5
CFG = BetaConstruction()


def f32(x: object) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.max(np.abs(np.asarray(got, np.float64) - ref)) / max(np.max(np.abs(ref)), 1e-30))


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("onnx")
    export_onnx(out)  # all families, symbolic shapes
    return load_graphs(out)


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))  # stable across processes


def _hyper(lr: float, max_grad_norm: float, prior_weight: float) -> dict[str, np.ndarray]:
    return {
        "lr": f32(lr),
        "beta1": f32(0.9),
        "beta2": f32(0.999),
        "eps": f32(1e-8),
        "max_grad_norm": f32(max_grad_norm),
        "prior_weight": f32(prior_weight),
    }


def _float32_betas(learner: OnDeviceLearner) -> None:
    """Give the float64 learner the graph's float32 betas: float32(0.999) shifts 1 - beta2 by 1.3e-5."""
    learner.optimizer.betas = (float(f32(0.9)), float(f32(0.999)))


def _state_feeds(names, anchor, m, v, t, hyper, trainable) -> dict:
    feeds = {f"anchor_{k}": f32(anchor[k]) for k in names}
    feeds |= {f"adam_m_{k}": f32(m[k]) for k in names} | {f"adam_v_{k}": f32(v[k]) for k in names}
    feeds |= {"adam_t": np.int64(t), **hyper, "trainable": np.array([k in trainable for k in names])}
    return feeds


# ---------------------------------------------------------------------------------------------- samplers
def test_gaussian_sampler_matches_reference(graphs, rng) -> None:
    n, d, batch = 3, 7, 5
    mean, log_std = f32(rng.normal(size=(n, d))), f32(rng.normal(-1, 0.5, (n, d)))
    normal = f32(rng.standard_normal((batch, n, d)))
    out = graphs["gaussian_sample"].run(mean=mean, log_std=log_std, normal=normal)["sample"]
    assert out.shape == (batch, n, d) and out.dtype == np.float32
    assert rel_err(out, gaussian_sample_from_noise(mean, log_std, normal)) < RTOL


def test_beta_sampler_matches_reference(graphs, rng) -> None:
    n, d, batch = 4, 6, 8
    logit, log_k = f32(rng.normal(0, 1.5, (n, d))), f32(rng.normal(1.5, 1.0, (n, d)))
    normal = f32(rng.standard_normal(CFG.normal_shape(batch, n, d)))
    uniform = f32(rng.random(CFG.uniform_shape(batch, n, d)))
    feeds = {"logit_mean": logit, "log_concentration": log_k, "normal": normal, "uniform": uniform}
    out = graphs["beta_sample"].run(feeds)["sample"]
    ref = beta_sample_from_noise(logit, log_k, normal, uniform, CFG)
    assert out.shape == (batch, n, d)
    assert float(np.max(np.abs(out - ref) / ref)) < RTOL  # elementwise relative, not only normwise


def test_mixture_sampler_matches_reference(graphs, rng) -> None:
    k, n, d, batch = 5, 2, 3, 64
    logits = f32(rng.normal(size=k))
    basis_mean, basis_log_std = f32(rng.normal(size=(k, n, d))), f32(rng.normal(-1, 0.3, (k, n, d)))
    uniform, normal = f32(rng.random((batch, k))), f32(rng.standard_normal((batch, n, d)))
    out = graphs["basis_mixture_sample"].run(
        logits=logits, basis_mean=basis_mean, basis_log_std=basis_log_std, uniform=uniform, normal=normal
    )
    ref, comp = mixture_sample_from_noise(logits, basis_mean, basis_log_std, uniform, normal)
    np.testing.assert_array_equal(out["component"], comp)
    assert len(set(comp.tolist())) > 1
    assert rel_err(out["sample"], ref) < RTOL


def test_gumbel_choice_follows_weights(graphs, rng) -> None:
    weights = np.array([0.6, 0.3, 0.1])
    batch = 20_000
    out = graphs["basis_mixture_sample"].run(
        logits=f32(np.log(weights)),
        basis_mean=np.zeros((3, 1, 1), np.float32),
        basis_log_std=np.zeros((3, 1, 1), np.float32),
        uniform=f32(rng.random((batch, 3))),
        normal=np.zeros((batch, 1, 1), np.float32),
    )
    freq = np.bincount(out["component"], minlength=3) / batch
    np.testing.assert_allclose(freq, weights, atol=4 * math.sqrt(0.25 / batch))


# ---------------------------------------------------------------------------------------------- Beta accuracy
@pytest.mark.parametrize(("alpha", "beta"), [(2.0, 5.0), (0.5, 0.5), (0.2, 3.0), (40.0, 10.0)])
def test_beta_construction_is_indistinguishable_from_exact_beta(graphs, rng, alpha, beta) -> None:
    """KS against the exact Beta CDF: a 1% error (a moment-matched approximation) would fail here."""
    batch = 40_000
    out = graphs["beta_sample"].run(
        logit_mean=f32([[math.log(alpha / beta)]]),
        log_concentration=f32([[math.log(alpha + beta)]]),
        normal=f32(rng.standard_normal(CFG.normal_shape(batch, 1, 1))),
        uniform=f32(rng.random(CFG.uniform_shape(batch, 1, 1))),
    )["sample"]
    ks = stats.kstest(out.ravel().astype(np.float64), stats.beta(alpha, beta).cdf)
    assert ks.statistic < 1.95 / math.sqrt(batch)  # p > 0.001


def test_beta_construction_tv_bound_over_a_grid() -> None:
    grid = [0.05, 0.3, 1.0, 2.0, 5.0, 50.0]
    bounds = [beta_construction_tv_bound(a, b) for a in grid for b in grid]
    assert max(bounds) < 3e-8
    assert beta_construction_tv_bound(2.0, 5.0) < 2e-9
    # fewer rounds and no boost beyond 1 must show up in the bound
    assert beta_construction_tv_bound(0.05, 0.05, BetaConstruction(rounds=1, boost=1)) > 0.05


def test_marsaglia_tsang_rejection_matches_monte_carlo() -> None:
    rng = np.random.default_rng(7)
    shape, n = 1.0, 1_000_000
    d = shape - 1 / 3
    c = 1 / math.sqrt(9 * d)
    z, u = rng.standard_normal(n), rng.random(n)
    v = (1 + c * z) ** 3
    with np.errstate(invalid="ignore", divide="ignore"):
        accept = (v > 0) & (np.log(u) < 0.5 * z * z + d - d * v + d * np.log(v))
    mc = 1 - accept.mean()
    assert abs(marsaglia_tsang_rejection(shape) - mc) < 4 * math.sqrt(mc * (1 - mc) / n)


def test_beta_vjp_is_the_derivative_of_the_construction(rng) -> None:
    n, d, batch = 2, 3, 4
    logit, log_k = rng.normal(0, 1, (n, d)), rng.normal(1.0, 0.5, (n, d))
    normal = rng.standard_normal(CFG.normal_shape(batch, n, d))
    uniform = rng.random(CFG.uniform_shape(batch, n, d))
    grad = rng.normal(size=(batch, n, d))
    vjp = beta_vjp_from_noise(logit, log_k, normal, uniform, grad)
    h = 1e-6
    for name, base in (("logit_mean", logit), ("log_concentration", log_k)):
        fd = np.zeros_like(base)
        for idx in np.ndindex(base.shape):
            plus, minus = base.copy(), base.copy()
            plus[idx] += h
            minus[idx] -= h
            args = {"logit_mean": logit, "log_concentration": log_k}
            hi = beta_sample_from_noise(**(args | {name: plus}), normal=normal, uniform=uniform)
            lo = beta_sample_from_noise(**(args | {name: minus}), normal=normal, uniform=uniform)
            fd[idx] = np.sum(grad * (hi - lo)) / (2 * h)
        np.testing.assert_allclose(vjp[name], fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize(("alpha", "beta"), [(2.0, 5.0), (0.5, 0.5)])
def test_beta_construction_gradient_is_unbiased_for_the_mean(alpha, beta) -> None:
    """E[d x / d theta] = d E[x] / d theta: ``m (1 - m)`` for the logit mean, 0 for log concentration."""
    rng = np.random.default_rng(11)
    count = 100_000
    # one batch element, ``count`` coordinates with the same parameters: the VJP's coordinates are then
    # independent per-sample gradients
    logit = np.full((1, count), math.log(alpha / beta))
    log_k = np.full((1, count), math.log(alpha + beta))
    normal = rng.standard_normal(CFG.normal_shape(1, 1, count))
    uniform = rng.random(CFG.uniform_shape(1, 1, count))
    grads = beta_vjp_from_noise(logit, log_k, normal, uniform, np.ones((1, 1, count)), CFG)
    m = alpha / (alpha + beta)
    for name, exact in (("logit_mean", m * (1 - m)), ("log_concentration", 0.0)):
        per_sample = grads[name].ravel()
        stderr = per_sample.std() / math.sqrt(count)
        assert abs(per_sample.mean() - exact) < 5 * stderr, name


# ---------------------------------------------------------------------------------------------- updates
@pytest.mark.parametrize(
    ("max_grad_norm", "prior_weight", "trainable"),
    [(math.inf, 0.0, ("mean", "log_std")), (0.5, 0.3, ("mean", "log_std")), (math.inf, 0.1, ("mean",))],
)
def test_gaussian_update_matches_on_device_learner(
    graphs, rng, max_grad_norm, prior_weight, trainable
) -> None:
    n, d, batch = 3, 4, 2
    prior = GaussianDistribution(f32(rng.normal(size=(n, d))), f32(np.exp(rng.normal(-0.5, 0.2, (n, d)))))
    clip = None if math.isinf(max_grad_norm) else max_grad_norm
    learner = OnDeviceLearner(
        prior, lr=0.05, trainable=trainable, max_grad_norm=clip, prior_weight=prior_weight
    )
    _float32_betas(learner)
    for _ in range(2):  # move away from the anchor and build up Adam state
        x = learner.distribution.sample(rng, size=batch)
        learner.step(x, rng.normal(size=x.shape))
    dist, opt = learner.distribution, learner.optimizer
    params = {k: f32(v) for k, v in dist.unconstrained().items()}
    names = ["mean", "log_std"]
    zeros = {k: np.zeros((n, d)) for k in names}
    x = f32(dist.sample(rng, size=batch))
    g = f32(rng.normal(size=x.shape) * 3)
    feeds = {**params, "sample": x, "grad": g}
    feeds |= _state_feeds(
        names,
        prior.unconstrained(),
        zeros | opt.m,
        zeros | opt.v,
        opt.t,
        _hyper(0.05, max_grad_norm, prior_weight),
        trainable,
    )
    out = graphs["gaussian_update"].run(feeds)
    learner.step(x, g)
    new = learner.distribution.unconstrained()
    for k in names:
        assert rel_err(out[f"new_{k}"], new[k]) < RTOL, k
        if k in trainable:
            assert rel_err(out[f"new_adam_m_{k}"], learner.optimizer.m[k]) < RTOL
            assert rel_err(out[f"new_adam_v_{k}"], learner.optimizer.v[k]) < RTOL
        else:
            np.testing.assert_array_equal(out[f"new_{k}"], params[k])
            np.testing.assert_array_equal(out[f"new_adam_m_{k}"], 0.0)
    assert int(out["new_adam_t"]) == learner.optimizer.t == 3


def test_beta_update_matches_reference(graphs, rng) -> None:
    n, d, batch = 3, 5, 3
    names = ["logit_mean", "log_concentration"]
    params = {
        "logit_mean": f32(rng.normal(size=(n, d))),
        "log_concentration": f32(rng.normal(1.5, 0.5, (n, d))),
    }
    anchor = {k: f32(v + rng.normal(0, 0.2, v.shape)) for k, v in params.items()}
    m = {k: f32(rng.normal(0, 0.05, (n, d))) for k in names}
    v = {k: f32(rng.random((n, d)) * 1e-3) for k in names}
    normal = f32(rng.standard_normal(CFG.normal_shape(batch, n, d)))
    uniform = f32(rng.random(CFG.uniform_shape(batch, n, d)))
    grad = f32(rng.normal(size=(batch, n, d)))
    hyper = _hyper(0.02, 0.8, 0.5)
    feeds = {**params, "normal": normal, "uniform": uniform, "grad": grad}
    feeds |= _state_feeds(names, anchor, m, v, 7, hyper, names)
    out = graphs["beta_update"].run(feeds)
    grads = beta_vjp_from_noise(params["logit_mean"], params["log_concentration"], normal, uniform, grad, CFG)
    h = {k: float(val) for k, val in hyper.items()}
    ref_p, ref_m, ref_v, ref_t = learner_update(
        params,
        grads,
        anchor=anchor,
        adam_m=m,
        adam_v=v,
        adam_t=7,
        lr=h["lr"],
        betas=(h["beta1"], h["beta2"]),
        eps=h["eps"],
        max_grad_norm=h["max_grad_norm"],
        prior_weight=h["prior_weight"],
    )
    for k in names:
        assert rel_err(out[f"new_{k}"], ref_p[k]) < RTOL
        assert rel_err(out[f"new_adam_m_{k}"], ref_m[k]) < RTOL
        assert rel_err(out[f"new_adam_v_{k}"], ref_v[k]) < RTOL
    assert int(out["new_adam_t"]) == ref_t == 8


def test_mixture_update_matches_on_device_learner(graphs, rng) -> None:
    k, n, d, batch = 4, 2, 3, 3
    basis = [GaussianDistribution(f32(rng.normal(size=(n, d))), np.full((n, d), 0.5)) for _ in range(k)]
    prior = BasisMixtureDistribution(basis, np.full(k, 1 / k))
    learner = OnDeviceLearner(prior, lr=0.1, prior_weight=0.2, max_grad_norm=1.0)
    _float32_betas(learner)
    learner.step(learner.distribution.sample(rng, size=batch), rng.normal(size=(batch, n, d)))
    dist, opt = learner.distribution, learner.optimizer
    logits = f32(dist.unconstrained()["logits"] + 3.0)  # any shift: the graph normalises
    g = f32(rng.normal(size=(batch, n, d)))
    feeds = {"logits": logits, "basis_mean": f32(dist.basis_means()), "grad": g}
    feeds |= _state_feeds(
        ["logits"], prior.unconstrained(), opt.m, opt.v, opt.t, _hyper(0.1, 1.0, 0.2), ["logits"]
    )
    out = graphs["basis_mixture_update"].run(feeds)
    learner.step(dist.sample(rng, size=batch), g)
    new_w = np.exp(out["new_logits"] - np.logaddexp.reduce(out["new_logits"].astype(np.float64)))
    assert rel_err(new_w, learner.distribution.weights) < RTOL
    assert rel_err(out["new_adam_m_logits"], learner.optimizer.m["logits"]) < RTOL
    assert rel_err(out["new_adam_v_logits"], learner.optimizer.v["logits"]) < RTOL


def test_learner_update_reference_equals_adam_on_first_step() -> None:
    params, grads = {"a": np.array([1.0, -2.0])}, {"a": np.array([0.3, -0.1])}
    zero = {"a": np.zeros(2)}
    new, m, v, t = learner_update(params, grads, anchor=params, adam_m=zero, adam_v=zero, adam_t=0, lr=0.1)
    expected = Adam(lr=0.1).step(params, grads)
    np.testing.assert_allclose(new["a"], expected["a"])
    assert t == 1 and np.all(m["a"] != 0)


# ---------------------------------------------------------------------------------------------- policy
def _gaussian_policy_feeds(mean, log_std, prior, max_tv, max_mu):
    return {
        "mean": f32(mean),
        "log_std": f32(log_std),
        "prior_mean": f32(prior.loc),
        "prior_log_std": f32(np.log(prior.std)),
        "max_tv": f32(max_tv),
        "max_gdp_mu": f32(max_mu),
    }


@pytest.mark.parametrize(
    ("shift", "std_change"), [(0.05, 0.0), (0.6, 0.0), (1e-3, 0.0), (0.2, 0.3), (1e-3, 1e-3)]
)
def test_gaussian_policy_matches_policy_guard(graphs, rng, shift, std_change) -> None:
    n, d = 3, 4
    prior = GaussianDistribution(f32(rng.normal(size=(n, d))), np.exp(f32(rng.normal(-0.5, 0.2, (n, d)))))
    prior_log_std = f32(np.log(prior.std))
    prior = GaussianDistribution(prior.loc, np.exp(prior_log_std.astype(np.float64)))
    mean = f32(prior.loc + shift * rng.normal(size=(n, d)))
    log_std = f32(prior_log_std + std_change * rng.normal(size=(n, d))) if std_change else prior_log_std
    dist = GaussianDistribution(mean, np.exp(log_std.astype(np.float64)))
    for max_tv, max_mu in ((0.3, 0.8), (math.inf, 0.8), (0.3, math.inf)):
        out = graphs["gaussian_policy"].run(_gaussian_policy_feeds(mean, log_std, prior, max_tv, max_mu))
        guard = PolicyGuard(
            prior,
            max_tv=None if math.isinf(max_tv) else max_tv,
            max_gdp_mu=None if math.isinf(max_mu) else max_mu,
        )
        assert rel_err(out["tv"], tv_bound(dist, prior)) < RTOL
        mu = PolicyGuard(prior, max_gdp_mu=1.0).check(dist).value  # the guard's measure: inf for other stds
        assert (math.isinf(mu) and np.isinf(out["gdp_mu"])) or rel_err(out["gdp_mu"], mu) < RTOL
        assert bool(out["ok"]) == guard.check(dist).ok


def test_mixture_policy_matches_policy_guard(graphs, rng) -> None:
    k = 5
    basis = [GaussianDistribution(np.zeros((1, 2)) + i, np.ones((1, 2))) for i in range(k)]
    prior = BasisMixtureDistribution(basis, rng.dirichlet(np.ones(k)))
    for scale in (0.05, 0.5, 3.0):
        logits = f32(np.log(prior.weights) + scale * rng.normal(size=k))
        dist = prior.with_unconstrained({"logits": logits})
        out = graphs["basis_mixture_policy"].run(
            logits=logits, prior_weights=f32(prior.weights), max_tv=f32(0.2)
        )
        assert rel_err(out["tv"], tv_bound(dist, prior)) < 1e-5
        assert bool(out["ok"]) == PolicyGuard(prior, max_tv=0.2).check(dist).ok


# ---------------------------------------------------------------------------------------------- export
def test_export_is_reproducible_and_opset_18_builds(tmp_path) -> None:
    shapes = GraphShapes(n_tokens=2, dim=8, n_basis=3)
    first = export_onnx(tmp_path / "a", ["gaussian", "beta"], shapes)
    second = export_onnx(tmp_path / "b", ["gaussian", "beta"], shapes)
    assert [e.sha256 for e in first.entries] == [e.sha256 for e in second.entries]
    assert [e.name for e in first.entries] == [
        "gaussian_sample",
        "gaussian_update",
        "gaussian_policy",
        "beta_sample",
        "beta_update",
    ]
    assert first.entry("beta_sample").input("normal").shape == ("batch", 2, CFG.rounds, 2, 8)
    text = (tmp_path / "a" / "manifest.json").read_text()
    assert "T" not in json.loads(text)["created_day"] and ":" not in json.loads(text)["created_day"]
    assert {g.model.opset_import[0].version for g in build_graphs(["basis_mixture"], opset=18)} == {18}


def test_build_graphs_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown families"):
        build_graphs(["dirichlet"])
    with pytest.raises(ValueError, match="opset"):
        build_graphs(["gaussian"], opset=12)
    with pytest.raises(ValueError, match="n_tokens"):
        GraphShapes(n_tokens=0)


def test_cli_export_onnx_json(tmp_path) -> None:
    import typer

    from veil.cli.onnx_export import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # typer collapses a single-command app into the bare command
    result = CliRunner().invoke(
        app,
        [
            "export-onnx",
            "--out",
            str(tmp_path),
            "--families",
            "gaussian",
            "--n-tokens",
            "2",
            "--dim",
            "4",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert sorted(data["bytes"]) == ["gaussian_policy", "gaussian_sample", "gaussian_update"]
    assert data["manifest"]["entries"][0]["inputs"][0] == {
        "name": "mean",
        "shape": [2, 4],
        "dtype": "float32",
    }
    bad = CliRunner().invoke(app, ["export-onnx", "--out", str(tmp_path), "--families", "dirichlet"])
    assert bad.exit_code != 0
