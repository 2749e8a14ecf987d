"""DP accounting for DP-SGD training on uploads, and composition across training runs (Opacus).

A DP-SGD run is the Poisson-subsampled Gaussian mechanism with noise multiplier ``sigma`` (noise std over
the clipping norm), sampling rate ``q`` and ``steps`` iterations; several runs on the same data compose.
The accountants are Opacus's (v1.6): ``"prv"`` (the default there; numerical
composition of privacy-loss random variables, Gopi, Lee & Wutschitz, arXiv:2106.02848, returning the upper
estimate), ``"rdp"`` (Renyi DP, Mironov 2017, converted with Balle et al. 2020, Thm 21) and ``"gdp"``
(the CLT approximation of Dong, Roth & Su, arXiv:1905.02383, which can *underestimate*).

Report every figure with its delta, the accountant, the sampling assumption (Poisson) and the unit of
privacy (one upload, i.e. one training example); :meth:`CompositionAccountant.report` does.

``gaussian_rdp`` and ``rdp_to_epsilon`` are the closed-form oracle for tests: the un-subsampled Gaussian
mechanism has ``RDP(alpha) = alpha Delta^2 / (2 sigma^2)`` per step, additive over steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "ACCOUNTANTS",
    "CompositionAccountant",
    "TrainingRun",
    "dp_sgd_epsilon",
    "gaussian_rdp",
    "rdp_to_epsilon",
]

ACCOUNTANTS = ("prv", "rdp", "gdp")
DEFAULT_ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))
"""RDP orders: Opacus's default grid {1.1, ..., 10.9} U {12, ..., 63}."""


