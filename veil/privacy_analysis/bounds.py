"""Closed-form attribution bounds, and the exact Bayes attribution accuracy in one or two dimensions.

The formulas are the standard facts behind IDfree-PL's attribution argument (arXiv:2501.06062, section 3; an application to
IDfree-PL, arXiv:2501.06062; the paper's own theorem statements are not reproduced here):

* Bayes attributor: ``argmax_k pi_k p_k(e)``; ``Acc* = integral max_k pi_k p_k``, ``(1/K) integral max_k p_k``
  under a uniform prior. Two users with equal priors: ``Acc* = (1 + TV) / 2``.
* Upper bounds: ``Acc* <= pi_max + sum_k pi_k TV(P_k, P_bar)`` with ``P_bar = sum_k pi_k P_k``, and
  ``Acc* <= pi_max + min_j sum_{k != j} pi_k TV(P_j, P_k)`` (with a uniform prior these are the
  ``1/K + (1/K) sum TV`` and ``(1 + sum_{k != j} TV)/K`` of the reference). Both follow from
  ``max_k pi_k p_k <= pi_max r + sum_k pi_k (p_k - r)_+`` for any density ``r``.
* Isotropic Gaussians ``N(mu_i, s^2 I)``: ``Delta = |mu_i - mu_j| / s``, ``TV = 2 Phi(Delta/2) - 1``,
  ``Acc* = Phi(Delta/2)``, ``BC = exp(-Delta^2 / 8)``.
* Hellinger sandwich (Le Cam): ``1 - BC <= TV <= sqrt(1 - BC^2)``; T linked uploads: ``BC_T = BC^T``.

The divergence formulas (TV, BC, the sandwich) are the phone's, from
:mod:`veil.client_sdk.distributions.divergences`; this module adds what attribution needs on top.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import special

from veil.client_sdk.distributions import UserDistribution
from veil.client_sdk.distributions.divergences import gaussian_shift_bc, gaussian_shift_tv, tv_bounds_from_bc
from veil.privacy_analysis._families import (
    atom_interval_mass,
    atoms,
    check_population,
    check_priors,
    interval_mass,
    log_prob_flat,
    quantile_grid,
)

__all__ = [
    "bound_from_pairwise_tv",
    "bound_from_tv_to_mean",
    "exact_bayes_attribution",
    "isotropic_gaussian_accuracy",
    "isotropic_gaussian_bc",
    "isotropic_gaussian_tv",
    "linked_bc",
    "linked_tv_upper",
    "tv_sandwich",
    "tv_to_mean_from_loglik",
    "tv_to_mean_terms",
    "two_user_accuracy",
]

_MAX_EVALS_1D = 10_000_000  # grid points x users: bounds time and memory for large K
_MAX_AXIS_2D = 1501
_MAX_EVALS_2D = 100_000_000  # cells x users


# ---------------------------------------------------------------------------------------- closed forms
def isotropic_gaussian_accuracy(delta: float | np.ndarray) -> np.ndarray:
    """Bayes accuracy ``Phi(Delta/2)`` between two equal-covariance Gaussians at Mahalanobis distance Delta.

    >>> float(isotropic_gaussian_accuracy(0.0))
    0.5
    """
    return special.ndtr(np.asarray(delta, dtype=np.float64) / 2.0)


def isotropic_gaussian_tv(delta: float | np.ndarray) -> np.ndarray:
    """Total variation ``2 Phi(Delta/2) - 1`` between two equal-covariance Gaussians (:func:`gaussian_shift_tv`)."""
    return gaussian_shift_tv(delta)


def isotropic_gaussian_bc(delta: float | np.ndarray) -> np.ndarray:
    """Bhattacharyya coefficient ``exp(-Delta^2/8)`` between two equal-covariance Gaussians (:func:`gaussian_shift_bc`)."""
    return gaussian_shift_bc(delta)


def two_user_accuracy(tv: float | np.ndarray) -> np.ndarray:
    """Bayes accuracy ``(1 + TV)/2`` for two users with equal priors."""
    return 0.5 * (1.0 + np.asarray(tv, dtype=np.float64))


def tv_sandwich(bc: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(lower, upper)`` bounds on TV from the Bhattacharyya coefficient: ``(1 - BC, sqrt(1 - BC^2))``.

    ``1 - BC`` is the squared Hellinger distance ``H^2`` (with ``H^2 = 1 - BC``); :func:`tv_bounds_from_bc`.

    >>> lo, hi = tv_sandwich(1.0)
    >>> float(lo), float(hi)
    (0.0, 0.0)
    """
    return tv_bounds_from_bc(bc)


