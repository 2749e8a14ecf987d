"""The numpy twins of ``veil.models.compression.scoring``: attention rows without an ``n x n`` matrix,
sink / recent / top-k masks and token budgets, for compressing the on-device LM's cache.

Shapes: ``B`` batch, ``H`` query heads, ``H_kv`` key-value heads (``G = H / H_kv`` queries per group),
``n`` prompt positions, ``w`` scored queries, ``d`` head dim. Attention is computed in float32, as on
the cloud; ties in a ranking go to the earlier position, as ``torch.argsort(stable=True)`` does.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "accumulated_attention",
    "budget_tokens",
    "first_valid",
    "last_valid",
    "norm_loss_curve",
    "pool_scores",
    "query_attention",
    "ranking",
    "top_k",
]


def query_attention(queries: np.ndarray, keys: np.ndarray, valid: np.ndarray, scaling: float) -> np.ndarray:
    """Softmax attention ``(B, H, w, n)`` (float32) of the last ``w`` prompt queries over the prompt keys.

    Keys stay un-repeated: queries ``(B, H_kv, G, w, d)`` meet keys ``(B, H_kv, 1, n, d)``. Query ``i``
    sits at position ``n - w + i`` and sees keys ``j <= n - w + i`` that are not padding; the rows of
    padding queries are zero.

    Parameters
    ----------
    queries: ``(B, H, w, d)`` post-RoPE.
    keys: ``(B, H_kv, n, d)`` post-RoPE.
    valid: ``(B, n)`` bool.
    """
    b, h, w, d = queries.shape
    h_kv, n = keys.shape[1], keys.shape[2]
    q = queries.astype(np.float32).reshape(b, h_kv, h // h_kv, w, d)  # (B, H_kv, G, w, d)
    k = keys.astype(np.float32)[:, :, None]  # (B, H_kv, 1, n, d)
    logits = (q @ k.swapaxes(-1, -2)) * np.float32(scaling)  # (B, H_kv, G, w, n)
    causal = np.arange(n)[None, :] <= np.arange(n - w, n)[:, None]  # (w, n)
    visible = np.broadcast_to((causal[None] & valid[:, None, :])[:, None, None], logits.shape)
    top = np.where(visible, logits, -np.inf).max(axis=-1, keepdims=True)
    e = np.where(visible, np.exp(logits - np.where(np.isfinite(top), top, 0.0)), 0.0)
    total = e.sum(axis=-1, keepdims=True)
    probs = np.divide(e, total, out=np.zeros_like(e), where=total > 0)  # a fully hidden row -> 0
    probs = probs * valid[:, None, None, n - w :, None]  # padding queries contribute nothing
    return probs.reshape(b, h, w, n).astype(np.float32)


def accumulated_attention(
    queries: np.ndarray, keys: np.ndarray, valid: np.ndarray, scaling: float, chunk: int = 256
) -> np.ndarray:
    """Attention received by every key, summed over all ``w`` queries and heads: ``(B, n)`` float32,
    ``chunk`` query rows at a time (memory ``O(chunk * n)``)."""
    n, w = keys.shape[2], queries.shape[2]
    total = np.zeros((keys.shape[0], n), dtype=np.float32)
    for start in range(0, w, chunk):
        stop = min(start + chunk, w)
        end = n - w + stop  # the chunk's last query position + 1: score as if the prompt ended there
        part = query_attention(queries[:, :, start:stop], keys[:, :, :end], valid[:, :end], scaling)
        total[:, :end] += part.sum(axis=(1, 2))
    return total


def pool_scores(scores: np.ndarray, kernel_size: int, pooling: str) -> np.ndarray:
    """Smooth ``(B, n)`` scores along positions (stride 1, same length; average pooling ignores the
    padding, as ``count_include_pad=False``)."""
    if kernel_size <= 1:
        return scores
    pad = kernel_size // 2
    wide = np.pad(scores.astype(np.float32), ((0, 0), (pad, pad)), constant_values=np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(wide, kernel_size, axis=1)  # (B, n, k)
    out = np.nanmax(windows, axis=-1) if pooling == "maxpool" else np.nanmean(windows, axis=-1)
    return out[:, : scores.shape[1]].astype(np.float32)


def first_valid(valid: np.ndarray, count: np.ndarray | int) -> np.ndarray:
    """``(B, n)`` mask of each row's first ``count`` real tokens (padding never counts).

    >>> first_valid(np.array([[False, True, True, True]]), 2).tolist()  # [pad t1 t2 t3]
    [[False, True, True, False]]
    """
    rank = np.cumsum(valid, axis=1) - 1  # index among the row's real tokens
    return valid & (rank < np.reshape(count, (-1, 1)))


def last_valid(valid: np.ndarray, count: np.ndarray | int) -> np.ndarray:
    """``(B, n)`` mask of each row's last ``count`` real tokens.

    >>> last_valid(np.array([[False, True, True, True]]), 2).tolist()
    [[False, False, True, True]]
    """
    rank = np.cumsum(valid[:, ::-1], axis=1)[:, ::-1] - 1  # 0 on the last real token
    return valid & (rank < np.reshape(count, (-1, 1)))


def ranking(scores: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidates best first: ``order[b, t]`` is the position ranked ``t``, ``rank`` its inverse
    (``(B, n)`` each); non-candidates come last, ties go to the earlier position.

    >>> [a.tolist() for a in ranking(np.array([[0.1, 0.9, 0.5]]), np.array([[True, True, False]]))]
    [[[1, 0, 2]], [[1, 0, 2]]]
    """
    masked = np.where(candidates, scores, -np.inf)
    order = np.argsort(-masked, axis=1, kind="stable")  # ascending of the negation: descending, stable
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(order.shape[1]), order.shape), axis=1)
    return order, rank


