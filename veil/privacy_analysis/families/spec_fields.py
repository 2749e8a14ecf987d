"""Reading one field of a population spec: the error type and the readers every family's spec loader shares.

``veil audit``'s YAML spec (:mod:`veil.privacy_analysis.audit.spec`) hands each user entry to its family
(:meth:`~veil.privacy_analysis.families.base.PrivacyFamily.read_member`); the families read their
parameters with these, so every bad field gets the same one-line message naming its place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["SpecError", "kind_of", "only_keys", "read_array", "read_vector"]


class SpecError(ValueError):
    """A population spec that cannot be used; the message is one line naming the offending field."""


def read_array(entry: Mapping[str, Any], name: str, where: str, like: np.ndarray | None = None) -> np.ndarray:
    """A parameter as ``(n_tokens, dim)``: a flat list is one token; a number broadcasts to ``like``."""
    if name not in entry:
        raise SpecError(f"{where}.{name}: missing")
    raw = entry[name]
    try:
        arr = np.array(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise SpecError(
            f"{where}.{name}: must be a number or a (nested) list of numbers, got {kind_of(raw)}"
        ) from None
    if arr.ndim == 0 and like is not None:
        arr = np.full(like.shape, float(arr))
    elif arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.size == 0:
        raise SpecError(
            f"{where}.{name}: must be a non-empty list per coordinate (or [[...]] per token), "
            f"got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise SpecError(f"{where}.{name}: must be finite (no NaN/Inf)")
    if like is not None and arr.shape != like.shape:
        raise SpecError(
            f"{where}.{name}: mismatched dimensions: shape {arr.shape} (n_tokens, dim), but the other "
            f"parameter has shape {like.shape}"
        )
    return arr


def read_vector(entry: Mapping[str, Any], name: str, where: str) -> np.ndarray:
    """A flat list of finite numbers, shape ``(n,)``."""
    if name not in entry:
        raise SpecError(f"{where}.{name}: missing")
    try:
        arr = np.array(entry[name], dtype=np.float64)
    except (TypeError, ValueError):
        raise SpecError(f"{where}.{name}: must be a list of numbers, got {kind_of(entry[name])}") from None
    if arr.ndim != 1 or not np.all(np.isfinite(arr)):
        raise SpecError(f"{where}.{name}: must be a flat list of finite numbers, got shape {arr.shape}")
    return arr


def only_keys(entry: Mapping[str, Any], allowed: set[str], where: str) -> None:
    """Raise :class:`SpecError` naming any key of ``entry`` outside ``allowed``."""
    unknown = set(entry) - allowed
    if unknown:
        raise SpecError(f"{where}: unknown keys {sorted(map(str, unknown))}; expected {sorted(allowed)}")


def kind_of(value: Any) -> str:
    """How a message names what was found instead: ``"nothing"`` for ``None``, else the type's name."""
    return "nothing" if value is None else type(value).__name__
