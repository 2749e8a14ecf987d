"""H2O at a fixed budget: heavy hitters plus recent tokens (arXiv:2306.14048).

A key's score is the attention it received from every prompt query (summed over queries and heads,
computed a chunk of queries at a time, never as an ``n x n`` matrix). The budget is split between the most
recent tokens and the highest-scoring earlier ones. The paper evicts step by step while generating and
per head; applied once after prefill with one set for all heads (see
:mod:`veil.models.compression.dbudgetkv`), it is the fixed-budget baseline of arXiv:2502.16886.
"""

from __future__ import annotations

import torch
from torch import Tensor

from veil.client_sdk.runtime.compression.h2o import H2OConfig
from veil.models.compression.base import KVCompressor, Prefill
from veil.models.compression.scoring import accumulated_attention, budget_tokens, last_valid, top_k

__all__ = ["H2O", "H2OConfig"]


class H2O(KVCompressor):
    """Heavy hitters + recent tokens at ``config.budget`` tokens per layer."""

    def __init__(self, config: H2OConfig | None = None, **fields: object) -> None:
        super().__init__()
        self.config = config if config is not None else H2OConfig(**fields)  # type: ignore[arg-type]
        self.query_window = self.config.query_window

    def select(self, prefill: Prefill) -> list[Tensor]:
        c, valid = self.config, prefill.valid
        budget = budget_tokens(c.budget, valid.sum(dim=1))
        recent = last_valid(valid, torch.round(budget.double() * c.recent_fraction).long())
        fixed = recent | (prefill.protected & valid)
        heavy = budget - fixed.sum(dim=1)
        keep = []
        for layer in range(prefill.n_layers):
            q = (
                prefill.queries[layer]
                if c.obs_window is None
                else prefill.queries[layer][:, :, -c.obs_window :]
            )
            scores = accumulated_attention(q, prefill.keys[layer], valid, prefill.scaling)
            keep.append(fixed | top_k(scores, valid & ~fixed, heavy))
        return keep
