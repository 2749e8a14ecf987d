"""Aligning two tokenisations of one text: entropy-weighted dynamic time warping (CDM, arXiv:2502.11104).

Teacher and student tokenise the same response differently. CDM aligns the two token sequences by
dynamic time warping (DTW) over their token *strings*, with the cost of pairing teacher token ``i`` and
student token ``j``

    C(i, j) = Lev(s_i, s_j) * w_i * w_j,

``Lev`` the raw Levenshtein distance of the strings with tokenizer markers stripped, and ``w`` an entropy
weight in {3, 4, 5} (:func:`entropy_weights`): uncertain positions weigh more. The recursion is the usual

    R(i, j) = C(i, j) + min(R(i-1, j), R(i, j-1), R(i-1, j-1)),   R(0, 0) = 0, other borders infinite,

followed by a greedy backtrace from the last cell. Consecutive path cells that share a teacher or a
student index form one *aligned unit* (a many-to-many group); a diagonal step starts a new unit.

The ports of CDM fill ``R`` cell by cell in Python, per sample and per step, which makes the method
CPU-bound (the reason DWA-KD, arXiv:2602.21669, left it out as a baseline). Here

* the Levenshtein matrix is one call of rapidfuzz's ``process.cdist`` per pair, between its distinct
  strings only;
* the recursion runs over anti-diagonals ``d = i + j``, vectorised over the cells of a diagonal *and*
  over the pairs of a sweep (pairs sorted by size, so that little padding is swept): cell ``(i, j)``
  needs only diagonals ``d - 1`` and ``d - 2``, so three rows of ``R`` are kept, plus an int8 table of
  the move that reached every cell; integer costs sweep in float32;
* the backtrace follows the argmin recorded in the forward pass (ties: diagonal, then up, then left,
  which keeps identical tokenisations strictly one-to-one).

``benchmarks/cdm_alignment.py`` measures it against the per-cell loop.

Our choices where the paper and its ports leave things open: a constant entropy (``max == min``) gives
``h = 0`` everywhere; the end-of-sequence token of any tokenizer becomes one canonical string, so that
``</s>`` and ``<|im_end|>`` cost 0 (the ports keep a table of such pairs).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "EOS_STRING",
    "Alignment",
    "VocabStrings",
    "align_batch",
    "dtw_path_reference",
    "dtw_paths",
    "entropy_weights",
    "levenshtein_matrix",
    "path_units",
    "strip_markers",
    "vocab_strings",
]

EOS_STRING = "\x00eos\x00"
"""The string every tokenizer's end-of-sequence token is compared as (``</s>`` == ``<|im_end|>``)."""

_MARKERS = ("Ġ", "▁", "Ċ")  # byte-level space, SentencePiece/Metaspace space, byte-level newline


def strip_markers(text: str) -> str:
    """``text`` without tokenizer space markers and without surrounding whitespace.

    >>> strip_markers("▁Hugging"), strip_markers("Ġface "), strip_markers(" ")
    ('Hugging', 'face', '')
    """
    for marker in _MARKERS:
        text = text.replace(marker, "")
    return text.strip()


@dataclass(frozen=True)
class VocabStrings:
    """Every id of a tokenizer as a string, three ways (index = token id)."""

    raw: tuple[str, ...]
    """The tokenizer's own token strings (``convert_ids_to_tokens``), unique per id."""
    text: tuple[str, ...]
    """Each token decoded alone (``convert_tokens_to_string``): markers become spaces."""
    stripped: np.ndarray
    """``(V,)`` object array: :func:`strip_markers` of ``text``; the EOS token is :data:`EOS_STRING`."""

    def __len__(self) -> int:
        return len(self.raw)


_CACHE: weakref.WeakKeyDictionary[Any, VocabStrings] = weakref.WeakKeyDictionary()


