"""Compression of one batch's prompt cache, right after the prefill forward: rows may use different
compressors, or none (their cache keeps every prompt token, padding aside)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from veil.models.compression.base import KVCompressor, KVKept, Prefill
from veil.models.compression.cache import MASKED_ATTENTION, compact, enable_masked_attention
from veil.models.compression.capture import QueryCapture, attention_modules

__all__ = ["PrefillCompression", "check_supported", "per_row"]


def check_supported(model: nn.Module) -> None:
    """``ValueError`` saying why, unless :class:`PrefillCompression` can hook ``model``: Llama-like
    attention modules, SDPA attention and no sliding-window layers (checked before any forward)."""
    attention_modules(model)
    config = model.config  # type: ignore[union-attr]
    impl = config._attn_implementation
    if impl not in ("sdpa", MASKED_ATTENTION):
        raise ValueError(f"KV compression needs attn_implementation='sdpa', got {impl!r}")
    if "sliding_attention" in (getattr(config, "layer_types", None) or ()):
        raise ValueError("KV compression does not support sliding-window attention layers")


def per_row(
    compression: KVCompressor | Sequence[KVCompressor | None] | None, n_rows: int
) -> list[KVCompressor | None]:
    """One compressor (or ``None``) per row, from one for all rows or a per-row list."""
    if compression is None or isinstance(compression, KVCompressor):
        return [compression] * n_rows
    rows = list(compression)
    if len(rows) != n_rows:
        raise ValueError(f"need one compressor (or None) per row: {n_rows} rows, got {len(rows)}")
    for c in rows:
        if c is not None and not isinstance(c, KVCompressor):
            raise ValueError(f"compression must be a KVCompressor or None, got {type(c).__name__}")
    return rows


class PrefillCompression:
    """Hooks a model's prefill and then prunes its cache for the given per-row compressors.

    Usage: ``with pc.capture(): out = model(...)``, then ``masks = pc.apply(cache, valid, protected)``,
    and pass ``{KV_MASKS_KWARG: masks}`` to every later forward.
    """

    def __init__(self, model: nn.Module, compressors: Sequence[KVCompressor | None]) -> None:
        self.compressors = list(compressors)
        self.modules = attention_modules(model)
        enable_masked_attention(model)
        windows = [c.query_window for c in self.compressors if c is not None]
        self.window = None if any(w is None for w in windows) else max(windows, default=0)
        self._capture = QueryCapture(self.modules, self.window)
        self.kept: list[KVKept | None] = [None] * len(self.compressors)

    def capture(self) -> QueryCapture:
        """The context manager to run the prefill forward in."""
        return self._capture

    def apply(self, cache: Any, valid: Tensor, protected: Tensor) -> list[Tensor | None]:
        """Prune ``cache`` in place; returns the per-layer key masks ``(B, P_l)`` (``None``: all kept).

        ``valid`` and ``protected`` are ``(B, n)`` bool: real tokens and tokens that are always kept.
        """
        n_layers = len(self.modules)
        keys = [layer.keys for layer in cache.layers]
        empty = keys[0].new_zeros(
            keys[0].shape[0], self.modules[0].config.num_attention_heads, 0, keys[0].shape[-1]
        )
        queries = [self._capture.queries.get(i, empty) for i in range(n_layers)]
        first = self.modules[0]
        scaling = float(getattr(first, "scaling", first.head_dim**-0.5))
        prefill = Prefill(keys, queries, valid, protected & valid, scaling)
        keep = [valid.clone() for _ in range(n_layers)]
        for comp in {id(c): c for c in self.compressors if c is not None}.values():
            rows = torch.tensor([r for r, c in enumerate(self.compressors) if c is comp], device=valid.device)
            for layer, mask in enumerate(comp.compress(prefill.rows(rows))):
                keep[layer][rows] = mask
            for r, kept in zip(rows.tolist(), comp.last_kept, strict=True):
                self.kept[r] = kept
        self._capture.queries.clear()
        # a layer without a hidden slot needs no mask (checked once here, not at every decode step)
        return [None if bool(m.all()) else m for m in compact(cache, keep)]
