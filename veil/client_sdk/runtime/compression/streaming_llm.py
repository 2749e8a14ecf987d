"""StreamingLLM at a fixed budget on the phone: attention sinks plus a recent window
(arXiv:2309.17453), the numpy twin of ``veil.models.compression.streaming_llm``.

Per layer and row, keep the first ``n_sink`` real tokens and the most recent ones up to the budget,
once after prefill (the fixed-budget baseline of arXiv:2502.16886). Every layer keeps the same set, so
this method needs no queries and runs on plain graphs too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from veil.client_sdk.runtime.compression.base import Prefill
from veil.client_sdk.runtime.compression.config import BudgetConfig
from veil.client_sdk.runtime.compression.scoring import budget_tokens, first_valid, top_k

__all__ = ["StreamingLLMConfig", "select_streaming_llm"]


@dataclass(frozen=True)
class StreamingLLMConfig(BudgetConfig):
    """Attributes
    ----------
    n_sink: sink tokens kept at the start (the paper's 4), counted in the budget.
    """

    n_sink: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_sink < 0:
            raise ValueError(f"n_sink must be >= 0, got {self.n_sink}")

    query_window = 0
    """No queries: the selection is by position only."""


def select_streaming_llm(config: StreamingLLMConfig, prefill: Prefill) -> list[np.ndarray]:
    """Per layer (all the same), the ``(B, n)`` bool mask of prompt positions to keep."""
    valid = prefill.valid
    budget = budget_tokens(config.budget, valid.sum(axis=1))  # (B,)
    fixed = first_valid(valid, np.minimum(budget, config.n_sink)) | (prefill.protected & valid)
    recent = budget - fixed.sum(axis=1)
    position = np.broadcast_to(np.arange(valid.shape[1], dtype=np.float32), valid.shape)
    keep = fixed | top_k(position, valid & ~fixed, recent)
    return [keep] * prefill.n_layers
