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

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
from scipy import special

from veil.client_sdk.distributions import (
    BasisMixtureDistribution,
    BetaDistribution,
    GaussianDistribution,
    UserDistribution,
)
from veil.client_sdk.distributions.divergences import (
    LOG_BC,
    gaussian_mu,
    gaussian_shift_bc,
    gaussian_shift_tv,
    hellinger_from_bc,
    log_bc,
    log_bc_beta,
    log_bc_gaussian,
    mixture_tv_bound,
    pair_family,
    same_basis,
)
from veil.privacy_analysis._families import (
    check_population,
    flat_params,
    log_prob_flat,
    quantile_grid,
    same_params,
)
from veil.privacy_analysis.bounds import exact_bayes_attribution

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
_BLOCK = 4_000_000  # floats per broadcast block in the vectorised pairwise paths

_BATCHED_LOG_BC: dict[str, Callable[..., np.ndarray]] = {
    "gaussian": log_bc_gaussian,
    "beta": partial(log_bc_beta, betaln=special.betaln),  # scipy: faster than math.lgamma on large batches
}
"""The divergences' array formulas over ``(K, 1, D)`` x ``(1, K, D)`` parameter stacks, by family."""


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


def _one_coordinate(d: UserDistribution, j: int) -> UserDistribution:
    a, b = flat_params(d)
    return type(d)(a[j : j + 1].reshape(1, 1), b[j : j + 1].reshape(1, 1))


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
    if type(p) is type(q) and isinstance(p, GaussianDistribution | BetaDistribution):
        (a1, b1), (a2, b2) = flat_params(p), flat_params(q)
        if isinstance(p, GaussianDistribution) and np.array_equal(b1, b2):
            return float(gaussian_shift_tv(gaussian_mu(p, q))), 0.0, "closed form"
        differ = np.flatnonzero((a1 != a2) | (b1 != b2))
        if differ.size == 1:  # TV of products with identical other factors is the TV of that factor
            j = int(differ[0])
            return _tv_1d(_one_coordinate(p, j), _one_coordinate(q, j)), 0.0, "exact 1-D"
    if int(np.prod(p.shape)) == 1:
        return _tv_1d(p, q), 0.0, "exact 1-D"
    est, se = total_variation_mc(p, q, rng or np.random.default_rng(0), n_samples)
    if (
        isinstance(p, BasisMixtureDistribution)
        and isinstance(q, BasisMixtureDistribution)
        and same_basis(p, q)
    ):
        est = min(est, mixture_tv_bound(p, q))
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
def _row_blocks(k: int, d: int) -> list[slice]:
    rows = max(1, _BLOCK // max(1, k * d))
    return [slice(i, min(k, i + rows)) for i in range(0, k, rows)]


def _vectorised_log_bc(users: Sequence[UserDistribution]) -> np.ndarray | None:
    """``(K, K)`` matrix of :func:`log_bc` over all pairs, or ``None`` when the family has no closed form."""
    families = {pair_family(_BATCHED_LOG_BC, users[0], d) for d in users}
    if None in families:
        return None
    fn = _BATCHED_LOG_BC[families.pop()]
    a, b = (np.stack(x) for x in zip(*(flat_params(d) for d in users), strict=True))  # (K, D) each
    out = np.empty((len(users), len(users)))
    for blk in _row_blocks(*a.shape):
        out[blk] = fn(a[blk, None, :], b[blk, None, :], a[None], b[None])
    return np.minimum(out, 0.0)


def _equal_std_delta(users: Sequence[UserDistribution]) -> np.ndarray | None:
    if not all(isinstance(d, GaussianDistribution) for d in users):
        return None
    std = users[0].std.ravel()  # type: ignore[attr-defined]
    if not all(np.array_equal(d.std.ravel(), std) for d in users):  # type: ignore[attr-defined]
        return None
    z = np.stack([d.loc.ravel() for d in users]) / std  # type: ignore[attr-defined]
    sq = np.sum(z * z, axis=1)
    return np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0))


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
    delta = _equal_std_delta(users)
    if delta is not None:
        out = gaussian_shift_tv(delta) if measure == "tv" else gaussian_shift_bc(delta)
    elif measure != "tv" and (log_coeff := _vectorised_log_bc(users)) is not None:
        out = np.exp(log_coeff)
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
