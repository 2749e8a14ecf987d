"""Numpy Adam and on-device learning from returned embedding gradients."""

from __future__ import annotations

import numpy as np
import pytest

from veil.client_sdk import (
    Adam,
    BasisMixtureDistribution,
    BetaDistribution,
    GaussianDistribution,
    OnDeviceLearner,
    UserDistribution,
)

SHAPE = (2, 4)


def naive_adam(theta: float, grads: list[float], lr: float, b1: float, b2: float, eps: float) -> list[float]:
    """Scalar Adam written straight from Kingma & Ba, Algorithm 1."""
    m = v = 0.0
    out = []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        theta -= lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        out.append(theta)
    return out


def test_adam_matches_naive_formula_and_leaves_inputs_alone() -> None:
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(6, 3))
    opt = Adam(lr=0.1, betas=(0.8, 0.99), eps=1e-6)
    params = {"w": np.array([1.0, -2.0, 0.5]), "frozen": np.ones(2)}
    start = {k: v.copy() for k, v in params.items()}
    history = []
    for g in grads:
        new = opt.step(params, {"w": g})
        for key, value in start.items():
            if key == "frozen":
                np.testing.assert_array_equal(new[key], value)
        history.append(new["w"])
        params = new
    for i in range(3):
        ref = naive_adam(start["w"][i], list(grads[:, i]), 0.1, 0.8, 0.99, 1e-6)
        np.testing.assert_allclose([h[i] for h in history], ref, rtol=1e-12)


def test_adam_state_dict_resumes_identically() -> None:
    rng = np.random.default_rng(1)
    grads = [{"w": rng.normal(size=4)} for _ in range(6)]
    a, params_a = Adam(lr=0.05), {"w": np.zeros(4)}
    for g in grads[:3]:
        params_a = a.step(params_a, g)
    b = Adam()
    b.load_state_dict(a.state_dict())
    params_b = {k: v.copy() for k, v in params_a.items()}
    for g in grads[3:]:
        params_a, params_b = a.step(params_a, g), b.step(params_b, g)
    np.testing.assert_array_equal(params_a["w"], params_b["w"])


@pytest.mark.parametrize(
    "kwargs",
    [{"lr": 0.0}, {"lr": float("nan")}, {"betas": (0.9, 1.0)}, {"betas": (-0.1, 0.9)}, {"eps": 0.0}],
)
def test_adam_rejects_bad_hyperparameters(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="must"):
        Adam(**kwargs)


def test_adam_rejects_bad_gradients() -> None:
    opt = Adam()
    with pytest.raises(ValueError, match="unknown"):
        opt.step({"w": np.zeros(2)}, {"v": np.zeros(2)})
    with pytest.raises(ValueError, match="shape"):
        opt.step({"w": np.zeros(2)}, {"w": np.zeros(3)})
    with pytest.raises(ValueError, match="finite"):
        opt.step({"w": np.zeros(2)}, {"w": np.array([0.0, np.nan])})


def _expected_loss(dist: UserDistribution, target: np.ndarray, rng: np.random.Generator) -> float:
    x = dist.sample(rng, 4000)
    return float(np.mean(np.sum((x - target) ** 2, axis=(-2, -1))))


def _train(dist: UserDistribution, target: np.ndarray, steps: int, **kwargs) -> OnDeviceLearner:
    """Gradient-return loop: sample, let the 'cloud' compute dL/dx of ||x - target||^2, update."""
    rng = np.random.default_rng(0)
    learner = OnDeviceLearner(dist, **kwargs)
    for _ in range(steps):
        x = learner.distribution.sample(rng, 8)
        learner.step(x, 2.0 * (x - target))
    return learner


@pytest.mark.parametrize(
    "dist",
    [
        BetaDistribution(np.full(SHAPE, 2.0), np.full(SHAPE, 5.0)),
        GaussianDistribution(np.zeros(SHAPE), np.ones(SHAPE)),
    ],
    ids=["beta", "gaussian"],
)
def test_learner_moves_distribution_toward_target(dist: UserDistribution) -> None:
    target = np.full(SHAPE, 0.8)
    rng = np.random.default_rng(5)
    before = _expected_loss(dist, target, rng)
    learner = _train(dist, target, steps=150)
    after = _expected_loss(learner.distribution, target, rng)
    assert after < 0.25 * before
    np.testing.assert_allclose(learner.distribution.mean(), target, atol=0.1)


def test_learner_moves_mixture_mean_toward_target() -> None:
    """The straight-through-mean estimator follows the gradient of the mixture mean only: it drives
    ``m(w)`` to the target, not the whole law (any ``w`` with ``m(w) = target`` is a fixed point)."""
    basis = [GaussianDistribution(np.full(SHAPE, float(c)), np.full(SHAPE, 0.3)) for c in (0.0, 1.0, 3.0)]
    dist = BasisMixtureDistribution(basis, [0.6, 0.2, 0.2])
    target = np.full(SHAPE, 1.0)
    learner = _train(dist, target, steps=150, lr=0.1)
    np.testing.assert_allclose(learner.distribution.mean(), target, atol=0.05)
    assert learner.distribution.weights[1] > dist.weights[1]
    rng = np.random.default_rng(1)
    assert _expected_loss(learner.distribution, target, rng) < 0.7 * _expected_loss(dist, target, rng)


def test_learner_trains_only_the_trainable_subset_and_clips() -> None:
    dist = GaussianDistribution(np.zeros(SHAPE), np.full(SHAPE, 0.5))
    learner = _train(dist, np.ones(SHAPE), steps=10, trainable=["mean"], max_grad_norm=0.1)
    np.testing.assert_array_equal(learner.distribution.std, dist.std)
    assert not np.allclose(learner.distribution.loc, dist.loc)
    m = learner.optimizer.state_dict()["m"]
    assert set(m) == {"mean"}
    # m is an average of clipped gradients, so its norm is bounded by the clip threshold.
    assert np.linalg.norm(m["mean"]) <= 0.1 + 1e-12


@pytest.mark.parametrize(
    "kwargs",
    [{"trainable": ["alpha"]}, {"trainable": []}, {"max_grad_norm": 0.0}, {"lr": -1.0}],
)
def test_learner_rejects_bad_configuration(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="must"):
        OnDeviceLearner(GaussianDistribution(np.zeros(SHAPE), np.ones(SHAPE)), **kwargs)


def test_learner_rejects_non_distribution() -> None:
    with pytest.raises(ValueError, match="UserDistribution"):
        OnDeviceLearner(object())  # type: ignore[arg-type]
