"""The ``veil`` command: thin wiring from typer to the library.

User errors (bad arguments, unknown models, malformed files) print one line on stderr and exit 2.
Long commands show progress bars on stderr; ``--json`` prints one JSON object on stdout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from veil.cli.errors import UserError

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Veil: ID-free personalised LLMs.")
experiment_app = typer.Typer(no_args_is_help=True, help="Reproduce a paper's comparison.")
bench_app = typer.Typer(no_args_is_help=True, help="Speed benchmarks (ratios against a baseline).")
app.add_typer(experiment_app, name="experiment")
app.add_typer(bench_app, name="bench")

Quick = Annotated[bool, typer.Option("--quick", help="Tiny model and small data: minutes on 2 CPU cores.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of tables.")]
Task = Annotated[str, typer.Option(help="next_word (keyboard) | classification")]
Seed = Annotated[int, typer.Option(help="Random seed.")]


def _quiet_libraries() -> None:
    from veil.models.loading import quiet_transformers

    quiet_transformers()


def _data_dir() -> Path:
    from veil.settings import get_settings

    return get_settings().resolved_data_dir()


def _print_table(result: object) -> None:
    from rich.console import Console
    from rich.table import Table

    from veil.simulation.report import label, methods_table_rows

    console = Console()
    table = Table(title=f"IDfree-PL comparison ({result.task}, {result.model}, {result.users} users)")
    for head in ("method", "accuracy", "Bayes attribution", "linkage attack", "chance"):
        table.add_column(head, justify="left" if head == "method" else "right")
    for row in methods_table_rows(result):
        table.add_row(*row)
    console.print(table)
    frontier = Table(title="Privacy-utility frontier (spread swept per family)")
    for head in ("family", "spread", "accuracy", "gain over none", "Bayes attribution"):
        frontier.add_column(head, justify="right")
    if not result.frontier:
        return
    none_acc = result.method("none").accuracy
    for m in result.frontier:
        frontier.add_row(
            label(f"idfree-{m.family}"),
            f"{m.spread:g}",
            f"{m.accuracy:.3f}",
            f"{m.accuracy - none_acc:+.3f}",
            f"{m.attribution_accuracy:.3f}",
        )
    console.print(frontier)


def _run_experiment(quick: bool, task: str, seed: int, as_json: bool) -> object:
    from veil.simulation.experiments.personalization import ExperimentConfig, run_personalization_experiment
    from veil.simulation.progress import NullProgress, RichProgress

    _quiet_libraries()
    cfg = ExperimentConfig.quick(task, seed) if quick else ExperimentConfig.full(task, seed)
    progress = RichProgress() if sys.stderr.isatty() or not as_json else NullProgress()
    return run_personalization_experiment(cfg, progress)


@experiment_app.command("personalization")
def experiment_personalization(
    quick: Quick = False, as_json: AsJson = False, task: Task = "next_word", seed: Seed = 0
) -> None:
    """IDfree-PL against no personalisation, static embeddings and on-device fine-tuning."""
    result = _run_experiment(quick, task, seed, as_json)
    if as_json:
        typer.echo(json.dumps(result.to_json()))
    else:
        _print_table(result)


@app.command()
def demo(
    task: Task = "next_word",
    seed: Seed = 0,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: the data dir/demo).")] = None,
    dp: Annotated[
        bool, typer.Option("--dp/--no-dp", help="Also run stage 3 with DP-SGD (about 30 more seconds).")
    ] = False,
    max_gdp_mu: Annotated[
        float | None,
        typer.Option(help="Phones' privacy policy: largest Gaussian-DP mu to the population prior."),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """IDfree-PL through the real service: API + gateway, a relay process, phones, uploads, training.

    Writes report.html and summary.json; the in-process comparison of every method is
    'veil experiment personalization --quick'.
    """
    from veil.simulation.progress import NullProgress, RichProgress
    from veil.simulation.report import write_report
    from veil.simulation.service_demo import ServiceDemoConfig, run_service_demo

    _quiet_libraries()
    cfg = ServiceDemoConfig.quick(task, seed)
    cfg.dp_noise_multiplier = 1.0 if dp else None
    cfg.max_gdp_mu = max_gdp_mu
    cfg.__post_init__()
    target = out or (_data_dir() / "demo")
    progress = NullProgress() if as_json and not sys.stderr.isatty() else RichProgress()
    outcome = run_service_demo(cfg, target, progress)
    report, summary = write_report(outcome.result, target, outcome.service)
    if as_json:
        typer.echo(json.dumps(outcome.to_json()))
        return
    _print_table(outcome.result)
    service = outcome.service
    typer.echo(
        f"through the relay: {service['requests_through_relay']} requests "
        f"({service['requests_per_second']:.0f}/s), {service['uploads_stored']} uploads stored"
    )
    for name, run in service["training"].items():
        eps = "no DP" if run["epsilon"] is None else f"epsilon {run['epsilon']:.2f}, delta {run['delta']:.1e}"
        typer.echo(f"{name}: {run['n_train']} uploads, {eps}")
    typer.echo(f"report:  {report}\nsummary: {summary}")


@bench_app.command("latency")
def bench_latency(
    quick: Quick = False,
    as_json: AsJson = False,
    batch: Annotated[int, typer.Option(help="Rows per forward pass.")] = 8,
    tokens: Annotated[int, typer.Option(help="Prompt tokens per row.")] = 64,
    repeats: Annotated[int, typer.Option(help="Timed forward passes.")] = 30,
) -> None:
    """Personalised vs unpersonalised forward latency on the same model and batch."""
    from veil.models.benchmarking import personalization_latency

    if min(batch, tokens, repeats) < 1:
        raise UserError(f"batch, tokens and repeats must be >= 1, got {batch}, {tokens}, {repeats}")

    _quiet_libraries()
    result = personalization_latency("tiny-llama" if quick else None, batch, tokens, repeats)
    if as_json:
        typer.echo(json.dumps(result))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Personalisation overhead ({result['model']}, batch {batch} x {tokens} tokens)")
    for head in ("path", "median ms", "p90 ms"):
        table.add_column(head, justify="right")
    for path in ("unpersonalised", "personalised"):
        table.add_row(path, f"{result[path]['median_ms']:.2f}", f"{result[path]['p90_ms']:.2f}")
    Console().print(table)
    typer.echo(
        f"overhead ratio (personalised / unpersonalised median): {result['ratio']:.3f} "
        f"(target < 1.05) on {result['machine']}"
    )


def _register_commands() -> None:
    from veil.cli import audit as audit_cli
    from veil.cli import onnx_export, service

    service.register(app)
    audit_cli.register(app)
    onnx_export.register(app)


_register_commands()


def main() -> None:
    """Console entry point: maps user errors to one line and exit code 2."""
    from veil.cloud_service.store.errors import StoreError
    from veil.models.loading import ModelLoadError

    try:
        # without standalone mode click returns a typer.Exit's code instead of exiting with it
        code = app(standalone_mode=False)
    except (UserError, ModelLoadError, StoreError, ValueError, FileNotFoundError) as exc:
        typer.echo(f"veil: error: {exc}".splitlines()[0], err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # click usage errors arrive here in standalone_mode=False
        import click

        if isinstance(exc, click.exceptions.ClickException):
            typer.echo(f"veil: error: {exc.format_message()}".splitlines()[0], err=True)
            sys.exit(2)
        raise
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
