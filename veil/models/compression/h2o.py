"""H2O at a fixed budget: heavy hitters plus recent tokens (arXiv:2306.14048).

A key's score is the attention it received from every prompt query (summed over queries and heads,
computed a chunk of queries at a time, never as an ``n x n`` matrix). The budget is split between the most
recent tokens and the highest-scoring earlier ones. The paper evicts step by step while generating and
per head; applied once after prefill with one set for all heads (see
:mod:`veil.models.compression.dbudgetkv`), it is the fixed-budget baseline of arXiv:2502.16886.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from veil.models.compression.base import KVCompressor, Prefill
from veil.models.compression.config import BudgetConfig
from veil.models.compression.scoring import accumulated_attention, budget_tokens, last_valid, top_k

__all__ = ["H2O", "H2OConfig"]


@dataclass(frozen=True)
class H2OConfig(BudgetConfig):
    """Attributes
    ----------
    recent_fraction: share of the budget given to the most recent tokens (the paper's equal split).
    obs_window: prompt queries whose attention is accumulated; ``None`` is all of them (the paper).
    """

    recent_fraction: float = 0.5
    obs_window: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.recent_fraction <= 1.0:
            raise ValueError(f"recent_fraction must be in [0, 1], got {self.recent_fraction}")
        if self.obs_window is not None and self.obs_window < 1:
            raise ValueError(f"obs_window must be >= 1 or None, got {self.obs_window}")


class H2O(KVCompressor):
    """Heavy hitters + recent tokens at ``config.budget`` tokens per layer."""

    def __init__(self, config: H2OConfig | None = None, **fields: object) -> None:
        super().__init__()
        self.config = config if config is not None else H2OConfig(**fields)  # type: ignore[arg-type]
        self.query_window = self.config.obs_window

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
