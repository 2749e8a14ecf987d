"""Shared plumbing for the privacy math: population checks, family parameters, per-coordinate CDFs.

The densities, samplers and parameters live once, in :mod:`veil.client_sdk.distributions`; this module
only reads their parameters (flattened to ``(D,)`` with ``D = n_tokens * dim``) and adds what the client
side does not need: per-coordinate CDFs and interval masses (via :mod:`scipy.special`), which the exact
low-dimensional integrals in :mod:`veil.privacy_analysis.bounds` are built from.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import special

from veil.client_sdk.distributions import (
    BasisMixtureDistribution,
    BetaDistribution,
    GaussianDistribution,
    UserDistribution,
)

__all__ = [
    "atom_interval_mass",
    "atoms",
    "check_population",
    "check_priors",
    "coordinate_quantiles",
    "flat_params",
    "interval_mass",
    "log_prob_flat",
    "quantile_grid",
    "same_params",
    "shared_basis",
]


def check_population(dists: Sequence[UserDistribution], min_users: int = 1) -> tuple[UserDistribution, ...]:
    """Return ``dists`` as a tuple after checking type, count and a common event shape.

    Raises
    ------
    ValueError
        Fewer than ``min_users`` distributions, a non-distribution entry, or mixed shapes.
    """
    out = tuple(dists)
    if len(out) < min_users:
        raise ValueError(f"need at least {min_users} user distributions, got {len(out)}")
    for i, d in enumerate(out):
        if not isinstance(d, UserDistribution):
            raise ValueError(f"distribution {i} must be a UserDistribution, got {type(d).__name__}")
    shapes = {d.shape for d in out}
    if len(shapes) > 1:
        raise ValueError(f"all distributions must share one shape (n_tokens, dim), got {sorted(shapes)}")
    return out


def check_priors(priors: Sequence[float] | np.ndarray | None, k: int) -> np.ndarray:
    """Validate prior shares ``pi_k`` (non-negative, summing to 1); ``None`` means uniform ``1/k``."""
    if priors is None:
        return np.full(k, 1.0 / k)
    p = np.asarray(priors, dtype=np.float64)
    if p.shape != (k,):
        raise ValueError(f"priors must have shape ({k},), got {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError(f"priors must be finite and >= 0, got {p}")
    if abs(float(p.sum()) - 1.0) > 1e-6:
        raise ValueError(f"priors must sum to 1, got {float(p.sum())}")
    return p / p.sum()


def flat_params(d: UserDistribution) -> tuple[np.ndarray, np.ndarray]:
    """``(loc, std)`` for a Gaussian or ``(alpha, beta)`` for a Beta, each flattened to ``(D,)``."""
    if isinstance(d, GaussianDistribution):
        return d.loc.ravel(), d.std.ravel()
    if isinstance(d, BetaDistribution):
        return d.alpha.ravel(), d.beta.ravel()
    raise ValueError(f"expected a Gaussian or Beta distribution, got {type(d).__name__}")


def same_params(p: UserDistribution, q: UserDistribution) -> bool:
    """Whether ``p`` and ``q`` are the same law with the same parameters (exact comparison)."""
    if type(p) is not type(q) or p.shape != q.shape:
        return False
    if isinstance(p, BasisMixtureDistribution) and isinstance(q, BasisMixtureDistribution):
        if len(p.basis) != len(q.basis):
            return False
        return bool(np.array_equal(p.weights, q.weights)) and all(
            same_params(a, b) for a, b in zip(p.basis, q.basis, strict=True)
        )
    a1, b1 = flat_params(p)
    a2, b2 = flat_params(q)
    return bool(np.array_equal(a1, a2) and np.array_equal(b1, b2))


def shared_basis(dists: Sequence[UserDistribution]) -> tuple[UserDistribution, ...] | None:
    """The common basis when every entry is a basis mixture over the same components, else ``None``."""
    if not dists or not all(isinstance(d, BasisMixtureDistribution) for d in dists):
        return None
    first = dists[0].basis  # type: ignore[attr-defined]
    for d in dists[1:]:
        basis = d.basis  # type: ignore[attr-defined]
        if basis is first:
            continue
        if len(basis) != len(first) or not all(
            a is b or same_params(a, b) for a, b in zip(basis, first, strict=True)
        ):
            return None
    return first


def log_prob_flat(d: UserDistribution, x: np.ndarray) -> np.ndarray:
    """Log density of flattened points ``x`` ``(N, D)`` via the family's own ``log_prob``: ``(N,)``."""
    return d.log_prob(x.reshape(x.shape[0], *d.shape))


