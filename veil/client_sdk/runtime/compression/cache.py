"""Pruning the on-device LM's prompt cache to per-layer, per-row kept sets, once after prefill.

**Layout.** Layer ``l`` keeps, per row, its own kept prompt positions, copied in order into new
``(B, H_kv, P_l, d)`` arrays, left-padded to the row that keeps most (``P_l``), with a mask ``(B, P_l)``
marking the real slots; layers of different lengths need a graph with one attention mask per layer
(``export_causal_lm(..., query_window=W)``). Keys are stored after RoPE, so they keep their original
positions: the next token of a row that had ``n`` prompt positions is still at position ``n``,
whatever was dropped. This is the cloud's layout (``veil.models.compression.cache``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from veil.client_sdk.runtime.compression.base import KVKept, Prefill
from veil.client_sdk.runtime.compression.registry import CompressionConfig, select

__all__ = ["compact", "compress_prefill", "keep_masks", "prefill_of", "query_window"]


def query_window(configs: Sequence[CompressionConfig | None], n: int) -> int:
    """How many of the last prompt queries the configs score with, for a prompt of ``n`` positions."""
    windows = [c.query_window for c in configs if c is not None]
    return min(n, max((n if w is None else w for w in windows), default=0))


def compact(
    cache: Sequence[np.ndarray], keep: Sequence[np.ndarray]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Keep only ``keep[l]`` ``(B, n)`` in layer ``l``; returns the new cache and the masks ``(B, P_l)``.

    ``cache`` is ``[key_0, value_0, key_1, ...]``, each ``(B, H_kv, n, d)``. Rows ``[pad t1 t2 t3]``
    keeping ``t1 t3`` and ``[s1 s2 s3 s4]`` keeping ``s2``: ``P = 2``, slots ``[t1 t3]`` with mask
    ``[1 1]`` and ``[s4 s2]`` with mask ``[0 1]`` (the masked slot holds the latest dropped key). A layer
    where some row keeps every position keeps its arrays (there is no slot to save), masked.
    """
    if len(cache) != 2 * len(keep):
        raise ValueError(f"need a key and a value array per layer: {len(keep)} layers, {len(cache)} arrays")
    out: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    for layer, kept in enumerate(keep):
        k, v = cache[2 * layer], cache[2 * layer + 1]
        n, width = k.shape[2], int(kept.sum(axis=1).max())
        if width == n:  # no slot to save (a row keeps everything): the arrays stay, the mask hides
            out += [k, v]
            masks.append(kept.astype(np.int64))
            continue
        pos = np.arange(n)
        # dropped positions sort first, kept ones last in their order: the last `width` are the slots
        slots = np.argsort(np.where(kept, pos + n, pos), axis=1, kind="stable")[:, n - width :]  # (B, P)
        at = slots[:, None, :, None]
        out += [np.take_along_axis(k, at, axis=2), np.take_along_axis(v, at, axis=2)]  # new, contiguous
        masks.append(np.take_along_axis(kept, slots, axis=1).astype(np.int64))
    return out, masks


