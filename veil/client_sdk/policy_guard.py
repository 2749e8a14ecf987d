"""Device-side privacy-policy guard: refuse or repair parameters that stray too far from the prior.

Before a phone uses new distribution parameters (after on-device learning, or when loading a file), the
guard measures how far they are from the population prior ``P_0`` and, when a limit is broken, moves them
back inside. Everything is numpy and :mod:`math` only (this module ships to phones).

Measures (the formulas live in :mod:`veil.client_sdk.distributions.divergences`)
--------------------------------------------------------------------------------
- **TV to the prior** (``max_tv``): :func:`~veil.client_sdk.distributions.divergences.tv_bound`, an upper
  bound that is exact for Gaussians with equal stds (``2 Phi(Delta/2) - 1``), ``sqrt(1 - BC^2)`` for other
  Gaussians and for Betas, and ``0.5 ||w - w0||_1`` for a mixture over the prior's basis.
- **Gaussian-DP mu to the prior** (``max_gdp_mu``, Gaussian family only):
  :func:`~veil.client_sdk.distributions.divergences.gaussian_mu`, ``mu = Delta`` for equal stds (Dong, Roth
  & Su, arXiv:1905.02383). With different stds no finite ``mu`` exists and ``gaussian_mu`` raises
  :class:`~veil.client_sdk.distributions.divergences.UnequalCovarianceError`; the guard reads that as
  ``mu = inf``, a breach of every limit.

Projection
----------
Parameters are moved along the straight line from the prior to the proposal in the family's
unconstrained space (Gaussian: mean and log-std; Beta: logit-mean and log-concentration; mixture: the
weights themselves), to the farthest point that satisfies every limit, found by bisection that keeps its
lower end feasible (so the result always satisfies the policy, whether or not the measure is monotone
along the line). Under a ``max_gdp_mu`` limit the std is first reset to the prior's, since only equal
stds can meet a finite ``mu``. Parameters already inside are returned unchanged (the same object).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from veil.client_sdk.distributions.base import UserDistribution
from veil.client_sdk.distributions.divergences import (
    UnequalCovarianceError,
    gaussian_mu,
    stds_equal,
    tv_bound,
)
from veil.client_sdk.distributions.divergences import log_bc as log_bhattacharyya
from veil.client_sdk.distributions.gaussian import GaussianDistribution

__all__ = [
    "PolicyCheck",
    "PolicyGuard",
    "PolicyViolationError",
    "gaussian_mu",
    "log_bhattacharyya",
    "tv_bound",
]

_BISECTION_STEPS = 60


class PolicyViolationError(ValueError):
    """Parameters that break the device's privacy policy (raised by :meth:`PolicyGuard.enforce`)."""


@dataclass(frozen=True)
class PolicyCheck:
    """The outcome of one check: the binding measure, its value and its limit."""

    ok: bool
    value: float
    """Value of the measure closest to (or furthest beyond) its limit."""
    limit: float
    measure: str
    """``"tv_to_prior"`` or ``"gdp_mu_to_prior"``."""


# ---------------------------------------------------------------------------------------------- guard
class PolicyGuard:
    """Checks distributions against a privacy policy relative to the population prior, and repairs them.

    Parameters
    ----------
    prior : UserDistribution
        The population prior every user starts from.
    max_tv : float, optional
        Largest allowed (bound on the) total variation to the prior, in ``(0, 1]``.
    max_gdp_mu : float, optional
        Largest allowed Gaussian-DP ``mu`` to the prior, ``> 0``; Gaussian family only.

    Raises
    ------
    ValueError
        No limit given, a limit out of range, or ``max_gdp_mu`` for a non-Gaussian prior.
    """

    def __init__(
        self, prior: UserDistribution, max_tv: float | None = None, max_gdp_mu: float | None = None
    ) -> None:
        if not isinstance(prior, UserDistribution):
            raise ValueError(f"prior must be a UserDistribution, got {type(prior).__name__}")
        if max_tv is None and max_gdp_mu is None:
            raise ValueError("set at least one limit: max_tv or max_gdp_mu")
        if max_tv is not None and not (math.isfinite(max_tv) and 0.0 < max_tv <= 1.0):
            raise ValueError(f"max_tv must be in (0, 1], got {max_tv}")
        if max_gdp_mu is not None:
            if not (math.isfinite(max_gdp_mu) and max_gdp_mu > 0.0):
                raise ValueError(f"max_gdp_mu must be a finite number > 0, got {max_gdp_mu}")
            if "gdp" not in prior.capabilities:
                raise ValueError(
                    f"max_gdp_mu applies to the Gaussian family only, the prior is {prior.family!r}"
                )
        self.prior = prior
        self.max_tv = None if max_tv is None else float(max_tv)
        self.max_gdp_mu = None if max_gdp_mu is None else float(max_gdp_mu)

    def check(self, dist: UserDistribution) -> PolicyCheck:
        """Measure ``dist`` against every limit; report the binding one (largest value / limit)."""
        checks = []
        if self.max_tv is not None:
            checks.append(("tv_to_prior", tv_bound(dist, self.prior), self.max_tv))
        if self.max_gdp_mu is not None:
            checks.append(("gdp_mu_to_prior", self._gdp_mu(dist), self.max_gdp_mu))
        name, value, limit = max(checks, key=lambda c: c[1] / c[2])
        return PolicyCheck(ok=all(v <= lim for _, v, lim in checks), value=value, limit=limit, measure=name)

    def project(self, dist: UserDistribution) -> UserDistribution:
        """``dist`` itself when inside the policy, else the nearest point on the line to the prior that is."""
        if self.check(dist).ok:
            return dist
        if self.max_gdp_mu is not None and not stds_equal(dist.std, self.prior.std):  # type: ignore[attr-defined]
            dist = GaussianDistribution(dist.loc, self.prior.std)  # type: ignore[attr-defined]
            if self.check(dist).ok:
                return dist
        along = self._line(dist)
        lo, hi = 0.0, 1.0  # invariant: along(lo) satisfies the policy, along(hi) does not
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            if self.check(along(mid)).ok:
                lo = mid
            else:
                hi = mid
        if lo == 0.0:
            return self.prior
        return along(lo)

    def enforce(self, dist: UserDistribution) -> UserDistribution:
        """Return ``dist`` unchanged or raise :class:`PolicyViolationError` (for callers that must refuse)."""
        result = self.check(dist)
        if not result.ok:
            raise PolicyViolationError(
                f"{result.measure} = {result.value:.4g} exceeds the limit {result.limit:.4g}"
            )
        return dist

    def _gdp_mu(self, dist: UserDistribution) -> float:
        try:
            return gaussian_mu(dist, self.prior)  # type: ignore[arg-type]
        except UnequalCovarianceError:
            return math.inf  # no finite mu exists, so every finite limit is broken

    def _line(self, dist: UserDistribution) -> Callable[[float], UserDistribution]:
        return lambda t: self.prior.toward(dist, t)
