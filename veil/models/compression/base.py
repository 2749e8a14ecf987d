"""What every KV-cache compressor shares: the prompt after prefill, the kept-set contract, the record.

A compressor looks at the prompt once, after the prefill forward, and returns for every layer a boolean
``keep`` mask ``(B, n)`` over the prompt positions; :func:`veil.models.compression.cache.compact` then
copies the kept keys and values into a smaller cache. Every compressor keeps, whatever its scores say,

- only real tokens: left padding is never kept, and never counts as a sink;
- every ``protected`` position (the soft tokens of a personalised row: pruning them would silently
  de-personalise the answer).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["KVCompressor", "KVKept", "Prefill"]


@dataclass(frozen=True)
class Prefill:
    """The prompt as the cache holds it right after the prefill forward.

    Attributes
    ----------
    keys: per layer, the un-repeated post-RoPE keys ``(B, H_kv, n, d)``.
    queries: per layer, the post-RoPE queries of the last ``w`` prompt positions ``(B, H, w, d)``
        (``w`` is the most any compressor of the batch asked for, see :attr:`KVCompressor.query_window`).
    valid: ``(B, n)`` bool, False on left padding.
    protected: ``(B, n)`` bool, positions that are always kept (soft tokens).
    scaling: the attention's softmax scale (``head_dim ** -0.5`` for Llama-like models).
    """

    keys: Sequence[Tensor]
    queries: Sequence[Tensor]
    valid: Tensor
    protected: Tensor
    scaling: float

    @property
    def n_layers(self) -> int:
        return len(self.keys)

    def rows(self, index: Tensor) -> Prefill:
        """The same prompt restricted to the batch rows ``index`` ``(b,)``."""
        return Prefill(
            [k[index] for k in self.keys],
            [q[index] for q in self.queries],
            self.valid[index],
            self.protected[index],
            self.scaling,
        )


@dataclass(frozen=True)
class KVKept:
    """How much of one row's prompt cache was kept.

    Attributes
    ----------
    per_layer: kept prompt tokens / prompt tokens (padding excluded), one per layer.
    """

    per_layer: tuple[float, ...]

    @property
    def mean(self) -> float:
        """Kept fraction of the whole prompt cache (every layer holds the same ``n`` tokens before)."""
        return sum(self.per_layer) / len(self.per_layer)


class KVCompressor(ABC):
    """One KV-cache compression method, applied once after prefill.

    Subclasses set :attr:`query_window` and implement :meth:`select`; :meth:`compress` checks the
    contract above and records the kept fractions, readable afterwards as :attr:`last_kept`.
    """

    query_window: int | None = 1
    """How many of the last prompt queries the method scores with (``None``: all of them, ``0``: none)."""

    def __init__(self) -> None:
        self._last_kept: tuple[KVKept, ...] = ()
        self._last_keep: tuple[Tensor, ...] = ()

    @abstractmethod
    def select(self, prefill: Prefill) -> list[Tensor]:
        """Per layer, the ``(B, n)`` bool mask of prompt positions to keep."""

    def compress(self, prefill: Prefill) -> list[Tensor]:
        """:meth:`select`, restricted to real tokens and widened to the protected ones; recorded."""
        keep = [(k & prefill.valid) | (prefill.protected & prefill.valid) for k in self.select(prefill)]
        if len(keep) != prefill.n_layers:
            raise ValueError(
                f"{type(self).__name__} returned {len(keep)} layer masks for {prefill.n_layers} layers"
            )
        lengths = prefill.valid.sum(dim=1).clamp(min=1).double()  # (B,)
        frac = torch.stack([k.sum(dim=1) / lengths for k in keep], dim=1)  # (B, layers)
        self._last_kept = tuple(KVKept(tuple(float(f) for f in row)) for row in frac)
        self._last_keep = tuple(keep)
        return keep

    @property
    def last_kept(self) -> tuple[KVKept, ...]:
        """Kept fractions of the rows of the last :meth:`compress` call, one per row."""
        return self._last_kept

    @property
    def last_keep(self) -> tuple[Tensor, ...]:
        """The keep masks ``(B, n)`` per layer of the last :meth:`compress` call."""
        return self._last_keep
