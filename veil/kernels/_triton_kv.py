"""Triton kernels behind :mod:`veil.kernels.kv_prune` (imported only when Triton is used).

``_last_query_attention``: one program per (row, query head). It streams the key head's ``n`` keys in
blocks of ``BLOCK_N`` (``d`` in one block), keeping an online softmax's running max and sum, writes the
masked, scaled logits to the output, then rewrites them as probabilities. ``_compact``: one program per
(row, key head, block of kept slots), copying ``BLOCK_M`` rows of ``d`` values for keys and values.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["compact_kv_triton", "last_query_attention_triton"]


@triton.jit
def _last_query_attention(
    q_ptr, k_ptr, valid_ptr, out_ptr,
    n, H, G, scaling,
    sq_b, sq_h, sk_b, sk_h, sk_n, sv_b, so_b, so_h,
    D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    h = tl.program_id(1)
    kv = h // G
    d = tl.arange(0, BLOCK_D)
    q = tl.load(q_ptr + b * sq_b + h * sq_h + d, mask=d < D, other=0.0).to(tl.float32)
    m_run = tl.full((), float("-inf"), tl.float32)
    s_run = tl.zeros((), tl.float32)
    for start in range(0, n, BLOCK_N):
        j = start + tl.arange(0, BLOCK_N)
        inside = j < n
        ok = tl.load(valid_ptr + b * sv_b + j, mask=inside, other=0) != 0
        k = tl.load(
            k_ptr + b * sk_b + kv * sk_h + j[:, None] * sk_n + d[None, :],
            mask=inside[:, None] & (d[None, :] < D),
            other=0.0,
        ).to(tl.float32)
        logit = tl.sum(k * q[None, :], axis=1) * scaling
        logit = tl.where(ok, logit, float("-inf"))
        tl.store(out_ptr + b * so_b + h * so_h + j, logit, mask=inside)
        m_new = tl.maximum(m_run, tl.max(logit, axis=0))
        safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s_run = s_run * tl.exp(m_run - safe) + tl.sum(tl.exp(logit - safe), axis=0)
        m_run = m_new
    safe = tl.where(m_run == float("-inf"), 0.0, m_run)
    last_ok = tl.load(valid_ptr + b * sv_b + n - 1) != 0
    scale = tl.where(last_ok & (s_run > 0), 1.0 / s_run, 0.0)
    for start in range(0, n, BLOCK_N):
        j = start + tl.arange(0, BLOCK_N)
        inside = j < n
        logit = tl.load(out_ptr + b * so_b + h * so_h + j, mask=inside, other=float("-inf"))
        tl.store(out_ptr + b * so_b + h * so_h + j, tl.exp(logit - safe) * scale, mask=inside)


@triton.jit
def _compact(
    k_ptr, v_ptr, idx_ptr, ok_ptr, ov_ptr,
    m, sk_b, sk_h, sk_n, si_b, so_b, so_h, so_n,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    h = tl.program_id(1)
    rows = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    inside = rows < m
    src = tl.load(idx_ptr + b * si_b + rows, mask=inside, other=-1)
    d = tl.arange(0, BLOCK_D)
    take = (src >= 0)[:, None] & (d[None, :] < D)
    at = b * sk_b + h * sk_h + tl.maximum(src, 0)[:, None] * sk_n + d[None, :]
    to = b * so_b + h * so_h + rows[:, None] * so_n + d[None, :]
    store = inside[:, None] & (d[None, :] < D)
    tl.store(ok_ptr + to, tl.load(k_ptr + at, mask=take, other=0.0), mask=store)
    tl.store(ov_ptr + to, tl.load(v_ptr + at, mask=take, other=0.0), mask=store)


def last_query_attention_triton(q: Tensor, keys: Tensor, valid: Tensor, scaling: float) -> Tensor:
    b, h, d = q.shape
    h_kv, n = keys.shape[1], keys.shape[2]
    q, keys = q.contiguous(), keys.contiguous()
    flags = valid.to(torch.int8).contiguous()
    out = torch.empty((b, h, n), dtype=torch.float32, device=keys.device)
    block_d = triton.next_power_of_2(d)
    block_n = max(16, min(128, 8192 // block_d))
    _last_query_attention[(b, h)](
        q, keys, flags, out, n, h, h // h_kv, float(scaling),
        q.stride(0), q.stride(1), keys.stride(0), keys.stride(1), keys.stride(2), flags.stride(0),
        out.stride(0), out.stride(1),
        D=d, BLOCK_N=block_n, BLOCK_D=block_d,
    )  # fmt: skip
    return out


def compact_kv_triton(keys: Tensor, values: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    b, h_kv, _, d = keys.shape
    m = index.shape[1]
    keys, values = keys.contiguous(), values.contiguous()
    idx = index.to(torch.int64).contiguous()
    out_k = torch.empty((b, h_kv, m, d), dtype=keys.dtype, device=keys.device)
    out_v = torch.empty_like(out_k)
    block_d = triton.next_power_of_2(d)
    block_m = max(1, min(64, 8192 // block_d))
    grid = (b, h_kv, triton.cdiv(max(m, 1), block_m))
    _compact[grid](
        keys, values, idx, out_k, out_v, m,
        keys.stride(0), keys.stride(1), keys.stride(2), idx.stride(0),
        out_k.stride(0), out_k.stride(1), out_k.stride(2),
        D=d, BLOCK_M=block_m, BLOCK_D=block_d,
    )  # fmt: skip
    return out_k, out_v
