"""What every on-device compressor shares: the prompt after prefill and the record of what was kept.

A method looks at the prompt once, after the prefill call, and returns for every layer a boolean
``keep`` mask ``(B, n)`` over the prompt positions; :func:`~veil.client_sdk.runtime.compression.cache.
compact` then copies the kept keys and values into smaller arrays. Whatever its scores say, a row keeps
only real tokens (left padding is never kept) and every protected position (its soft tokens: pruning
them would silently de-personalise the answer), as on the cloud.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["KVKept", "Prefill"]


@dataclass(frozen=True)
class Prefill:
    """The prompt as the cache holds it right after the prefill call.

    Attributes
    ----------
    keys: per layer, the un-repeated post-RoPE keys ``(B, H_kv, n, d)``.
    queries: per layer, the post-RoPE queries of the last ``w`` prompt positions ``(B, H, w, d)``.
    valid: ``(B, n)`` bool, False on left padding.
    protected: ``(B, n)`` bool, positions that are always kept (soft tokens).
    scaling: the attention's softmax scale (``head_dim ** -0.5`` for Llama-like models).
    """

    keys: Sequence[np.ndarray]
    queries: Sequence[np.ndarray]
    valid: np.ndarray
    protected: np.ndarray
    scaling: float

    @property
    def n_layers(self) -> int:
        return len(self.keys)

    def rows(self, index: np.ndarray) -> Prefill:
        """The same prompt restricted to the batch rows ``index`` ``(b,)``."""
        return Prefill(
            [k[index] for k in self.keys],
            [q[index] for q in self.queries],
            self.valid[index],
            self.protected[index],
            self.scaling,
        )


@dataclass(frozen=True)
class KVKept:
    """How much of one row's prompt cache was kept.

    Attributes
    ----------
    per_layer: kept prompt tokens / prompt tokens (padding excluded), one per layer.
    """

    per_layer: tuple[float, ...]

    @property
    def mean(self) -> float:
        """Kept fraction of the whole prompt cache (every layer holds the same ``n`` tokens before)."""
        return sum(self.per_layer) / len(self.per_layer)