def vocab_strings(tokenizer: Any) -> VocabStrings:
    """The :class:`VocabStrings` of a ``transformers`` tokenizer, computed once per tokenizer object.

    Decoding ``2 K L`` ids per sample and step dominated the cost of the CDM ports; the table makes
    every later lookup an array index.
    """
    cached = _CACHE.get(tokenizer)
    if cached is not None:
        return cached
    raw = tuple(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))))
    text = tuple(tokenizer.convert_tokens_to_string([t]) for t in raw)
    stripped = np.array([strip_markers(t) for t in text] + [""], dtype=object)[:-1]  # stays 1-D
    if tokenizer.eos_token_id is not None:
        stripped[tokenizer.eos_token_id] = EOS_STRING
    strings = VocabStrings(raw=raw, text=text, stripped=stripped)
    _CACHE[tokenizer] = strings
    return strings


def entropy_weights(logits: Tensor) -> np.ndarray:
    """CDM's weights ``w_t = int(3 + 3 sigmoid(4 h_t - 2))`` from the entropies of one sequence.

    Parameters
    ----------
    logits : Tensor
        ``(L, V)`` logits of the sequence's positions.

    Returns
    -------
    np.ndarray
        ``(L,)`` int64 in {3, 4, 5}; ``h_t`` is the softmax entropy min-max normalised over the sequence.
    """
    with torch.no_grad():
        logp = torch.log_softmax(logits.detach().double(), dim=-1)
        ent = -(logp.exp() * logp).sum(dim=-1)  # (L,)
        span = ent.max() - ent.min() if ent.numel() else ent.new_zeros(())
        h = (ent - ent.min()) / span if span > 0 else torch.zeros_like(ent)
        w = (3.0 + 3.0 * torch.sigmoid(4.0 * h - 2.0)).floor()
    return w.cpu().numpy().astype(np.int64)


def levenshtein_matrix(a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    """``(len(a), len(b))`` int32 raw Levenshtein distances, one vectorised rapidfuzz call."""
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.int32)
    # Token strings repeat (a vocabulary is small next to L^2 cells): distances between distinct strings.
    a_keys, a_inv = np.unique(np.asarray(a, dtype=object), return_inverse=True)
    b_keys, b_inv = np.unique(np.asarray(b, dtype=object), return_inverse=True)
    table = process.cdist(list(a_keys), list(b_keys), scorer=Levenshtein.distance, dtype=np.int32)
    return table[a_inv.reshape(-1)[:, None], b_inv.reshape(-1)[None, :]]


