"""H2O at a fixed budget on the phone: heavy hitters plus recent tokens (arXiv:2306.14048), the numpy
twin of ``veil.models.compression.h2o``.

A key's score is the attention it received from the scored prompt queries (summed over queries and
heads, a chunk of queries at a time); the budget is split between the most recent tokens and the
best-scoring earlier ones, one set for all heads, once after prefill.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from veil.client_sdk.runtime.compression.base import Prefill
from veil.client_sdk.runtime.compression.config import BudgetConfig
from veil.client_sdk.runtime.compression.scoring import (
    accumulated_attention,
    budget_tokens,
    last_valid,
    top_k,
)

__all__ = ["H2OConfig", "select_h2o"]


@dataclass(frozen=True)
class H2OConfig(BudgetConfig):
    """Attributes
    ----------
    recent_fraction: share of the budget given to the most recent tokens (the paper's equal split).
    obs_window: prompt queries whose attention is accumulated; ``None`` is all of them (the paper;
        on the phone only prompts no longer than the graph's query window).
    """

    recent_fraction: float = 0.5
    obs_window: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.recent_fraction <= 1.0:
            raise ValueError(f"recent_fraction must be in [0, 1], got {self.recent_fraction}")
        if self.obs_window is not None and self.obs_window < 1:
            raise ValueError(f"obs_window must be >= 1 or None, got {self.obs_window}")

    @property
    def query_window(self) -> int | None:
        return self.obs_window


def select_h2o(config: H2OConfig, prefill: Prefill) -> list[np.ndarray]:
    """Per layer, the ``(B, n)`` bool mask of prompt positions to keep."""
    c, valid = config, prefill.valid
    budget = budget_tokens(c.budget, valid.sum(axis=1))
    recent = last_valid(valid, np.round(budget.astype(np.float64) * c.recent_fraction).astype(np.int64))
    fixed = recent | (prefill.protected & valid)
    heavy = budget - fixed.sum(axis=1)
    keep = []
    for layer in range(prefill.n_layers):
        q = prefill.queries[layer] if c.obs_window is None else prefill.queries[layer][:, :, -c.obs_window :]
        scores = accumulated_attention(q, prefill.keys[layer], valid, prefill.scaling)
        keep.append(fixed | top_k(scores, valid & ~fixed, heavy))
    return keep
