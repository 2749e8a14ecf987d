"""``benchmarks/distill_student_speed.py`` on a tiny teacher and a one-layer student cut from it."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import distill_student_speed
    finally:
        sys.path.remove(str(BENCHMARKS))
    return distill_student_speed


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    from veil.models.distillation.data import lee_documents
    from veil.models.distillation.students import (
        OtherTokenizerStudentConfig,
        other_tokenizer_student,
        same_tokenizer_student,
        save_student,
    )

    root = tmp_path_factory.mktemp("distill-speed")
    cfg = OtherTokenizerStudentConfig(
        vocab_size=300, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64
    )
    teacher, tok = other_tokenizer_student(lee_documents()[:20], cfg, root / "teacher")
    save_student(same_tokenizer_student(teacher.config, scale=0.5, teacher=teacher), tok, root / "student")
    return root


@pytest.mark.slow  # an ONNX export and two timing rounds: about a minute on 2 cores
def test_the_student_and_teacher_are_timed_side_by_side(bench, dirs) -> None:
    out = bench.measure(dirs / "student", dirs / "teacher", str(dirs), prompt_tokens=8, new_tokens=3,
                        repeats=1, threads=(1,))  # fmt: skip
    assert (out["student"]["layers"], out["teacher"]["layers"]) == (1, 2)
    assert out["student"]["prompt_tokens"] == out["teacher"]["prompt_tokens"] == 8
    assert out["student"]["export_seconds"] is not None
    (row,) = out["results"].values()
    for key in ("teacher_torch", "student_onnxruntime", "student_torch"):
        assert row[key]["first_token_ms"] > 0 and row[key]["decode_tokens_per_s"] > 0
    ratio = row["student_onnxruntime"]["decode_tokens_per_s"] / row["teacher_torch"]["decode_tokens_per_s"]
    assert math.isclose(row["decode_speedup_student_over_teacher"], ratio)
    again = bench.measure(dirs / "student", dirs / "teacher", str(dirs), prompt_tokens=8, new_tokens=3,
                          repeats=1, threads=(1,))  # fmt: skip
    assert again["student"]["export_seconds"] is None  # the export is cached by the weights' digest


def test_quality_picks_the_best_same_tokenizer_method(bench) -> None:
    results = {
        "methods": {
            "sft": {"bits_per_char": 1.2, "rouge_l": 0.1, "accuracy": 0.0},
            "kd-forward-kl": {"bits_per_char": 1.1, "rouge_l": 0.2, "accuracy": 0.1},
            "cdm": {"bits_per_char": 0.5, "rouge_l": 0.3, "accuracy": 0.2},  # other tokenizer: skipped
        },
        "teacher": {"bits_per_char": 1.0, "rouge_l": 0.4, "accuracy": 0.3},
    }
    q = bench.quality(results)
    assert q["method"] == "kd-forward-kl" and q["student"]["bits_per_char"] == 1.1
    assert q["teacher"]["rouge_l"] == 0.4
    assert bench.quality(results, "sft")["student"]["bits_per_char"] == 1.2
    with pytest.raises(ValueError, match="not in the results"):
        bench.quality(results, "uld")