def atoms(d: UserDistribution) -> list[tuple[float, UserDistribution]]:
    """Product-form pieces of ``d`` with their weights: ``[(1, d)]`` for Gaussian/Beta, the basis for a mixture.

    Every family here is a mixture of product laws (independent coordinates), which is what makes
    rectangle masses computable exactly: ``P(box) = sum_b w_b prod_d P_b,d(interval_d)``.
    """
    if isinstance(d, BasisMixtureDistribution):
        return [(float(w), c) for w, c in zip(d.weights, d.basis, strict=True) if w > 0]
    if isinstance(d, GaussianDistribution | BetaDistribution):
        return [(1.0, d)]
    raise ValueError(f"unsupported distribution family {type(d).__name__}")


def coordinate_quantiles(d: UserDistribution, levels: np.ndarray) -> np.ndarray:
    """Marginal quantiles of a Gaussian or Beta at probabilities ``levels`` ``(L,)``: ``(D, L)``."""
    a, b = flat_params(d)
    if isinstance(d, GaussianDistribution):
        return a[:, None] + b[:, None] * special.ndtri(levels)[None, :]
    return special.betaincinv(a[:, None], b[:, None], levels[None, :])


def atom_interval_mass(d: UserDistribution, axis: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Marginal probability of ``[lo, hi]`` along flattened coordinate ``axis`` of a Gaussian or Beta."""
    a, b = flat_params(d)
    a, b = a[axis], b[axis]
    if isinstance(d, GaussianDistribution):
        zl, zh = (lo - a) / b, (hi - a) / b
        # Upper-tail intervals through the survival function, so far tails keep their relative precision.
        upper = zl > 0
        out = np.where(upper, special.ndtr(-zl) - special.ndtr(-zh), special.ndtr(zh) - special.ndtr(zl))
        return np.maximum(out, 0.0)
    lo_c, hi_c = np.clip(lo, 0.0, 1.0), np.clip(hi, 0.0, 1.0)
    upper = lo_c > a / (a + b)
    out = np.where(
        upper,
        special.betaincc(a, b, lo_c) - special.betaincc(a, b, hi_c),
        special.betainc(a, b, hi_c) - special.betainc(a, b, lo_c),
    )
    return np.maximum(out, 0.0)


def interval_mass(d: UserDistribution, axis: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Marginal probability of ``[lo, hi]`` along flattened coordinate ``axis`` (Gaussian, Beta, mixture).

    For a basis mixture this is the weighted sum over its components. ``lo``/``hi`` may be ``-inf``/``inf``.
    """
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    return sum(w * atom_interval_mass(c, axis, lo, hi) for w, c in atoms(d))


def quantile_grid(users: Sequence[UserDistribution], per_atom: int, axis: int) -> np.ndarray:
    """Sorted union of every component's marginal quantiles along ``axis``: finite points ``(M,)``.

    Each component contributes ``per_atom`` evenly spaced levels plus geometric tails down to ``1e-15``,
    so every cell between consecutive points carries at most ``1/per_atom`` of any component's mass.
    """
    centre = (np.arange(per_atom) + 0.5) / per_atom
    tail = np.geomspace(1e-15, 0.5 / per_atom, 24)
    levels = np.unique(np.concatenate([tail, centre, 1.0 - tail]))
    pts = [coordinate_quantiles(a, levels)[axis] for d in users for _, a in atoms(d)]
    x = np.unique(np.concatenate(pts))
    return x[np.isfinite(x)]
