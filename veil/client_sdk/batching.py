"""Rows of token ids of different lengths as one left-padded batch, for the phone and the server alike.

Left padding keeps every row's last real token in the last column, where the next-token logits are read.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["left_pad"]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids ``(B, W)`` and attention mask ``(B, W)`` (int64), ``W`` the longest row.

    >>> ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    >>> ids.tolist(), mask.tolist()  # row [8] -> [pad pad 8]
    ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]])
    """
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for r, toks in enumerate(rows):
        if len(toks):
            ids[r, width - len(toks) :] = np.asarray(toks, dtype=np.int64)
            mask[r, width - len(toks) :] = 1
    return ids, mask
