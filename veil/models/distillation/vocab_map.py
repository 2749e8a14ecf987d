"""Vocabulary maps between two tokenizers: static (exact match, MinED) and CDM's contextual dynamic map.

* **Exact match** (CDM's default static map, arXiv:2502.11104): a source id maps to the target id with
  the same string. Keys are tried from strictest to loosest: the raw token (identical vocabularies map
  to themselves), the decoded token (keeps a leading space), then the string with markers stripped
  (``Ġthe`` == ``▁the``). Among several targets with the same key, the lowest id wins. Strings holding a
  U+FFFD replacement character (lone bytes of byte-level BPE) and empty stripped strings are not keyed
  at the loosest level: they say nothing about meaning (our choice).
* **MinED** (FuseLLM, arXiv:2401.10491): every source id maps to the target id of minimum Levenshtein
  distance between stripped strings (exact matches first, then the lowest id among ties).
* **Dynamic** (CDM): per aligned unit, each source top-K id without a static entry may take the target
  id, among the target's top-K ids *at the same unit*, of smallest normalised edit distance
  ``Lev(a, b) / (|a| + |b|)``, if it is below a threshold (0.3 in CDM's language-model runs; 0 turns the
  dynamic map off). Source ids are served in rank order and a target id serves one source id per unit
  (injective on target ids, where the ports mixed teacher and student ids in their exclusion set); the
  static entries are never overwritten. The map lives one call (as in the DSKD port of CDM) rather
  than growing a global table across steps.

Maps are int64 arrays indexed by source id, ``-1`` for unmapped (0 is a real token id).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from veil.models.distillation.align import VocabStrings, vocab_strings

__all__ = ["UNMAPPED", "VocabPair", "dynamic_map", "exact_match_map", "mined_map", "normalised_distances"]

UNMAPPED = -1
"""The map value of a source id without a target."""


def _first_index(keys: tuple[str, ...] | np.ndarray, usable: np.ndarray | None = None) -> dict[str, int]:
    """``key -> lowest id`` over the ids where ``usable`` holds."""
    table: dict[str, int] = {}
    for idx, key in enumerate(keys):
        if (usable is None or usable[idx]) and key not in table:
            table[key] = idx
    return table


def _keyable(strings: VocabStrings) -> np.ndarray:
    return np.array([bool(s) and "\ufffd" not in s for s in strings.stripped], dtype=bool)


def exact_match_map(source: VocabStrings, target: VocabStrings) -> np.ndarray:
    """``(V_src,)`` int64: the exact-match target id of every source id, or :data:`UNMAPPED`."""
    out = np.full(len(source), UNMAPPED, dtype=np.int64)
    levels = (
        (source.raw, target.raw, None, None),
        (source.text, target.text, None, None),
        (source.stripped, target.stripped, _keyable(source), _keyable(target)),
    )
    for src_keys, tgt_keys, src_ok, tgt_ok in levels:
        table = _first_index(tgt_keys, tgt_ok)
        for idx in np.flatnonzero(out == UNMAPPED):
            if src_ok is None or src_ok[idx]:
                out[idx] = table.get(src_keys[idx], UNMAPPED)
    return out


def mined_map(source: VocabStrings, target: VocabStrings, chunk: int = 1024) -> np.ndarray:
    """``(V_src,)`` int64: exact matches, else the target id of minimum edit distance (FuseLLM)."""
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    out = exact_match_map(source, target)
    todo = np.flatnonzero(out == UNMAPPED)
    tgt = list(target.stripped)
    for start in range(0, len(todo), chunk):
        rows = todo[start : start + chunk]
        dist = process.cdist([source.stripped[i] for i in rows], tgt, scorer=Levenshtein.distance)
        out[rows] = dist.argmin(axis=1)  # first minimum: the lowest id among ties
    return out


def normalised_distances(a: list[str], b: list[str]) -> np.ndarray:
    """``(len(a), len(b))`` float64 ``Lev(a_i, b_j) / (|a_i| + |b_j|)``; two empty strings give 1."""
    from veil.models.distillation.align import levenshtein_matrix

    lev = levenshtein_matrix(a, b).astype(np.float64)
    total = np.array([len(s) for s in a], dtype=np.float64)[:, None] + np.array([len(s) for s in b])[None, :]
    return np.divide(lev, total, out=np.ones_like(lev), where=total > 0)


def dynamic_map(
    static: np.ndarray,
    source_topk: np.ndarray,
    target_topk: np.ndarray,
    source_strings: np.ndarray,
    target_strings: np.ndarray,
    threshold: float = 0.3,
) -> np.ndarray:
    """CDM's contextual map of the source top-K ids at every aligned unit.

    Parameters
    ----------
    static : np.ndarray
        ``(V_src,)`` static map (:func:`exact_match_map`).
    source_topk, target_topk : np.ndarray
        ``(U, K)`` int64 top-K ids of each side per unit, in rank order (most probable first).
    source_strings, target_strings : np.ndarray
        ``(V,)`` object arrays of stripped vocabulary strings (:attr:`VocabStrings.stripped`).
    threshold : float
        Candidates need a normalised edit distance strictly below it; 0 leaves the static map alone.

    Returns
    -------
    np.ndarray
        ``(U, K)`` int64 target id of each source top-K id, or :data:`UNMAPPED`.
    """
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    if source_topk.shape[0] != target_topk.shape[0]:
        raise ValueError(f"unit counts differ: {source_topk.shape[0]} != {target_topk.shape[0]}")
    mapped = static[source_topk].copy()  # (U, K)
    todo = mapped == UNMAPPED
    if threshold == 0 or not todo.any():
        return mapped
    # Distances only between the distinct ids involved, looked up per unit: (U, K_src, K_tgt).
    src_ids, src_pos = np.unique(source_topk, return_inverse=True)
    tgt_ids, tgt_pos = np.unique(target_topk, return_inverse=True)
    table = normalised_distances(list(source_strings[src_ids]), list(target_strings[tgt_ids]))
    src_pos = src_pos.reshape(source_topk.shape)
    tgt_pos = tgt_pos.reshape(target_topk.shape)
    dist = table[src_pos[:, :, None], tgt_pos[:, None, :]]  # (U, K_src, K_tgt)
    # A target id already claimed by a static entry of the same unit is taken.
    taken = (target_topk[:, None, :] == mapped[:, :, None]).any(axis=1)  # (U, K_tgt)
    units = np.arange(source_topk.shape[0])
    for k in range(source_topk.shape[1]):  # rank order, vectorised over units
        cand = np.where(taken, np.inf, dist[:, k, :])  # (U, K_tgt)
        best = cand.argmin(axis=1)  # (U,)
        accept = todo[:, k] & (cand[units, best] < threshold)
        mapped[accept, k] = target_topk[units[accept], best[accept]]
        taken[units[accept], best[accept]] = True
    return mapped


@dataclass(frozen=True)
class VocabPair:
    """Both vocabularies' strings and static maps in both directions, built once per tokenizer pair."""

    teacher: VocabStrings
    student: VocabStrings
    teacher_to_student: np.ndarray
    """``(V_T,)`` static map teacher id -> student id."""
    student_to_teacher: np.ndarray
    """``(V_S,)`` static map student id -> teacher id."""

    @classmethod
    def from_tokenizers(
        cls, teacher_tokenizer: Any, student_tokenizer: Any, mapper: str = "exact"
    ) -> VocabPair:
        """Build the pair; ``mapper`` is ``"exact"`` (CDM) or ``"mined"`` (FuseLLM's MinED)."""
        builders = {"exact": exact_match_map, "mined": mined_map}
        if mapper not in builders:
            raise ValueError(f"mapper must be one of {sorted(builders)}, got {mapper!r}")
        t, s = vocab_strings(teacher_tokenizer), vocab_strings(student_tokenizer)
        build = builders[mapper]
        return cls(teacher=t, student=s, teacher_to_student=build(t, s), student_to_teacher=build(s, t))
