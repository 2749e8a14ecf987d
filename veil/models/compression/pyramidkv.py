"""PyramidKV: budgets that shrink with depth, SnapKV selection in each layer (arXiv:2406.02069).

Lower layers spread their attention widely and get more cache; upper layers focus and get less. Layer
``l`` of ``L`` keeps ``b_l`` tokens, an arithmetic sequence from ``2b - b/beta`` (layer 0) down to
``b/beta`` (layer ``L - 1``) whose mean is the budget ``b``; each ``b_l`` is rounded so the layers'
total is ``L * b`` and capped at the row's prompt length (a cap lowers the mean below ``b``, which
happens only for budgets above about half the prompt).
"""

from __future__ import annotations

import torch
from torch import Tensor

from veil.client_sdk.runtime.compression.pyramidkv import PyramidKVConfig
from veil.client_sdk.runtime.compression.pyramidkv import pyramid_budgets as shared_pyramid_budgets
from veil.models.compression.base import KVCompressor, Prefill
from veil.models.compression.scoring import budget_tokens
from veil.models.compression.snapkv import snapkv_keep

__all__ = ["PyramidKV", "PyramidKVConfig", "pyramid_budgets"]


def pyramid_budgets(budget: Tensor, n_layers: int, beta: float, lengths: Tensor) -> Tensor:
    """Per-row, per-layer token budgets ``(B, L)`` with mean ``budget`` ``(B,)``, capped at ``lengths``:
    the SDK's :func:`~veil.client_sdk.runtime.compression.pyramidkv.pyramid_budgets` on ``B`` integers
    copied to the CPU (int64, returned on ``lengths``' device).

    >>> pyramid_budgets(torch.tensor([10]), 4, 2.0, torch.tensor([100])).tolist()
    [[15, 12, 8, 5]]
    """
    counts = shared_pyramid_budgets(budget.cpu().numpy(), n_layers, beta, lengths.cpu().numpy())
    return torch.from_numpy(counts).to(lengths.device)


class PyramidKV(KVCompressor):
    """PyramidKV at a mean of ``config.budget`` tokens per layer."""

    def __init__(self, config: PyramidKVConfig | None = None, **fields: object) -> None:
        super().__init__()
        self.config = config if config is not None else PyramidKVConfig(**fields)  # type: ignore[arg-type]
        self.query_window = self.config.query_window

    def select(self, prefill: Prefill) -> list[Tensor]:
        c = self.config
        lengths = prefill.valid.sum(dim=1)
        budgets = pyramid_budgets(budget_tokens(c.budget, lengths), prefill.n_layers, c.beta, lengths)
        return [
            snapkv_keep(prefill, layer, budgets[:, layer], c.window_size, c.kernel_size, c.pooling)
            for layer in range(prefill.n_layers)
        ]
