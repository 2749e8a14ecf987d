"""``veil experiment longform``: LongDPO's step-level DPO against SFT on the chosen paths and outcome
DPO on generated writing tasks (:mod:`veil.models.longform.experiment`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from veil.cli.errors import UserError

__all__ = ["longform_table", "register"]


def register(experiment: typer.Typer) -> None:
    experiment.command("longform")(experiment_longform)


def experiment_longform(
    quick: Annotated[
        bool,
        typer.Option("--quick", help="The 2-core preset: a 2x128 Llama from scratch, one torch thread."),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seeds the topics' facts, the split and the base model.")] = 0,
    model: Annotated[
        str | None,
        typer.Option(help="A pretrained base model (name or directory) instead of the scratch Llama."),
    ] = None,
    mode: Annotated[str, typer.Option(help="The search: greedy (as released) or mcts.")] = "greedy",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Also write the result as DIR/longform.json and the first seed's step-DPO model to "
            "DIR/step-dpo-model (servable: veil serve --model DIR/step-dpo-model)."
        ),
    ] = None,
) -> None:
    """Length score S_l, rule-based quality and contradiction rate of the base model, SFT on the chosen
    paths, outcome DPO and step-level DPO on held-out prompts, each trained for the same number of
    updates; and the contradiction rate of the search with and without the memory pool.

    The scratch base model is cached in the data directory (VEIL_DATA_DIR) and reused by later runs of
    the same preset and seed. Progress goes to stderr, also with --json."""
    import dataclasses

    from veil.models.longform.experiment import LongformExperimentConfig

    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    if mode not in ("greedy", "mcts"):
        raise UserError(f"--mode must be greedy or mcts, got {mode!r}")
    if out is not None:
        from veil.cli.main import _writable_dir

        _writable_dir(out, "--out")
    base = LongformExperimentConfig.quick() if quick else LongformExperimentConfig()
    cfg = dataclasses.replace(
        base, seed=seed, model=model, search=dataclasses.replace(base.search, mode=mode, seed=seed)
    )

    from veil.cli.main import _data_dir, _quiet_libraries
    from veil.models.longform.experiment import run_longform_experiment

    _quiet_libraries()
    save = out / "step-dpo-model" if out is not None else None
    result = run_longform_experiment(
        cfg, progress=lambda m: typer.echo(m, err=True), data_dir=_data_dir(), save_dir=save
    )
    if out is not None:
        (out / "longform.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    if as_json:
        typer.echo(json.dumps(result))
        return
    from rich.console import Console

    console = Console()
    console.print(longform_table(result))
    pool = result["memory_pool"]
    console.print(
        f"memory pool: contradiction rate {pool['contradiction_rate_with']:.3f} with, "
        f"{pool['contradiction_rate_without']:.3f} without over {pool['responses']} responses each "
        f"(McNemar p = {pool['mcnemar_p']:.3g}; {pool['vetoes']} vetoes, "
        f"{1000 * pool['seconds_per_step']:.1f} ms per step)"
    )
    for name, cmp in result["paired"].items():
        ci = "" if cmp["ci95"] is None else f", 95 % CI [{cmp['ci95'][0]:+.1f}, {cmp['ci95'][1]:+.1f}]"
        console.print(
            f"{name.replace('_', ' ')}: S_l {cmp['mean_diff']:+.2f} per prompt{ci} over {cmp['pairs']} "
            f"prompt-seed pairs ({cmp['wins']} won, {cmp['losses']} lost; Wilcoxon p = {cmp['wilcoxon_p']:.3g}; "
            f"over the {cmp['by_prompt']['prompts']} prompts, seeds averaged, p = {cmp['by_prompt']['wilcoxon_p']:.3g})"
        )
    for name, ok in result["checks"].items():
        console.print(f"{name.replace('_', ' ')}: {'yes' if ok else 'no'}")
    console.print(f"CPU seconds: {result['cpu_seconds']['total_s']:.0f}")


def longform_table(result: dict[str, Any]) -> Any:
    """Methods x (S_l mean and spread over seeds, quality, contradiction rate, mean words per target)."""
    from rich.table import Table

    cfg = result["config"]
    table = Table(title=f"LongDPO on {cfg['eval_prompts']} held-out prompts, {len(cfg['seeds'])} seed(s)")
    targets = [str(n) for n in cfg["lengths"]]
    heads = ["method", "S_l", "S_l std", "quality", "contradictions", *(f"words @{t}" for t in targets)]
    for head in heads:
        table.add_column(head, justify="left" if head == "method" else "right")
    for name, r in result["methods"].items():
        runs = result["per_seed"][name]
        words = [sum(x["words_by_target"].get(t, 0.0) for x in runs) / len(runs) for t in targets]
        table.add_row(
            name, f"{r['length_score']:.1f}", f"{r['length_score_std']:.1f}", f"{r['quality']:.2f}",
            f"{r['contradiction_rate']:.3f}", *(f"{w:.0f}" for w in words),
        )  # fmt: skip
    return table
