"""PyramidKV: budgets that shrink with depth, SnapKV selection in each layer (arXiv:2406.02069).

Lower layers spread their attention widely and get more cache; upper layers focus and get less. Layer
``l`` of ``L`` keeps ``b_l`` tokens, an arithmetic sequence from ``2b - b/beta`` (layer 0) down to
``b/beta`` (layer ``L - 1``) whose mean is the budget ``b``; each ``b_l`` is rounded so the layers'
total is ``L * b`` and capped at the row's prompt length (a cap lowers the mean below ``b``, which
happens only for budgets above about half the prompt).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from veil.models.compression.base import KVCompressor, Prefill
from veil.models.compression.config import ObservationWindowConfig
from veil.models.compression.scoring import budget_tokens
from veil.models.compression.snapkv import snapkv_keep

__all__ = ["PyramidKV", "PyramidKVConfig", "pyramid_budgets"]


@dataclass(frozen=True)
class PyramidKVConfig(ObservationWindowConfig):
    """Attributes
    ----------
    beta: the top layer keeps ``budget / beta`` tokens (the paper's beta = 20).
    """

    beta: float = 20.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta < 1.0:
            raise ValueError(f"beta must be >= 1, got {self.beta}")


def pyramid_budgets(budget: Tensor, n_layers: int, beta: float, lengths: Tensor) -> Tensor:
    """Per-row, per-layer token budgets ``(B, L)`` with mean ``budget`` ``(B,)``, capped at ``lengths``.

    >>> pyramid_budgets(torch.tensor([10]), 4, 2.0, torch.tensor([100])).tolist()
    [[15, 12, 8, 5]]
    """
    b = budget.double()[:, None]  # (B, 1)
    low = b / beta
    high = 2 * b - low
    frac = torch.arange(n_layers, dtype=torch.float64) / max(n_layers - 1, 1)  # (L,)
    shares = high - (high - low) * frac  # (B, L), mean b
    cap = lengths.double()[:, None].expand_as(shares)
    alloc = torch.minimum(shares, cap)
    for _ in range(n_layers):  # each pass caps at least one more layer, or gives out everything
        short = n_layers * b - alloc.sum(dim=1, keepdim=True)  # (B, 1)
        room = torch.where(alloc < cap, shares, torch.zeros_like(shares))
        if not bool(((short > 1e-9) & (room.sum(dim=1, keepdim=True) > 0)).any()):
            break
        alloc = torch.minimum(alloc + short * room / room.sum(dim=1, keepdim=True).clamp(min=1e-30), cap)
    total = torch.round(alloc.cumsum(dim=1)).long()  # rounding the running total keeps the sum exact
    counts = torch.diff(total, dim=1, prepend=torch.zeros_like(total[:, :1]))
    return torch.minimum(counts.clamp(min=1), lengths[:, None])


class PyramidKV(KVCompressor):
    """PyramidKV at a mean of ``config.budget`` tokens per layer."""

    def __init__(self, config: PyramidKVConfig | None = None, **fields: object) -> None:
        super().__init__()
        self.config = config if config is not None else PyramidKVConfig(**fields)  # type: ignore[arg-type]
        self.query_window = self.config.window_size

    def select(self, prefill: Prefill) -> list[Tensor]:
        c = self.config
        lengths = prefill.valid.sum(dim=1)
        budgets = pyramid_budgets(budget_tokens(c.budget, lengths), prefill.n_layers, c.beta, lengths)
        return [
            snapkv_keep(prefill, layer, budgets[:, layer], c.window_size, c.kernel_size, c.pooling)
            for layer in range(prefill.n_layers)
        ]
