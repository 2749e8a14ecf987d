"""Unsupervised linkage of the pooled upload stream: k-means and a diagonal Gaussian mixture fitted by EM.

The cloud knows no parameters and no owners; it only suspects the stream is a mixture of K users
(IDfree-PL, arXiv:2501.06062: Q = sum_k pi_k P_k) and tries to recover the components. Both attacks are
told the true number of users K (generous to the attacker) and scored against the true owners by
:func:`veil.privacy_analysis.linkage.name_clusters` (Hungarian-matched accuracy), the adjusted Rand
index and pairwise linkage precision and recall.

Since the clustering never sees the owners, its expected matched accuracy for any fixed naming of the
clusters is at most the Bayes ceiling on the same uploads; only the naming (chosen with hindsight from
K! permutations) can lift it a little above by chance on a finite sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import logsumexp

from veil.privacy_analysis.attacks.base import (
    AttackResult,
    as_features,
    check_owners,
    make_result,
    matmul,
    prepare_features,
)
from veil.privacy_analysis.attacks.registry import Attack, AttackInput, register
from veil.privacy_analysis.linkage import (
    adjusted_rand_index,
    kmeans,
    kmeans_inertia,
    name_clusters,
    pairwise_precision_recall,
)

__all__ = [
    "GMMConfig",
    "GMMFit",
    "KMeansConfig",
    "fit_diagonal_gmm",
    "gmm_linkage_attack",
    "kmeans_linkage_attack",
    "score_clustering",
]

_LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True)
class KMeansConfig:
    """k-means linkage settings.

    Attributes
    ----------
    n_init : int
        Restarts from fresh k-means++ seeds; the one with the lowest inertia is kept (default 4).
    iters : int
        Maximum Lloyd iterations per restart (default 100).
    standardize, logit_unit_interval : bool
        Attacker preprocessing, see :func:`~veil.privacy_analysis.attacks.base.prepare_features` (default on).
    """

    n_init: int = 4
    iters: int = 100
    standardize: bool = True
    logit_unit_interval: bool = True

    def __post_init__(self) -> None:
        if self.n_init < 1 or self.iters < 1:
            raise ValueError(f"n_init and iters must be >= 1, got {self.n_init} and {self.iters}")


@dataclass(frozen=True)
class GMMConfig:
    """Diagonal Gaussian mixture (EM) linkage settings.

    Attributes
    ----------
    n_init : int
        Restarts, each initialised from a k-means run with its own seeds; the fit with the highest
        log-likelihood is kept (default 4).
    max_iter : int
        Maximum EM iterations per restart (default 200).
    tol : float
        Stop when the mean log-likelihood per upload improves by less than ``tol`` (default 1e-6).
    var_floor : float
        Lower bound on every component variance, relative to the pooled variance of that coordinate
        (default 1e-6). It keeps the likelihood bounded when a component collapses onto a point; clamping
        is the exact constrained M-step, so EM stays monotone.
    standardize, logit_unit_interval : bool
        Attacker preprocessing, see :func:`~veil.privacy_analysis.attacks.base.prepare_features` (default on).
    """

    n_init: int = 4
    max_iter: int = 200
    tol: float = 1e-6
    var_floor: float = 1e-6
    standardize: bool = True
    logit_unit_interval: bool = True

    def __post_init__(self) -> None:
        if self.n_init < 1 or self.max_iter < 1:
            raise ValueError(f"n_init and max_iter must be >= 1, got {self.n_init} and {self.max_iter}")
        if not self.tol >= 0:
            raise ValueError(f"tol must be >= 0, got {self.tol}")
        if not self.var_floor > 0:
            raise ValueError(f"var_floor must be > 0, got {self.var_floor}")


@dataclass(frozen=True)
class GMMFit:
    """A fitted diagonal mixture (in the coordinates it was fitted in) and its EM trace.

    Attributes
    ----------
    weights : ndarray ``(K,)``; means, variances : ndarray ``(K, D)``
    labels : ndarray ``(N,)``
        Most responsible component of every point.
    log_likelihood : float
        Final mean log-likelihood per point.
    history : ndarray ``(n_iter,)``
        Mean log-likelihood per point after every E-step; non-decreasing.
    converged : bool
    """

    weights: np.ndarray
    means: np.ndarray
    variances: np.ndarray
    labels: np.ndarray
    log_likelihood: float
    history: np.ndarray
    converged: bool


def _log_joint(x: np.ndarray, w: np.ndarray, mu: np.ndarray, var: np.ndarray) -> np.ndarray:
    """``(N, K)`` log w_k + log N(x_i; mu_k, diag var_k), by expanding the square (no N*K*D array)."""
    inv = 1.0 / var  # (K, D)
    quad = matmul(x * x, inv.T) - 2.0 * matmul(x, (mu * inv).T) + np.sum(mu * mu * inv, axis=1)[None, :]
    log_det = np.sum(np.log(var), axis=1) + x.shape[1] * _LOG_2PI  # (K,)
    with np.errstate(divide="ignore"):  # an emptied component has weight 0: log 0 = -inf is intended
        return np.log(w)[None, :] - 0.5 * (quad + log_det[None, :])


def _m_step(
    x: np.ndarray, resp: np.ndarray, floor: np.ndarray, old: tuple[np.ndarray, np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nk = resp.sum(axis=0)  # (K,)
    alive = nk > 1e-12
    safe = np.where(alive, nk, 1.0)[:, None]
    mu = matmul(resp.T, x) / safe
    var = matmul(resp.T, x * x) / safe - mu * mu
    if old is not None:  # an empty component keeps its parameters (its weight is 0, so EM stays monotone)
        mu = np.where(alive[:, None], mu, old[0])
        var = np.where(alive[:, None], var, old[1])
    return nk / nk.sum(), mu, np.maximum(var, floor[None, :])


def _em(x: np.ndarray, init_labels: np.ndarray, k: int, floor: np.ndarray, cfg: GMMConfig) -> GMMFit:
    n = x.shape[0]
    resp = np.zeros((n, k))
    resp[np.arange(n), init_labels] = 1.0
    w, mu, var = _m_step(x, resp, floor, None)
    empty = resp.sum(axis=0) == 0
    if empty.any():  # k-means left a cluster empty: give it the pooled moments and a small weight
        mu[empty], var[empty] = x.mean(axis=0), np.maximum(x.var(axis=0), floor)
        w = (resp.sum(axis=0) + 1.0) / (n + k)
    history: list[float] = []
    converged = False
    for it in range(cfg.max_iter):
        log_joint = _log_joint(x, w, mu, var)
        norm = logsumexp(log_joint, axis=1, keepdims=True)  # (N, 1)
        history.append(float(norm.mean()))
        resp = np.exp(log_joint - norm)
        converged = len(history) > 1 and history[-1] - history[-2] < cfg.tol
        if converged or it == cfg.max_iter - 1:
            break  # stop after an E-step, so the parameters returned are the ones history[-1] scores
        w, mu, var = _m_step(x, resp, floor, (mu, var))
    return GMMFit(w, mu, var, resp.argmax(axis=1), history[-1], np.array(history), converged)


def fit_diagonal_gmm(
    x: np.ndarray, k: int, rng: np.random.Generator, config: GMMConfig | None = None
) -> GMMFit:
    """Fit a K-component diagonal Gaussian mixture to ``x`` ``(N, D)`` by EM with restarts.

    Each restart starts from a k-means clustering; the E-step works in log space (log-sum-exp), the
    M-step is closed form with variances clamped at ``var_floor`` times the pooled variance.

    Raises
    ------
    ValueError
        If ``k`` is not in ``[1, N]`` or ``x`` is not a finite 2-D array.
    """
    cfg = config or GMMConfig()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or not np.all(np.isfinite(x)):
        raise ValueError(f"x must be a finite 2-D array (N, D), got shape {x.shape}")
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k must be in [1, {x.shape[0]}], got {k}")
    pooled = x.var(axis=0)
    floor = cfg.var_floor * np.where(pooled > 0, pooled, 1.0)
    fits = [_em(x, kmeans(x, k, rng), k, floor, cfg) for _ in range(cfg.n_init)]
    return max(fits, key=lambda f: f.log_likelihood)


def score_clustering(name: str, owners: np.ndarray, labels: np.ndarray, k: int, **extra: Any) -> AttackResult:
    """Score a clustering of the uploads against their owners (matched accuracy, ARI, pairwise P/R)."""
    precision, recall = pairwise_precision_recall(owners, labels)
    details = {
        "ari": adjusted_rand_index(owners, labels),
        "pairwise_precision": precision,
        "pairwise_recall": recall,
        "n_clusters": int(np.unique(labels).size),
        **extra,
    }
    return make_result(name, owners, name_clusters(owners, labels), k, details)


def _check(uploads: np.ndarray, owners: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    x = as_features(uploads)
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"number of users k must be in [1, {x.shape[0]}] (one per upload at most), got {k}")
    return x, check_owners(owners, x.shape[0], k)


def kmeans_linkage_attack(
    uploads: np.ndarray,
    owners: np.ndarray,
    k: int,
    rng: np.random.Generator,
    config: KMeansConfig | None = None,
) -> AttackResult:
    """Cluster the pooled uploads ``(N, ...)`` into ``k`` groups by k-means; ``name="linkage_kmeans"``."""
    cfg = config or KMeansConfig()
    x, o = _check(uploads, owners, k)
    x = prepare_features(x, logit_unit_interval=cfg.logit_unit_interval, standardize=cfg.standardize)
    runs = [kmeans(x, k, rng, iters=cfg.iters) for _ in range(cfg.n_init)]
    inertias = [kmeans_inertia(x, labels) for labels in runs]
    best = int(np.argmin(inertias))
    return score_clustering("linkage_kmeans", o, runs[best], k, inertia=inertias[best])


def gmm_linkage_attack(
    uploads: np.ndarray, owners: np.ndarray, k: int, rng: np.random.Generator, config: GMMConfig | None = None
) -> AttackResult:
    """Fit a ``k``-component diagonal Gaussian mixture to the pooled uploads; ``name="linkage_gmm"``."""
    cfg = config or GMMConfig()
    x, o = _check(uploads, owners, k)
    x = prepare_features(x, logit_unit_interval=cfg.logit_unit_interval, standardize=cfg.standardize)
    fit = fit_diagonal_gmm(x, k, rng, cfg)
    return score_clustering(
        "linkage_gmm",
        o,
        fit.labels,
        k,
        log_likelihood=fit.log_likelihood,
        em_iterations=len(fit.history),
        converged=fit.converged,
    )


def _run_kmeans(inp: AttackInput, config: KMeansConfig) -> AttackResult:
    return kmeans_linkage_attack(inp.uploads, inp.owners, inp.k, inp.rng, config)


def _run_gmm(inp: AttackInput, config: GMMConfig) -> AttackResult:
    return gmm_linkage_attack(inp.uploads, inp.owners, inp.k, inp.rng, config)


register(Attack("linkage_kmeans", KMeansConfig, _run_kmeans))
register(Attack("linkage_gmm", GMMConfig, _run_gmm))
