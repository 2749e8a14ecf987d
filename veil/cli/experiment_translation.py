"""``veil experiment translation``: direct, long-thought and document-grounded translation (clean, noisy and
no documents) on one local model (:mod:`veil.models.translation.experiment`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from veil.cli.errors import UserError

__all__ = ["register", "translation_table"]


def register(experiment: typer.Typer) -> None:
    experiment.command("translation")(experiment_translation)


def experiment_translation(
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="Small from-scratch models and a short SmolLM2 loop, one torch thread (benchmarks/README.md).",
        ),
    ] = False,
    model: Annotated[
        str,
        typer.Option(
            help="The long-thought model, by name or local directory (default SmolLM2-135M-Instruct)."
        ),
    ] = "smollm2-135m-instruct",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    out: Annotated[Path | None, typer.Option(help="Also write the result as DIR/translation.json.")] = None,
) -> None:
    """Document-grounded translation (BLEU, chrF, term accuracy with no, clean and noisy documents; the
    relevance judges) on small models trained here, multi-task against translation-only; the long-thought
    loop's evaluator, its score gain on similes and DRT fine-tuning on the named model."""
    import dataclasses

    from veil.models.translation.experiment import TranslationExperimentConfig

    if not model.strip():
        raise UserError("--model must name a model")
    if out is not None:
        from veil.cli.main import _writable_dir

        _writable_dir(out, "--out")
    base = TranslationExperimentConfig.quick() if quick else TranslationExperimentConfig()
    cfg = dataclasses.replace(base, model=model)

    from veil.cli.main import _data_dir, _quiet_libraries
    from veil.models.translation.experiment import run_translation_experiment
    from veil.progress import NullProgress, RichProgress

    _quiet_libraries()
    progress = NullProgress() if as_json else RichProgress()
    result = run_translation_experiment(cfg, data_dir=_data_dir(), progress=progress)
    if out is not None:
        (out / "translation.json").write_text(
            json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    if as_json:
        typer.echo(json.dumps(result, ensure_ascii=False))
        return
    from rich.console import Console

    console = Console()
    if result["document_grounded"]:
        console.print(translation_table(result))
        for name, j in result["document_grounded"]["judges"].items():
            console.print(
                f"relevance judge {name}: accuracy {j['accuracy']:.2f} (majority {j['majority_accuracy']:.2f}), "
                f"balanced {j['balanced_accuracy']:.2f} (chance 0.50)"
            )
    lt = result["long_thought"]
    if lt:
        for name, d in (lt.get("discrimination") or {}).items():
            console.print(
                f"evaluator {name}: reference beats a mismatched one {d['pairwise_accuracy']:.0%} (chance 50%)"
            )
        s = lt.get("similes")
        if s:
            console.print(
                f"long-thought on {s['sentences']} similes ({lt['evaluator']} evaluator): {s['draft_score']:.1f} "
                f"(first draft) -> {s['final_score']:.1f} (final), {s['improved_share']:.0%} improved, "
                f"revisions beat what they revise {s['revision_win_rate'] or 0:.0%}"
            )
        h = lt.get("hsk")
        if h:
            console.print(f"long-thought on {h['sentences']} HSK sentences: chrF {h['draft_chrf']:.1f} (draft) -> "
                          f"{h['final_chrf']:.1f} (final)")  # fmt: skip
        d = lt.get("drt")
        if d and "complete_share" in d:
            console.print(f"DRT fine-tuned on {d['records']} records: {d['complete_share']:.0%} of answers complete "
                          f"<thought>/<output>, parsed by {d['parsed_by']}")  # fmt: skip
    for name, ok in result["checks"].items():
        console.print(f"{name.replace('_', ' ')}: {'n/a' if ok is None else 'yes' if ok else 'no'}")
    console.print(f"seconds: {result['seconds']['total_s']:.0f} wall, {result['cpu_seconds']:.0f} CPU")


def translation_table(result: dict[str, Any]) -> Any:
    """Model x evaluation (BLEU, chrF, term accuracy, documents kept) on the generated set."""
    from rich.table import Table

    g = result["document_grounded"]
    table = Table(title=f"Document-grounded translation en->zh, {g['sets']['test']} held-out entities")
    for head in ("model", "documents", "BLEU", "chrF", "term acc.", "docs kept"):
        table.add_column(head, justify="left" if head in ("model", "documents") else "right")
    for model, rows in g["models"].items():
        for name, r in rows.items():
            if not isinstance(r, dict):
                continue
            kept = f"{r['documents_kept']:.2f}" if "documents_kept" in r else "-"
            table.add_row(
                model, name, f"{r['bleu']:.2f}", f"{r['chrf']:.2f}", f"{r['term_accuracy']:.2f}", kept
            )
    return table
