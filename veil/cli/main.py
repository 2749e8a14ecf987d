"""The ``veil`` command: thin wiring from typer to the library.

User errors (bad arguments, unknown models, malformed files) print one line on stderr and exit 2.
Long commands show progress bars on stderr; ``--json`` prints one JSON object on stdout.

Every command imports what it uses inside its function: ``veil --help`` and each command load only
their own dependencies (torch alone costs about 1.3 s at import, transformers 0.7 s). The other command
modules follow the same rule.
"""

from __future__ import annotations

import dataclasses
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
    table = Table(title=f"Personalisation comparison ({result.task}, {result.model}, {result.users} users)")
    heads = ("method", "accuracy", "gain retained", "Bayes attribution", "floor", "linkage attack", "chance")
    for head in heads:
        table.add_column(head, justify="left" if head == "method" else "right")
    for row in methods_table_rows(result):
        table.add_row(*row)
    console.print(table)
    if result.private_default() is not None:
        console.print(f"private default: {label(result.private_default())}")
    frontier = Table(title="Privacy-utility frontier (spread swept per family)")
    for head in ("family", "spread", "accuracy", "gain over none", "Bayes attribution"):
        frontier.add_column(head, justify="right")
    if not result.frontier or "none" not in {m.method for m in result.methods}:
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


def _experiment_config(
    quick: bool,
    task: str,
    seed: int,
    users: int | None,
    types: int | None,
    methods: str | None,
    type_noise: float | None = None,
) -> object:
    from veil.simulation.experiments.personalization import METHODS, ExperimentConfig

    for name, value in (("users", users), ("types", types)):
        if value is not None and value < 1:
            raise UserError(f"--{name} must be >= 1, got {value}")
    if users is not None and types is not None and types > users:
        raise UserError(f"--types ({types}) cannot exceed --users ({users})")
    chosen = None
    if methods is not None:
        chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
        unknown = [m for m in chosen if m not in METHODS]
        if unknown or not chosen:
            raise UserError(
                f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(METHODS)}"
            )
    preset = ExperimentConfig.quick if quick else ExperimentConfig.full
    try:
        cfg = preset(task, seed, users, types)
        if type_noise is not None:
            cfg.population = dataclasses.replace(cfg.population, type_noise=type_noise)
        if chosen is not None:
            cfg.methods = chosen
            cfg.__post_init__()
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    return cfg


def _writable_dir(path: Path, option: str) -> Path:
    """Create ``path`` if needed and prove it can be written, before any long work starts."""
    import tempfile

    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".veil-probe-"):
            pass
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot write there ({exc.strerror or exc})") from exc
    return path


@experiment_app.command("personalization")
def experiment_personalization(
    quick: Quick = False,
    as_json: AsJson = False,
    task: Task = "next_word",
    seed: Seed = 0,
    users: Annotated[int | None, typer.Option(help="Simulated users (default: the preset's).")] = None,
    types: Annotated[int | None, typer.Option(help="Latent preference types (default: 4).")] = None,
    type_noise: Annotated[
        float | None,
        typer.Option(help="Share of a user's preferences that differ from its type's (default 0.1)."),
    ] = None,
    methods: Annotated[
        str | None, typer.Option(help="Comma-separated rows to run, e.g. none,static,codebook-mixing.")
    ] = None,
    export_uploads: Annotated[
        Path | None,
        typer.Option(help="Write <method>.npz uploads with ground truth here (veil audit --uploads)."),
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Write report.html and summary.json here.")] = None,
) -> None:
    """Personalisation methods side by side: accuracy, attribution next to its floor, attacks."""
    from veil.progress import NullProgress, RichProgress
    from veil.simulation.experiments.personalization import run_personalization_experiment

    cfg = _experiment_config(quick, task, seed, users, types, methods, type_noise)
    if export_uploads is not None:
        cfg.export_uploads = str(_writable_dir(export_uploads, "--export-uploads"))
    if report is not None:
        _writable_dir(report, "--report")
    _quiet_libraries()
    progress = RichProgress() if sys.stderr.isatty() or not as_json else NullProgress()
    result = run_personalization_experiment(cfg, progress)
    if report is not None:
        from veil.simulation.report import write_report

        write_report(result, report)
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
    mechanism: Annotated[
        str,
        typer.Option(
            help="codebook (k-anonymous prototypes, the default) | gaussian (IDfree-PL, the paper's)."
        ),
    ] = "codebook",
    as_json: AsJson = False,
) -> None:
    """Personalisation through the real service: API + gateway, a relay process, phones, uploads, training.

    Writes report.html and summary.json; the in-process comparison of every method is
    'veil experiment personalization --quick'.
    """
    import os

    from veil.progress import NullProgress, RichProgress
    from veil.simulation.report import write_report
    from veil.simulation.service_demo import ServiceDemoConfig, run_service_demo

    # A demo makes its own throwaway secrets (KEK, relay secret), which production refuses; the relay
    # process it starts inherits this.
    os.environ["VEIL_ENVIRONMENT"] = "development"
    _quiet_libraries()
    cfg = ServiceDemoConfig.quick(task, seed, mechanism)
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
    book = service.get("codebook")
    if book is not None:
        typer.echo(
            f"codebook: {book['usable']} of {book['size']} prototypes usable (k_min {book['k_min']}, smallest "
            f"group {book['smallest_group']}), {len(book['versions'])} versions, "
            f"{book['version_mismatches_caught']} stale choices caught and re-chosen"
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
    from veil.cli import bench_kv, experiment_distillation, experiment_rag, fleet, onnx_export, service
    from veil.cli import eval_punchbench as eval_punchbench_cli
    from veil.cli import experiment_forecasting as forecasting_cli
    from veil.cli import experiment_longform as longform_cli
    from veil.cli import experiment_translation as translation_cli
    from veil.cli import rag as rag_cli

    fleet.register(app)
    service.register(app)
    audit_cli.register(app)
    onnx_export.register(app)
    rag_cli.register(app)
    eval_punchbench_cli.register(app)
    bench_kv.register(bench_app)
    experiment_distillation.register(experiment_app)
    experiment_rag.register(experiment_app)
    longform_cli.register(experiment_app)
    translation_cli.register(experiment_app)
    forecasting_cli.register(experiment_app)


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
