"""``veil bench kv``: KV-cache compression quality on the synthetic suite (:mod:`veil.models.compression.evaluation`)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from veil.cli.errors import UserError

__all__ = ["register", "kv_table"]

REGIME_TITLES = {
    "question_before": "question before compression",
    "question_after": "question after compression",
}


def register(bench: typer.Typer) -> None:
    bench.command("kv")(bench_kv)


def bench_kv(
    quick: Annotated[bool, typer.Option("--quick", help="tiny-llama, 2 examples of 256 tokens.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    examples: Annotated[int, typer.Option(help="Suite examples (tasks and depths cycle).")] = 24,
    context_tokens: Annotated[int, typer.Option(help="Prompt length per example, in tokens.")] = 1024,
    methods: Annotated[
        str,
        typer.Option(
            help="Comma-separated: dbudgetkv, dbudgetkv_non_sink, streaming_llm, snapkv, h2o, pyramidkv."
        ),
    ] = "",
    threshold: Annotated[float, typer.Option(help="DBudgetKV's threshold T, in (0, 1).")] = 0.01,
    max_new_tokens: Annotated[int, typer.Option(help="Greedy tokens per output.")] = 32,
    model: Annotated[str, typer.Option(help="Registered model name or directory.")] = "smollm2-135m-instruct",
    regime: Annotated[
        str,
        typer.Option(
            help="question_before: compress the whole prompt (the paper's); question_after: compress the "
            "context, then prefill the question."
        ),
    ] = "question_before",
) -> None:
    """Greedy agreement with the full cache, mean KL, accuracy and kept fraction per method, baselines at DBudgetKV's budget."""
    from veil.models.compression.evaluation import BENCH_METHODS, REGIMES, KVBenchConfig

    chosen = tuple(m.strip() for m in methods.split(",") if m.strip()) or BENCH_METHODS
    unknown = [m for m in chosen if m not in BENCH_METHODS]
    if unknown:
        raise UserError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(BENCH_METHODS)}")
    if not 0.0 < threshold < 1.0:
        raise UserError(f"threshold must be in (0, 1), got {threshold}")
    if regime not in REGIMES:
        raise UserError(f"regime must be one of {', '.join(REGIMES)}, got {regime!r}")
    if quick:
        model, examples, context_tokens = "tiny-llama", min(examples, 2), 256
    try:
        config = KVBenchConfig(
            model,
            examples,
            context_tokens,
            chosen,
            threshold,
            max_new_tokens,
            regime=regime,  # type: ignore[arg-type]
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc

    from veil.models.compression.evaluation import run_kv_benchmark
    from veil.models.loading import quiet_transformers
    from veil.progress import NullProgress, RichProgress

    quiet_transformers()
    result = run_kv_benchmark(config, progress=NullProgress() if as_json else RichProgress())
    if as_json:
        typer.echo(json.dumps(result))
        return
    from rich.console import Console

    Console().print(kv_table(result))


def kv_table(result: dict[str, Any]) -> Any:
    """The per-method summary as a rich table (mean KL: per token, teacher-forced on the full cache's
    output; 1st div: median first diverging token of the outputs that diverge)."""
    from rich.table import Table

    table = Table(
        title=f"KV compression, {result['model']}, {result['examples']} examples x ~{result['context_tokens']} tokens, "
        f"{REGIME_TITLES.get(result['regime'], result['regime'])} (T = {result['threshold']})"
    )
    heads = ("method", "budget", "agreement", "mean KL", "1st div", "accuracy", "kept mean", "p10", "p50", "p90")  # fmt: skip
    for head in heads:
        table.add_column(head, justify="right")
    for method, s in result["summary"].items():
        budget = (
            "-"
            if method in ("full",) or method.startswith("dbudgetkv")
            else f"{result['matched_budget']:.3f}"
        )
        first = "-" if s.get("first_divergence_p50") is None else f"{s['first_divergence_p50']:g}"
        table.add_row(
            method, budget, f"{s['agreement']:.3f}", f"{s.get('kl_mean', 0.0):.4f}", first, f"{s['accuracy']:.3f}",
            f"{s['kept_mean']:.3f}", f"{s['kept_p10']:.3f}", f"{s['kept_p50']:.3f}", f"{s['kept_p90']:.3f}",
        )  # fmt: skip
    return table
