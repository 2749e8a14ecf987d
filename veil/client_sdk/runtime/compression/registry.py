"""From a ``{"method": name, **config fields}`` spec to a config, and from a config to its selection.

The method names, the configs and the checks on a spec live here once; the cloud's
``veil.models.compression.registry`` builds its torch compressors from the configs :func:`from_spec`
returns, so a spec is accepted or refused alike on the phone and in a chat request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from typing import Any

import numpy as np

from veil.client_sdk.runtime.compression.base import Prefill
from veil.client_sdk.runtime.compression.dbudgetkv import DBudgetKVConfig, select_dbudgetkv
from veil.client_sdk.runtime.compression.h2o import H2OConfig, select_h2o
from veil.client_sdk.runtime.compression.pyramidkv import PyramidKVConfig, select_pyramidkv
from veil.client_sdk.runtime.compression.snapkv import SnapKVConfig, select_snapkv
from veil.client_sdk.runtime.compression.streaming_llm import StreamingLLMConfig, select_streaming_llm

__all__ = ["METHODS", "Compression", "CompressionConfig", "as_config", "from_spec", "per_row", "select"]

CompressionConfig = DBudgetKVConfig | StreamingLLMConfig | SnapKVConfig | H2OConfig | PyramidKVConfig
Compression = CompressionConfig | Mapping[str, Any]
"""A config, or its ``{"method": ...}`` spec."""

METHODS: dict[str, tuple[type, Callable[[Any, Prefill], list[np.ndarray]]]] = {
    "dbudgetkv": (DBudgetKVConfig, select_dbudgetkv),
    "streaming_llm": (StreamingLLMConfig, select_streaming_llm),
    "snapkv": (SnapKVConfig, select_snapkv),
    "h2o": (H2OConfig, select_h2o),
    "pyramidkv": (PyramidKVConfig, select_pyramidkv),
}
"""Method name -> (config class, selection function)."""
_BY_CONFIG = {cls: fn for cls, fn in METHODS.values()}


def from_spec(spec: Mapping[str, Any]) -> CompressionConfig:
    """The config of ``{"method": name, **fields}``, e.g. ``{"method": "dbudgetkv", "threshold": 0.01}``.

    Stricter than the configs where a user's value makes no sense: a threshold must be in ``(0, 1)``
    (0 means no compression: leave the field out instead). Lists become tuples. Raises ``ValueError``
    for an unknown method, an unknown field or a bad value.

    >>> from_spec({"method": "snapkv", "budget": 0.5}).budget
    0.5
    """
    if not isinstance(spec, Mapping) or "method" not in spec:
        raise ValueError(f"a compression spec is an object with a 'method', got {spec!r}")
    method = spec["method"]
    if method not in METHODS:
        raise ValueError(f"unknown compression method {method!r}; known: {', '.join(sorted(METHODS))}")
    config_cls = METHODS[method][0]
    known = {f.name for f in fields(config_cls)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items() if k != "method"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} for {method!r}; known: {sorted(known)}")
    if "threshold" in values and not (
        isinstance(values["threshold"], (int, float)) and 0 < values["threshold"] < 1
    ):
        raise ValueError(f"threshold must be in (0, 1), got {values['threshold']!r}")
    return config_cls(**values)


def as_config(value: CompressionConfig | Mapping[str, Any]) -> CompressionConfig:
    """A config as given, or the config of a spec; ``ValueError`` for anything else."""
    if type(value) in _BY_CONFIG:
        return value  # type: ignore[return-value]
    if isinstance(value, Mapping):
        return from_spec(value)
    raise ValueError(
        f"compression must be a config ({', '.join(c.__name__ for c in _BY_CONFIG)}), a spec or None, "
        f"got {type(value).__name__}"
    )


def select(config: CompressionConfig, prefill: Prefill) -> list[np.ndarray]:
    """Per layer, the ``(B, n)`` keep mask that ``config``'s method picks."""
    return _BY_CONFIG[type(config)](config, prefill)


def per_row(
    compression: Compression | Sequence[Compression | None] | None, n_rows: int
) -> list[CompressionConfig | None]:
    """One config (or ``None``) per row, from one for all rows or a per-row list (specs become configs)."""
    if compression is None:
        return [None] * n_rows
    if not isinstance(compression, (list, tuple)):
        return [as_config(compression)] * n_rows
    if len(compression) != n_rows:
        raise ValueError(f"need one compression (or None) per row: {n_rows} rows, got {len(compression)}")
    return [None if c is None else as_config(c) for c in compression]
