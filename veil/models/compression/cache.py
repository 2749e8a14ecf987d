"""Pruning a transformers 5 ``DynamicCache`` to per-layer, per-row kept sets, and attending to them.

**Layout.** Layer ``l`` keeps, per row, its own kept prompt positions, copied in order into a new
``(B, H_kv, P_l, d)`` tensor (one ``gather``, so the old storage is freed), left-padded to the row that
keeps most (``P_l``); a key mask ``(B, P_l)`` marks the real slots. Keys are stored after RoPE, so they
keep their original positions, and new tokens take positions ``n + t`` from the caller's ``position_ids``.

**Attention.** transformers builds one attention mask per forward, sized by one layer's cache, so it
cannot describe layers of different lengths. The model's attention is therefore dispatched through a
function registered with transformers' ``AttentionInterface`` (``veil_kv_sdpa``, with SDPA's mask
builder registered under the same name): without a ``veil_kv_masks`` keyword it *is* SDPA; with one,
it builds layer ``l``'s mask from ``veil_kv_masks[l]`` (the first slots' key mask: the prompt part, and
the part prefilled after compression if any (:func:`append_masks`); ``None`` where every slot holds a kept
key) plus the causal tail of the tokens appended since, and calls SDPA with it. The keyword travels from
the model's ``forward`` through every decoder layer to the attention function, so each call carries its
own masks and nothing global changes per request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from veil.kernels import compact_kv

__all__ = ["KV_MASKS_KWARG", "MASKED_ATTENTION", "append_masks", "compact", "enable_masked_attention"]

KV_MASKS_KWARG = "veil_kv_masks"
"""Keyword of the model's forward that carries the per-layer prompt key masks."""
MASKED_ATTENTION = "veil_kv_sdpa"
"""The attention implementation name under which the masked SDPA is registered."""


def _masked_sdpa(
    module: Any, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None, **kwargs: Any
):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    masks = kwargs.pop(KV_MASKS_KWARG, None)
    if masks is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    prefix = masks[module.layer_idx]  # (B, P), or None where every slot is a kept key
    b, q_len, kv_len = query.shape[0], query.shape[2], key.shape[2]
    if prefix is None and q_len == 1:  # nothing to hide: the unmasked kernel, as without compression
        return sdpa_attention_forward(module, query, key, value, None, **kwargs)
    slot = torch.arange(kv_len, device=key.device)
    # query i (of q_len, the last ones) sits in slot kv_len - q_len + i and sees the slots up to it that
    # the prefix mask does not hide; the mask may cover some of the queries' own slots (a question
    # prefilled after compression, with its left padding hidden)
    causal = slot[None, :] <= (kv_len - q_len + torch.arange(q_len, device=key.device))[:, None]  # (q, kv)
    shown = torch.ones(b, kv_len, dtype=torch.bool, device=key.device)  # (B, kv)
    if prefix is not None:
        shown[:, : prefix.shape[1]] = prefix
    mask = shown[:, None, None, :] & causal[None, None]  # (B, 1, q, kv)
    return sdpa_attention_forward(module, query, key, value, mask, **kwargs)


def enable_masked_attention(model: Any) -> None:
    """Route ``model``'s attention through the masked SDPA (idempotent; identical without masks).

    Raises ``ValueError`` for models not on SDPA (eager and flash attention are not supported).
    """
    impl = model.config._attn_implementation
    if impl == MASKED_ATTENTION:
        return
    if impl != "sdpa":
        raise ValueError(f"KV compression needs attn_implementation='sdpa', got {impl!r}")
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    if MASKED_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(MASKED_ATTENTION, _masked_sdpa)
        AttentionMaskInterface.register(MASKED_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    model.set_attn_implementation(MASKED_ATTENTION)


def compact(cache: Any, keep: Sequence[Tensor]) -> list[Tensor]:
    """Keep only ``keep[l]`` ``(B, n)`` in layer ``l`` of ``cache``; returns the key masks ``(B, P_l)``.

    Rows ``[pad t1 t2 t3]`` keeping ``t1 t3`` and ``[s1 s2 s3 s4]`` keeping ``s2``: ``P = 2``, slots
    ``[t1 t3]`` with mask ``[T T]`` and ``[s1 s2]`` with mask ``[F T]`` (the masked slot is a dropped key).
    Layers that keep everything are left untouched.
    """
    layers = getattr(cache, "layers", None)
    if layers is None or len(layers) != len(keep):
        raise ValueError(
            f"expected a transformers 5 cache with {len(keep)} layers, got {type(cache).__name__}"
        )
    if any(getattr(layer, "is_sliding", False) for layer in layers):
        raise ValueError("KV compression does not support sliding-window cache layers")
    counts = torch.stack([kept.sum(dim=1) for kept in keep])  # (layers, B)
    widths, fewest = (t.tolist() for t in (counts.max(dim=1).values, counts.min(dim=1).values))  # one sync
    masks = []
    for layer, kept, width, least in zip(layers, keep, widths, fewest, strict=True):
        n = layer.keys.shape[2]
        if least == n:  # every row keeps every position
            masks.append(kept)
            continue
        pos = torch.arange(n, device=kept.device)
        # dropped positions sort first, kept ones last in their order: the last `width` are the slots
        slots = torch.argsort(torch.where(kept, pos + n, pos), dim=1)[:, n - width :]  # (B, P)
        layer.keys, layer.values = compact_kv(layer.keys, layer.values, slots)  # (B, H_kv, P, d), new
        masks.append(kept.gather(1, slots))
    return masks


def append_masks(masks: Sequence[Tensor | None], cache: Any, appended: Tensor) -> list[Tensor | None]:
    """The key masks of ``cache`` once tokens whose validity is ``appended`` ``(B, Q)`` are fed next.

    Called before that forward, with ``masks`` from :func:`compact` for the slots ``cache`` holds now;
    the result, passed to that forward and every later one, hides the fed tokens' padding. Rows
    ``[t1 t3]`` (mask ``[T T]``) and ``[s1 s2]`` (``[F T]``) fed ``[pad q1]`` and ``[r1 r2]``:
    ``[T T F T]`` and ``[F T T T]``.
    """
    out: list[Tensor | None] = []
    all_valid = bool(appended.all())
    for mask, layer in zip(masks, cache.layers, strict=True):
        if mask is None and all_valid:
            out.append(None)
            continue
        if mask is None:
            mask = torch.ones(
                appended.shape[0], layer.keys.shape[2], dtype=torch.bool, device=appended.device
            )
        out.append(torch.cat([mask, appended.to(torch.bool)], dim=1))  # (B, P_l + Q)
    return out
