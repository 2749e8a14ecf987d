"""Device-side privacy-policy guard: refuse or repair parameters that stray too far from the prior.

Before a phone uses new distribution parameters (after on-device learning, or when loading a file), the
guard measures how far they are from the population prior ``P_0`` and, when a limit is broken, moves them
back inside. Everything is numpy and :mod:`math` only (this module ships to phones).

Measures (closed forms; IDFREE_PL.md section 3.2)
-------------------------------------------------
- **TV to the prior** (``max_tv``), an upper bound that is exact where a closed form exists:

  * Gaussian, equal stds: exactly ``TV = 2 Phi(Delta/2) - 1`` with ``Delta = ||(m - m0) / s||``.
  * Gaussian with different stds, and Beta: ``TV <= sqrt(1 - BC^2)`` (the Hellinger sandwich) with the
    Bhattacharyya coefficient a product over coordinates of
    ``sqrt(2 s s0 / (s^2 + s0^2)) exp(-(m - m0)^2 / (4 (s^2 + s0^2)))`` (Gaussian) or
    ``B((a+a0)/2, (b+b0)/2) / sqrt(B(a, b) B(a0, b0))`` (Beta, log-Beta through ``math.lgamma``).
  * Basis mixture over the prior's basis: ``TV <= 0.5 ||w - w0||_1`` (joint convexity of TV).

- **Gaussian-DP mu to the prior** (``max_gdp_mu``, Gaussian family only): telling one upload of ``P`` from
  one of ``P_0`` is ``mu``-GDP with ``mu = Delta`` when the stds are equal (Dong, Roth & Su,
  arXiv:1905.02383). With different stds no finite ``mu`` works (the tails of the wider law give tests
  whose power beats every ``G_mu``), so the measure is ``inf`` there.

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

import numpy as np

from veil.client_sdk.distributions._special import log_beta
from veil.client_sdk.distributions.base import UserDistribution
from veil.client_sdk.distributions.basis_mixture import BasisMixtureDistribution
from veil.client_sdk.distributions.beta import BetaDistribution
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
_SAME_STD_RTOL = 1e-9


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


# ---------------------------------------------------------------------------------------------- measures
def _same_std(p: GaussianDistribution, q: GaussianDistribution) -> bool:
    return bool(np.allclose(p.std, q.std, rtol=_SAME_STD_RTOL, atol=0.0))


def _std_normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def log_bhattacharyya(p: UserDistribution, q: UserDistribution) -> float:
    """``log BC(p, q)`` for two Gaussians or two Betas of the same shape (closed forms above).

    >>> g = GaussianDistribution([[0.0]], [[1.0]])
    >>> round(log_bhattacharyya(g, GaussianDistribution([[2.0]], [[1.0]])), 6)  # -Delta^2 / 8
    -0.5
    """
    _check_pair(p, q)
    if isinstance(p, GaussianDistribution) and isinstance(q, GaussianDistribution):
        v1, v2 = p.std**2, q.std**2
        total = v1 + v2
        diff = p.loc - q.loc
        return float(np.sum(0.5 * np.log(2.0 * p.std * q.std / total) - diff * diff / (4.0 * total)))
    if isinstance(p, BetaDistribution) and isinstance(q, BetaDistribution):
        mid = log_beta(0.5 * (p.alpha + q.alpha), 0.5 * (p.beta + q.beta))
        ends = 0.5 * (log_beta(p.alpha, p.beta) + log_beta(q.alpha, q.beta))
        return float(min(0.0, np.sum(mid - ends)))  # BC <= 1; clip rounding noise above it
    raise ValueError(
        f"closed-form Bhattacharyya needs two Gaussians or two Betas, got {type(p).__name__}, "
        f"{type(q).__name__}"
    )


def gaussian_mu(p: GaussianDistribution, q: GaussianDistribution) -> float:
    """Gaussian-DP ``mu`` of one upload of ``p`` against one of ``q``.

    ``Delta = ||(m_p - m_q) / s||`` for equal stds, else ``inf`` (see the module docstring).
    """
    _check_pair(p, q)
    if not (isinstance(p, GaussianDistribution) and isinstance(q, GaussianDistribution)):
        raise ValueError(f"Gaussian-DP mu needs two Gaussians, got {type(p).__name__}, {type(q).__name__}")
    if not _same_std(p, q):
        return math.inf
    return float(np.sqrt(np.sum(((p.loc - q.loc) / q.std) ** 2)))


def tv_bound(p: UserDistribution, q: UserDistribution) -> float:
    """Upper bound on ``TV(p, q)``, exact for equal-std Gaussians (see the module docstring)."""
    _check_pair(p, q)
    if isinstance(p, BasisMixtureDistribution) and isinstance(q, BasisMixtureDistribution):
        _check_same_basis(p, q)
        return float(min(1.0, 0.5 * np.sum(np.abs(p.weights - q.weights))))
    if isinstance(p, GaussianDistribution) and isinstance(q, GaussianDistribution) and _same_std(p, q):
        return 2.0 * _std_normal_cdf(0.5 * gaussian_mu(p, q)) - 1.0
    log_bc = log_bhattacharyya(p, q)
    return float(math.sqrt(max(0.0, -math.expm1(2.0 * log_bc))))  # sqrt(1 - BC^2), accurate near BC = 1


def _check_pair(p: UserDistribution, q: UserDistribution) -> None:
    if not isinstance(p, UserDistribution) or not isinstance(q, UserDistribution):
        raise ValueError(f"expected two UserDistributions, got {type(p).__name__}, {type(q).__name__}")
    if type(p) is not type(q):
        raise ValueError(f"the policy compares one family with itself, got {p.family!r} and {q.family!r}")
    if p.shape != q.shape:
        raise ValueError(f"shapes differ: {p.shape} vs the prior's {q.shape}")


def _check_same_basis(p: BasisMixtureDistribution, q: BasisMixtureDistribution) -> None:
    if p.basis is q.basis:
        return
    same = len(p.basis) == len(q.basis) and all(
        type(a) is type(b)
        and all(np.array_equal(x, y) for x, y in zip(a._arrays().values(), b._arrays().values(), strict=True))
        for a, b in zip(p.basis, q.basis, strict=True)
    )
    if not same:
        raise ValueError(
            "the mixture's basis differs from the prior's; the policy needs the shared public basis"
        )


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
            if not isinstance(prior, GaussianDistribution):
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
            mu = gaussian_mu(dist, self.prior)  # type: ignore[arg-type]
            checks.append(("gdp_mu_to_prior", mu, self.max_gdp_mu))
        name, value, limit = max(checks, key=lambda c: c[1] / c[2])
        return PolicyCheck(ok=all(v <= lim for _, v, lim in checks), value=value, limit=limit, measure=name)

    def project(self, dist: UserDistribution) -> UserDistribution:
        """``dist`` itself when inside the policy, else the nearest point on the line to the prior that is."""
        if self.check(dist).ok:
            return dist
        if self.max_gdp_mu is not None and not _same_std(dist, self.prior):  # type: ignore[arg-type]
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

    def _line(self, dist: UserDistribution) -> Callable[[float], UserDistribution]:
        prior = self.prior
        if isinstance(dist, BasisMixtureDistribution):
            w0, w1 = prior.weights, dist.weights  # type: ignore[attr-defined]
            return lambda t: BasisMixtureDistribution(dist.basis, (1.0 - t) * w0 + t * w1)
        start, end = prior.unconstrained(), dist.unconstrained()
        return lambda t: dist.with_unconstrained({k: start[k] + t * (end[k] - start[k]) for k in end})
