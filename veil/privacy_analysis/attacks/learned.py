"""A learned attributor: multinomial logistic regression trained on auxiliary labelled uploads.

Threat: the cloud obtained a share of the uploads together with their owners (a breach, a subpoena, a
colluding app) and trains a classifier from embedding to user, then applies it to the rest. Features
are the attacker's choice; the defaults make the Bayes rule of the families Veil ships reachable:
a diagonal Gaussian's log density is linear in ``(x, x^2)`` and a Beta's in ``(log x, log(1 - x))``,
so with those features logistic regression can converge to the known-parameters ceiling as the
auxiliary set grows. The model is fitted by L-BFGS (:func:`lbfgs`, numpy) on the L2-penalised mean cross-entropy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.sparse import issparse
from scipy.special import logsumexp

from veil.privacy_analysis.attacks.base import (
    AttackResult,
    as_features,
    check_aux,
    check_owners,
    make_result,
    matmul,
)
from veil.privacy_analysis.attacks.registry import Attack, AttackInput, register
from veil.privacy_analysis.attacks.selection import argmax_random_ties

__all__ = [
    "LearnedConfig",
    "SoftmaxModel",
    "embedding_features",
    "fit_softmax",
    "lbfgs",
    "learned_attack",
    "learned_log_posteriors",
]


@dataclass(frozen=True)
class LearnedConfig:
    """Settings of the learned attributor.

    Attributes
    ----------
    l2 : float
        L2 penalty ``l2 / 2 * ||W||^2`` on the standardised-feature weights and the biases (default 1e-2,
        the best of 1e-4..1e-1 for Gaussian and Beta populations of 5-20 users with 40 labelled uploads each).
    max_iter : int
        L-BFGS iterations (default 300).
    quadratic : bool
        Add the squares ``x^2`` of the embedding coordinates (default on).
    log_unit_interval : bool
        When all values lie strictly inside (0, 1), add ``log x`` and ``log(1 - x)`` (default on).
    """

    l2: float = 1e-2
    max_iter: int = 300
    quadratic: bool = True
    log_unit_interval: bool = True

    def __post_init__(self) -> None:
        if not self.l2 >= 0:
            raise ValueError(f"l2 must be >= 0, got {self.l2}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")


@dataclass(frozen=True)
class SoftmaxModel:
    """A fitted multinomial logistic regression on standardised features.

    Attributes
    ----------
    weights : ndarray ``(F, K)``; bias : ndarray ``(K,)``
    shift, scale : ndarray ``(F,)`` or None
        Feature standardisation learnt on the training set; None when fitted without it (sparse input).
    """

    weights: np.ndarray
    bias: np.ndarray
    shift: np.ndarray | None = None
    scale: np.ndarray | None = None

    def log_proba(self, features: Any) -> np.ndarray:
        """``(N, K)`` log posteriors of the K classes for ``features`` ``(N, F)`` (dense or scipy sparse)."""
        if self.shift is not None and self.scale is not None:
            features = (np.asarray(features) - self.shift) / self.scale
        logits = matmul(features, self.weights) + self.bias
        return logits - logsumexp(logits, axis=1, keepdims=True)


def fit_softmax(
    features: Any,
    labels: np.ndarray,
    k: int,
    l2: float = 1e-3,
    max_iter: int = 300,
    standardize: bool = True,
) -> SoftmaxModel:
    """Fit K-class logistic regression on ``features`` ``(N, F)`` and int ``labels`` ``(N,)`` by L-BFGS.

    Minimises ``mean_i -log softmax(z_i)[y_i] + l2 / 2 * (||W||^2 + ||b||^2)``, where ``z`` are the
    features standardised per column (``standardize=True``, dense input) or taken as they are (use this
    for scipy sparse input such as L2-normalised TF-IDF rows). Classes absent from ``labels`` are kept
    (their bias is pushed down, bounded by the penalty).

    Raises
    ------
    ValueError
        On empty or mismatched inputs, or labels outside ``[0, k)``.
    """
    f = features if issparse(features) else np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if f.ndim != 2 or f.shape[0] == 0 or y.shape != (f.shape[0],):
        raise ValueError(f"need features (N, F) and labels (N,) with N > 0, got {f.shape} and {y.shape}")
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"labels must be in [0, {k}), got range [{y.min()}, {y.max()}]")
    n, d = f.shape
    shift = scale = None
    z = f
    if standardize:
        if issparse(f):
            raise ValueError("standardize=True needs dense features; pass standardize=False for sparse ones")
        shift = f.mean(axis=0)
        std = f.std(axis=0)
        scale = np.where(std > 0, std, 1.0)
        z = (f - shift) / scale
    onehot = np.zeros((n, k))
    onehot[np.arange(n), y] = 1.0

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[: d * k].reshape(d, k), theta[d * k :]
        logits = matmul(z, w) + b  # (N, K)
        log_norm = logsumexp(logits, axis=1, keepdims=True)
        loss = float(np.mean(log_norm[:, 0] - logits[np.arange(n), y])) + 0.5 * l2 * _dot(theta, theta)
        g = (np.exp(logits - log_norm) - onehot) / n  # dloss/dlogits
        grad = np.concatenate([matmul(z.T, g).ravel(), g.sum(axis=0)]) + l2 * theta
        return loss, grad

    theta = lbfgs(objective, np.zeros(d * k + k), max_iter)
    return SoftmaxModel(theta[: d * k].reshape(d, k), theta[d * k :], shift, scale)


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    # einsum, not BLAS ddot: threaded level-1 BLAS calls crawl when the cores are shared with other work
    return float(np.einsum("i,i->", a, b))


def lbfgs(
    fun: Callable[[np.ndarray], tuple[float, np.ndarray]],
    x0: np.ndarray,
    max_iter: int,
    memory: int = 10,
    gtol: float = 1e-6,
    ftol: float = 1e-10,
) -> np.ndarray:
    """Minimise a smooth function by limited-memory BFGS (Nocedal & Wright, algorithms 7.4 and 7.5).

    Two-loop recursion for the direction, backtracking line search with the Armijo condition, pairs
    with non-positive curvature skipped. Written here rather than calling scipy's L-BFGS-B because that
    one makes many tiny multi-threaded BLAS calls that crawl on a busy 2-core machine.

    Returns the last iterate once the gradient's largest entry is below ``gtol``, an iteration lowers the
    loss by at most ``ftol * max(1, |loss|)``, or ``max_iter`` iterations have run.
    """
    x = np.array(x0, dtype=np.float64)
    f, g = fun(x)
    pairs: list[tuple[np.ndarray, np.ndarray, float]] = []
    for _ in range(max_iter):
        if np.max(np.abs(g)) < gtol:
            break
        q = g.copy()
        alphas = []
        for s, y, rho in reversed(pairs):
            a = rho * _dot(s, q)
            alphas.append(a)
            q -= a * y
        if pairs:
            s, y, _ = pairs[-1]
            q *= _dot(s, y) / _dot(y, y)
        else:
            q /= max(1.0, math.sqrt(_dot(g, g)))  # first step: unit length at most
        for (s, y, rho), a in zip(pairs, reversed(alphas), strict=True):
            q += s * (a - rho * _dot(y, q))
        direction = -q
        slope = _dot(g, direction)
        if slope >= 0:  # not a descent direction (numerical trouble): restart from steepest descent
            pairs.clear()
            direction, slope = -g, -_dot(g, g)
        step = 1.0
        while True:
            x_new = x + step * direction
            f_new, g_new = fun(x_new)
            if f_new <= f + 1e-4 * step * slope or step < 1e-12:
                break
            step *= 0.5
        s, y = x_new - x, g_new - g
        sy = _dot(s, y)
        if sy > 1e-10 * _dot(y, y):  # keep the pair only with clear positive curvature (scale-free test)
            pairs.append((s, y, 1.0 / sy))
            if len(pairs) > memory:
                pairs.pop(0)
        stalled = f - f_new <= ftol * max(1.0, abs(f))
        x, f, g = x_new, f_new, g_new
        if stalled:
            break
    return x


def embedding_features(uploads: np.ndarray, config: LearnedConfig | None = None) -> np.ndarray:
    """The attacker's features ``(N, F)`` of uploads ``(N, n_tokens, dim)`` or ``(N, dim)``."""
    cfg = config or LearnedConfig()
    x = as_features(uploads)
    parts = [x]
    if cfg.quadratic:
        parts.append(x * x)
    if cfg.log_unit_interval and np.all((x > 0) & (x < 1)):
        parts.extend([np.log(x), np.log1p(-x)])
    return np.concatenate(parts, axis=1)


