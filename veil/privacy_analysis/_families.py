"""Shared plumbing for the privacy math: population checks, and the family-dependent pieces by dispatch.

The densities, samplers and parameters live once, in :mod:`veil.client_sdk.distributions`; what the
privacy analysis adds per family (flat parameters ``(D,)`` with ``D = n_tokens * dim``, per-coordinate
quantiles and interval masses via :mod:`scipy.special`, stacked populations) lives in that family's module
under :mod:`veil.privacy_analysis.families`. The functions here look the family up by name and ask it; the
exact low-dimensional integrals in :mod:`veil.privacy_analysis.bounds` are built from them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from veil.client_sdk.distributions import UserDistribution
from veil.privacy_analysis._stacked import StackedPopulation
from veil.privacy_analysis.families import family_of, population_family, same_params

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
    "stack_population",
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
    """The two parameter arrays of a product law, each flattened to ``(D,)``: ``(loc, std)`` for a Gaussian,
    ``(alpha, beta)`` for a Beta."""
    return family_of(d).flat_params(d)


def shared_basis(dists: Sequence[UserDistribution]) -> tuple[UserDistribution, ...] | None:
    """The common basis when every entry is a basis mixture over the same components, else ``None``."""
    family = population_family(dists)
    return None if family is None else family.shared_basis(dists)


def stack_population(dists: Sequence[UserDistribution]) -> StackedPopulation | None:
    """``dists`` stacked for vectorised sampling and log-likelihoods (see :mod:`veil.privacy_analysis._stacked`);
    ``None`` when they mix families, are mixtures over different bases, or their family has no stack."""
    family = population_family(dists)
    return None if family is None else family.stack(dists)


def log_prob_flat(d: UserDistribution, x: np.ndarray) -> np.ndarray:
    """Log density of flattened points ``x`` ``(N, D)`` via the family's own ``log_prob``: ``(N,)``."""
    return d.log_prob(x.reshape(x.shape[0], *d.shape))


def atoms(d: UserDistribution) -> list[tuple[float, UserDistribution]]:
    """Product-form pieces of ``d`` with their weights: ``[(1, d)]`` for Gaussian/Beta, the basis for a mixture.

    Every family here is a mixture of product laws (independent coordinates), which is what makes
    rectangle masses computable exactly: ``P(box) = sum_b w_b prod_d P_b,d(interval_d)``.
    """
    return family_of(d).atoms(d)


def coordinate_quantiles(d: UserDistribution, levels: np.ndarray) -> np.ndarray:
    """Marginal quantiles of a product law at probabilities ``levels`` ``(L,)``: ``(D, L)``."""
    return family_of(d).coordinate_quantiles(d, levels)


def atom_interval_mass(d: UserDistribution, axis: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Marginal probability of ``[lo, hi]`` along flattened coordinate ``axis`` of a product law."""
    return family_of(d).interval_mass(d, axis, lo, hi)


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
