"""The Bayes-optimal attributor with known parameters: the ceiling of any attribution attack.

Given K users' distributions P_1..P_K and a uniform prior, the Bayes attributor assigns an upload e to
argmax_k p_k(e); its accuracy Acc* = (1/K) E_k[ P_k(argmax_j p_j(e) = k) ] is estimated here by Monte
Carlo over fresh uploads, with a Wilson score interval (IDFREE_PL.md, section 3.2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from veil.client_sdk.distributions import UserDistribution

__all__ = ["AttributionResult", "bayes_attribution", "wilson_interval", "log_likelihood_matrix"]


@dataclass(frozen=True)
class AttributionResult:
    """Attribution accuracy with a 95% interval, next to chance (1/K)."""

    accuracy: float
    ci_low: float
    ci_high: float
    chance: float
    n_uploads: int

    def as_dict(self) -> dict[str, float]:
        return {
            "accuracy": self.accuracy,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "chance": self.chance,
            "n_uploads": self.n_uploads,
        }


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion.

    >>> lo, hi = wilson_interval(50, 100)
    >>> round(lo, 3), round(hi, 3)
    (0.404, 0.596)
    """
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def log_likelihood_matrix(distributions: Sequence[UserDistribution], uploads: np.ndarray) -> np.ndarray:
    """``(N, K)`` log densities of N uploads ``(N, n_tokens, dim)`` under each of K users."""
    return np.stack([d.log_prob(uploads) for d in distributions], axis=1)


def bayes_attribution(
    distributions: Sequence[UserDistribution],
    uploads_per_user: int = 50,
    rng: np.random.Generator | None = None,
) -> AttributionResult:
    """Monte-Carlo accuracy of the Bayes-optimal attributor under a uniform prior."""
    if len(distributions) < 2:
        raise ValueError(f"attribution needs at least 2 users, got {len(distributions)}")
    if uploads_per_user < 1:
        raise ValueError(f"uploads_per_user must be >= 1, got {uploads_per_user}")
    rng = rng or np.random.default_rng(0)
    hits = 0
    for k, dist in enumerate(distributions):
        uploads = dist.sample(rng, size=uploads_per_user)
        hits += int(np.sum(log_likelihood_matrix(distributions, uploads).argmax(axis=1) == k))
    n = uploads_per_user * len(distributions)
    lo, hi = wilson_interval(hits, n)
    return AttributionResult(hits / n, lo, hi, 1.0 / len(distributions), n)
