"""From a request's ``kv_compression`` object to a compressor: ``{"method": name, **config fields}``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from veil.models.compression.base import KVCompressor
from veil.models.compression.dbudgetkv import DBudgetKV, DBudgetKVConfig
from veil.models.compression.h2o import H2O, H2OConfig
from veil.models.compression.pyramidkv import PyramidKV, PyramidKVConfig
from veil.models.compression.snapkv import SnapKV, SnapKVConfig
from veil.models.compression.streaming_llm import StreamingLLM, StreamingLLMConfig

__all__ = ["METHODS", "from_spec"]

METHODS: dict[str, tuple[type[KVCompressor], type]] = {
    "dbudgetkv": (DBudgetKV, DBudgetKVConfig),
    "streaming_llm": (StreamingLLM, StreamingLLMConfig),
    "snapkv": (SnapKV, SnapKVConfig),
    "h2o": (H2O, H2OConfig),
    "pyramidkv": (PyramidKV, PyramidKVConfig),
}
"""Method name -> (compressor class, config class)."""


def from_spec(spec: Mapping[str, Any]) -> KVCompressor:
    """Build a compressor from ``{"method": name, **fields}``, e.g. ``{"method": "dbudgetkv", "threshold": 0.01}``.

    Stricter than the configs where a user's value makes no sense: a threshold must be in ``(0, 1)``
    (0 means no compression: leave the field out instead). Lists become tuples. Raises ``ValueError``
    for an unknown method, an unknown field or a bad value.

    >>> type(from_spec({"method": "snapkv", "budget": 0.5})).__name__
    'SnapKV'
    """
    if not isinstance(spec, Mapping) or "method" not in spec:
        raise ValueError(f"a compression spec is an object with a 'method', got {spec!r}")
    method = spec["method"]
    if method not in METHODS:
        raise ValueError(f"unknown compression method {method!r}; known: {', '.join(sorted(METHODS))}")
    cls, config_cls = METHODS[method]
    known = {f.name for f in fields(config_cls)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items() if k != "method"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} for {method!r}; known: {sorted(known)}")
    if "threshold" in values and not (
        isinstance(values["threshold"], (int, float)) and 0 < values["threshold"] < 1
    ):
        raise ValueError(f"threshold must be in (0, 1), got {values['threshold']!r}")
    return cls(config_cls(**values))
