"""The distillation experiment's device: an explicit CPU run, a CUDA run, the config's checks, and a lint
that every tensor the package creates is created on a named device."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

import veil.models.distillation as distillation
from veil.models.distillation.experiment import METHODS, ExperimentConfig, run_distillation_experiment

FACTORIES = {
    "tensor", "as_tensor", "zeros", "ones", "full", "empty", "arange", "linspace", "eye",
    "rand", "randn", "randint", "randperm", "rand_like", "randn_like",
}  # fmt: skip


def smallest_config(**overrides) -> ExperimentConfig:
    base = dict(
        teacher="scratch", scratch_tokenizer="bpe", teacher_steps=8, teacher_lr=3e-3, scratch_layers=2,
        scratch_hidden=32, n_teacher=60, n_train=12, n_heldout=4, seeds=(0,), student_scale=0.5,
        other_vocab=300, other_hidden=32, other_layers=1, steps=2, batch_size=4, lmbda=0.5,
        max_new_tokens=4, warmup_prompts=2, warmup_samples=1, cdm_top_k=8,
    )  # fmt: skip
    return ExperimentConfig(**(base | overrides))


def _assert_finite(result: dict) -> None:
    assert set(result["methods"]) == set(METHODS)
    for name, row in result["methods"].items():
        for metric in ("nll", "bits_per_char", "rouge_l", "accuracy"):
            assert math.isfinite(row[metric]), (name, metric, row[metric])


def test_the_smallest_config_runs_end_to_end_on_an_explicit_cpu_device(tmp_path) -> None:
    result = run_distillation_experiment(smallest_config(device="cpu"), data_dir=tmp_path)
    _assert_finite(result)
    assert result["config"]["device"] == "cpu"
    assert all(row["seconds"] > 0 for row in result["methods"].values())


def test_a_second_run_reuses_both_cached_teachers_and_repeats_every_number(tmp_path) -> None:
    cfg = smallest_config(methods=("sft-other-tokenizer", "dual-teacher"))
    first = run_distillation_experiment(cfg, data_dir=tmp_path)
    second = run_distillation_experiment(cfg, data_dir=tmp_path)
    assert (first["teacher"]["dual_teacher"]["cached"], second["teacher"]["dual_teacher"]["cached"]) == (
        False,
        True,
    )
    for name in cfg.methods:
        for metric in ("nll", "bits_per_char", "kl_to_truth"):
            assert second["methods"][name][metric] == pytest.approx(first["methods"][name][metric], rel=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_every_method_runs_on_cuda_and_reports_finite_metrics(tmp_path) -> None:
    result = run_distillation_experiment(smallest_config(device="cuda"), data_dir=tmp_path)
    _assert_finite(result)
    assert math.isfinite(result["teacher"]["bits_per_char"])
    assert 0.0 <= result["warmup"]["flagged_rate_before"] <= 1.0


@pytest.mark.parametrize("device", ["gpu", "CUDA", "cuda:", "cuda:x", "mps", ""])
def test_the_config_refuses_a_device_that_is_not_cpu_or_cuda(device) -> None:
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N'"):
        smallest_config(device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_the_config_refuses_cuda_without_a_cuda_device(device) -> None:
    with pytest.raises(ValueError, match=r"torch\.cuda\.is_available\(\) is False"):
        smallest_config(device=device)


def _factory_calls_without_device(path: Path) -> list[str]:
    """``file:line call`` of each ``torch.<factory>(...)`` with neither ``device=`` nor ``generator=``."""
    slips = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        if not (isinstance(owner, ast.Name) and owner.id == "torch" and node.func.attr in FACTORIES):
            continue
        if {k.arg for k in node.keywords} & {"device", "generator"}:
            continue
        slips.append(f"{path.name}:{node.lineno} torch.{node.func.attr}")
    return slips


def test_every_tensor_factory_in_the_package_names_its_device() -> None:
    # A factory without ``device=`` makes a CPU tensor, which a CUDA run then mixes with model outputs.
    # Draws from a seeded ``generator=`` are exempt: they stay on the CPU on purpose (indices only), so one
    # seed gives one stream of draws on every device.
    files = sorted(Path(distillation.__file__).parent.glob("*.py"))
    assert len(files) > 10
    slips = [s for f in files for s in _factory_calls_without_device(f)]
    assert slips == []


def test_the_device_lint_flags_a_factory_without_a_device(tmp_path) -> None:
    source = tmp_path / "slip.py"
    source.write_text("import torch\nok = torch.zeros(3, device='cpu')\nbad = torch.arange(4)\n")
    assert _factory_calls_without_device(source) == ["slip.py:3 torch.arange"]


def _full_shifted(model, tokenizer, rows) -> tuple[torch.Tensor, torch.Tensor]:
    """The naive form: logits of every position ``(B, L-1, V)``, labels -100 off the response."""
    from veil.models.distillation.data import collate, encode_example

    batch = collate(
        [encode_example(tokenizer, e.instruction, e.response) for e in rows], tokenizer.pad_token_id
    )
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["input_ids"][:, 1:].masked_fill(batch["response_mask"][:, 1:] == 0, -100)
    return logits, labels


def test_the_response_only_logits_give_every_cross_tokenizer_loss_of_the_full_logits(tmp_path) -> None:
    from veil.models.distillation import experiment, methods, pairs
    from veil.models.distillation.cdm import DualTeacherConfig, dual_teacher_loss

    cfg = smallest_config(methods=("cdm", "uld", "minED", "dual-teacher"), teacher_steps=2)
    m = pairs.build_models(cfg, tmp_path)
    student = pairs.initial_students(m, cfg, seed=0)[1]
    data = experiment.DistillDataConfig(seed=0, n_train=4, n_heldout=1, corpus_fraction=0.0)
    rows = experiment.build_dataset(data).train

    def both(shifted):  # noqa: ANN001, ANN202
        with torch.no_grad():
            return (
                *shifted(student, m.other_tokenizer, rows),
                *shifted(m.teacher, m.tokenizer, rows),
                shifted(m.other_teacher, m.other_tokenizer, rows)[0],
            )

    compact = both(lambda model, tok, rows: methods.shifted_logits(model, tok, rows, grad=False))
    full = both(_full_shifted)
    assert compact[0].shape[1] < full[0].shape[1]  # the prompts are left out
    losses = methods.cross_losses(m, cfg)
    for name in ("cdm", "uld", "minED"):
        assert float(losses[name](*compact[:4], rows)) == pytest.approx(
            float(losses[name](*full[:4], rows)), rel=1e-5
        )

    def dual(s, sl, t, tl, same):  # noqa: ANN001, ANN202
        return float(
            dual_teacher_loss(s, sl, same, t, tl, m.vocab["exact"], DualTeacherConfig(top_k=cfg.cdm_top_k))
        )

    assert dual(*compact) == pytest.approx(dual(*full), rel=1e-5)


def test_the_run_sets_its_thread_count_and_restores_the_callers(tmp_path, monkeypatch) -> None:
    from veil.models.distillation import experiment

    seen = []
    monkeypatch.setattr(experiment, "_run", lambda *args: seen.append(torch.get_num_threads()) or {})
    before = torch.get_num_threads()
    run_distillation_experiment(smallest_config(threads=1), data_dir=tmp_path)
    assert seen == [1] and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        smallest_config(threads=0)


def test_the_other_tokenizer_student_takes_its_own_step_budget() -> None:
    assert smallest_config().cross_steps == smallest_config().steps
    assert smallest_config(other_steps=7).cross_steps == 7
    with pytest.raises(ValueError, match="cross_steps"):
        smallest_config(other_steps=0)