def linked_bc(bc: float | np.ndarray, t: int) -> np.ndarray:
    """Bhattacharyya coefficient of ``P^{(x)T}`` and ``Q^{(x)T}`` (T linked uploads): ``BC^T``."""
    if int(t) < 1:
        raise ValueError(f"T must be >= 1, got {t}")
    return np.asarray(bc, dtype=np.float64) ** int(t)


def linked_tv_upper(bc: float | np.ndarray, t: int) -> np.ndarray:
    """Upper bound on TV between T-fold products: ``sqrt(1 - BC^{2T})``."""
    return tv_sandwich(linked_bc(bc, t))[1]


def bound_from_tv_to_mean(tv_to_mean: np.ndarray, priors: np.ndarray | None = None) -> float:
    """``min(1, pi_max + sum_k pi_k TV(P_k, P_bar))`` for ``tv_to_mean`` of shape ``(K,)``."""
    tv = np.asarray(tv_to_mean, dtype=np.float64)
    pi = check_priors(priors, tv.size)
    return float(min(1.0, pi.max() + float(pi @ tv)))


def bound_from_pairwise_tv(tv: np.ndarray, priors: np.ndarray | None = None) -> float:
    """``min(1, pi_max + min_j sum_{k != j} pi_k TV(P_j, P_k))`` for a ``(K, K)`` TV matrix."""
    m = np.asarray(tv, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"tv must be a square (K, K) matrix, got shape {m.shape}")
    pi = check_priors(priors, m.shape[0])
    off = m * (1.0 - np.eye(m.shape[0]))
    return float(min(1.0, pi.max() + float(np.min(off @ pi))))


def tv_to_mean_terms(loglik: np.ndarray, labels: np.ndarray, log_prior: np.ndarray) -> np.ndarray:
    """Per-upload terms ``(1 - p_bar(x)/p_k(x))_+`` whose mean under ``x ~ P_k`` is ``TV(P_k, P_bar)``.

    Parameters
    ----------
    loglik : ndarray, shape ``(N, K)``
        ``log p_j(x_n)``; a per-row constant offset is allowed (it cancels in the ratio).
    labels : ndarray of int, shape ``(N,)``
        The user ``k`` each upload was drawn from.
    log_prior : ndarray, shape ``(K,)``
        ``log pi``, defining ``P_bar = sum_j pi_j P_j``.
    """
    n = loglik.shape[0]
    with np.errstate(divide="ignore"):
        log_bar = special.logsumexp(loglik + log_prior, axis=1)
    own = loglik[np.arange(n), labels]
    return np.maximum(0.0, -np.expm1(np.minimum(log_bar - own, 0.0))).astype(np.float64)


def tv_to_mean_from_loglik(
    loglik: np.ndarray, labels: np.ndarray, priors: np.ndarray | None = None
) -> tuple[float, float]:
    """Monte-Carlo ``sum_k pi_k TV(P_k, P_bar)`` and its standard error, from uploads of known users.

    ``labels`` must be i.i.d. draws from the prior (the user of each upload), so the plain mean of
    :func:`tv_to_mean_terms` estimates the weighted sum; the terms lie in ``[0, 1]``.
    """
    pi = check_priors(priors, loglik.shape[1])
    with np.errstate(divide="ignore"):
        term = tv_to_mean_terms(loglik, labels, np.log(pi))
    se = float(term.std(ddof=1) / np.sqrt(term.size)) if term.size > 1 else 0.5
    return float(term.mean()), se