def learned_log_posteriors(
    uploads: np.ndarray, owners: np.ndarray, k: int, aux: np.ndarray, config: LearnedConfig | None = None
) -> tuple[np.ndarray, SoftmaxModel]:
    """Train on the uploads where ``aux`` is true; return ``(N_eval, K)`` log posteriors of the others."""
    cfg = config or LearnedConfig()
    feats = embedding_features(uploads, cfg)
    o = check_owners(owners, feats.shape[0], k)
    aux = check_aux(aux, o.size)
    model = fit_softmax(feats[aux], o[aux], k, cfg.l2, cfg.max_iter)
    return model.log_proba(feats[~aux]), model


def learned_attack(
    uploads: np.ndarray, owners: np.ndarray, k: int, aux: np.ndarray, config: LearnedConfig | None = None
) -> AttackResult:
    """Train on the auxiliary uploads (``aux`` mask ``(N,)``), attribute the rest to ``argmax`` posterior.

    Returns
    -------
    AttackResult
        ``name="learned_attributor"``, evaluated on the non-auxiliary uploads; details ``n_aux``,
        ``train_accuracy`` and ``eval_log_loss`` (mean negative log posterior of the true user, nats).
    """
    cfg = config or LearnedConfig()
    feats = embedding_features(uploads, cfg)
    o = check_owners(owners, feats.shape[0], k)
    aux = check_aux(aux, o.size)
    model = fit_softmax(feats[aux], o[aux], k, cfg.l2, cfg.max_iter)
    log_post = model.log_proba(feats[~aux])
    truth = o[~aux]
    predictions = np.full(o.size, -1, dtype=np.int64)
    predictions[~aux] = log_post.argmax(axis=1)
    details = {
        "n_aux": int(aux.sum()),
        "train_accuracy": float(np.mean(model.log_proba(feats[aux]).argmax(axis=1) == o[aux])),
        "eval_log_loss": float(-np.mean(log_post[np.arange(truth.size), truth])),
    }
    return make_result("learned_attributor", o, predictions, k, details)


def _learned_random_ties(inp: AttackInput, config: LearnedConfig) -> AttackResult:
    """The attributor's model with ties broken at random from ``inp.rng`` (details ``n_aux``, ``eval_log_loss``)."""
    o, aux = inp.owners, np.asarray(inp.aux)
    log_post, _ = learned_log_posteriors(inp.uploads, o, inp.k, aux, config)
    predictions = np.full(o.size, -1, dtype=np.int64)
    predictions[~aux] = argmax_random_ties(log_post, inp.rng)
    loss = float(-np.mean(log_post[np.arange(log_post.shape[0]), o[~aux]]))
    details = {"n_aux": int(aux.sum()), "eval_log_loss": loss}
    return make_result("learned_attributor", o, predictions, inp.k, details)


def _run(inp: AttackInput, config: LearnedConfig) -> AttackResult:
    inp.require("learned_attributor", "aux")
    if inp.tie_break == "random":
        return _learned_random_ties(inp, config)
    return learned_attack(inp.uploads, inp.owners, inp.k, inp.aux, config)  # type: ignore[arg-type]


register(Attack("learned_attributor", LearnedConfig, _run))
