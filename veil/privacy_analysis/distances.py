"""Distances between two users' distributions: Bhattacharyya coefficient, Hellinger, total variation.

Closed forms where they exist (the phone's :mod:`veil.client_sdk.distributions.divergences`, whose
docstring cites them), exact one-dimensional integration where the difference between two product laws
lives in a single coordinate, and Monte Carlo otherwise:

===========================  ==============================================================================
pair                         method
===========================  ==============================================================================
Gaussian, any diagonal       BC closed form: prod_d sqrt(2 s1 s2/(s1^2+s2^2)) exp(-(m1-m2)^2/(4(s1^2+s2^2)))
Beta, per coordinate         BC closed form: prod_d B((a1+a2)/2, (b1+b2)/2) / sqrt(B(a1,b1) B(a2,b2))
other pairs in one dimension BC by Gauss-Legendre quadrature on a quantile grid (error <~1e-5)
Gaussian, equal std          TV = 2 Phi(Delta/2) - 1 with Delta the Mahalanobis distance (exact)
one differing coordinate     TV exact: decision boundaries by bisection, masses by CDFs (bounds.py)
anything else                MC, stratified over (p+q)/2: TV = E|tanh(l/2)|, BC = E[1/cosh(l/2)],
                             ``l = log p - log q``; both integrands lie in [0, 1], so the standard error
                             is at most 0.5/sqrt(n_samples) (0.0035 at the default 20,000)
shared-basis mixtures        the MC estimate is clipped by TV <= 0.5 * |w_i - w_j|_1 (a true upper bound)
===========================  ==============================================================================

``H = sqrt(1 - BC)`` throughout, so ``H^2 <= TV <= sqrt(1 - BC^2)`` (Le Cam's inequalities).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from veil.client_sdk.distributions import UserDistribution
from veil.client_sdk.distributions.divergences import (
    LOG_BC,
    gaussian_shift_bc,
    gaussian_shift_tv,
    hellinger_from_bc,
    log_bc,
    mixture_tv_bound,
    pair_family,
)
from veil.privacy_analysis._families import (
    check_population,
    log_prob_flat,
    quantile_grid,
    same_params,
)
from veil.privacy_analysis.bounds import exact_bayes_attribution
from veil.privacy_analysis.families import population_family

__all__ = [
    "bhattacharyya",
    "bhattacharyya_mc",
    "hellinger",
    "mixture_tv_bound",
    "pairwise",
    "total_variation",
    "total_variation_estimate",
    "total_variation_mc",
]

_MEASURES = ("tv", "hellinger", "bhattacharyya", "bc")


def _pair(p: UserDistribution, q: UserDistribution) -> None:
    check_population([p, q], min_users=2)


# ---------------------------------------------------------------------------------------- Bhattacharyya
def _mc_terms(
    p: UserDistribution, q: UserDistribution, rng: np.random.Generator, n_samples: int
) -> tuple[np.ndarray, np.ndarray]:
    """Log ratios ``log p - log q`` at ``n/2`` samples of p and ``n/2`` samples of q."""
    if int(n_samples) < 4:
        raise ValueError(f"n_samples must be >= 4, got {n_samples}")
    half = int(n_samples) // 2
    xp, xq = p.sample(rng, size=half), q.sample(rng, size=half)
    with np.errstate(invalid="ignore"):
        return p.log_prob(xp) - q.log_prob(xp), p.log_prob(xq) - q.log_prob(xq)


def _stratified(fp: np.ndarray, fq: np.ndarray) -> tuple[float, float]:
    est = 0.5 * (fp.mean() + fq.mean())
    se = 0.5 * np.sqrt(fp.var(ddof=1) / fp.size + fq.var(ddof=1) / fq.size)
    return float(est), float(se)


def bhattacharyya_mc(
    p: UserDistribution, q: UserDistribution, rng: np.random.Generator, n_samples: int = 20000
) -> tuple[float, float]:
    """Monte-Carlo ``(BC, standard error)`` with proposal ``(p+q)/2``: ``BC = E[1/cosh((log p - log q)/2)]``."""
    _pair(p, q)
    lp, lq = _mc_terms(p, q, rng, n_samples)
    return _stratified(1.0 / np.cosh(0.5 * lp), 1.0 / np.cosh(0.5 * lq))


def bhattacharyya(
    p: UserDistribution,
    q: UserDistribution,
    *,
    rng: np.random.Generator | None = None,
    n_samples: int = 20000,
) -> float:
    """Bhattacharyya coefficient ``BC = integral sqrt(p q)`` in ``[0, 1]``.

    Closed form for two Gaussians or two Betas (product over coordinates); Gauss-Legendre quadrature
    in one dimension (error ~1e-8, up to ~1e-5 near Beta singularities); Monte Carlo otherwise (``rng`` defaults to ``default_rng(0)``;
    standard error <= ``0.5/sqrt(n_samples)``).
    """
    _pair(p, q)
    if same_params(p, q):
        return 1.0
    if pair_family(LOG_BC, p, q) is not None:
        return float(np.exp(log_bc(p, q)))
    if int(np.prod(p.shape)) == 1:
        return _bc_1d(p, q)
    est, _ = bhattacharyya_mc(p, q, rng or np.random.default_rng(0), n_samples)
    return float(np.clip(est, 0.0, 1.0))


def _bc_1d(p: UserDistribution, q: UserDistribution) -> float:
    """``integral sqrt(p q)`` in one dimension: 8-point Gauss-Legendre on every cell of the quantile grid.

    The cells beyond the outermost quantiles hold at most 1e-15 of each law, hence (Cauchy-Schwarz) at
    most ~3e-8 of the integral. Measured against the closed forms: ~1e-11 for Gaussians and Betas with
    parameters >= 1; up to ~1e-5 for Betas with a parameter below 0.5, whose singular mass piles up
    within float64 rounding of 0 or 1.
    """
    x = quantile_grid([p, q], 512, axis=0)
    nodes, weights = np.polynomial.legendre.leggauss(8)
    half = 0.5 * np.diff(x)[:, None]
    pts = (0.5 * (x[1:] + x[:-1]))[:, None] + half * nodes[None, :]  # (cells, 8)
    flat = pts.reshape(-1, 1)
    with np.errstate(invalid="ignore"):
        log_mid = 0.5 * (log_prob_flat(p, flat) + log_prob_flat(q, flat))
    # Nodes that round onto a support endpoint (density 0 or infinite there) are a null set: drop them.
    vals = np.where(np.isfinite(log_mid), np.exp(np.minimum(log_mid, 700.0)), 0.0).reshape(pts.shape)
    return float(np.clip(np.sum(half * vals * weights[None, :]), 0.0, 1.0))


def hellinger(p: UserDistribution, q: UserDistribution, **kw: Any) -> float:
    """Hellinger distance ``H = sqrt(1 - BC)`` in ``[0, 1]`` (keywords go to :func:`bhattacharyya`)."""
    return float(hellinger_from_bc(bhattacharyya(p, q, **kw)))


# ---------------------------------------------------------------------------------------- total variation
def total_variation_mc(
    p: UserDistribution, q: UserDistribution, rng: np.random.Generator, n_samples: int = 20000
) -> tuple[float, float]:
    """Monte-Carlo ``(TV, standard error)`` with proposal ``(p+q)/2``: ``TV = E|tanh((log p - log q)/2)|``.

    Unbiased; the integrand ``|p - q|/(p + q)`` lies in ``[0, 1]``, so the standard error is at most
    ``0.5/sqrt(n_samples)``.
    """
    _pair(p, q)
    lp, lq = _mc_terms(p, q, rng, n_samples)
    return _stratified(np.abs(np.tanh(0.5 * lp)), np.abs(np.tanh(0.5 * lq)))


def total_variation_estimate(
    p: UserDistribution,
    q: UserDistribution,
    *,
    rng: np.random.Generator | None = None,
    n_samples: int = 20000,
) -> tuple[float, float, str]:
    """``(TV, standard error, method)``: the value :func:`total_variation` returns, with its error.

    The standard error is 0 for the exact methods (``"closed form"``, ``"exact 1-D"``).
    """
    _pair(p, q)
    if same_params(p, q):
        return 0.0, 0.0, "closed form"
    family = population_family([p, q])
    # Closed forms and the one-coordinate reduction pair the parameters of two laws of one class.
    if family is not None and type(p) is type(q):
        tv = family.closed_form_tv(p, q)
        if tv is not None:
            return tv, 0.0, "closed form"
        marginals = family.differing_coordinate(p, q)
        if marginals is not None:  # TV of products with identical other factors is the TV of that factor
            return _tv_1d(*marginals), 0.0, "exact 1-D"
    if int(np.prod(p.shape)) == 1:
        return _tv_1d(p, q), 0.0, "exact 1-D"
    est, se = total_variation_mc(p, q, rng or np.random.default_rng(0), n_samples)
    bound = None if family is None else family.tv_upper_bound(p, q)
    if bound is not None:
        est = min(est, bound)
    return float(np.clip(est, 0.0, 1.0)), se, "Monte Carlo"


def total_variation(
    p: UserDistribution,
    q: UserDistribution,
    *,
    rng: np.random.Generator | None = None,
    n_samples: int = 20000,
) -> float:
    """Total variation ``sup_A |P(A) - Q(A)| = 0.5 integral |p - q|`` in ``[0, 1]``.

    Method by case (see the module table): Gaussians with equal stds, closed form; pairs whose laws
    differ in one coordinate only (or live in one dimension), exact integration to ~1e-9; otherwise
    Monte Carlo with ``n_samples`` draws (``rng`` defaults to ``default_rng(0)``), standard error at most
    ``0.5/sqrt(n_samples)``, clipped by ``0.5 * ||w_p - w_q||_1`` for shared-basis mixtures. Use
    :func:`total_variation_estimate` to get the standard error and the method.
    """
    return total_variation_estimate(p, q, rng=rng, n_samples=n_samples)[0]


def _tv_1d(p: UserDistribution, q: UserDistribution) -> float:
    # TV = 2 Acc* - 1 for two users with equal priors, and Acc* is exact in one dimension.
    return float(np.clip(2.0 * exact_bayes_attribution([p, q]) - 1.0, 0.0, 1.0))


# ---------------------------------------------------------------------------------------- all pairs
def pairwise(dists: Sequence[UserDistribution], measure: str = "tv", **kw: Any) -> np.ndarray:
    """Symmetric ``(K, K)`` matrix of ``measure`` over all pairs of users.

    Parameters
    ----------
    dists : sequence of UserDistribution
        K >= 1 users of one shape.
    measure : {"tv", "hellinger", "bhattacharyya", "bc"}
        The diagonal is 0 for distances and 1 for the coefficient.
    **kw
        ``rng`` and ``n_samples`` for pairs that need Monte Carlo (one generator shared by all pairs).

    Notes
    -----
    Gaussian and Beta populations are vectorised (``O(K^2 D)`` memory-blocked broadcasting; equal-std
    Gaussians, also TV, via one ``(K, K)`` Gram product); other pairs are computed one by one.
    """
    if measure not in _MEASURES:
        raise ValueError(f"measure must be one of {_MEASURES}, got {measure!r}")
    users = check_population(dists)
    k = len(users)
    if "rng" not in kw or kw["rng"] is None:
        kw["rng"] = np.random.default_rng(0)
    family = population_family(users)
    delta = None if family is None else family.shift_distances(users)
    if delta is not None:
        out = gaussian_shift_tv(delta) if measure == "tv" else gaussian_shift_bc(delta)
    elif measure != "tv" and family is not None and (log_coeff := family.log_bc_matrix(users)) is not None:
        out = np.exp(np.minimum(log_coeff, 0.0))
    else:
        fn = total_variation if measure == "tv" else bhattacharyya
        out = np.eye(k) if measure != "tv" else np.zeros((k, k))
        for i in range(k):
            for j in range(i + 1, k):
                out[i, j] = out[j, i] = fn(users[i], users[j], **kw)
    if measure == "hellinger":
        out = hellinger_from_bc(out)
    out = 0.5 * (out + out.T)
    np.fill_diagonal(out, 0.0 if measure in ("tv", "hellinger") else 1.0)
    return out
