"""From a request's ``kv_compression`` object to a compressor: ``{"method": name, **config fields}``.

The method names, the configs and the checks on a spec are the phone SDK's
(:mod:`veil.client_sdk.runtime.compression.registry`), so a spec means the same on the phone and in a chat
request; this module only pairs each config with its torch compressor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from veil.client_sdk.runtime.compression import registry as shared
from veil.models.compression.base import KVCompressor
from veil.models.compression.dbudgetkv import DBudgetKV, DBudgetKVConfig
from veil.models.compression.h2o import H2O, H2OConfig
from veil.models.compression.pyramidkv import PyramidKV, PyramidKVConfig
from veil.models.compression.snapkv import SnapKV, SnapKVConfig
from veil.models.compression.streaming_llm import StreamingLLM, StreamingLLMConfig

__all__ = ["METHODS", "from_spec"]

_COMPRESSORS: dict[type, type[KVCompressor]] = {
    DBudgetKVConfig: DBudgetKV,
    StreamingLLMConfig: StreamingLLM,
    SnapKVConfig: SnapKV,
    H2OConfig: H2O,
    PyramidKVConfig: PyramidKV,
}

METHODS: dict[str, tuple[type[KVCompressor], type]] = {
    name: (_COMPRESSORS[config_cls], config_cls) for name, (config_cls, _) in shared.METHODS.items()
}
"""Method name -> (compressor class, config class), the SDK's names in the SDK's order."""


def from_spec(spec: Mapping[str, Any]) -> KVCompressor:
    """Build a compressor from ``{"method": name, **fields}``, e.g. ``{"method": "dbudgetkv", "threshold": 0.01}``.

    The spec is checked by the SDK's :func:`~veil.client_sdk.runtime.compression.registry.from_spec`:
    a threshold must be in ``(0, 1)`` (0 means no compression: leave the field out instead), lists
    become tuples, and an unknown method, an unknown field or a bad value raise ``ValueError``.

    >>> type(from_spec({"method": "snapkv", "budget": 0.5})).__name__
    'SnapKV'
    """
    config = shared.from_spec(spec)
    return _COMPRESSORS[type(config)](config)
