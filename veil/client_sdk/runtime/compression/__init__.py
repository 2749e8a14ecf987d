"""KV-cache compression of the on-device LM, once after prefill: DBudgetKV (arXiv:2502.16886) and the
fixed-budget baselines StreamingLLM, SnapKV, H2O and PyramidKV, in numpy.

The configs, :class:`KVKept`, the method names and the checks on a ``{"method": ..., **fields}`` spec
are defined here once and re-exported by the cloud's ``veil.models.compression``, so a spec means the
same on the phone and in a chat request; the selections are numpy twins of the cloud's torch ones, and
tests pin the kept positions of both to each other. :meth:`veil.client_sdk.runtime.generate.OnnxLM.
generate_batch` takes them through its ``compression`` argument.
"""

from veil.client_sdk.runtime.compression.base import KVKept, Prefill
from veil.client_sdk.runtime.compression.cache import (
    compact,
    compress_prefill,
    keep_masks,
    prefill_of,
    query_window,
)
from veil.client_sdk.runtime.compression.config import BudgetConfig, ObservationWindowConfig
from veil.client_sdk.runtime.compression.dbudgetkv import DBudgetKVConfig, select_dbudgetkv
from veil.client_sdk.runtime.compression.h2o import H2OConfig, select_h2o
from veil.client_sdk.runtime.compression.pyramidkv import PyramidKVConfig, pyramid_budgets, select_pyramidkv
from veil.client_sdk.runtime.compression.registry import (
    METHODS,
    Compression,
    CompressionConfig,
    as_config,
    from_spec,
    per_row,
    select,
)
from veil.client_sdk.runtime.compression.snapkv import SnapKVConfig, select_snapkv
from veil.client_sdk.runtime.compression.streaming_llm import StreamingLLMConfig, select_streaming_llm

__all__ = [
    "METHODS",
    "BudgetConfig",
    "Compression",
    "CompressionConfig",
    "DBudgetKVConfig",
    "H2OConfig",
    "KVKept",
    "ObservationWindowConfig",
    "Prefill",
    "PyramidKVConfig",
    "SnapKVConfig",
    "StreamingLLMConfig",
    "as_config",
    "compact",
    "compress_prefill",
    "from_spec",
    "keep_masks",
    "per_row",
    "prefill_of",
    "pyramid_budgets",
    "query_window",
    "select",
    "select_dbudgetkv",
    "select_h2o",
    "select_pyramidkv",
    "select_snapkv",
    "select_streaming_llm",
]
