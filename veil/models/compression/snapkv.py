"""SnapKV at a fixed budget: the last prompt queries vote for the keys to keep (arXiv:2404.14469).

The last ``window_size`` prompt queries (the observation window) attend over the prompt; their
attention, summed over the window and pooled along positions, scores every earlier key; the window's own
keys are always kept, and the best-scoring earlier keys fill the rest of the budget. The paper selects
per head; here the votes are summed over heads and every head keeps one set, so the cache shrinks by
slicing (the choice is documented in :mod:`veil.models.compression.dbudgetkv`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from veil.client_sdk.runtime.compression.snapkv import SnapKVConfig
from veil.models.compression.base import KVCompressor, Prefill
from veil.models.compression.scoring import budget_tokens, last_valid, pool_scores, query_attention, top_k

__all__ = ["SnapKV", "SnapKVConfig", "snapkv_keep"]


def snapkv_keep(
    prefill: Prefill, layer: int, budget: Tensor, window_size: int, kernel_size: int, pooling: str
) -> Tensor:
    """``(B, n)`` keep mask of one layer for per-row token budgets ``budget`` ``(B,)``."""
    valid = prefill.valid
    w = min(window_size, valid.shape[1])
    q = prefill.queries[layer][:, :, -w:]
    votes = query_attention(q, prefill.keys[layer], valid, prefill.scaling).sum(dim=(1, 2))  # (B, n)
    scores = pool_scores(votes, kernel_size, pooling)
    window = last_valid(valid, torch.clamp(budget, max=w))
    fixed = window | (prefill.protected & valid)
    return fixed | top_k(scores, valid & ~fixed, budget - fixed.sum(dim=1))


class SnapKV(KVCompressor):
    """SnapKV at ``config.budget`` tokens per layer."""

    def __init__(self, config: SnapKVConfig | None = None, **fields: object) -> None:
        super().__init__()
        self.config = config if config is not None else SnapKVConfig(**fields)  # type: ignore[arg-type]
        self.query_window = self.config.query_window

    def select(self, prefill: Prefill) -> list[Tensor]:
        c = self.config
        budget = budget_tokens(c.budget, prefill.valid.sum(dim=1))
        return [
            snapkv_keep(prefill, layer, budget, c.window_size, c.kernel_size, c.pooling)
            for layer in range(prefill.n_layers)
        ]
