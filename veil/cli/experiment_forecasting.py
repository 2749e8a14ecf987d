"""``veil experiment forecasting``: Extralonger against its baselines, centralised and federated
(:mod:`veil.models.forecasting.experiment`, :mod:`veil.simulation.forecasting_fleet`)."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from veil.cli.errors import UserError

__all__ = ["forecasting_table", "register"]


def register(experiment: typer.Typer) -> None:
    experiment.command("forecasting")(experiment_forecasting)


def experiment_forecasting(
    quick: Annotated[
        bool,
        typer.Option("--quick", help="The 2-core preset: hourly steps, 24 sensors, one-week windows."),
    ] = False,
    data: Annotated[
        Path | None,
        typer.Option(
            help="A directory with data.npz (T, N, 3) and adj.csv (from,to,cost); default: synthetic."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    federated: Annotated[
        bool, typer.Option(help="Also train Extralonger federatedly across regions on Flower.")
    ] = True,
    regions: Annotated[int, typer.Option(help="Regions (Flower clients) in the federated run.")] = 3,
    concurrency: Annotated[
        int | None,
        typer.Option(help="Regions training at once in the federated run; default: one per CPU."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seeds the synthetic data and the models.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    out: Annotated[Path | None, typer.Option(help="Also write the result as DIR/forecasting.json.")] = None,
) -> None:
    """Masked MAE, RMSE and MAPE at 1 hour, 1 day and 1 week for Extralonger, the historical average,
    STID and grid attention (centralised), and Extralonger trained federatedly across regions, with each
    method's training seconds and peak memory."""
    import re

    from veil.models.forecasting.experiment import ForecastExperimentConfig, run_forecast_experiment

    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    if concurrency is not None and concurrency < 1:
        raise UserError(f"--concurrency must be >= 1, got {concurrency}")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise UserError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    if data is not None and not data.is_dir():
        raise UserError(f"--data {data} is not a directory")
    if out is not None:
        from veil.cli.main import _writable_dir

        _writable_dir(out, "--out")
    base = ForecastExperimentConfig.quick() if quick else ForecastExperimentConfig()
    cfg = dataclasses.replace(base, data=data, seed=seed, train=dataclasses.replace(base.train, seed=seed))
    if federated:  # checked here, not after the centralised methods have trained
        from veil.models.forecasting.data import load_traffic

        nodes = cfg.nodes if data is None else load_traffic(data).nodes
        if not 1 <= regions <= nodes:
            raise UserError(f"--regions must be in 1..{nodes} (the sensors), got {regions}")
    say = (lambda m: typer.echo(m, err=True)) if not as_json else (lambda _m: None)
    with tempfile.TemporaryDirectory() as work:
        result = run_forecast_experiment(cfg, Path(work), device=device, progress=say)
        if federated:
            result["methods"].update(_federated(cfg, Path(work), regions, concurrency, result, say))
    if out is not None:
        (out / "forecasting.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    if as_json:
        typer.echo(json.dumps(result))
        return
    from rich.console import Console

    Console().print(forecasting_table(result))


def _federated(
    cfg: Any, work: Path, regions: int, concurrency: int | None, result: dict[str, Any], say: Any
) -> dict[str, Any]:
    """Extralonger on Flower, one region per client, as many rounds of one local epoch as the centralised
    run's epoch budget; scored as the sensor-weighted mean of the regions' test metrics."""
    from veil.models.forecasting.experiment import load_or_synthesize
    from veil.simulation.forecasting_fleet import run_federated

    data = load_or_synthesize(cfg, work)
    say(f"extralonger-federated: {regions} regions on Flower, {cfg.train.epochs} rounds")
    model = {k: v for k, v in dataclasses.asdict(cfg.model).items() if k not in ("nodes", "steps_per_day")}
    model.update(in_steps=cfg.in_steps, out_steps=cfg.out_steps)
    fed = run_federated(
        data, regions, model=model, train=cfg.train, rounds=cfg.train.epochs, local_epochs=1,
        horizons=result["horizon_steps"], eval_windows=cfg.eval_windows, work_dir=work / "federated",
        concurrency=concurrency,
        progress=lambda r, m: say(f"  round {r}: train {m['train_loss']:.2f}, val {m['val_loss']:.2f}"),
    )  # fmt: skip
    return {
        "extralonger-federated": {
            "horizons": fed.mean["horizons"],
            "all": fed.mean["all"],
            "train_seconds": fed.train_seconds,
            "peak_memory_mb": fed.peak_memory_mb,
            "peak_rss_mb": fed.peak_rss_mb,
            "regions": regions,
            "concurrency": concurrency,
            "rounds": len(fed.history),
        }  # fmt: skip
    }


def forecasting_table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    horizons = list(result["horizon_steps"])
    table = Table(title="Traffic forecasting (masked MAE / RMSE / MAPE %)")
    table.add_column("method")
    for h in horizons:
        table.add_column(h, justify="right")
    table.add_column("train s", justify="right")
    table.add_column("peak MB", justify="right")
    for name, r in result["methods"].items():
        if "skipped" in r:
            table.add_row(name, *(["-"] * len(horizons)), "-", "-", end_section=False)
            continue
        cells = [
            f"{r['horizons'][h]['mae']:.2f} / {r['horizons'][h]['rmse']:.2f} / {r['horizons'][h]['mape']:.1f}"
            for h in horizons
        ]
        peak = r.get("peak_memory_mb")
        table.add_row(name, *cells, f"{r['train_seconds']:.0f}", "-" if peak is None else f"{peak:.0f}")
    return table
