"""Ranking math as pure numpy functions: top-k selection and reciprocal rank fusion."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["reciprocal_rank_fusion", "top_k"]


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first; equal scores in index order.

    ``O(n + k log k)``: a partition finds the k-th value, then only the winners are sorted.

    Parameters
    ----------
    scores: shape ``(n,)``, finite.
    k: how many to return (fewer when ``n < k``).

    >>> top_k(np.array([0.2, 0.9, 0.2, 0.5]), 3).tolist()
    [1, 3, 0]
    """
    n = int(scores.shape[0])
    k = min(int(k), n)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    kth = np.partition(scores, n - k)[n - k]
    above = np.flatnonzero(scores > kth)
    # the k-th value may be shared by more items than there are places left: lowest indices win
    tied = np.flatnonzero(scores == kth)[: k - above.size]
    winners = np.concatenate([above, tied])
    return winners[np.lexsort((winners, -scores[winners]))]


def reciprocal_rank_fusion(
    rankings: Sequence[np.ndarray], weights: Sequence[float] | None = None, k: float = 60.0
) -> tuple[np.ndarray, np.ndarray]:
    """Fuse ranked lists by reciprocal rank (Cormack, Clarke & Büttcher, SIGIR 2009).

    ``score(d) = sum_m w_m / (k + rank_m(d))`` with ranks counted from 1; an item absent from a list
    gets nothing from it. ``k = 60`` is the paper's constant.

    Parameters
    ----------
    rankings: one integer array of item ids per ranker, best first; no id twice in one list.
    weights: one per ranker (default all 1).
    k: the rank offset, > 0.

    Returns
    -------
    (ids, scores): every item of any list, best first, equal scores in id order.

    >>> ids, s = reciprocal_rank_fusion([np.array([7, 3]), np.array([3, 9])], k=1)
    >>> ids.tolist(), s.round(4).tolist()
    ([3, 7, 9], [0.8333, 0.5, 0.3333])
    """
    if k <= 0:
        raise ValueError(f"the RRF constant k must be > 0, got {k}")
    weights = [1.0] * len(rankings) if weights is None else list(weights)
    if len(weights) != len(rankings):
        raise ValueError(f"need one weight per ranking: {len(weights)} weights, {len(rankings)} rankings")
    lists = [np.asarray(r, dtype=np.int64) for r in rankings]
    ids = np.unique(np.concatenate(lists)) if lists else np.empty(0, dtype=np.int64)
    fused = np.zeros(ids.size, dtype=np.float64)
    for ranking, weight in zip(lists, weights, strict=True):
        fused[np.searchsorted(ids, ranking)] += weight / (k + np.arange(1, ranking.size + 1))
    order = np.lexsort((ids, -fused))
    return ids[order], fused[order]
