"""The two memory-bound steps of KV-cache pruning after prefill (DBudgetKV, arXiv:2502.16886, Alg. 1).

1. :func:`last_query_attention`: for one layer, the softmax attention row of the last prompt token's
   query over every prompt key, per query head, in fp32, reading the un-repeated GQA keys once (query
   head ``h`` reads key head ``h // (H / H_kv)``; no ``repeat_kv`` copy). On a GPU it runs split-K:
   each program takes a block of keys for every query head of its group and leaves the block's softmax
   max and sum; a second launch merges them and normalises the row in place. The cut point follows
   from this row by a cumulative sum over ``n`` values (``veil.models.compression``), ``d`` times less
   data than the keys.
2. :func:`compact_kv`: the kept positions of every row, the same for all heads of a row (position or
   shared ranking), copied into one new contiguous cache ``(B, H_kv, m, d)`` so the old storage can be
   freed; rows that keep fewer than ``m`` are left-padded with zeros (their mask hides them).

Both take padding into account through ``valid`` ``(B, n)``: a padded key gets probability 0, and a row
whose last position is padding (no query) gets a row of zeros.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

__all__ = [
    "compact_kv",
    "compact_kv_reference",
    "last_query_attention",
    "last_query_attention_reference",
    "triton_available",
]


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _use_triton(t: Tensor) -> bool:
    mode = os.environ.get("VEIL_KERNELS", "auto")
    if mode not in ("auto", "triton", "reference"):
        raise ValueError(f"VEIL_KERNELS must be auto, triton or reference, got {mode!r}")
    if mode == "reference":
        return False
    if mode == "triton":
        if not triton_available():
            raise ValueError("VEIL_KERNELS=triton but triton does not import")
        if not t.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                "VEIL_KERNELS=triton on CPU tensors needs TRITON_INTERPRET=1 (Triton's interpreter)"
            )
        return True
    return t.is_cuda and triton_available()


def _check(q: Tensor, keys: Tensor, valid: Tensor) -> None:
    if q.dim() != 3 or keys.dim() != 4 or valid.dim() != 2:
        raise ValueError(
            f"want q (B, H, d), keys (B, H_kv, n, d), valid (B, n); got {q.shape}, {keys.shape}, {valid.shape}"
        )
    b, h, d = q.shape
    if keys.shape[0] != b or keys.shape[3] != d or h % keys.shape[1]:
        raise ValueError(
            f"q {tuple(q.shape)} does not fit keys {tuple(keys.shape)} (H must be a multiple of H_kv)"
        )
    if tuple(valid.shape) != (b, keys.shape[2]):
        raise ValueError(f"valid must be {(b, keys.shape[2])}, got {tuple(valid.shape)}")


def last_query_attention_reference(q: Tensor, keys: Tensor, valid: Tensor, scaling: float) -> Tensor:
    """Plain torch: ``(B, H, n)`` fp32 softmax of ``q . K^T * scaling`` over the valid keys."""
    _check(q, keys, valid)
    b, h, d = q.shape
    h_kv, n = keys.shape[1], keys.shape[2]
    grouped = q.float().reshape(b, h_kv, h // h_kv, 1, d)
    logits = torch.matmul(grouped, keys.float().unsqueeze(2).transpose(-1, -2)).reshape(b, h, n) * scaling
    logits = logits.masked_fill(~valid[:, None, :], float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    return probs * valid[:, None, -1:]  # a row whose last position is padding has no query


def _check_compact(keys: Tensor, values: Tensor, index: Tensor) -> None:
    if keys.dim() != 4 or keys.shape != values.shape:
        raise ValueError(
            f"keys and values must be one (B, H_kv, n, d) shape, got {tuple(keys.shape)}, {tuple(values.shape)}"
        )
    if index.dim() != 2 or index.shape[0] != keys.shape[0]:
        raise ValueError(f"index must be (B, m) with B = {keys.shape[0]}, got {tuple(index.shape)}")
    if index.numel() and int(index.max()) >= keys.shape[2]:
        raise ValueError(f"index points past the {keys.shape[2]} cached positions")


def compact_kv_reference(keys: Tensor, values: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """Plain torch: ``keys[b, :, index[b]]`` per row (``index`` ``(B, m)``, ``-1`` = a zero pad slot)."""
    _check_compact(keys, values, index)
    pad = index < 0
    at = index.clamp(min=0)[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[3])
    out_k = keys.gather(2, at).masked_fill(pad[:, None, :, None], 0)
    out_v = values.gather(2, at).masked_fill(pad[:, None, :, None], 0)
    return out_k.contiguous(), out_v.contiguous()


def last_query_attention(q: Tensor, keys: Tensor, valid: Tensor, scaling: float) -> Tensor:
    """``(B, H, n)`` fp32 attention of the last query; the Triton kernel on CUDA, else the reference.

    Parameters
    ----------
    q: ``(B, H, d)`` the last prompt token's post-RoPE query.
    keys: ``(B, H_kv, n, d)`` post-RoPE prompt keys, un-repeated.
    valid: ``(B, n)`` bool, False for padding.
    scaling: the attention's softmax scale (usually ``d ** -0.5``).
    """
    if not _use_triton(keys):
        return last_query_attention_reference(q, keys, valid, scaling)
    _check(q, keys, valid)
    from veil.kernels._triton_kv import last_query_attention_triton

    return last_query_attention_triton(q, keys, valid, scaling)


def compact_kv(keys: Tensor, values: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """The kept positions ``index`` ``(B, m)`` (``-1`` pads) of every head, as new contiguous tensors."""
    if not _use_triton(keys):
        return compact_kv_reference(keys, values, index)
    _check_compact(keys, values, index)
    from veil.kernels._triton_kv import compact_kv_triton

    return compact_kv_triton(keys, values, index)
