"""KV-cache compression after prefill: DBudgetKV (arXiv:2502.16886) and fixed-budget baselines.

Every method is one module with a frozen config dataclass and a :class:`KVCompressor`; all run on the
transformers 5 cache API (``cache.layers[i].keys``), prune the un-repeated GQA cache, keep per-layer and
per-row lengths (see :mod:`veil.models.compression.cache`), never keep padding and never drop soft
tokens. :func:`veil.models.generation.generate_batch` takes them through its ``compression`` argument.

The configs, :class:`KVKept` and the method names are the phone SDK's
(:mod:`veil.client_sdk.runtime.compression`, pure Python and numpy), re-exported here: one definition
serves both, so a spec means the same on the phone and in a chat request.
"""

from veil.client_sdk.runtime.compression.config import BudgetConfig, ObservationWindowConfig
from veil.models.compression.base import KVCompressor, KVKept, Prefill
from veil.models.compression.cache import KV_MASKS_KWARG, append_masks, compact, enable_masked_attention
from veil.models.compression.capture import QueryCapture, attention_modules
from veil.models.compression.dbudgetkv import DBudgetKV, DBudgetKVConfig, norm_loss_curve
from veil.models.compression.h2o import H2O, H2OConfig
from veil.models.compression.pipeline import PrefillCompression, check_supported, per_row
from veil.models.compression.pyramidkv import PyramidKV, PyramidKVConfig, pyramid_budgets
from veil.models.compression.registry import METHODS, from_spec
from veil.models.compression.snapkv import SnapKV, SnapKVConfig
from veil.models.compression.streaming_llm import StreamingLLM, StreamingLLMConfig

__all__ = [
    "KV_MASKS_KWARG",
    "METHODS",
    "BudgetConfig",
    "DBudgetKV",
    "DBudgetKVConfig",
    "H2O",
    "H2OConfig",
    "KVCompressor",
    "KVKept",
    "ObservationWindowConfig",
    "Prefill",
    "PrefillCompression",
    "PyramidKV",
    "PyramidKVConfig",
    "QueryCapture",
    "SnapKV",
    "SnapKVConfig",
    "StreamingLLM",
    "StreamingLLMConfig",
    "append_masks",
    "attention_modules",
    "check_supported",
    "compact",
    "enable_masked_attention",
    "from_spec",
    "norm_loss_curve",
    "per_row",
    "pyramid_budgets",
]
