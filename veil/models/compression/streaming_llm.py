"""StreamingLLM at a fixed budget: attention sinks plus a recent window (arXiv:2309.17453).

Per layer and row, keep the first ``n_sink`` real tokens and the most recent ones up to the budget. The
paper streams (it evicts during decoding); applied once after prefill as here, it is the fixed-budget
baseline of arXiv:2502.16886.
"""

from __future__ import annotations

import torch
from torch import Tensor

from veil.client_sdk.runtime.compression.streaming_llm import StreamingLLMConfig
from veil.models.compression.base import KVCompressor, Prefill
from veil.models.compression.scoring import budget_tokens, first_valid, top_k

__all__ = ["StreamingLLM", "StreamingLLMConfig"]


class StreamingLLM(KVCompressor):
    """Sinks + recent window at ``config.budget`` tokens per layer."""

    query_window = StreamingLLMConfig.query_window

    def __init__(self, config: StreamingLLMConfig | None = None, **fields: object) -> None:
        super().__init__()
        self.config = config if config is not None else StreamingLLMConfig(**fields)  # type: ignore[arg-type]

    def select(self, prefill: Prefill) -> list[Tensor]:
        valid = prefill.valid
        budget = budget_tokens(self.config.budget, valid.sum(dim=1))  # (B,)
        fixed = first_valid(valid, torch.clamp(budget, max=self.config.n_sink)) | (prefill.protected & valid)
        recent = budget - fixed.sum(dim=1)
        position = torch.arange(valid.shape[1], device=valid.device, dtype=torch.float32).expand(valid.shape)
        keep = fixed | top_k(position, valid & ~fixed, recent)
        return [keep] * prefill.n_layers
