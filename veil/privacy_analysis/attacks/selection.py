"""Selection with uniformly random tie-breaking, and memory-bounded row blocks, for the distance attacks.

Uploads of a k-anonymous codebook are exact copies of a few prototypes, so attack scores tie exactly and
often. ``argmax`` would hand every tie to the lowest user index and report an accuracy that depends on
how users happen to be numbered; these helpers pick among tied entries uniformly at random instead.
Exact ties are only meaningful when equal inputs give bit-equal scores: :func:`unique_rows` lets callers
score each distinct vector once and copy the score to its duplicates.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["argmax_random_ties", "row_blocks", "smallest_k_random_ties", "unique_rows"]


def argmax_random_ties(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Column of the largest entry of every row of ``scores`` ``(Q, M)``, ties broken uniformly at random.

    >>> rng = np.random.default_rng(0)
    >>> scores = np.array([[1.0, 3.0, 3.0, 0.0]])
    >>> picks = np.concatenate([argmax_random_ties(scores, rng) for _ in range(400)])
    >>> sorted(set(picks.tolist())), 150 < int(np.sum(picks == 1)) < 250
    ([1, 2], True)
    """
    best = scores == scores.max(axis=1, keepdims=True)  # (Q, M)
    key = np.full(scores.shape, -1.0)
    key[best] = rng.random(int(best.sum()))
    return key.argmax(axis=1)


def smallest_k_random_ties(values: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Columns ``(Q, k)`` of the ``k`` smallest entries of every row of ``values`` ``(Q, M)``, in no order.

    Entries strictly below a row's k-th smallest value are always taken; the remaining places go to a
    uniformly random subset of the entries equal to it.

    Raises
    ------
    ValueError
        If ``k`` is not in ``[1, M]``.
    """
    if not 1 <= k <= values.shape[1]:
        raise ValueError(f"k must be in [1, {values.shape[1]}] (the number of candidates), got {k}")
    near = np.argpartition(values, k - 1, axis=1)[:, :k]  # (Q, k), right unless a row ties at its k-th value
    kth = np.take_along_axis(values, near, axis=1).max(axis=1, keepdims=True)  # (Q, 1)
    tied_rows = np.flatnonzero(np.sum(values <= kth, axis=1) > k)
    if tied_rows.size:
        v, t = values[tied_rows], kth[tied_rows]
        # key -1: certainly in (fewer than k of them); uniform [0, 1): tied at the k-th value; 2: out
        key = np.where(v < t, -1.0, 2.0)
        tied = v == t
        key[tied] = rng.random(int(tied.sum()))
        near[tied_rows] = np.argpartition(key, k - 1, axis=1)[:, :k]
    return near


def unique_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows ``(U, D)`` of ``x`` ``(N, D)`` and the index ``(N,)`` of each row among them."""
    distinct, inverse = np.unique(x, axis=0, return_inverse=True)
    return distinct, inverse.reshape(-1)


def row_blocks(n_rows: int, row_cost: int, budget: int) -> Iterator[slice]:
    """Slices of ``range(n_rows)`` so that rows times ``row_cost`` stays within ``budget`` (one row at least).

    >>> [(s.start, s.stop) for s in row_blocks(5, 10, 25)]
    [(0, 2), (2, 4), (4, 5)]
    """
    step = max(1, budget // max(1, row_cost))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))