@dataclass(frozen=True)
class TrainingRun:
    """One DP-SGD run: the Poisson-subsampled Gaussian mechanism, repeated.

    Attributes
    ----------
    noise_multiplier : float
        Noise std divided by the per-example clipping norm (> 0).
    sample_rate : float
        Poisson sampling probability of each example per step, in (0, 1].
    steps : int
        Number of optimiser steps (>= 0).
    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not np.isfinite(self.noise_multiplier) or self.noise_multiplier <= 0:
            raise ValueError(f"noise_multiplier must be > 0, got {self.noise_multiplier}")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate must lie in (0, 1], got {self.sample_rate}")
        if int(self.steps) != self.steps or self.steps < 0:
            raise ValueError(f"steps must be an integer >= 0, got {self.steps}")


def _check_delta(delta: float) -> float:
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    return float(delta)


def _check_accountant(name: str) -> str:
    if name not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {name!r}")
    return name


def gaussian_rdp(
    orders: float | np.ndarray, noise_multiplier: float, steps: int = 1, sensitivity: float = 1.0
) -> np.ndarray:
    """RDP of ``steps`` compositions of the Gaussian mechanism without subsampling.

    ``RDP(alpha) = steps * alpha * Delta^2 / (2 sigma^2)`` (Mironov 2017, Prop. 7), with ``sigma`` the
    noise std in units of the clipping norm and ``Delta`` the L2 sensitivity in the same units.

    >>> float(gaussian_rdp(2.0, noise_multiplier=1.0))
    1.0
    """
    if noise_multiplier <= 0:
        raise ValueError(f"noise_multiplier must be > 0, got {noise_multiplier}")
    a = np.asarray(orders, dtype=np.float64)
    return steps * a * sensitivity**2 / (2.0 * noise_multiplier**2)


def rdp_to_epsilon(orders: np.ndarray, rdp: np.ndarray, delta: float) -> tuple[float, float]:
    """``(epsilon, best order)`` from RDP curves: Balle et al. 2020 (arXiv:1905.09982), Theorem 21.

    ``eps = min_alpha [RDP(alpha) - (log delta + log alpha)/(alpha - 1) + log((alpha - 1)/alpha)]``.
    """
    d = _check_delta(delta)
    a = np.asarray(orders, dtype=np.float64)
    r = np.asarray(rdp, dtype=np.float64)
    if a.shape != r.shape or np.any(a <= 1):
        raise ValueError(f"orders (all > 1) and rdp must have one shape, got {a.shape} and {r.shape}")
    eps = r - (np.log(d) + np.log(a)) / (a - 1.0) + np.log((a - 1.0) / a)
    i = int(np.nanargmin(eps))
    return float(max(0.0, eps[i])), float(a[i])


def _gdp_epsilon(runs: list[TrainingRun], delta: float) -> float:
    # lazy: opacus imports torch (~1.3 s); only DP-SGD accounting needs it
    from opacus.accountants.analysis import gdp as gdp_analysis

    # mu-GDP composes as sqrt(sum mu_i^2) (Dong, Roth & Su, Cor. 3.3); per run Opacus's Poisson CLT mu.
    mus = [
        gdp_analysis.compute_mu_poisson(
            steps=r.steps, noise_multiplier=r.noise_multiplier, sample_rate=r.sample_rate
        )
        for r in runs
    ]
    mu = float(np.sqrt(np.sum(np.square(mus))))
    return 0.0 if mu == 0.0 else float(gdp_analysis.eps_from_mu(mu=mu, delta=delta))


def _epsilon(runs: list[TrainingRun], delta: float, accountant: str, **kw: Any) -> float:
    d, name = _check_delta(delta), _check_accountant(accountant)
    active = [r for r in runs if r.steps > 0]
    if not active:
        return 0.0
    if name == "gdp":
        return _gdp_epsilon(active, d)
    try:
        # lazy: opacus imports torch (~1.3 s); only DP-SGD accounting needs it
        from opacus.accountants import PRVAccountant, RDPAccountant
    except ImportError as exc:  # pragma: no cover - opacus is in the `cloud` extra
        raise ImportError("DP accounting needs opacus: pip install 'veil[cloud]'") from exc
    acc = PRVAccountant() if name == "prv" else RDPAccountant()
    # Opacus accountants keep a history of (noise_multiplier, sample_rate, steps) and compose it.
    acc.history = [(r.noise_multiplier, r.sample_rate, int(r.steps)) for r in active]
    return float(acc.get_epsilon(d, **kw))


def dp_sgd_epsilon(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "prv"
) -> float:
    """Epsilon spent by one DP-SGD run at ``delta``, per ``accountant`` in ``{"prv", "rdp", "gdp"}``."""
    return _epsilon([TrainingRun(noise_multiplier, sample_rate, steps)], delta, accountant)


@dataclass
class CompositionAccountant:
    """Composes several DP-SGD runs over the same data; a thin stateful wrapper over pure functions.

    >>> acc = CompositionAccountant()
    >>> acc.add_run(1.0, 0.01, 100)
    >>> acc.add_run(1.0, 0.01, 100)
    >>> acc.runs[0].steps, len(acc.runs)
    (100, 2)
    """

    runs: list[TrainingRun] = field(default_factory=list)

    def add_run(self, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        """Record one more run (validated)."""
        self.runs.append(TrainingRun(float(noise_multiplier), float(sample_rate), int(steps)))

    def epsilon(self, delta: float, accountant: str = "prv") -> float:
        """Epsilon of all runs together at ``delta``."""
        return _epsilon(self.runs, delta, accountant)

    def report(self, delta: float, accountant: str = "prv", unit: str = "one upload") -> dict[str, Any]:
        """Everything a DP claim must state: (epsilon, delta), accountant, sampling, unit, the runs."""
        return {
            "epsilon": self.epsilon(delta, accountant),
            "delta": float(delta),
            "accountant": accountant,
            "sampling": "Poisson subsampling",
            "unit_of_privacy": unit,
            "runs": [
                {"noise_multiplier": r.noise_multiplier, "sample_rate": r.sample_rate, "steps": r.steps}
                for r in self.runs
            ],
        }
