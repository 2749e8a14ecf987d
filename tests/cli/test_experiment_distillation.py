"""``veil experiment distillation``: every method end to end on a tiny scratch teacher, and the CLI's errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from veil.models.distillation.experiment import METHODS, ExperimentConfig, run_distillation_experiment


def tiny_config(**overrides) -> ExperimentConfig:
    base = dict(
        teacher="scratch", scratch_tokenizer="bpe", teacher_steps=20, teacher_lr=3e-3, scratch_layers=2, scratch_hidden=32,
        n_teacher=120, n_train=24, n_heldout=8, seeds=(0,), student_scale=0.5, other_vocab=300,
        other_hidden=32, other_layers=1, steps=3, batch_size=4, lmbda=0.5, max_new_tokens=6,
        warmup_prompts=3, warmup_samples=1, cdm_top_k=8,
    )  # fmt: skip
    return ExperimentConfig(**(base | overrides))


@pytest.mark.slow  # tests/models/test_distill_experiment.py runs every method on a smaller config in make test
def test_every_method_runs_end_to_end_and_reports_finite_metrics(tmp_path) -> None:
    result = run_distillation_experiment(tiny_config(), data_dir=tmp_path)
    assert set(result["methods"]) == set(METHODS)
    for name, row in result["methods"].items():
        for metric in ("nll", "bits_per_char", "rouge_l", "accuracy"):
            assert math.isfinite(row[metric]), (name, metric, row[metric])
        assert len(row["per_seed"]) == 1
    warm = result["warmup"]
    assert 0.0 <= warm["flagged_rate_before"] <= 1.0 and 0.0 <= warm["flagged_rate_after"] <= 1.0
    assert result["teacher"]["cached"] is False and math.isfinite(result["teacher"]["bits_per_char"])
    assert isinstance(result["checks"]["headline_beats_sft_every_seed"], bool)
    json.dumps(result)


@pytest.mark.slow  # the cache of both teachers is tested in tests/models/test_distill_experiment.py
def test_a_second_run_reuses_the_cached_teacher(tmp_path) -> None:
    cfg = tiny_config(methods=("sft",))
    first = run_distillation_experiment(cfg, data_dir=tmp_path)
    second = run_distillation_experiment(cfg, data_dir=tmp_path)
    assert (first["teacher"]["cached"], second["teacher"]["cached"]) == (False, True)
    assert second["teacher"]["bits_per_char"] == pytest.approx(first["teacher"]["bits_per_char"], rel=1e-5)


def test_the_config_refuses_unknown_methods_and_no_seeds() -> None:
    with pytest.raises(ValueError, match="unknown method"):
        tiny_config(methods=("sft", "magic"))
    with pytest.raises(ValueError, match="seed"):
        tiny_config(seeds=())


def _veil(*args: str) -> subprocess.CompletedProcess:
    code = "from veil.cli.main import main; main()"
    env = os.environ | {"VEIL_DATA_DIR": os.environ.get("VEIL_DATA_DIR", "/tmp/veil-test-data")}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize(
    "args",
    [("--seeds", "0"), ("--seeds", "x"), ("--methods", "sft,magic"), ("--bogus",), ("--device", "tpu")],
)
def test_the_cli_rejects_bad_flags_with_one_line_and_exit_2(args) -> None:
    proc = _veil("experiment", "distillation", "--quick", *args)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stdout == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_the_cli_refuses_cuda_on_a_machine_without_it_with_one_line_and_exit_2() -> None:
    proc = _veil("experiment", "distillation", "--quick", "--device", "cuda")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "cuda" in proc.stderr
    assert proc.stdout == ""


@pytest.mark.slow
def test_the_quick_preset_prints_one_json_object_with_every_method() -> None:
    proc = _veil("experiment", "distillation", "--quick", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert set(result["methods"]) == set(METHODS)
    assert all(len(row["per_seed"]) == 3 for row in result["methods"].values())
    assert result["warmup"]["flagged_rate_before"] >= 0.0


def test_the_best_student_is_saved_where_export_onnx_loads_it(tmp_path) -> None:
    from veil.models.distillation.data import DistillDataConfig, build_dataset
    from veil.models.distillation.metrics import response_nll
    from veil.models.loading import load_model

    cfg = tiny_config(methods=("sft", "kd-forward-kl"), teacher_steps=4, n_teacher=40, n_heldout=4)
    result = run_distillation_experiment(cfg, data_dir=tmp_path, save_student=tmp_path / "student")
    saved = result["student"]
    best = min(cfg.methods, key=lambda m: result["methods"][m]["bits_per_char"])
    assert (saved["method"], saved["seed"], saved["path"]) == (best, 0, str(tmp_path / "student"))
    loaded = load_model(tmp_path / "student", tmp_path)
    # the saved weights and tokenizer are the evaluated student's: the same held-out bits/char on seed 0
    data = build_dataset(DistillDataConfig(seed=0, n_train=cfg.n_train, n_heldout=cfg.n_heldout, n_teacher=0,
                                           corpus_fraction=0.0))  # fmt: skip
    reported = result["methods"][best]["per_seed"][0]["bits_per_char"]
    assert response_nll(loaded.model, loaded.tokenizer, data.heldout).bits_per_char == pytest.approx(
        reported, rel=1e-4
    )


def test_the_cli_refuses_an_unwritable_save_student_folder_before_training(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = _veil("experiment", "distillation", "--quick", "--save-student", str(blocker / "sub"))
    assert proc.returncode == 2 and "--save-student" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
