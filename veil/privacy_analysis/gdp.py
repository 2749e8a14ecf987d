"""The Gaussian-DP view of telling two users apart from their uploads (Dong, Roth & Su, arXiv:1905.02383).

Deciding from one upload whether it came from user P or user Q is a hypothesis test. For two Gaussians
with the same covariance the likelihood ratio is monotone in a one-dimensional projection, and the best
test's trade-off (type II error against type I error ``alpha``) is exactly
``G_mu(alpha) = Phi(Phi^{-1}(1 - alpha) - mu)`` with ``mu = Delta``, the Mahalanobis distance: the pair is
``mu``-GDP. Its (epsilon, delta) profile (Dong, Roth & Su, Corollary 2.13) is
``delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)``, and T linked uploads give ``sqrt(T) mu``
(the product of T such Gaussians is again one, at distance ``sqrt(T) Delta``). Dong, Roth & Su, arXiv:1905.02383, section 3
lists these as inferred applications to IDfree-PL (arXiv:2501.06062).

For pairs outside that case, :func:`privacy_profile_mc` and :func:`empirical_tradeoff` measure the same
curves by Monte Carlo, for any two distributions.

``mu`` itself for a pair of Gaussians is :func:`gaussian_pair_mu`, the phone's
:func:`veil.client_sdk.distributions.divergences.gaussian_mu` under its audit name: it raises
:class:`UnequalCovarianceError` when the stds differ, where no finite ``mu`` exists (``covariance="pooled"``
gives a mean-separation summary that is no guarantee).
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, special

from veil.client_sdk.distributions import UserDistribution
from veil.client_sdk.distributions.divergences import UnequalCovarianceError
from veil.client_sdk.distributions.divergences import gaussian_mu as gaussian_pair_mu
from veil.privacy_analysis._families import check_population

__all__ = [
    "UnequalCovarianceError",
    "empirical_tradeoff",
    "gaussian_pair_mu",
    "gdp_delta",
    "gdp_epsilon",
    "gdp_tradeoff",
    "linked_mu",
    "mu_from_tv",
    "privacy_profile_mc",
]


def _check_mu(mu: float) -> float:
    m = float(mu)
    if not np.isfinite(m) or m < 0:
        raise ValueError(f"mu must be finite and >= 0, got {mu}")
    return m


def gdp_delta(epsilon: float | np.ndarray, mu: float) -> np.ndarray:
    """The (epsilon, delta) profile of ``mu``-GDP: ``Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)``.

    >>> round(float(gdp_delta(0.0, 1.0)), 6)  # delta(0) is the TV, 2 Phi(mu/2) - 1
    0.382925
    """
    m = _check_mu(mu)
    eps = np.asarray(epsilon, dtype=np.float64)
    if m == 0.0:
        return np.where(eps >= 0, 0.0, -np.expm1(eps))  # identical laws: delta = (1 - e^eps)_+
    first = special.ndtr(-eps / m + m / 2.0)
    # e^eps Phi(.) through the log CDF so large eps does not overflow.
    second = np.exp(eps + special.log_ndtr(-eps / m - m / 2.0))
    return np.clip(first - second, 0.0, 1.0)


def gdp_epsilon(delta: float, mu: float) -> float:
    """Smallest ``eps >= 0`` with ``gdp_delta(eps, mu) <= delta`` (root of the decreasing profile).

    >>> round(gdp_epsilon(float(gdp_delta(1.5, 2.0)), 2.0), 9)
    1.5
    """
    m = _check_mu(mu)
    d = float(delta)
    if not 0.0 < d < 1.0:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    if m == 0.0 or float(gdp_delta(0.0, m)) <= d:
        return 0.0
    hi = 1.0
    while float(gdp_delta(hi, m)) > d:
        hi *= 2.0
    return float(optimize.brentq(lambda e: float(gdp_delta(e, m)) - d, 0.0, hi, xtol=1e-12, rtol=1e-12))


def gdp_tradeoff(alpha: float | np.ndarray, mu: float) -> np.ndarray:
    """Type II error of the best level-``alpha`` test: ``G_mu(alpha) = Phi(Phi^{-1}(1 - alpha) - mu)``."""
    m = _check_mu(mu)
    a = np.asarray(alpha, dtype=np.float64)
    if np.any((a < 0) | (a > 1)):
        raise ValueError("alpha must lie in [0, 1]")
    return special.ndtr(special.ndtri(1.0 - a) - m)


def linked_mu(mu: float, T: int) -> float:  # noqa: N803 - the paper's symbol
    """GDP parameter of T linked uploads: ``sqrt(T) * mu`` (Dong, Roth & Su, Corollary 3.3)."""
    if int(T) != T or T < 1:
        raise ValueError(f"T must be an integer >= 1, got {T}")
    return float(np.sqrt(int(T)) * _check_mu(mu))


def mu_from_tv(tv: float | np.ndarray) -> np.ndarray:
    """The ``mu`` whose Gaussian pair has total variation ``tv``: ``2 Phi^{-1}((1 + TV)/2)``."""
    t = np.asarray(tv, dtype=np.float64)
    if np.any((t < 0) | (t > 1)):
        raise ValueError("tv must lie in [0, 1]")
    return 2.0 * special.ndtri(0.5 * (1.0 + t))


def _llr(
    p: UserDistribution, q: UserDistribution, rng: np.random.Generator, n_samples: int
) -> tuple[np.ndarray, np.ndarray]:
    """``log q - log p`` at ``n_samples`` draws from p and at ``n_samples`` draws from q."""
    check_population([p, q], min_users=2)
    if int(n_samples) < 2:
        raise ValueError(f"n_samples must be >= 2, got {n_samples}")
    xp, xq = p.sample(rng, size=int(n_samples)), q.sample(rng, size=int(n_samples))
    with np.errstate(invalid="ignore"):
        return q.log_prob(xp) - p.log_prob(xp), q.log_prob(xq) - p.log_prob(xq)


def empirical_tradeoff(
    p: UserDistribution,
    q: UserDistribution,
    alphas: np.ndarray,
    *,
    rng: np.random.Generator,
    n_samples: int = 20000,
) -> np.ndarray:
    """Type II errors of the likelihood-ratio test "P vs Q" at type I errors ``alphas`` (empirical ROC).

    The test rejects P when ``log q/p`` exceeds the empirical ``1 - alpha`` quantile under P; by the
    Neyman-Pearson lemma this traces the trade-off function ``T(P, Q)``, to compare with
    :func:`gdp_tradeoff`. Standard error about ``sqrt(beta (1 - beta) / n_samples)``.
    """
    a = np.asarray(alphas, dtype=np.float64)
    if np.any((a <= 0) | (a >= 1)):
        raise ValueError("alphas must lie in (0, 1)")
    lp, lq = _llr(p, q, rng, n_samples)
    thresholds = np.quantile(lp, 1.0 - a)
    return np.mean(lq[None, :] <= thresholds[:, None], axis=1)


def privacy_profile_mc(
    p: UserDistribution,
    q: UserDistribution,
    epsilons: float | np.ndarray,
    *,
    rng: np.random.Generator,
    n_samples: int = 20000,
) -> np.ndarray:
    """Monte-Carlo ``delta(eps)`` of the pair, the larger of both directions (any two distributions).

    ``delta_{Q|P}(eps) = sup_S Q(S) - e^eps P(S) = E_Q[(1 - e^{eps - log(q/p)})_+]``, and symmetrically.
    For equal-covariance Gaussians this is :func:`gdp_delta` with ``mu = Delta``. Terms lie in
    ``[0, 1]``, so the standard error is at most ``0.5/sqrt(n_samples)``.
    """
    eps = np.atleast_1d(np.asarray(epsilons, dtype=np.float64))
    lp, lq = _llr(p, q, rng, n_samples)
    q_over_p = np.mean(np.maximum(0.0, -np.expm1(eps[:, None] - lq[None, :])), axis=1)
    p_over_q = np.mean(np.maximum(0.0, -np.expm1(eps[:, None] + lp[None, :])), axis=1)
    out = np.maximum(q_over_p, p_over_q)
    return out if np.ndim(epsilons) else np.asarray(out[0])