def dtw_paths(costs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Minimum-cost DTW paths of several cost matrices at once (anti-diagonal recursion).

    Parameters
    ----------
    costs : sequence of np.ndarray
        ``(n_b, m_b)`` non-negative cost matrices, ``n_b, m_b >= 1``; the sweep runs in float32 when
        every matrix is float32 (exact for integer costs whose path sums stay below ``2^24``), else
        in float64.

    Returns
    -------
    list of np.ndarray
        Per matrix, the ``(P, 2)`` int64 path of ``(i, j)`` cells from ``(0, 0)`` to ``(n_b-1, m_b-1)``.
    """
    if not costs:
        return []
    for c in costs:
        if c.ndim != 2 or min(c.shape) < 1:
            raise ValueError(f"each cost matrix must be 2-D and non-empty, got shape {c.shape}")
    b_n = len(costs)
    n = max(c.shape[0] for c in costs)
    m = max(c.shape[1] for c in costs)
    dtype = np.result_type(*costs, np.float32)  # float32 only if every matrix is
    # batch last, so that the (i, b) block of one diagonal is one strided view; inf off each pair's grid
    padded = np.full((n, m, b_n), np.inf, dtype=dtype)
    for b, c in enumerate(costs):
        padded[: c.shape[0], : c.shape[1], b] = c
    # Anti-diagonal d' = i' + j' (0-based cells) of `padded` as a strided view: cell (i', d' - i') lies
    # at flat offset (i' m + d' - i') B = (d' + i' (m - 1)) B. Only in-grid slices of it are ever read.
    item = padded.itemsize
    cost_diag = np.lib.stride_tricks.as_strided(
        padded, shape=(n + m - 1, n, b_n), strides=(b_n * item, (m - 1) * b_n * item, item), writeable=False
    )
    # R on 1-based cells, kept for three diagonals d = i + j only: rows indexed by i in 0..n.
    older = np.full((n + 1, b_n), np.inf, dtype=dtype)  # d - 2
    old = np.full((n + 1, b_n), np.inf, dtype=dtype)  # d - 1
    new = np.empty((n + 1, b_n), dtype=dtype)
    older[0] = 0.0  # R[0, 0]
    # move[d, i, b]: how cell (i, d - i) was reached: 0 diagonal, 1 up (i - 1), 2 left (j - 1)
    move = np.empty((n + m + 1, n + 1, b_n), dtype=np.int8)
    best = np.empty((n, b_n), dtype=dtype)
    for d in range(2, n + m + 1):
        lo, hi = max(1, d - m), min(n, d - 1)  # the in-grid cells (i, d - i): i in lo..hi
        diag = older[lo - 1 : hi]  # R[i-1, j-1]: (hi-lo+1, B)
        up = old[lo - 1 : hi]  # R[i-1, j]
        left = old[lo : hi + 1]  # R[i, j-1]
        out = best[: hi - lo + 1]
        # first minimum of (diag, up, left): the tie order of a naive DTW's backtrace
        np.minimum(diag, up, out=out)
        step = move[d, lo : hi + 1]
        np.less(up, diag, out=step, casting="unsafe")
        np.copyto(step, 2, where=left < out)
        np.minimum(out, left, out=out)
        np.add(out, cost_diag[d - 2, lo - 1 : hi], out=new[lo : hi + 1])
        new[lo - 1] = np.inf  # off-grid neighbours, the only other rows later diagonals read
        if hi < n:
            new[hi + 1] = np.inf
        older, old, new = old, new, older
    paths = []
    for b, c in enumerate(costs):
        i, j = c.shape
        cells = []
        moves = move[:, :, b]
        while True:
            cells.append((i - 1, j - 1))
            if i == 1 and j == 1:
                break
            k = moves[i + j, i]
            if k == 0:
                i, j = i - 1, j - 1
            elif k == 1:
                i -= 1
            else:
                j -= 1
        paths.append(np.array(cells[::-1], dtype=np.int64))
    return paths


@dataclass(frozen=True)
class Alignment:
    """Aligned units of one (teacher, student) pair of sequences."""

    path: np.ndarray
    """``(P, 2)`` DTW path of (teacher position, student position) cells."""
    teacher_unit: np.ndarray
    """``(L_T,)`` unit index of every teacher position (non-decreasing, from 0)."""
    student_unit: np.ndarray
    """``(L_S,)`` unit index of every student position."""

    @property
    def n_units(self) -> int:
        return int(self.teacher_unit[-1]) + 1 if len(self.teacher_unit) else 0

    def groups(self) -> list[tuple[list[int], list[int]]]:
        """Per unit, its teacher positions and its student positions."""
        return [
            (np.flatnonzero(self.teacher_unit == u).tolist(), np.flatnonzero(self.student_unit == u).tolist())
            for u in range(self.n_units)
        ]

    @property
    def one_to_one(self) -> np.ndarray:
        """``(n_units,)`` bool: the unit holds exactly one teacher and one student position."""
        t = np.bincount(self.teacher_unit, minlength=self.n_units)
        s = np.bincount(self.student_unit, minlength=self.n_units)
        return (t == 1) & (s == 1)


def path_units(path: np.ndarray) -> Alignment:
    """Group a DTW path into many-to-many units: a diagonal step starts a new unit.

    ``[(0,0), (1,0), (1,1), (2,2)]`` -> units ``{T 0,1 | S 0,1}`` and ``{T 2 | S 2}``.
    """
    steps = np.diff(path, axis=0)  # (P-1, 2)
    new_unit = np.concatenate([[0], (steps[:, 0] == 1) & (steps[:, 1] == 1)]).astype(np.int64)
    unit = np.cumsum(new_unit)  # (P,)
    n_t, n_s = int(path[-1, 0]) + 1, int(path[-1, 1]) + 1
    teacher_unit = np.zeros(n_t, dtype=np.int64)
    student_unit = np.zeros(n_s, dtype=np.int64)
    teacher_unit[path[:, 0]] = unit  # a position on several cells lies in one unit by construction
    student_unit[path[:, 1]] = unit
    return Alignment(path=path, teacher_unit=teacher_unit, student_unit=student_unit)


def align_batch(
    teacher_strings: Sequence[Sequence[str]],
    student_strings: Sequence[Sequence[str]],
    teacher_weights: Sequence[np.ndarray] | None = None,
    student_weights: Sequence[np.ndarray] | None = None,
    chunk: int = 16,
) -> list[Alignment]:
    """Entropy-weighted DTW alignments of a batch of (teacher, student) string sequences.

    Parameters
    ----------
    teacher_strings, student_strings : sequences of sequences of str
        Per pair, the stripped token strings (e.g. ``vocab_strings(tok).stripped[ids]``); each non-empty.
    teacher_weights, student_weights : sequences of np.ndarray, optional
        Per pair, ``(L,)`` weights (:func:`entropy_weights`); ``None``: all 1 (plain edit-distance DTW,
        as in MinED, arXiv:2401.10491).
    chunk : int
        Pairs per vectorised DTW call; pairs are sorted by size first so that little padding is swept.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if len(teacher_strings) != len(student_strings):
        raise ValueError(
            f"teacher and student batches differ in size: {len(teacher_strings)} != {len(student_strings)}"
        )
    costs = []
    for b, (ts, ss) in enumerate(zip(teacher_strings, student_strings, strict=True)):
        if len(ts) == 0 or len(ss) == 0:
            raise ValueError(f"pair {b} has an empty side: {len(ts)} teacher and {len(ss)} student tokens")
        w_t = (
            np.ones(len(ts)) if teacher_weights is None else np.asarray(teacher_weights[b], dtype=np.float64)
        )
        w_s = (
            np.ones(len(ss)) if student_weights is None else np.asarray(student_weights[b], dtype=np.float64)
        )
        lev = levenshtein_matrix(ts, ss)
        cost = lev * (w_t[:, None] * w_s[None, :])  # (L_T, L_S) float64
        # Integer costs whose path sums stay below 2^24 are exact in float32, which halves the sweep's
        # memory traffic; any other cost keeps float64.
        bound = float(lev.max(initial=0)) * w_t.max() * w_s.max() * (len(ts) + len(ss))
        if np.array_equal(w_t, w_t.round()) and np.array_equal(w_s, w_s.round()) and bound < 2**24:
            cost = cost.astype(np.float32)
        costs.append(cost)
    order = sorted(range(len(costs)), key=lambda b: costs[b].shape)
    paths: list[np.ndarray] = [np.empty((0, 2), dtype=np.int64)] * len(costs)
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        for b, path in zip(part, dtw_paths([costs[b] for b in part]), strict=True):
            paths[b] = path
    return [path_units(p) for p in paths]


def dtw_path_reference(
    teacher: list[str], student: list[str], w_t: np.ndarray, w_s: np.ndarray
) -> np.ndarray:
    """The straightforward DTW of the CDM ports, the reference :func:`align_batch` is tested and
    benchmarked against: one Python iteration per cell (Levenshtein distance times both weights, plus
    the three-way minimum), then the same greedy backtrace; returns the ``(P, 2)`` path."""
    from rapidfuzz.distance import Levenshtein

    n, m = len(teacher), len(student)
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost = Levenshtein.distance(teacher[i - 1], student[j - 1]) * w_t[i - 1] * w_s[j - 1]
            acc[i, j] = cost + min(acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1])
    i, j, cells = n, m, []
    while True:
        cells.append((i - 1, j - 1))
        if i == 1 and j == 1:
            break
        move = int(np.argmin([acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]]))
        i, j = (i - 1, j - 1) if move == 0 else (i - 1, j) if move == 1 else (i, j - 1)
    return np.array(cells[::-1])
