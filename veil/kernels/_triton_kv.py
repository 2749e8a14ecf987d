"""Triton kernels behind :mod:`veil.kernels.kv_prune` (imported only when Triton is used).

The attention row is computed split-K, as flash-decoding splits a decode step (Dao et al., 2023), so
that a single row at a long context still spreads over every multiprocessor:

* ``_row_logits``: one program per (row, key head, block of ``BLOCK_N`` keys). It loads its block of
  keys once, computes the masked, scaled logits of every query head of the group (``G = H / H_kv``,
  GQA without repeating the keys), writes them, and writes the block's max and sum of exponentials per
  query head (the partial state of an online softmax).
* ``_row_normalise``: one program per (row, query head, block of ``BLOCK_P`` logits). It merges the
  row's partials into the global max and sum, then rewrites its logits as probabilities in place.

The keys, ``H_kv * n * d`` values, are read once; the fp32 row, ``d / G`` times smaller in elements, is
written, read and written again. ``_compact``: one program per (row, key head, block of kept slots),
copying ``BLOCK_M`` rows of ``d`` values for keys and values.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["compact_kv_triton", "last_query_attention_triton"]

BLOCK_N = 64
"""Keys per loop step of ``_row_logits`` (chosen on an H200 with ``benchmarks/kv_kernel_bandwidth.py``)."""
CHUNK_BLOCKS = 16
"""Loop steps per program of ``_row_logits``: ``BLOCK_N * CHUNK_BLOCKS`` keys."""
STAGES = 3
"""Loads in flight in ``_row_logits``' loop (software pipelining)."""
BLOCK_P = 2048
"""Logits per program of ``_row_normalise``."""


@triton.jit
def _row_logits(
    q_ptr, k_ptr, valid_ptr, out_ptr, pm_ptr, ps_ptr,
    n, chunk, scaling,
    sq_b, sq_h, sk_b, sk_h, sk_n, sv_b, so_b, so_h, sp_b, sp_h,
    G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    IEEE: tl.constexpr, STAGES: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    kv = tl.program_id(1)
    c = tl.program_id(2)
    d = tl.arange(0, BLOCK_D)
    g = tl.arange(0, G_PAD)
    heads = kv * G + g
    q = tl.load(  # (BLOCK_D, G_PAD): the group's queries as columns, zero past G and past D
        q_ptr + b * sq_b + heads[None, :] * sq_h + d[:, None],
        mask=(g[None, :] < G) & (d[:, None] < D),
        other=0.0,
    )
    m_run = tl.full((G_PAD,), float("-inf"), tl.float32)
    s_run = tl.zeros((G_PAD,), tl.float32)
    for start in tl.range(c * chunk, tl.minimum(c * chunk + chunk, n), BLOCK_N, num_stages=STAGES):
        j = start + tl.arange(0, BLOCK_N)
        inside = j < n
        k = tl.load(
            k_ptr + b * sk_b + kv * sk_h + j[:, None] * sk_n + d[None, :],
            mask=inside[:, None] & (d[None, :] < D),
            other=0.0,
        )
        # a constexpr branch (Triton compiles one side): fp32 or mixed inputs take full fp32 products, not
        # tf32; bf16 / fp16 products are exact in the fp32 accumulator
        if IEEE:  # noqa: SIM108
            logit = tl.dot(k.to(tl.float32), q.to(tl.float32), input_precision="ieee")  # (BLOCK_N, G_PAD)
        else:
            logit = tl.dot(k, q)
        ok = tl.load(valid_ptr + b * sv_b + j, mask=inside, other=0) != 0
        logit = tl.where(ok[:, None], logit * scaling, float("-inf"))
        tl.store(
            out_ptr + b * so_b + heads[None, :] * so_h + j[:, None], logit,
            mask=inside[:, None] & (g[None, :] < G),
        )  # fmt: skip
        m_new = tl.maximum(m_run, tl.max(logit, axis=0))
        safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s_run = s_run * tl.exp(m_run - safe) + tl.sum(tl.exp(logit - safe[None, :]), axis=0)
        m_run = m_new
    tl.store(pm_ptr + b * sp_b + heads * sp_h + c, m_run, mask=g < G)
    tl.store(ps_ptr + b * sp_b + heads * sp_h + c, s_run, mask=g < G)


@triton.jit
def _row_normalise(
    valid_ptr, out_ptr, pm_ptr, ps_ptr,
    n, n_chunks,
    sv_b, so_b, so_h, sp_b, sp_h,
    NB: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    h = tl.program_id(1)
    i = tl.arange(0, NB)
    pm = tl.load(pm_ptr + b * sp_b + h * sp_h + i, mask=i < n_chunks, other=float("-inf"))
    ps = tl.load(ps_ptr + b * sp_b + h * sp_h + i, mask=i < n_chunks, other=0.0)
    m = tl.max(pm, axis=0)
    safe = tl.where(m == float("-inf"), 0.0, m)
    s = tl.sum(ps * tl.exp(pm - safe), axis=0)
    last_ok = tl.load(valid_ptr + b * sv_b + n - 1) != 0
    scale = tl.where(last_ok & (s > 0), 1.0 / s, 0.0)
    j = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    at = out_ptr + b * so_b + h * so_h + j
    logit = tl.load(at, mask=j < n, other=float("-inf"))
    tl.store(at, tl.exp(logit - safe) * scale, mask=j < n)


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


def last_query_attention_triton(
    q: Tensor,
    keys: Tensor,
    valid: Tensor,
    scaling: float,
    block_n: int = BLOCK_N,
    chunk_blocks: int = CHUNK_BLOCKS,
    num_warps: int = 4,
    num_stages: int = STAGES,
) -> Tensor:
    b, h, d = q.shape
    h_kv, n = keys.shape[1], keys.shape[2]
    g = h // h_kv
    q, keys = q.contiguous(), keys.contiguous()
    out = torch.empty((b, h, n), dtype=torch.float32, device=keys.device)
    chunk = block_n * chunk_blocks
    n_chunks = triton.cdiv(n, chunk)
    part_m = torch.empty((b, h, n_chunks), dtype=torch.float32, device=keys.device)
    part_s = torch.empty_like(part_m)
    _row_logits[(b, h_kv, n_chunks)](
        q, keys, valid, out, part_m, part_s, n, chunk, float(scaling),
        q.stride(0), q.stride(1), keys.stride(0), keys.stride(1), keys.stride(2), valid.stride(0),
        out.stride(0), out.stride(1), part_m.stride(0), part_m.stride(1),
        G=g, G_PAD=max(16, triton.next_power_of_2(g)), D=d, BLOCK_N=block_n,
        BLOCK_D=max(16, triton.next_power_of_2(d)), IEEE=keys.dtype == torch.float32 or q.dtype != keys.dtype, STAGES=num_stages,
        num_warps=num_warps,
    )  # fmt: skip
    block_p = min(BLOCK_P, triton.next_power_of_2(n))
    _row_normalise[(b, h, triton.cdiv(n, block_p))](
        valid, out, part_m, part_s, n, n_chunks,
        valid.stride(0), out.stride(0), out.stride(1), part_m.stride(0), part_m.stride(1),
        NB=triton.next_power_of_2(n_chunks), BLOCK_P=block_p,
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
