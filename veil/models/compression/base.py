"""What every KV-cache compressor shares: the prompt after prefill, the kept-set contract, the record.

A compressor looks at the prompt once, after the prefill forward, and returns for every layer a boolean
``keep`` mask ``(B, n)`` over the prompt positions; :func:`veil.models.compression.cache.compact` then
copies the kept keys and values into a smaller cache. Every compressor keeps, whatever its scores say,

- only real tokens: left padding is never kept, and never counts as a sink;
- every ``protected`` position (the soft tokens of a personalised row: pruning them would silently
  de-personalise the answer).

:class:`Prefill` (here holding torch tensors) and :class:`KVKept` are the phone SDK's
(:mod:`veil.client_sdk.runtime.compression.base`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from veil.client_sdk.runtime.compression.base import KVKept, Prefill

__all__ = ["KVCompressor", "KVKept", "Prefill"]


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
        self._last_kept = tuple(KVKept(tuple(row)) for row in frac.tolist())  # one device sync
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
