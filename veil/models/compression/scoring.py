"""Pure tensor functions the compressors are built from: attention rows without an ``n x n`` matrix and
sink / recent / top-k masks, the torch twins of :mod:`veil.client_sdk.runtime.compression.scoring` (they
run where the prefill is), and token budgets, the SDK's numpy function on a handful of integers.

Shapes: ``B`` batch, ``H`` query heads, ``H_kv`` key-value heads (``G = H / H_kv`` queries per group),
``n`` prompt positions, ``w`` scored queries, ``d`` head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from veil.client_sdk.runtime.compression import scoring as shared

__all__ = [
    "accumulated_attention",
    "budget_tokens",
    "first_valid",
    "last_valid",
    "pool_scores",
    "query_attention",
    "ranking",
    "top_k",
]


def query_attention(queries: Tensor, keys: Tensor, valid: Tensor, scaling: float) -> Tensor:
    """Softmax attention of the last ``w`` prompt queries over the prompt keys, in fp32.

    The keys are used un-repeated: queries are grouped ``(B, H_kv, G, w, d)`` against keys
    ``(B, H_kv, 1, n, d)``, so no ``repeat_kv`` copy is made. Query ``i`` sits at position ``n - w + i``
    and sees keys ``j <= n - w + i`` (causal) that are not padding; rows of padding queries are zero.

    Parameters
    ----------
    queries: ``(B, H, w, d)`` post-RoPE.
    keys: ``(B, H_kv, n, d)`` post-RoPE.
    valid: ``(B, n)`` bool.

    Returns
    -------
    ``(B, H, w, n)`` float32 attention probabilities.
    """
    b, h, w, d = queries.shape
    h_kv, n = keys.shape[1], keys.shape[2]
    q = queries.float().reshape(b, h_kv, h // h_kv, w, d)  # (B, H_kv, G, w, d)
    k = keys.float().unsqueeze(2)  # (B, H_kv, 1, n, d)
    logits = torch.matmul(q, k.transpose(-1, -2)) * scaling  # (B, H_kv, G, w, n)
    q_pos = torch.arange(n - w, n, device=keys.device)  # (w,)
    causal = torch.arange(n, device=keys.device)[None, :] <= q_pos[:, None]  # (w, n)
    visible = causal[None] & valid[:, None, :]  # (B, w, n)
    logits = logits.masked_fill(~visible[:, None, None], float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # a fully hidden row (padding query) -> 0
    probs = probs * valid[:, None, None, n - w :, None]  # padding queries contribute nothing
    return probs.reshape(b, h, w, n)


def accumulated_attention(
    queries: Tensor, keys: Tensor, valid: Tensor, scaling: float, chunk: int = 256
) -> Tensor:
    """Attention received by every key, summed over all ``w`` queries and heads: ``(B, n)``.

    Computed ``chunk`` query rows at a time, so memory stays ``O(chunk * n)`` instead of ``O(w * n)``.
    """
    n, w = keys.shape[2], queries.shape[2]
    total = keys.new_zeros(keys.shape[0], n, dtype=torch.float32)
    for start in range(0, w, chunk):
        stop = min(start + chunk, w)
        # the chunk's queries sit at positions n - w + start ... n - w + stop - 1: score them against the
        # keys up to the chunk's last position, as if that were the end of the prompt
        end = n - w + stop
        part = query_attention(queries[:, :, start:stop], keys[:, :, :end], valid[:, :end], scaling)
        total[:, :end] += part.sum(dim=(1, 2))
    return total


def pool_scores(scores: Tensor, kernel_size: int, pooling: str) -> Tensor:
    """Smooth ``(B, n)`` scores along positions (stride 1, same length), as SnapKV clusters its picks."""
    if kernel_size <= 1:
        return scores
    x = scores.unsqueeze(1)  # (B, 1, n)
    pad = kernel_size // 2
    if pooling == "maxpool":
        out = F.max_pool1d(x, kernel_size, stride=1, padding=pad)
    else:
        out = F.avg_pool1d(x, kernel_size, stride=1, padding=pad, count_include_pad=False)
    return out[:, 0, : scores.shape[1]]


def first_valid(valid: Tensor, count: Tensor | int) -> Tensor:
    """``(B, n)`` mask of each row's first ``count`` real tokens (padding never counts).

    >>> first_valid(torch.tensor([[False, True, True, True]]), 2).tolist()  # [pad t1 t2 t3]
    [[False, True, True, False]]
    """
    rank = valid.long().cumsum(dim=1) - 1  # index among the row's real tokens
    count = torch.as_tensor(count, device=valid.device).reshape(-1, 1)
    return valid & (rank < count)


def last_valid(valid: Tensor, count: Tensor | int) -> Tensor:
    """``(B, n)`` mask of each row's last ``count`` real tokens.

    >>> last_valid(torch.tensor([[False, True, True, True]]), 2).tolist()
    [[False, False, True, True]]
    """
    rank = valid.long().flip(1).cumsum(dim=1).flip(1) - 1  # 0 on the last real token
    count = torch.as_tensor(count, device=valid.device).reshape(-1, 1)
    return valid & (rank < count)


def top_k(scores: Tensor, candidates: Tensor, k: Tensor) -> Tensor:
    """``(B, n)`` mask of each row's ``k[b]`` best-scoring candidates (ties: the earlier position).

    >>> top_k(torch.tensor([[0.1, 0.9, 0.5, 0.7]]), torch.tensor([[True, True, True, False]]),
    ...       torch.tensor([2])).tolist()
    [[False, True, True, False]]
    """
    _, rank = ranking(scores, candidates)
    return candidates & (rank < k.reshape(-1, 1))


def ranking(scores: Tensor, candidates: Tensor) -> tuple[Tensor, Tensor]:
    """Candidates best first: ``order[b, t]`` is the position ranked ``t``, ``rank`` its inverse (``(B, n)``
    each); non-candidates come last, ties go to the earlier position.

    >>> ranking(torch.tensor([[0.1, 0.9, 0.5]]), torch.tensor([[True, True, False]]))
    (tensor([[1, 0, 2]]), tensor([[1, 0, 2]]))
    """
    order = torch.argsort(scores.masked_fill(~candidates, float("-inf")), dim=1, descending=True, stable=True)
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return order, torch.empty_like(order).scatter_(1, order, positions)


def budget_tokens(budget: float | int, lengths: Tensor) -> Tensor:
    """Tokens to keep per row ``(B,)`` (int64, on ``lengths``' device) for a budget that is a fraction
    (float in ``(0, 1]``) of each row's prompt length ``lengths`` ``(B,)``, or a number of tokens (int),
    which may not exceed any row: the SDK's :func:`~veil.client_sdk.runtime.compression.scoring.
    budget_tokens` on ``B`` integers copied to the CPU, once per compression."""
    return torch.from_numpy(shared.budget_tokens(budget, lengths.cpu().numpy())).to(lengths.device)
