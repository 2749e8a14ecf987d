"""``OnDeviceLearner(prior_weight=...)``: the pull of the private parameters toward their start."""

from __future__ import annotations

import numpy as np
import pytest

from veil.client_sdk import Adam, BetaDistribution, GaussianDistribution, OnDeviceLearner, UserDistribution

SHAPE = (2, 3)


def _push(learner: OnDeviceLearner, steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Feed a constant dL/dx = -1 (every sample should be larger) and return the unconstrained params."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        x = learner.distribution.sample(rng, 4)
        learner.step(x, -np.ones_like(x))
    return learner.distribution.unconstrained()


def _distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray], key: str) -> float:
    return float(np.linalg.norm(a[key] - b[key]))


@pytest.mark.parametrize(
    ("dist", "key"),
    [
        (GaussianDistribution(np.zeros(SHAPE), np.full(SHAPE, 0.5)), "mean"),
        (BetaDistribution.from_mean_concentration(np.full(SHAPE, 0.3), np.full(SHAPE, 20.0)), "logit_mean"),
    ],
    ids=["gaussian", "beta"],
)
def test_positive_prior_weight_ends_closer_to_the_start(dist: UserDistribution, key: str) -> None:
    start = dist.unconstrained()
    free = _push(OnDeviceLearner(dist, lr=0.05, trainable=[key]), steps=150)
    pulled = _push(OnDeviceLearner(dist, lr=0.05, trainable=[key], prior_weight=5.0), steps=150)
    # both moved in the direction the gradient asks for ...
    assert np.all(free[key] > start[key]) and np.all(pulled[key] > start[key])
    # ... but the prior holds the pulled one much nearer to where it began
    assert _distance(pulled, start, key) < 0.5 * _distance(free, start, key)
    # parameters outside ``trainable`` are neither trained nor pulled
    for other in set(start) - {key}:
        np.testing.assert_array_equal(pulled[other], start[other])


def test_prior_settles_where_the_pull_balances_a_constant_gradient() -> None:
    """Loss gradient g = -n (n samples of dL/dx = -1 summed) plus lambda * (mean - mean_0) vanishes at
    mean_0 + n / lambda; without the prior Adam walks on by lr per step."""
    dist = GaussianDistribution(np.full(SHAPE, 0.1), np.full(SHAPE, 0.5))
    lam, n = 8.0, 4
    free = _push(OnDeviceLearner(dist, lr=0.05, trainable=["mean"]), steps=400)
    pulled = _push(OnDeviceLearner(dist, lr=0.05, trainable=["mean"], prior_weight=lam), steps=400)
    np.testing.assert_allclose(pulled["mean"], 0.1 + n / lam, atol=0.05)
    np.testing.assert_allclose(free["mean"], 0.1 + 400 * 0.05, rtol=1e-6)


def test_prior_gradient_is_lambda_times_offset() -> None:
    """Pin the update to the naive formula: Adam on ``sample_vjp + lambda * (theta - theta_0)``."""
    rng = np.random.default_rng(3)
    dist = GaussianDistribution(rng.normal(size=SHAPE), np.full(SHAPE, 0.7))
    lam = 0.6
    learner = OnDeviceLearner(dist, lr=0.1, prior_weight=lam)
    ref_opt = Adam(lr=0.1)
    theta0 = dist.unconstrained()
    theta = {k: v.copy() for k, v in theta0.items()}
    for _ in range(5):
        x = learner.distribution.sample(rng, 3)
        g = rng.normal(size=x.shape)
        vjp = learner.distribution.sample_vjp(x, g)
        theta = ref_opt.step(theta, {k: vjp[k] + lam * (theta[k] - theta0[k]) for k in theta})
        learner.step(x, g)
        got = learner.distribution.unconstrained()
        for k in theta:
            np.testing.assert_allclose(got[k], theta[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("weight", [-0.1, float("nan"), float("inf"), -float("inf")])
def test_bad_prior_weight_is_rejected(weight: float) -> None:
    with pytest.raises(ValueError, match="prior_weight"):
        OnDeviceLearner(GaussianDistribution(np.zeros(SHAPE), np.ones(SHAPE)), prior_weight=weight)
