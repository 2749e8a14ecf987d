"""The privacy policy an audit is gated on: limits on attribution, distances and Gaussian-DP ``mu``.

A policy comes from the spec's ``policy:`` section, from ``veil audit`` flags (which override it), or from
code. :func:`evaluate` compares it with the audit's measurements and returns the violations; ``veil audit``
exits with code 1 when there is any, so a release can be gated in CI.

Two conventions keep the gate on the safe side:

- Monte-Carlo figures are compared through the **upper end of their 95% interval** (the audit passes
  that value), so a policy passes only when the data show the limit holds.
- A configured limit whose quantity could not be measured for this population (e.g. ``max_gdp_mu`` for
  Beta users, or any per-user limit when only the pooled stream of a live store is known) is a violation
  ("not measurable"): a gate that cannot check must not pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

__all__ = ["Policy", "PolicyError", "Violation", "evaluate"]


_UNIT_LIMITS = (
    "max_bayes_attribution",
    "max_linked_attribution",
    "max_pairwise_tv",
    "max_tv_to_prior",
    "max_attack_accuracy",
)


class PolicyError(ValueError):
    """A malformed policy (unknown key, limit out of range); one line naming the field."""


@dataclass(frozen=True)
class Policy:
    """Limits the audited population must satisfy; ``None`` leaves a quantity unchecked."""

    max_bayes_attribution: float | None = None
    """Bayes-optimal attribution accuracy of one upload (upper 95% limit), in ``(0, 1]``."""
    max_linked_attribution: float | None = None
    """Bayes-optimal accuracy when ``linked_t`` uploads of a user are linked (upper 95% limit)."""
    linked_t: int = 8
    """How many linked uploads ``max_linked_attribution`` assumes (the audit evaluates this T too)."""
    max_pairwise_tv: float | None = None
    """Largest total variation between two users, in ``(0, 1]``."""
    max_tv_to_prior: float | None = None
    """Largest TV (closed-form upper bound, as the device guard computes it) from a user to the prior."""
    max_gdp_mu: float | None = None
    """Largest pairwise Gaussian-DP ``mu`` of one upload (Gaussian populations only), ``> 0``."""
    max_attack_accuracy: float | None = None
    """Best accuracy of the practical attacks (upper 95% limit), in ``(0, 1]``."""
    require_unidentifiable: bool = False
    """Fail when the Gram-matrix test finds the users' densities linearly independent (identifiable)."""

    def __post_init__(self) -> None:
        for name in _UNIT_LIMITS:
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and 0.0 < value <= 1.0):
                raise PolicyError(f"policy.{name}: must be a number in (0, 1], got {value!r}")
        if self.max_gdp_mu is not None and not (_is_number(self.max_gdp_mu) and self.max_gdp_mu > 0.0):
            raise PolicyError(f"policy.max_gdp_mu: must be a finite number > 0, got {self.max_gdp_mu!r}")
        if not isinstance(self.linked_t, int) or isinstance(self.linked_t, bool) or self.linked_t < 1:
            raise PolicyError(f"policy.linked_t: must be an integer >= 1, got {self.linked_t!r}")
        if not isinstance(self.require_unidentifiable, bool):
            raise PolicyError(
                f"policy.require_unidentifiable: must be true or false, got {self.require_unidentifiable!r}"
            )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> Policy:
        """Build from the spec's ``policy:`` mapping; unknown keys raise :class:`PolicyError`."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise PolicyError(f"policy: must be a mapping of limits, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise PolicyError(f"policy: unknown keys {sorted(map(str, unknown))}; known: {sorted(known)}")
        return cls(**dict(data))

    def with_overrides(self, **limits: Any) -> Policy:
        """A copy with every limit given here and not ``None`` replaced (CLI flags over the spec)."""
        known = {f.name for f in fields(self)}
        unknown = set(limits) - known
        if unknown:
            raise PolicyError(f"unknown policy limits {sorted(unknown)}; known: {sorted(known)}")
        return replace(self, **{k: v for k, v in limits.items() if v is not None})

    @property
    def is_empty(self) -> bool:
        """True when nothing is checked."""
        return self == Policy(linked_t=self.linked_t)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Violation:
    """One broken limit: the rule, the measured value (``None`` when it could not be measured)."""

    rule: str
    value: float | bool | None
    limit: float | bool
    message: str

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if isinstance(self.value, float) and not math.isfinite(self.value):
            out["value"] = None  # JSON has no infinity; the message keeps it
        return out


# rule -> (metric key, description)
_LIMITS = {
    "max_bayes_attribution": ("bayes_attribution", "Bayes attribution accuracy (upper 95% limit)"),
    "max_pairwise_tv": ("pairwise_tv_max", "largest pairwise TV"),
    "max_tv_to_prior": ("tv_to_prior_max", "largest TV bound to the prior"),
    "max_gdp_mu": ("gdp_mu_max", "largest pairwise Gaussian-DP mu"),
    "max_attack_accuracy": ("attack_accuracy_max", "best practical attack accuracy (upper 95% limit)"),
}


def evaluate(policy: Policy, metrics: Mapping[str, Any]) -> list[Violation]:
    """Compare the audit's measurements with the policy.

    Parameters
    ----------
    policy : Policy
    metrics : mapping
        ``bayes_attribution``, ``pairwise_tv_max``, ``tv_to_prior_max``, ``gdp_mu_max``,
        ``attack_accuracy_max`` (floats), ``linked_attribution`` (mapping ``T -> float``) and
        ``identifiable`` (bool). A missing or ``None`` entry is "not measurable".

    Returns
    -------
    list of Violation, empty when the policy holds.
    """
    out = []
    for rule, (key, what) in _LIMITS.items():
        limit = getattr(policy, rule)
        if limit is not None:
            out.extend(_compare(rule, what, metrics.get(key), limit))
    if policy.max_linked_attribution is not None:
        linked = metrics.get("linked_attribution") or {}
        what = f"Bayes attribution with T={policy.linked_t} linked uploads (upper 95% limit)"
        out.extend(
            _compare(
                "max_linked_attribution", what, linked.get(policy.linked_t), policy.max_linked_attribution
            )
        )
    if policy.require_unidentifiable:
        identifiable = metrics.get("identifiable")
        if identifiable is None:
            out.append(Violation("require_unidentifiable", None, True, "identifiability: not measurable"))
        elif identifiable:
            out.append(
                Violation(
                    "require_unidentifiable",
                    True,
                    True,
                    "the users' densities are linearly independent: the pooled stream identifies them",
                )
            )
    return out


def _compare(rule: str, what: str, value: Any, limit: float) -> list[Violation]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return [Violation(rule, None, limit, f"{what}: not measurable for this input (limit {limit:g})")]
    if float(value) > limit:
        return [Violation(rule, float(value), limit, f"{what} = {float(value):.4g} exceeds {limit:g}")]
    return []


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