def top_k(scores: np.ndarray, candidates: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``(B, n)`` mask of each row's ``k[b]`` best-scoring candidates (ties: the earlier position).

    >>> top_k(np.array([[0.1, 0.9, 0.5, 0.7]]), np.array([[True, True, True, False]]), np.array([2])).tolist()
    [[False, True, True, False]]
    """
    _, rank = ranking(scores, candidates)
    return candidates & (rank < np.reshape(k, (-1, 1)))


def budget_tokens(budget: float | int, lengths: np.ndarray) -> np.ndarray:
    """Tokens to keep per row ``(B,)``: a fraction (float in ``(0, 1]``, rounded half to even, at least
    1) of each row's prompt length, or a number of tokens (int), which may not exceed any row."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if isinstance(budget, float):
        return np.maximum(np.round(lengths.astype(np.float64) * budget).astype(np.int64), 1)
    too_long = lengths < budget
    if too_long.any():
        raise ValueError(
            f"budget of {budget} tokens exceeds the prompt of {int(lengths[too_long].min())} tokens"
        )
    return np.full_like(lengths, budget)


def norm_loss_curve(ranked_sq: np.ndarray, full_sq: np.ndarray, head_agg: str) -> np.ndarray:
    """Relative norm loss ``(B, n + 1)`` of every cut of DBudgetKV (arXiv:2502.16886, Eq. 1): entry ``k``
    keeps the first ``k`` ranked candidates; non-increasing in ``k``, 0 once every candidate with
    attention is kept (the loss is ``D / (sqrt(F) + sqrt(F - D))`` for dropped mass ``D``).

    Parameters
    ----------
    ranked_sq: ``(B, H, n)`` squared attention of the candidates in rank order (0 for non-candidates).
    full_sq: ``(B, H)`` squared norm the loss is relative to.
    head_agg: ``"joint_frobenius"`` or ``"mean_of_head_norms"``.

    >>> norm_loss_curve(np.array([[[0.25, 0.0, 0.01]]]), np.array([[1.0]]), "joint_frobenius").round(4)
    array([[0.1398, 0.005 , 0.005 , 0.    ]], dtype=float32)
    """
    ranked_sq = ranked_sq.astype(np.float32)
    dropped = np.cumsum(ranked_sq[..., ::-1], axis=-1)[..., ::-1]  # (B, H, n): mass from rank k on
    dropped = np.concatenate([dropped, np.zeros((*dropped.shape[:-1], 1), np.float32)], axis=-1)
    full = full_sq.astype(np.float32)[..., None]  # (B, H, 1)
    if head_agg == "joint_frobenius":
        dropped, full = dropped.sum(axis=1), full.sum(axis=1)  # (B, n + 1), (B, 1)
    dropped = np.minimum(dropped, full)  # rounding can push the cumulative sum past the total
    loss = dropped / np.maximum(np.sqrt(full) + np.sqrt(full - dropped), np.float32(1e-30))
    if head_agg == "joint_frobenius":
        return (loss / np.maximum(np.sqrt(full), np.float32(1e-30))).astype(np.float32)
    return (loss.sum(axis=1) / np.maximum(np.sqrt(full).sum(axis=1), np.float32(1e-30))).astype(np.float32)
