"""What an exported LM needs so the phone can compress its own KV cache after prefill.

KV-cache compression (DBudgetKV, arXiv:2502.16886, and its fixed-budget baselines) keeps a different
set of prompt tokens in every layer and row, so after pruning the layers' caches have different lengths
and each row has its own holes. One ``attention_mask`` for all layers cannot describe that, and the cache
holds keys but not the queries the selection scores with. A *compressible* graph therefore differs from
the plain one in two ways (``export_causal_lm(..., query_window=W)``):

- ``attention_mask.{i}`` ``(batch, past_seq_i + query_seq)`` per layer replaces ``attention_mask``: layer
  ``i`` attends to slot ``j`` iff its mask is 1 there and ``j`` is not after the query (causal over the
  slots, which hold keys in position order; the new tokens come last);
- ``query.{i}`` ``(batch, heads, W, head_dim)`` per layer is added: the post-RoPE queries of the call's
  last ``W`` positions, exactly as the attention used them; when the call has fewer than ``W`` query
  positions the first rows are zeros (``[0 0 q1 q2]`` for two positions and ``W = 4``).

Both come from one attention function registered with transformers' ``AttentionInterface`` under
:data:`ATTENTION`: with the :data:`MASKS_KWARG` keyword it builds each layer's mask from its own 2-D mask
and records the queries into the :data:`QUERIES_KWARG` dict; without them it *is* SDPA.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from veil.models.compression.cache import MASKED_ATTENTION

__all__ = ["ATTENTION", "MASKS_KWARG", "QUERIES_KWARG", "layer_masked_attention"]

ATTENTION = "veil_onnx_layer_masks"
"""The attention implementation name of the per-layer masked SDPA."""
MASKS_KWARG = "veil_layer_masks"
"""Keyword of the model's forward carrying one ``(B, P_i + T)`` mask per layer."""
QUERIES_KWARG = "veil_query_window"
"""Keyword carrying ``(W, dict)``: the window and the dict the layers' last ``W`` queries go into."""


def _layer_masked_sdpa(
    module: Any, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None, **kwargs: Any
):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    masks = kwargs.pop(MASKS_KWARG, None)
    window = kwargs.pop(QUERIES_KWARG, None)
    if window is not None:
        w, store = window
        b, h, t, d = query.shape
        # zeros in front, so the last W rows exist for any t: [0 0 q1 q2] for t = 2, W = 4
        store[int(module.layer_idx)] = torch.cat([query.new_zeros(b, h, w, d), query], dim=2).narrow(2, t, w)
    if masks is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    t, kv = query.shape[2], key.shape[2]
    slot = torch.arange(kv, device=key.device)  # (kv,)
    at = torch.arange(t, device=key.device) + (kv - t)  # (t,): the slot of each query's own key
    causal = slot[None, :] <= at[:, None]  # (t, kv)
    # a query always sees its own key: a padding query would otherwise see nothing, and SDPA's NaN
    # would reach the cache through the next layer's keys (masked, but NaN * 0 is NaN)
    own = slot[None, :] == at[:, None]
    mask = (masks[module.layer_idx].to(torch.bool)[:, None, None, :] & causal) | own  # (B, 1, t, kv)
    return sdpa_attention_forward(module, query, key, value, mask, **kwargs)


@contextlib.contextmanager
def layer_masked_attention(model: nn.Module) -> Iterator[None]:
    """Run ``model``'s attention through the per-layer masked SDPA inside the block (SDPA models only)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    before = model.config._attn_implementation
    if before not in ("sdpa", MASKED_ATTENTION):  # the cloud's masked SDPA is SDPA without its masks
        raise ValueError(f"a compressible export needs attn_implementation='sdpa', got {before!r}")
    if ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION, _layer_masked_sdpa)
        AttentionMaskInterface.register(ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    model.set_attn_implementation(ATTENTION)
    try:
        yield
    finally:
        model.set_attn_implementation(before)
