from __future__ import annotations

import numpy as np
import pytest
from attack_populations import draw_uploads, population
from scipy.special import log_softmax

from veil.privacy_analysis.attacks.base import stratified_split
from veil.privacy_analysis.attacks.bayes import bayes_log_posteriors
from veil.privacy_analysis.attacks.learned import (
    LearnedConfig,
    embedding_features,
    fit_softmax,
    lbfgs,
    learned_attack,
)


def test_lbfgs_solves_an_ill_conditioned_quadratic() -> None:
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    a = q @ np.diag(np.logspace(0, 3, 30)) @ q.T
    b = rng.normal(size=30)

    def f(x: np.ndarray) -> tuple[float, np.ndarray]:
        return 0.5 * float(x @ a @ x) - float(b @ x), a @ x - b

    np.testing.assert_allclose(
        lbfgs(f, np.zeros(30), max_iter=500, gtol=1e-10, ftol=0.0), np.linalg.solve(a, b), atol=1e-6
    )


def test_softmax_fit_is_the_penalised_likelihood_optimum() -> None:
    # At the optimum the gradient of the naive objective vanishes; check it by central differences.
    rng = np.random.default_rng(1)
    x, y, k, l2 = rng.normal(size=(60, 3)), rng.integers(3, size=60), 3, 0.05
    model = fit_softmax(x, y, k, l2=l2, max_iter=500)
    z = (x - model.shift) / model.scale

    def objective(theta: np.ndarray) -> float:
        w, b = theta[:9].reshape(3, 3), theta[9:]
        return float(-np.mean(log_softmax(z @ w + b, axis=1)[np.arange(60), y]) + 0.5 * l2 * theta @ theta)

    theta = np.concatenate([model.weights.ravel(), model.bias])
    eps = 1e-6
    grad = [(objective(theta + eps * e) - objective(theta - eps * e)) / (2 * eps) for e in np.eye(theta.size)]
    assert np.max(np.abs(grad)) < 1e-5
    np.testing.assert_allclose(np.exp(model.log_proba(x)).sum(axis=1), 1.0)


@pytest.mark.parametrize("family", ["gaussian", "beta"])
def test_learned_attributor_approaches_the_ceiling_with_much_labelled_data(family: str) -> None:
    # Its features make the Bayes rule reachable, so with many labels it should nearly match it.
    rng = np.random.default_rng(2)
    dists = population(family, 4, 1, 3, 0.6, rng)
    uploads, owners = draw_uploads(dists, 4000, rng)
    aux = stratified_split(owners, 0.75, rng)
    res = learned_attack(uploads, owners, 4, aux)
    bayes = np.mean(bayes_log_posteriors(dists, uploads[~aux]).argmax(axis=1) == owners[~aux])
    assert bayes - 0.03 < res.accuracy < bayes + 0.03
    assert res.details["n_aux"] == aux.sum() and res.details["n_eval"] == (~aux).sum()
    assert np.all(res.predictions[aux] == -1) and np.all(res.predictions[~aux] >= 0)


def test_features_add_squares_and_logs_on_the_unit_interval() -> None:
    x = np.array([[0.2, 0.5], [0.9, 0.1]])
    f = embedding_features(x)
    np.testing.assert_allclose(f, np.hstack([x, x**2, np.log(x), np.log1p(-x)]))
    assert embedding_features(x + 1.0).shape == (2, 4)  # not in (0, 1): no logs
    assert embedding_features(x, LearnedConfig(quadratic=False, log_unit_interval=False)).shape == (2, 2)


def test_stratified_split_gives_each_user_both_parts() -> None:
    rng = np.random.default_rng(3)
    owners = np.repeat(np.arange(5), [2, 3, 10, 50, 1])
    aux = stratified_split(owners, 0.2, rng)
    for user, n in enumerate([2, 3, 10, 50, 1]):
        taken = int(aux[owners == user].sum())
        assert taken == {2: 1, 3: 1, 10: 2, 50: 10, 1: 0}[n]
    with pytest.raises(ValueError, match="aux_fraction"):
        stratified_split(owners, 1.0, rng)
    with pytest.raises(ValueError, match="no auxiliary"):
        stratified_split(np.arange(4), 0.5, rng)


def test_learned_inputs_are_validated() -> None:
    x, o = np.zeros((4, 2)), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="aux must be"):
        learned_attack(x, o, 2, np.ones(4, dtype=bool))
    with pytest.raises(ValueError, match="aux must be"):
        learned_attack(x, o, 2, np.array([1, 0, 1, 0]))
    with pytest.raises(ValueError, match="labels must be"):
        fit_softmax(x, np.array([0, 1, 2, 0]), 2)
    with pytest.raises(ValueError, match="l2"):
        LearnedConfig(l2=-1.0)
