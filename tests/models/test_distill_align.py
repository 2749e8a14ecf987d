"""Entropy-weighted DTW (CDM, arXiv:2502.11104) and the vocabulary maps, against naive references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from veil.models.distillation.align import (
    EOS_STRING,
    VocabStrings,
    align_batch,
    dtw_path_reference,
    dtw_paths,
    entropy_weights,
    path_units,
    strip_markers,
)
from veil.models.distillation.vocab_map import UNMAPPED, dynamic_map, exact_match_map, mined_map


def _strings(rng: np.random.Generator, count: int) -> list[str]:
    alphabet = list("abcde")
    return ["".join(rng.choice(alphabet, size=rng.integers(0, 5))) for _ in range(count)]


@pytest.mark.parametrize("weights", ["entropy", "fractional"])
def test_vectorised_dtw_equals_the_naive_per_cell_loop_on_random_string_pairs(weights: str) -> None:
    rng = np.random.default_rng(0 if weights == "entropy" else 1)
    teachers, students, w_t, w_s = [], [], [], []
    for _ in range(40):
        teachers.append(_strings(rng, int(rng.integers(1, 25))))
        students.append(_strings(rng, int(rng.integers(1, 25))))
        if weights == "entropy":  # integer weights: the float32 sweep
            w_t.append(rng.integers(3, 6, size=len(teachers[-1])))
            w_s.append(rng.integers(3, 6, size=len(students[-1])))
        else:  # the float64 sweep
            w_t.append(rng.uniform(0.5, 2.0, size=len(teachers[-1])))
            w_s.append(rng.uniform(0.5, 2.0, size=len(students[-1])))
    alignments = align_batch(teachers, students, w_t, w_s, chunk=8)  # uneven lengths in each sweep
    for a, t, s, wt, ws in zip(alignments, teachers, students, w_t, w_s, strict=True):
        np.testing.assert_array_equal(a.path, dtw_path_reference(t, s, wt, ws))


def test_hugging_face_split_in_two_on_one_side_forms_one_many_to_one_unit() -> None:
    (a,) = align_batch([["Hugging", "Face", "is", "here"]], [["Hug", "ging", "Face", "is", "here"]])
    assert a.groups() == [([0], [0, 1]), ([1], [2]), ([2], [3]), ([3], [4])]
    np.testing.assert_array_equal(a.one_to_one, [False, True, True, True])
    (b,) = align_batch([["Hugging Face"]], [["Hugging", "Face"]])
    assert b.groups() == [([0], [0, 1])]


def test_identical_sequences_align_one_to_one_even_with_repeated_tokens() -> None:
    tokens = ["the", "the", "", "cat", "the", "", ""]
    (a,) = align_batch([tokens], [tokens], [np.full(7, 5)], [np.full(7, 3)])
    assert a.n_units == 7 and a.one_to_one.all()


def test_path_units_splits_at_diagonal_steps_only() -> None:
    # [(0,0) (1,0) (1,1) (2,2)]: teacher 0,1 share student 0; teacher 1 then takes student 1 -> one unit
    a = path_units(np.array([[0, 0], [1, 0], [1, 1], [2, 2]]))
    assert a.groups() == [([0, 1], [0, 1]), ([2], [2])]


def test_dtw_rejects_an_empty_side() -> None:
    with pytest.raises(ValueError, match="empty side"):
        align_batch([["a"]], [[]])
    with pytest.raises(ValueError, match="non-empty"):
        dtw_paths([np.zeros((0, 3))])


def test_entropy_weights_follow_the_cdm_formula() -> None:
    logits = torch.tensor([[10.0, 0.0, 0.0], [0.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    ent = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    h = (ent - ent.min()) / (ent.max() - ent.min())
    expected = [int(3 + 3 / (1 + math.exp(-(4 * x - 2)))) for x in h.tolist()]
    assert entropy_weights(logits).tolist() == expected == [3, 5, 4]
    assert entropy_weights(torch.zeros(4, 3)).tolist() == [3, 3, 3, 3]  # constant entropy: h = 0


def test_strip_markers_removes_both_space_markers() -> None:
    assert [strip_markers(t) for t in ("ĠHello", "▁world", " x ", "Ċ")] == ["Hello", "world", "x", ""]


def _vocab(raw: list[str]) -> VocabStrings:
    text = [t.replace("Ġ", " ").replace("▁", " ") for t in raw]
    stripped = np.empty(len(raw), dtype=object)
    stripped[:] = [EOS_STRING if t in ("</s>", "<|im_end|>") else strip_markers(t) for t in text]
    return VocabStrings(raw=tuple(raw), text=tuple(text), stripped=stripped)


TEACHER = _vocab(["<|im_end|>", "Ġthe", "the", "Ġcats", "Ġdog", "\ufffd", "Ġsat"])
STUDENT = _vocab(["</s>", "▁the", "▁cat", "▁dogs", "▁sit", "s", "the"])


def test_exact_match_prefers_the_same_leading_space_and_skips_replacement_characters() -> None:
    t2s = exact_match_map(TEACHER, STUDENT)
    assert t2s.tolist() == [0, 1, 6, UNMAPPED, UNMAPPED, UNMAPPED, UNMAPPED]
    assert exact_match_map(TEACHER, TEACHER).tolist() == list(range(len(TEACHER)))


def test_mined_map_is_total_and_keeps_exact_matches() -> None:
    t2s = mined_map(TEACHER, STUDENT)
    assert (t2s != UNMAPPED).all()
    assert t2s[[0, 1, 2, 3, 4]].tolist() == [0, 1, 6, 2, 3]  # "cats" -> "cat", "dog" -> "dogs"


def test_dynamic_map_fills_unmapped_ids_from_the_same_unit_only() -> None:
    static = exact_match_map(TEACHER, STUDENT)
    t_top = np.array([[3, 4, 1], [3, 4, 1]])  # "cats", "dog", "the"
    s_top = np.array([[2, 3, 1], [4, 5, 1]])  # unit 0 offers "cat", "dogs"; unit 1 does not
    mapped = dynamic_map(static, t_top, s_top, TEACHER.stripped, STUDENT.stripped, threshold=0.3)
    assert mapped.tolist() == [[2, 3, 1], [UNMAPPED, UNMAPPED, 1]]


def test_exact_matches_are_never_overwritten_and_targets_serve_one_source_per_unit() -> None:
    static = exact_match_map(TEACHER, STUDENT)
    t_top = np.array([[2, 1, 3, 4]])  # "the" (-> 6), " the" (-> 1), "cats", "dog" (both unmapped)
    s_top = np.array([[1, 6, 2]])  # " the", "the", " cat"
    mapped = dynamic_map(static, t_top, s_top, TEACHER.stripped, STUDENT.stripped, threshold=0.99)
    # the static entries stay, although with this threshold other candidates are close enough; "cat"
    # (distance 0.5 to "dog" too) serves "cats", ranked first, and "dog" finds every target taken
    assert mapped.tolist() == [[6, 1, 2, UNMAPPED]]
    without_statics = dynamic_map(
        np.full_like(static, UNMAPPED), t_top, s_top, TEACHER.stripped, STUDENT.stripped, threshold=0.99
    )
    # both teacher "the"s are at distance 0 from both student "the"s: ties go to the higher-ranked target
    assert without_statics.tolist() == [[1, 6, 2, UNMAPPED]]


def test_threshold_zero_disables_the_dynamic_map() -> None:
    static = exact_match_map(TEACHER, STUDENT)
    t_top = np.array([[3, 4, 1, 6]])
    s_top = np.array([[2, 3, 1, 4]])
    mapped = dynamic_map(static, t_top, s_top, TEACHER.stripped, STUDENT.stripped, threshold=0.0)
    np.testing.assert_array_equal(mapped, static[t_top])
    with pytest.raises(ValueError, match="threshold"):
        dynamic_map(static, t_top, s_top, TEACHER.stripped, STUDENT.stripped, threshold=-0.1)