# ---------------------------------------------------------------------------------------- exact, low dim
def exact_bayes_attribution(
    dists: Sequence[UserDistribution], priors: Sequence[float] | np.ndarray | None = None, *, grid: int = 4001
) -> float:
    """Bayes-optimal attribution accuracy ``integral max_k pi_k p_k`` by numerical integration.

    One dimension (``n_tokens * dim == 1``): the decision regions are located on a grid made of every
    component's quantiles (so each cell holds at most ``1/grid`` of any user's mass), their boundaries
    refined by bisection to machine precision, and each region's mass taken from the exact CDF (normal CDF,
    regularised incomplete Beta, weighted sums for mixtures). The error is then only that of regions
    narrower than a grid cell, i.e. well below ``1e-6`` for the families here.

    Two dimensions: ``sum_cells max_k pi_k P_k(cell)`` over a product grid of quantile edges (at most
    1501 per axis, fewer above ~44 users so that cells x users stays below 1e8), with exact cell masses
    (every family is a mixture of product laws). This is a lower estimate whose error is second order in
    the cell width (only cells cut by a decision boundary contribute, each by ``O(h^3)``); ~1e-7 for two
    unit Gaussians at 1501 edges per axis.

    Parameters
    ----------
    dists : sequence of UserDistribution
        K >= 1 users of one event shape with ``n_tokens * dim`` in {1, 2}.
    priors : array_like, shape ``(K,)``, optional
        Prior shares; uniform by default.
    grid : int
        Quantile points per component (1-D) or edges per axis (2-D, capped at 1501).

    Raises
    ------
    ValueError
        For higher dimensions (use Monte Carlo: ``bayes_attribution_fast``) or bad inputs.
    """
    users = check_population(dists)
    pi = check_priors(priors, len(users))
    if int(grid) < 16:
        raise ValueError(f"grid must be >= 16, got {grid}")
    size = int(np.prod(users[0].shape))
    if len(users) == 1:
        return 1.0
    if size == 1:
        return _exact_1d(users, pi, int(grid))
    if size == 2:
        return _exact_2d(users, pi, min(int(grid), _MAX_AXIS_2D))
    raise ValueError(
        f"exact attribution needs n_tokens * dim <= 2, got shape {users[0].shape}; use Monte Carlo instead"
    )


def _log_scores(users: Sequence[UserDistribution], pi: np.ndarray, x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        log_pi = np.log(pi)
        return np.stack([lp + log_prob_flat(d, x[:, None]) for lp, d in zip(log_pi, users, strict=True)], 1)


def _exact_1d(users: Sequence[UserDistribution], pi: np.ndarray, grid: int) -> float:
    n_atoms = sum(len(atoms(d)) for d in users)
    x = quantile_grid(users, max(32, min(grid, _MAX_EVALS_1D // (n_atoms * len(users)))), axis=0)
    s = _log_scores(users, pi, x)
    top = s.max(axis=1)
    keep = np.isfinite(top)  # drop support endpoints where a density is infinite or every one is 0
    x, s = x[keep], s[keep]
    owner = s.argmax(axis=1)
    change = np.flatnonzero(owner[1:] != owner[:-1])
    lo, hi = x[change], x[change + 1]
    a, b = owner[change], owner[change + 1]
    rows = np.arange(change.size)
    for _ in range(64):  # vectorised bisection of pi_a p_a = pi_b p_b inside each changing cell
        mid = 0.5 * (lo + hi)
        sm = _log_scores(users, pi, mid)
        left = sm[rows, a] >= sm[rows, b]
        lo, hi = np.where(left, mid, lo), np.where(left, hi, mid)
    edges = np.concatenate([[-np.inf], 0.5 * (lo + hi), [np.inf]])
    owners = np.concatenate([[owner[0]], b])
    total = 0.0
    for k in np.unique(owners):
        sel = np.flatnonzero(owners == k)
        total += pi[k] * float(np.sum(interval_mass(users[k], 0, edges[sel], edges[sel + 1])))
    return float(min(1.0, total))


def _thin(x: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` of the sorted points ``x``, evenly by rank, keeping both ends."""
    if x.size <= n:
        return x
    return x[np.unique(np.linspace(0, x.size - 1, n).round().astype(np.int64))]


def _exact_2d(users: Sequence[UserDistribution], pi: np.ndarray, n_axis: int) -> float:
    # Cells x users bounded so large populations stay within seconds and a few hundred MB.
    n_axis = max(64, min(n_axis, int(np.sqrt(_MAX_EVALS_2D / len(users)))))
    n_atoms = sum(len(atoms(d)) for d in users)
    per = max(16, n_axis // n_atoms)
    edges = [
        np.concatenate([[-np.inf], _thin(quantile_grid(users, per, ax), n_axis), [np.inf]]) for ax in (0, 1)
    ]
    best = np.zeros((edges[0].size - 1, edges[1].size - 1))
    for p, d in zip(pi, users, strict=True):
        mass = np.zeros_like(best)
        for w, a in atoms(d):
            mx = atom_interval_mass(a, 0, edges[0][:-1], edges[0][1:])
            my = atom_interval_mass(a, 1, edges[1][:-1], edges[1][1:])
            mass += w * np.outer(mx, my)
        np.maximum(best, p * mass, out=best)
    return float(min(1.0, best.sum()))
