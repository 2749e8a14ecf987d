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
            help="SmolLM2 inference only on small samples, one torch thread (see benchmarks/README.md).",
        ),
    ] = False,
    model: Annotated[
        str, typer.Option(help="The model, by name or local directory (default SmolLM2-135M-Instruct).")
    ] = "smollm2-135m-instruct",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    out: Annotated[Path | None, typer.Option(help="Also write the result as DIR/translation.json.")] = None,
) -> None:
    """BLEU and chrF (and term accuracy on the generated set) of direct, long-thought and document-grounded
    translation with clean, noisy and no documents; the long-thought loop's score gain on similes."""
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
    console.print(translation_table(result))
    s = result["similes"]
    if s:
        console.print(
            f"long-thought on {s['sentences']} similes: evaluator score {s['draft_score']:.1f} (first draft) -> "
            f"{s['final_score']:.1f} (final), {s['improved_share']:.0%} improved, "
            f"{s['mean_rounds']:.1f} revisions on average"
        )
    for name, ok in result["checks"].items():
        console.print(f"{name.replace('_', ' ')}: {'n/a' if ok is None else 'yes' if ok else 'no'}")
    console.print(f"seconds: {result['seconds']['total_s']:.0f}")


def translation_table(result: dict[str, Any]) -> Any:
    """Methods x (BLEU, chrF, term accuracy, documents kept on the generated set; BLEU, chrF on HSK)."""
    from rich.table import Table

    sets = result["sets"]
    table = Table(
        title=f"Translation en->zh: generated set ({sets['generated']['test']}), HSK ({sets['hsk']['test']})"
    )
    for head in ("method", "BLEU", "chrF", "term acc.", "docs kept", "HSK BLEU", "HSK chrF"):
        table.add_column(head, justify="left" if head == "method" else "right")
    for name, r in result["methods"].items():
        g, h = r["generated"], r.get("hsk")
        kept = f"{g['documents_kept']:.2f}" if "documents_kept" in g else "-"
        table.add_row(
            name.replace("direct", "direct (= no document)") if name == "direct" else name,
            f"{g['bleu']:.2f}", f"{g['chrf']:.2f}", f"{g['term_accuracy']:.2f}", kept,
            f"{h['bleu']:.2f}" if h else "-", f"{h['chrf']:.2f}" if h else "-",
        )  # fmt: skip
    return table
