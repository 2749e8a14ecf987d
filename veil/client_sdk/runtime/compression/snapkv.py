"""SnapKV at a fixed budget on the phone: the last prompt queries vote for the keys to keep
(arXiv:2404.14469), the numpy twin of ``veil.models.compression.snapkv``.

The observation window's attention, summed over the window and all heads and pooled along positions,
scores every earlier key; the window's own keys are always kept and the best earlier keys fill the
budget. One set for all heads (the paper selects per head), so the cache shrinks by slicing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from veil.client_sdk.runtime.compression.base import Prefill
from veil.client_sdk.runtime.compression.config import ObservationWindowConfig
from veil.client_sdk.runtime.compression.scoring import (
    budget_tokens,
    last_valid,
    pool_scores,
    query_attention,
    top_k,
)

__all__ = ["SnapKVConfig", "select_snapkv", "snapkv_keep"]


@dataclass(frozen=True)
class SnapKVConfig(ObservationWindowConfig):
    """SnapKV's settings: the budget and the observation window (see the base classes)."""

    @property
    def query_window(self) -> int:
        return self.window_size


def snapkv_keep(
    prefill: Prefill, layer: int, budget: np.ndarray, window_size: int, kernel_size: int, pooling: str
) -> np.ndarray:
    """``(B, n)`` keep mask of one layer for per-row token budgets ``budget`` ``(B,)``."""
    valid = prefill.valid
    w = min(window_size, valid.shape[1])
    q = prefill.queries[layer][:, :, -w:]
    votes = query_attention(q, prefill.keys[layer], valid, prefill.scaling).sum(axis=(1, 2))  # (B, n)
    scores = pool_scores(votes, kernel_size, pooling)
    window = last_valid(valid, np.minimum(budget, w))
    fixed = window | (prefill.protected & valid)
    return fixed | top_k(scores, valid & ~fixed, budget - fixed.sum(axis=1))


def select_snapkv(config: SnapKVConfig, prefill: Prefill) -> list[np.ndarray]:
    """Per layer, the ``(B, n)`` bool mask of prompt positions to keep."""
    c = config
    budget = budget_tokens(c.budget, prefill.valid.sum(axis=1))
    return [
        snapkv_keep(prefill, layer, budget, c.window_size, c.kernel_size, c.pooling)
        for layer in range(prefill.n_layers)
    ]
