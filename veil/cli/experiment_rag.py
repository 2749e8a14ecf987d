"""``veil experiment rag``: DeepRAG against its baselines on the generated multi-hop world
(:mod:`veil.models.rag.experiment`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from veil.cli.errors import UserError

__all__ = ["rag_table", "register"]


def register(experiment: typer.Typer) -> None:
    experiment.command("rag")(experiment_rag)


def experiment_rag(
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help="The 2-core preset: a 4x128 Llama on one torch thread (see benchmarks/README.md)."
        ),
    ] = False,
    seed: Annotated[
        int, typer.Option(help="Seeds the world, the split, the demonstrations and the model.")
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    out: Annotated[Path | None, typer.Option(help="Also write the result as DIR/rag.json.")] = None,
) -> None:
    """Exact match, F1, retrievals per question and retrieval-decision quality (MCC against the world's
    needs-retrieval labels) of DeepRAG, DeepRAG-Imi and the base model under each baseline policy.

    The trained base model is cached in the data directory (VEIL_DATA_DIR) and reused by later runs of
    the same preset and seed."""
    import dataclasses

    from veil.models.rag.experiment import RagExperimentConfig
    from veil.models.rag.world import WorldConfig

    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    if out is not None:
        from veil.cli.main import _writable_dir

        _writable_dir(out, "--out")
    base = RagExperimentConfig.quick() if quick else RagExperimentConfig()
    cfg = dataclasses.replace(base, seed=seed, world=WorldConfig(seed=seed))

    from veil.cli.main import _data_dir, _quiet_libraries
    from veil.models.rag.experiment import run_rag_experiment

    _quiet_libraries()
    say = (lambda _m: None) if as_json else (lambda m: typer.echo(m, err=True))
    result = run_rag_experiment(cfg, progress=say, data_dir=_data_dir())
    if out is not None:
        (out / "rag.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    if as_json:
        typer.echo(json.dumps(result))
        return
    from rich.console import Console

    console = Console()
    console.print(rag_table(result))
    for name, ok in result["checks"].items():
        console.print(f"{name.replace('_', ' ')}: {'yes' if ok else 'no'}")
    g = result["calibration_gain"]
    console.print(
        f"calibration's MCC gain over stage I: {g['gain']:+.3f} (95 % paired bootstrap over questions: "
        f"{g['low']:+.3f} to {g['high']:+.3f})"
    )
    stages = ", ".join(
        f"{k.removesuffix('_s')} {v:.0f}" for k, v in result["seconds"].items() if k != "total_s"
    )
    console.print(f"seconds: {result['seconds']['total_s']:.0f} ({stages})")


def rag_table(result: dict[str, Any]) -> Any:
    """Methods x (EM, F1, retrievals per question, decision MCC and balanced accuracy, the steps they are
    scored on, the share of first subqueries that are the gold first hop's, malformed share)."""
    from rich.table import Table

    table = Table(title=f"DeepRAG on the generated world, {result['world']['test_questions']} test questions")
    for head in (
        "method",
        "EM",
        "F1",
        "retrievals/question",
        "decision MCC",
        "decision balanced acc.",
        "scored steps",
        "first subquery gold",
        "malformed",
    ):
        table.add_column(head, justify="left" if head == "method" else "right")
    for name, r in result["methods"].items():
        d = r["decisions"]
        table.add_row(
            name, f"{r['em']:.3f}", f"{r['f1']:.3f}", f"{r['retrievals']:.2f}", f"{d['mcc']:.3f}",
            f"{d['balanced_accuracy']:.3f}", str(d["steps"]), f"{r['first_subquery_gold']:.2f}",
            f"{r['malformed']:.2f}",
        )  # fmt: skip
    return table
