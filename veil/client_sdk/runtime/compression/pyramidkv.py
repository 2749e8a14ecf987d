"""PyramidKV on the phone: budgets that shrink with depth, SnapKV selection in each layer
(arXiv:2406.02069), the numpy twin of ``veil.models.compression.pyramidkv``.

Layer ``l`` of ``L`` keeps ``b_l`` tokens, an arithmetic sequence from ``2b - b/beta`` (layer 0) down to
``b/beta`` (layer ``L - 1``) with mean ``b``; each ``b_l`` is rounded so the layers' total is ``L * b``
and capped at the row's prompt length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from veil.client_sdk.runtime.compression.base import Prefill
from veil.client_sdk.runtime.compression.config import ObservationWindowConfig
from veil.client_sdk.runtime.compression.scoring import budget_tokens
from veil.client_sdk.runtime.compression.snapkv import snapkv_keep

__all__ = ["PyramidKVConfig", "pyramid_budgets", "select_pyramidkv"]


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

    @property
    def query_window(self) -> int:
        return self.window_size


def pyramid_budgets(budget: np.ndarray, n_layers: int, beta: float, lengths: np.ndarray) -> np.ndarray:
    """Per-row, per-layer token budgets ``(B, L)`` with mean ``budget`` ``(B,)``, capped at ``lengths``.

    >>> pyramid_budgets(np.array([10]), 4, 2.0, np.array([100])).tolist()
    [[15, 12, 8, 5]]
    """
    b = np.asarray(budget, dtype=np.float64)[:, None]  # (B, 1)
    low = b / beta
    high = 2 * b - low
    frac = np.arange(n_layers, dtype=np.float64) / max(n_layers - 1, 1)  # (L,)
    shares = high - (high - low) * frac  # (B, L), mean b
    cap = np.broadcast_to(np.asarray(lengths, dtype=np.float64)[:, None], shares.shape)
    alloc = np.minimum(shares, cap)
    for _ in range(n_layers):  # each pass caps at least one more layer, or gives out everything
        short = n_layers * b - alloc.sum(axis=1, keepdims=True)  # (B, 1)
        room = np.where(alloc < cap, shares, 0.0)
        room_sum = room.sum(axis=1, keepdims=True)
        if not ((short > 1e-9) & (room_sum > 0)).any():
            break
        alloc = np.minimum(alloc + short * room / np.maximum(room_sum, 1e-30), cap)
    total = np.round(np.cumsum(alloc, axis=1)).astype(np.int64)  # rounding the running total keeps the sum
    counts = np.diff(total, axis=1, prepend=0)
    return np.minimum(np.maximum(counts, 1), np.asarray(lengths, dtype=np.int64)[:, None])


def select_pyramidkv(config: PyramidKVConfig, prefill: Prefill) -> list[np.ndarray]:
    """Per layer, the ``(B, n)`` bool mask of prompt positions to keep."""
    c = config
    lengths = prefill.valid.sum(axis=1)
    budgets = pyramid_budgets(budget_tokens(c.budget, lengths), prefill.n_layers, c.beta, lengths)
    return [
        snapkv_keep(prefill, layer, budgets[:, layer], c.window_size, c.kernel_size, c.pooling)
        for layer in range(prefill.n_layers)
    ]
