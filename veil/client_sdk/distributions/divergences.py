"""Divergences between two users' distributions: Bhattacharyya, Hellinger, TV bounds and Gaussian-DP ``mu``.

The one home of these formulas: the phone's policy guard (:mod:`veil.client_sdk.policy_guard`) and the
audit (:mod:`veil.privacy_analysis`) call them, and the ONNX policy graph (:mod:`veil.models.onnx.policy`)
is the only other copy, pinned to these by a parity test. numpy and :mod:`math` only: this module ships to
phones. Every family is a product law over its ``D = n_tokens * dim`` coordinates (or a mixture of such
laws over a shared public basis), so log coefficients add up over coordinates.

Bhattacharyya coefficient ``BC = integral sqrt(p q)`` in ``[0, 1]`` (Bhattacharyya 1943; the closed forms
as in Kailath 1967, IEEE Trans. Commun. Technol. 15(1)), per coordinate:

- Gaussian, any stds: ``log BC = -0.5 log1p((s1 - s2)^2 / (2 s1 s2)) - (m1 - m2)^2 / (4 (s1^2 + s2^2))``,
  the ``log1p`` form of ``0.5 log(2 s1 s2 / (s1^2 + s2^2))``, which keeps relative accuracy near equal
  stds. With equal stds ``BC = exp(-Delta^2 / 8)``, ``Delta = ||(m1 - m2) / s||`` (Mahalanobis).
- Beta: ``log BC = log B((a1 + a2)/2, (b1 + b2)/2) - (log B(a1, b1) + log B(a2, b2)) / 2``.
- Basis mixtures ``sum_k w_k B_k`` and ``sum_k v_k B_k`` over one basis have no closed form, but
  ``BC >= sum_k sqrt(w_k v_k)``: both laws are one channel (draw ``x ~ B_k``) applied to the component
  label, and no channel lowers BC.

Total variation ``TV = sup_A |P(A) - Q(A)|``:

- Hellinger sandwich (Le Cam 1986, *Asymptotic Methods in Statistical Decision Theory*, ch. 4): with
  ``H^2 = 1 - BC``, ``H^2 <= TV <= sqrt(1 - BC^2)``.
- Gaussians with equal stds: ``TV = 2 Phi(Delta / 2) - 1 = erf(Delta / sqrt 8)`` exactly.
- Basis mixtures over one basis: ``TV <= 0.5 ||w - v||_1`` (joint convexity of TV).

Gaussian DP (Dong, Roth & Su, arXiv:1905.02383): telling one draw of ``N(m1, diag s^2)`` from one of
``N(m2, diag s^2)`` is exactly ``mu``-GDP with ``mu = Delta``. With unequal stds no finite ``mu`` holds (the
wider law's tails give tests whose power beats every ``G_mu``), so :func:`gaussian_mu` raises
:class:`UnequalCovarianceError` there, for every caller. A caller that needs a number decides what the
error means: the policy guard reads it as ``mu = inf`` (a breach of every limit); the audit reports
``covariance="pooled"``, a mean-separation summary labelled as no guarantee.

Distribution-level functions dispatch on the ``family`` string through the tables :data:`LOG_BC`,
:data:`LOG_BC_LOWER` and :data:`TV_BOUND`, walking the class MRO (:func:`resolve_family`), so a subclass
of a family (a ``GaussianDistribution`` with its own ``family`` name) gets its parent's formulas.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal, get_args

import numpy as np

from veil.client_sdk.distributions._special import log_beta
from veil.client_sdk.distributions.base import UserDistribution
from veil.client_sdk.distributions.basis_mixture import BasisMixtureDistribution
from veil.client_sdk.distributions.beta import BetaDistribution
from veil.client_sdk.distributions.gaussian import GaussianDistribution

__all__ = [
    "COVARIANCES",
    "EQUAL_STD_RTOL",
    "LOG_BC",
    "LOG_BC_LOWER",
    "TV_BOUND",
    "Covariance",
    "UnequalCovarianceError",
    "gaussian_mu",
    "gaussian_shift_bc",
    "gaussian_shift_tv",
    "hellinger_from_bc",
    "log_bc",
    "log_bc_beta",
    "log_bc_gaussian",
    "log_bc_lower_bound",
    "log_bc_mixture_lower",
    "mixture_tv_bound",
    "pair_family",
    "resolve_family",
    "same_basis",
    "stds_equal",
    "tv_bound",
    "tv_bounds_from_bc",
    "tv_bounds_from_log_bc",
]

Covariance = Literal["equal", "pooled"]
COVARIANCES: tuple[str, ...] = get_args(Covariance)

EQUAL_STD_RTOL = 1e-9
"""Largest relative difference, per coordinate, at which two stds count as equal for ``mu`` and the exact TV."""

_SQRT8 = math.sqrt(8.0)
_erf = np.frompyfunc(math.erf, 1, 1)

Formula = Callable[[Any, Any], float]
"""``f(p, q) -> float`` for two distributions of the family it is registered under."""


class UnequalCovarianceError(ValueError):
    """Two Gaussians whose stds differ: no finite Gaussian-DP ``mu`` exists (see the module docstring)."""


# ---------------------------------------------------------------------------------------------- arrays
def log_bc_gaussian(m1: np.ndarray, s1: np.ndarray, m2: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """``log BC`` of two diagonal Gaussians, summed over the last axis.

    Parameters
    ----------
    m1, s1, m2, s2 : ndarray, broadcastable, shape ``(..., D)``
        Means and (positive) stds of the two laws.

    Returns
    -------
    ndarray, shape ``(...)``, values ``<= 0``.

    >>> float(log_bc_gaussian(np.zeros(1), np.ones(1), np.full(1, 2.0), np.ones(1)))  # -Delta^2 / 8
    -0.5
    """
    m1, s1, m2, s2 = (np.asarray(x, dtype=np.float64) for x in (m1, s1, m2, s2))
    gap, diff = s1 - s2, m1 - m2
    # Both terms are <= 0 as computed, so the sum needs no clipping at BC = 1.
    terms = -0.5 * np.log1p(gap * gap / (2.0 * s1 * s2)) - diff * diff / (4.0 * (s1 * s1 + s2 * s2))
    return np.sum(terms, axis=-1)


def log_bc_beta(
    a1: np.ndarray,
    b1: np.ndarray,
    a2: np.ndarray,
    b2: np.ndarray,
    *,
    betaln: Callable[[np.ndarray, np.ndarray], np.ndarray] = log_beta,
) -> np.ndarray:
    """``log BC`` of two products of Betas, summed over the last axis.

    Parameters
    ----------
    a1, b1, a2, b2 : ndarray, broadcastable, shape ``(..., D)``
        Positive Beta parameters of the two laws.
    betaln : callable, optional
        Elementwise ``log B(a, b)``; the phone's :func:`~veil.client_sdk.distributions._special.log_beta`
        by default. Server code may pass ``scipy.special.betaln`` (faster on large batches).

    Returns
    -------
    ndarray, shape ``(...)``, values ``<= 0``.
    """
    mid = betaln(0.5 * (np.asarray(a1) + a2), 0.5 * (np.asarray(b1) + b2))
    terms = mid - 0.5 * (betaln(a1, b1) + betaln(a2, b2))
    return np.minimum(np.sum(terms, axis=-1), 0.0)  # BC <= 1 (log-convexity of B): clip rounding above it


def log_bc_mixture_lower(w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    """Lower bound ``log sum_k sqrt(w1_k w2_k)`` on ``log BC`` of two mixtures over one basis.

    Parameters
    ----------
    w1, w2 : ndarray, broadcastable, shape ``(..., K)``
        Mixture weights (non-negative, summing to 1).

    Returns
    -------
    ndarray, shape ``(...)``, values in ``[-inf, 0]`` (``-inf`` for disjoint weight supports).
    """
    overlap = np.sum(np.sqrt(np.asarray(w1, dtype=np.float64) * w2), axis=-1)
    with np.errstate(divide="ignore"):
        return np.minimum(np.log(overlap), 0.0)


def gaussian_shift_bc(delta: float | np.ndarray) -> np.ndarray:
    """``BC = exp(-Delta^2 / 8)`` of two Gaussians with one covariance, means ``Delta`` apart (Mahalanobis).

    Parameters
    ----------
    delta : float or ndarray, any shape, values ``>= 0``

    Returns
    -------
    ndarray, float64, same shape as ``delta``.
    """
    d = np.asarray(delta, dtype=np.float64)
    return np.exp(-d * d / 8.0)


def gaussian_shift_tv(delta: float | np.ndarray) -> np.ndarray:
    """``TV = 2 Phi(Delta / 2) - 1`` of two Gaussians with one covariance, means ``Delta`` apart.

    Computed as ``erf(Delta / sqrt 8)``, which has no cancellation for small ``Delta``.

    Parameters
    ----------
    delta : float or ndarray, any shape, values ``>= 0``

    Returns
    -------
    ndarray, float64, same shape as ``delta``.

    >>> round(float(gaussian_shift_tv(1.0)), 6)  # delta(0) of 1-GDP
    0.382925
    """
    d = np.asarray(delta, dtype=np.float64)
    return np.asarray(_erf(d / _SQRT8), dtype=np.float64)


def hellinger_from_bc(bc: float | np.ndarray) -> np.ndarray:
    """Hellinger distance ``H = sqrt(1 - BC)`` in ``[0, 1]``; ``bc`` of any shape, clipped to ``[0, 1]``."""
    return np.sqrt(tv_bounds_from_bc(bc)[0])


def tv_bounds_from_bc(bc: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(H^2, sqrt(1 - BC^2)) = (1 - BC, sqrt(1 - BC^2))``: lower and upper bounds on TV.

    Parameters
    ----------
    bc : float or ndarray, any shape
        Bhattacharyya coefficients, clipped to ``[0, 1]``.

    Returns
    -------
    (lower, upper) : two float64 arrays of the shape of ``bc``.

    >>> lo, hi = tv_bounds_from_bc(1.0)
    >>> float(lo), float(hi)
    (0.0, 0.0)
    """
    b = np.clip(np.asarray(bc, dtype=np.float64), 0.0, 1.0)
    lower = 1.0 - b
    return lower, np.sqrt(lower * (1.0 + b))  # (1 - b)(1 + b): no cancellation near BC = 1


