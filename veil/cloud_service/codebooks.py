"""The published prototype codebook: one file in the data dir, replaced atomically, read by the API.

The codebook (:class:`~veil.client_sdk.distributions.Codebook`) is public: ``GET /v1/codebook`` serves
it to phones, which choose a prototype privately (``PROTOCOL.md`` 5.5). The cloud changes it in three
ways, each publishing a new version: :func:`init_codebook` (``veil codebook init``), the stage-3 job
trains the prototypes (``veil train personalized --codebook``), and :func:`retire_by_counts`
(``veil codebook retire``) retires prototypes shared by too few phones, from an aggregate count of
choices only (how that count is gathered, e.g. by secure aggregation, is outside this module). A
codebook made elsewhere (e.g. by a federated server) arrives over HTTP with an operator key
(``PUT /v1/codebook``) and is published by the same :meth:`CodebookStore.publish`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from veil.client_sdk.atomic_files import atomic_write
from veil.client_sdk.codebook_wire import float32_codebook
from veil.client_sdk.distributions import Codebook

__all__ = ["CODEBOOK_FILE", "CodebookStore", "init_codebook", "retire_by_counts"]

CODEBOOK_FILE = "codebook.npz"
"""Name of the published codebook inside the data dir."""


def init_codebook(
    size: int, k_min: int, shape: tuple[int, int], seed: int = 0, scale: float = 1.0
) -> Codebook:
    """``size`` random Gaussian prototypes ``N(0, scale^2)`` of embedding shape ``shape``, all usable.

    Random Gaussian starts with K a few times the expected number of groups is IFCA's remedy for bad
    starts (arXiv:2006.04088), as in :class:`veil.simulation.codebook.CodebookConfig`.
    """
    if isinstance(size, bool) or int(size) != size or size < 1:
        raise ValueError(f"size must be an integer >= 1, got {size!r}")
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be (n_tokens, dim) with both >= 1, got {tuple(shape)}")
    protos = np.random.default_rng(seed).normal(0.0, scale, size=(int(size), *shape))
    return float32_codebook(Codebook(protos, k_min=k_min))


def retire_by_counts(book: Codebook, counts: Any) -> Codebook:
    """One round of :func:`~veil.client_sdk.distributions.enforce_k_min`'s rule, on an aggregate count.

    Retires every usable prototype nobody chose and, of those chosen by fewer than ``k_min`` phones, the
    least chosen (lowest index on ties). Phones that had chosen it choose again among the rest, and the
    next count decides the next round; repeating until nothing is retired gives ``enforce_k_min``'s
    outcome without the cloud ever seeing a phone's losses or choice.

    Parameters
    ----------
    counts : array_like of int, shape ``(K,)``
        Phones that chose each prototype (counts of unusable prototypes must be 0).

    Raises
    ------
    ValueError
        Counts of the wrong shape, negative, or non-zero on a retired prototype; fewer phones than
        ``k_min`` in all; or a round that would leave no usable prototype.
    """
    arr = np.asarray(counts)
    if arr.shape != (book.size,) or not np.issubdtype(arr.dtype, np.integer) or (arr < 0).any():
        raise ValueError(f"counts must be {book.size} non-negative integers, got {arr.tolist()!r}")
    if (arr[~book.active] > 0).any():
        raise ValueError(
            f"retired prototypes {np.flatnonzero(~book.active & (arr > 0)).tolist()} have choices"
        )
    if arr.sum() < book.k_min:
        raise ValueError(f"k_min={book.k_min} needs at least that many phones, the counts sum to {arr.sum()}")
    active = book.active & (arr > 0)
    small = np.flatnonzero(active & (arr < book.k_min))
    if small.size:
        active[small[np.argmin(arr[small])]] = False
    if not active.any():
        raise ValueError("retiring would leave no usable prototype")
    return book.with_active(active)


class CodebookStore:
    """The codebook published in ``data_dir`` (:data:`CODEBOOK_FILE`).

    :meth:`current` re-reads the file only when it changed (inode, size and modification time), so the API can
    call it on every request and sees what a job or the CLI published, without a restart.
    """

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.path = Path(data_dir).expanduser() / CODEBOOK_FILE
        self._cached: tuple[tuple[int, int, int], Codebook] | None = None

    def current(self) -> Codebook | None:
        """The published codebook, or ``None`` when none is published.

        Raises
        ------
        ValueError
            The file exists but is not a valid codebook.
        """
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)  # publish replaces the inode
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, Codebook.load(str(self.path)))
        return self._cached[1]

    def publish(self, book: Codebook) -> Codebook:
        """Replace the published codebook atomically; returns it as published (prototypes in float32)."""
        book = float32_codebook(book)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, lambda fh: np.savez(fh, **book.arrays()), mode=0o644)  # public by design
        return book
