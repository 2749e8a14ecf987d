"""``veil experiment distillation``: SFT, KD with each loss, Warmup-Distill, CDM, ULD, MinED and dual-teacher
on one initial student per tokenizer, over seeds (:mod:`veil.models.distillation.experiment`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from veil.cli.errors import UserError

__all__ = ["distillation_table", "register"]


def register(experiment: typer.Typer) -> None:
    experiment.command("distillation")(experiment_distillation)


def experiment_distillation(
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="A 4x128 teacher over a 512-token BPE trained from scratch (1,500 steps), 2-layer students, "
            "100 training examples: about 10 min of CPU on 2 cores, teachers included (cached afterwards).",
        ),
    ] = False,
    seeds: Annotated[
        int, typer.Option(help="Repetitions (data, initialisation and order seeds 0..N-1).")
    ] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    out: Annotated[Path | None, typer.Option(help="Also write the result as DIR/distillation.json.")] = None,
    methods: Annotated[str, typer.Option(help="Comma-separated subset of the methods (default: all).")] = "",
    device: Annotated[str, typer.Option(help="Where the models train and run: cpu, cuda or cuda:N.")] = "cpu",
    save_student: Annotated[
        Path | None,
        typer.Option(
            help="Save the best student (lowest mean held-out bits/char; first seed's) with its tokenizer "
            "to DIR, for `veil export-onnx --lm DIR`.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Held-out bits/char, NLL, ROUGE-L and accuracy of every distillation method against SFT, mean ± std over seeds."""
    from veil.models.distillation.experiment import METHODS, ExperimentConfig

    if seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {seeds}")
    chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        raise UserError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    if out is not None:
        from veil.cli.main import _writable_dir

        _writable_dir(out, "--out")
    if save_student is not None:
        from veil.cli.main import _writable_dir

        _writable_dir(save_student, "--save-student")
    cfg = (ExperimentConfig.quick if quick else ExperimentConfig.full)(seeds)
    try:
        cfg = ExperimentConfig(**{**cfg.__dict__, "methods": chosen or cfg.methods, "device": device})
    except ValueError as exc:
        raise UserError(str(exc)) from exc

    from veil.cli.main import _data_dir, _quiet_libraries
    from veil.models.distillation.experiment import run_distillation_experiment
    from veil.progress import NullProgress, RichProgress

    _quiet_libraries()
    progress = NullProgress() if as_json else RichProgress()
    result = run_distillation_experiment(
        cfg, data_dir=_data_dir(), progress=progress, save_student=save_student
    )
    if out is not None:
        (out / "distillation.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    if as_json:
        typer.echo(json.dumps(result))
        return
    from rich.console import Console

    console = Console()
    console.print(distillation_table(result))
    for line in summary_lines(result):
        console.print(line)


def _cell(row: dict[str, Any], metric: str) -> str:
    mean, std = row[metric], row[f"{metric}_std"]
    return "-" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}"


def distillation_table(result: dict[str, Any]) -> Any:
    """Methods x metrics, mean ± std over seeds (accuracy: exact match on the single-answer tasks)."""
    from rich.table import Table

    n = len(result["config"]["seeds"])
    table = Table(title=f"Distillation, held-out, mean ± std over {n} seed(s)")
    heads = ("method", "student", "bits/char", "NLL/token", "ROUGE-L", "accuracy", "KL to truth")
    for head in heads:
        table.add_column(head, justify="left" if head in ("method", "student") else "right")
    from veil.models.distillation.experiment import SAME_TOKENIZER_METHODS

    for name, row in result["methods"].items():
        student = "teacher's tokenizer" if name in SAME_TOKENIZER_METHODS else "own tokenizer"
        metrics = ("bits_per_char", "nll", "rouge_l", "accuracy", "kl_to_truth")
        table.add_row(name, student, *(_cell(row, m) for m in metrics))
    return table


def _yes(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "no")


def summary_lines(result: dict[str, Any]) -> list[str]:
    """Teacher, warm-up and the computed checks, one line each."""
    t, checks, w = result["teacher"], result["checks"], result["warmup"]
    took = "cached" if t["cached"] else f"{t['seconds']:.0f} s"
    lines = [
        f"teacher: {t['source']} ({t['steps']} SFT steps, {took}): "
        f"bits/char {t['bits_per_char']:.3f}, NLL {t['nll']:.3f}, ROUGE-L {t['rouge_l']:.3f}, "
        f"accuracy {t['accuracy']:.3f}"
    ]
    if w:
        lines.append(
            f"warmup-distill: flagged-token rate {w['flagged_rate_before']:.3f} -> {w['flagged_rate_after']:.3f}, "
            f"teacher NLL of student samples {w['teacher_nll_before']:.3f} -> {w['teacher_nll_after']:.3f} "
            f"(lower in every seed: {_yes(checks['warmup_lowers_flagged_rate_every_seed'])})"
        )
    wins = [m for m, v in checks["beats_own_sft_every_seed"].items() if v]
    lines.append(
        f"distilled student ({checks['headline']}) beats SFT on held-out bits/char across seeds: "
        f"{_yes(checks['headline_beats_sft_every_seed'])}"
    )
    lines.append(f"methods beating their own student's SFT in every seed: {', '.join(wins) or 'none'}")
    if result.get("student"):
        st = result["student"]
        lines.append(
            f"best student: {st['method']} (seed {st['seed']}, {st['bits_per_char']:.3f} bits/char) saved to "
            f"{st['path']}; put it on the phone with `veil export-onnx --out DIR --lm {st['path']}`"
        )
    lines.append(f"seconds: {result['seconds']:.0f} wall, {result.get('cpu_seconds', float('nan')):.0f} CPU")
    return lines