def prefill_of(
    cache: Sequence[np.ndarray],
    queries: Sequence[np.ndarray] | None,
    valid: np.ndarray,
    protected: np.ndarray,
    scaling: float,
    window: int,
) -> tuple[Prefill, np.ndarray]:
    """The :class:`Prefill` of a prefill call's outputs in the cloud's layout, and how to map back.

    The phone's batch layout is ``[prefix | left-padded text]`` (a row without soft tokens masks the
    prefix slots), the cloud's is left padding only: ``[S1 S2 | pad t1]`` here is ``[pad S1 S2 t1]``
    there. Pooled scores (SnapKV) and query windows depend on where the padding sits, so the prompt is
    reordered to the cloud's layout, padding first (``order`` ``(B, n)``: the position each slot comes
    from), and the selection is exactly the cloud's.

    Parameters
    ----------
    cache: ``2 * L`` arrays ``(B, H_kv, n, d)`` from the prefill call.
    queries: per layer, the post-RoPE queries of the call's last ``W`` positions ``(B, H, W, d)``
        (zeros in front when ``n < W``); ``None`` when the graph gives none.
    valid: ``(B, n)`` bool, False on padding; ``protected``: ``(B, n)`` bool, always kept.
    window: the last prompt queries (in the cloud's layout) the selection scores with.

    Raises
    ------
    ValueError
        A needed query is not among the graph's: ``window`` exceeds the graph's query window, or a
        personalised row's text is shorter than ``window`` while padding separates it from its soft
        tokens (their queries sit before the graph's window; batch such rows apart or export a larger
        window).
    """
    n_layers, (b, n) = len(cache) // 2, valid.shape
    have = 0 if queries is None else queries[0].shape[2]
    if window > min(have, n):
        raise ValueError(
            f"the compression needs the last {window} prompt queries, the model's graph gives "
            f"{min(have, n)}: export it with export_causal_lm(..., query_window=...) at least that large, "
            "or pick a method or window that needs fewer"
        )
    order = np.argsort(valid, axis=1, kind="stable")  # (B, n): padding first, then the tokens in order
    keys = [np.take_along_axis(cache[2 * i], order[:, None, :, None], axis=2) for i in range(n_layers)]
    valid_c = np.take_along_axis(valid, order, axis=1)
    q = [np.zeros((b, 0, 0, 0), np.float32)] * n_layers
    if queries is not None and window:
        source = order[:, n - window :]  # (B, w): the call position of each scored query
        missing = valid_c[:, n - window :] & (source < n - have)
        if missing.any():
            raise ValueError(
                f"row {int(np.argwhere(missing)[0, 0])} needs the queries of its soft tokens, which lie before "
                f"the graph's last {have} positions; batch personalised rows apart or export a larger "
                "query_window"
            )
        at = np.clip(source - (n - have), 0, have - 1)[:, None, :, None]  # padding queries: any row
        q = [np.take_along_axis(x, at, axis=2) for x in queries]
    protected_c = np.take_along_axis(protected & valid, order, axis=1)
    return Prefill(keys, q, valid_c, protected_c, scaling), order


def keep_masks(
    configs: Sequence[CompressionConfig | None], prefill: Prefill
) -> tuple[list[np.ndarray], list[KVKept | None]]:
    """Per layer, the ``(B, n)`` kept positions for one config (or ``None``: keep all) per row, restricted
    to real tokens and widened to the protected ones; and each row's kept fractions (``None`` for rows
    without a config)."""
    n_layers, valid = prefill.n_layers, prefill.valid
    keep = [valid.copy() for _ in range(n_layers)]
    kept: list[KVKept | None] = [None] * len(configs)
    lengths = np.maximum(valid.sum(axis=1), 1).astype(np.float64)  # (B,)
    for config in dict.fromkeys(c for c in configs if c is not None):  # equal configs run once
        rows = np.array([r for r, c in enumerate(configs) if c == config])
        sub = prefill.rows(rows)
        masks = [(m & sub.valid) | sub.protected for m in select(config, sub)]
        if len(masks) != n_layers:
            raise ValueError(
                f"{type(config).__name__} returned {len(masks)} layer masks for {n_layers} layers"
            )
        for layer, mask in enumerate(masks):
            keep[layer][rows] = mask
        frac = np.stack([m.sum(axis=1) for m in masks], axis=1) / lengths[rows, None]  # (b, L)
        for r, f in zip(rows.tolist(), frac, strict=True):
            kept[r] = KVKept(tuple(float(x) for x in f))
    return keep, kept


def compress_prefill(
    configs: Sequence[CompressionConfig | None],
    cache: Sequence[np.ndarray],
    queries: Sequence[np.ndarray] | None,
    valid: np.ndarray,
    protected: np.ndarray,
    scaling: float,
) -> tuple[list[np.ndarray], list[np.ndarray], list[KVKept | None]]:
    """Prune a prefill's cache for one config (or ``None``: keep all) per row (arguments as
    :func:`prefill_of`); returns the new cache, the per-layer masks ``(B, P_l)`` int64 and each row's
    kept fractions."""
    window = query_window(configs, valid.shape[1])
    prefill, order = prefill_of(cache, queries, valid, protected, scaling, window)
    keep_c, kept = keep_masks(configs, prefill)
    keep = []
    for k in keep_c:  # back to the call's layout: slot j of the cloud's layout is position order[:, j]
        back = np.zeros_like(k)
        np.put_along_axis(back, order, k, axis=1)
        keep.append(back)
    new_cache, masks = compact(cache, keep)
    return new_cache, masks, kept