def tv_bounds_from_log_bc(log_coeff: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`tv_bounds_from_bc` from ``log BC``, through ``expm1`` so nearly equal laws keep accuracy.

    Parameters
    ----------
    log_coeff : float or ndarray, any shape
        ``log BC``, clipped to ``<= 0``.

    Returns
    -------
    (lower, upper) : two float64 arrays of the shape of ``log_coeff``.
    """
    lb = np.minimum(np.asarray(log_coeff, dtype=np.float64), 0.0)
    # 0.0 - expm1(.) rather than -expm1(.): +0.0 at BC = 1, not -0.0.
    return 0.0 - np.expm1(lb), np.sqrt(0.0 - np.expm1(2.0 * lb))


def stds_equal(s1: np.ndarray, s2: np.ndarray) -> bool:
    """Whether ``|s1 - s2| <= EQUAL_STD_RTOL * max(s1, s2)`` in every coordinate (symmetric in its arguments)."""
    a, b = np.asarray(s1, dtype=np.float64), np.asarray(s2, dtype=np.float64)
    return bool(np.all(np.abs(a - b) <= EQUAL_STD_RTOL * np.maximum(a, b)))


# ---------------------------------------------------------------------------------------------- dispatch
def resolve_family(dist: UserDistribution, table: Mapping[str, Any]) -> str | None:
    """The nearest ``family`` along ``type(dist).__mro__`` that ``table`` has an entry for, else ``None``.

    >>> resolve_family(GaussianDistribution([[0.0]], [[1.0]]), LOG_BC)
    'gaussian'
    """
    for cls in type(dist).__mro__:
        family = cls.__dict__.get("family")
        if isinstance(family, str) and family in table:
            return family
    return None


def pair_family(table: Mapping[str, Any], p: UserDistribution, q: UserDistribution) -> str | None:
    """The family both ``p`` and ``q`` resolve to in ``table`` (:func:`resolve_family`), else ``None``."""
    fp = resolve_family(p, table)
    return fp if fp is not None and fp == resolve_family(q, table) else None


def _check_pair(p: UserDistribution, q: UserDistribution) -> None:
    if not isinstance(p, UserDistribution) or not isinstance(q, UserDistribution):
        raise ValueError(f"expected two UserDistributions, got {type(p).__name__}, {type(q).__name__}")
    if p.shape != q.shape:
        raise ValueError(f"shapes differ: {p.shape} vs {q.shape}")


def _lookup(table: Mapping[str, Formula], what: str, p: UserDistribution, q: UserDistribution) -> Formula:
    _check_pair(p, q)
    family = pair_family(table, p, q)
    if family is None:
        raise ValueError(
            f"{what} compares two distributions of one family among {sorted(table)}, "
            f"got family {p.family!r} and family {q.family!r}"
        )
    return table[family]


def same_basis(p: BasisMixtureDistribution, q: BasisMixtureDistribution) -> bool:
    """Whether two mixtures share one basis: the same object, or components of one type and equal parameters."""
    if p.basis is q.basis:
        return True
    return len(p.basis) == len(q.basis) and all(
        type(a) is type(b)
        and all(np.array_equal(x, y) for x, y in zip(a._arrays().values(), b._arrays().values(), strict=True))
        for a, b in zip(p.basis, q.basis, strict=True)
    )


# ---------------------------------------------------------------------------------------------- pairs
def _gaussian_log_bc(p: GaussianDistribution, q: GaussianDistribution) -> float:
    return float(log_bc_gaussian(p.loc.ravel(), p.std.ravel(), q.loc.ravel(), q.std.ravel()))


def _beta_log_bc(p: BetaDistribution, q: BetaDistribution) -> float:
    return float(log_bc_beta(p.alpha.ravel(), p.beta.ravel(), q.alpha.ravel(), q.beta.ravel()))


def _mixture_log_bc_lower(p: BasisMixtureDistribution, q: BasisMixtureDistribution) -> float:
    _check_same_basis(p, q)
    return float(log_bc_mixture_lower(p.weights, q.weights))


LOG_BC: dict[str, Formula] = {"gaussian": _gaussian_log_bc, "beta": _beta_log_bc}
"""Closed-form ``log BC(p, q)`` by family."""

LOG_BC_LOWER: dict[str, Formula] = {**LOG_BC, "basis_mixture": _mixture_log_bc_lower}
"""Lower bounds on ``log BC(p, q)`` by family (exact where :data:`LOG_BC` has a closed form)."""


def log_bc(p: UserDistribution, q: UserDistribution) -> float:
    """Closed-form ``log BC(p, q) <= 0`` for two Gaussians (any stds) or two Betas of one shape.

    Raises
    ------
    ValueError
        Not two distributions of one family in :data:`LOG_BC`, or different shapes.

    >>> g = GaussianDistribution([[0.0, 0.0]], [[1.0, 2.0]])
    >>> round(log_bc(g, GaussianDistribution([[2.0, 0.0]], [[1.0, 2.0]])), 6)  # -Delta^2 / 8
    -0.5
    """
    return _lookup(LOG_BC, "the closed-form Bhattacharyya coefficient", p, q)(p, q)


def log_bc_lower_bound(p: UserDistribution, q: UserDistribution) -> float:
    """A lower bound on ``log BC(p, q)``: :func:`log_bc` where it exists, else the mixture weights' bound.

    Good for upper bounds (``H^2 <= 1 - BC``, ``TV <= sqrt(1 - BC^2)``), not for the lower bound on TV.

    Raises
    ------
    ValueError
        Not two distributions of one family in :data:`LOG_BC_LOWER`, different shapes, or mixtures over
        different bases.
    """
    return _lookup(LOG_BC_LOWER, "the Bhattacharyya lower bound", p, q)(p, q)


def _check_same_basis(p: BasisMixtureDistribution, q: BasisMixtureDistribution) -> None:
    if not same_basis(p, q):
        raise ValueError(
            "the mixtures' bases differ; the weight bounds need two basis mixtures over the same basis "
            f"(got {len(p.basis)} and {len(q.basis)} components)"
        )


def mixture_tv_bound(p: BasisMixtureDistribution, q: BasisMixtureDistribution) -> float:
    """``TV(p, q) <= min(1, 0.5 ||w_p - w_q||_1)`` for two mixtures over the same basis.

    Raises
    ------
    ValueError
        Not two basis mixtures, or mixtures over different bases.
    """
    if not (isinstance(p, BasisMixtureDistribution) and isinstance(q, BasisMixtureDistribution)):
        raise ValueError(
            f"mixture_tv_bound needs two basis mixtures over the same basis, got {type(p).__name__}, "
            f"{type(q).__name__}"
        )
    _check_same_basis(p, q)
    return float(min(1.0, 0.5 * np.sum(np.abs(p.weights - q.weights))))


def _hellinger_tv_bound(p: UserDistribution, q: UserDistribution) -> float:
    return float(tv_bounds_from_log_bc(log_bc(p, q))[1])


def _gaussian_tv_bound(p: GaussianDistribution, q: GaussianDistribution) -> float:
    if stds_equal(p.std, q.std):
        return float(gaussian_shift_tv(gaussian_mu(p, q)))
    return _hellinger_tv_bound(p, q)


TV_BOUND: dict[str, Formula] = {
    "gaussian": _gaussian_tv_bound,
    "beta": _hellinger_tv_bound,
    "basis_mixture": mixture_tv_bound,
}
"""Upper bounds on ``TV(p, q)`` by family."""


def tv_bound(p: UserDistribution, q: UserDistribution) -> float:
    """Upper bound on ``TV(p, q)`` in ``[0, 1]``: exact for Gaussians with equal stds.

    Gaussians with equal stds (:func:`stds_equal`): ``erf(Delta / sqrt 8)``; other Gaussians and Betas:
    ``sqrt(1 - BC^2)`` from :func:`log_bc`; basis mixtures: :func:`mixture_tv_bound`.

    Raises
    ------
    ValueError
        Not two distributions of one family in :data:`TV_BOUND`, different shapes, or mixtures over
        different bases.

    >>> g = GaussianDistribution([[0.0]], [[1.0]])
    >>> round(tv_bound(g, GaussianDistribution([[1.0]], [[1.0]])), 6)
    0.382925
    """
    return _lookup(TV_BOUND, "the TV bound", p, q)(p, q)


def gaussian_mu(
    p: GaussianDistribution, q: GaussianDistribution, *, covariance: Covariance = "equal"
) -> float:
    """Gaussian-DP ``mu = Delta = ||(m_p - m_q) / s||`` of one draw of ``p`` against one of ``q``.

    Parameters
    ----------
    p, q : GaussianDistribution (or a subclass), one shape ``(n_tokens, dim)``
    covariance : {"equal", "pooled"}
        ``"equal"`` (default): the exact ``mu`` (Dong, Roth & Su, arXiv:1905.02383), which needs equal stds
        (:func:`stds_equal`; ``s`` is their mean). ``"pooled"``: ``s = sqrt((s_p^2 + s_q^2) / 2)`` per
        coordinate, a summary of how far apart the means are for unequal stds. It is *not* a GDP
        parameter and bounds none: with unequal stds no finite ``mu`` holds.

    Returns
    -------
    float, ``>= 0``.

    Raises
    ------
    UnequalCovarianceError
        ``covariance="equal"`` and the stds differ.
    ValueError
        Not two Gaussians, different shapes, or an unknown ``covariance``.

    >>> p = GaussianDistribution([[0.0, 0.0]], [[2.0, 0.5]])
    >>> round(gaussian_mu(p, GaussianDistribution([[2.0, 0.5]], [[2.0, 0.5]])), 6)  # sqrt(1 + 1)
    1.414214
    """
    _check_pair(p, q)
    if not (isinstance(p, GaussianDistribution) and isinstance(q, GaussianDistribution)):
        raise ValueError(
            f"Gaussian-DP mu needs two Gaussians, got family {p.family!r} and family {q.family!r}"
        )
    if covariance == "equal":
        if not stds_equal(p.std, q.std):
            worst = float(np.max(np.abs(p.std - q.std) / np.maximum(p.std, q.std)))
            raise UnequalCovarianceError(
                f"stds differ (largest relative difference {worst:.3g} > {EQUAL_STD_RTOL:g}): no finite "
                "Gaussian-DP mu exists for unequal covariances; bound the TV instead (tv_bound), or pass "
                "covariance='pooled' for a mean-separation summary that is no privacy guarantee"
            )
        std = 0.5 * (p.std + q.std)
    elif covariance == "pooled":
        std = np.sqrt(0.5 * (p.std * p.std + q.std * q.std))
    else:
        raise ValueError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
    z = (p.loc - q.loc) / std
    return float(np.sqrt(np.sum(z * z)))
