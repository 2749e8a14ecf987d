"""The forecasting fleet's Flower apps (Message API): ``run_federated`` and ``flwr run
deploy/flwr/forecasting`` run these two.

``client_app``: one region per SuperNode (:func:`~veil.simulation.forecasting_fleet.client.train_region`
for FedAvg's ``train`` messages, :func:`~veil.simulation.forecasting_fleet.client.evaluate_region` for
the final ``query.evaluate``).

``server_app``: builds its plan from the run config (:func:`plan_from_run_config`; the keys are
``[tool.flwr.app.config]`` of ``deploy/flwr/forecasting/pyproject.toml``), runs
:func:`~veil.simulation.forecasting_fleet.server.federate` and writes the result as JSON to
``work-dir/forecasting-federated.json``. :func:`make_server_app` with a plan is what ``run_federated``
builds instead.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from veil.simulation.forecasting_fleet.client import evaluate_region, train_region
from veil.simulation.forecasting_fleet.plan import FederatedPlan, prepare_plan
from veil.simulation.forecasting_fleet.regions import FederatedDP, FederatedResult
from veil.simulation.forecasting_fleet.server import Progress, federate

__all__ = ["client_app", "make_server_app", "plan_from_run_config", "result_json", "server_app"]

client_app = ClientApp()


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    return train_region(msg, context)


@client_app.query("evaluate")
def _evaluate(msg: Message, context: Context) -> Message:
    return evaluate_region(msg, context)


def plan_from_run_config(run_config: Mapping[str, Any]) -> FederatedPlan:
    """The plan of a ``flwr run``: the data in ``data`` (a directory with ``data.npz`` and ``adj.csv``)
    or synthesized at ``nodes`` x ``days`` x ``steps-per-day``; the model and training loop of the
    ``preset`` of ``veil experiment forecasting`` (``quick`` or ``full``) with ``rounds`` of
    ``local-epochs``; server-side DP when ``clipping-norm`` > 0."""
    from veil.models.forecasting.experiment import (
        ForecastExperimentConfig,
        horizon_steps,
        load_or_synthesize,
    )

    c = {str(k).replace("-", "_"): v for k, v in run_config.items()}
    if c.get("preset", "quick") not in ("quick", "full"):
        raise ValueError(f"preset must be quick or full, got {c['preset']!r}")
    base = (
        ForecastExperimentConfig.quick()
        if c.get("preset", "quick") == "quick"
        else ForecastExperimentConfig()
    )
    seed = int(c.get("seed", 0))
    cfg = dataclasses.replace(
        base, data=Path(str(c["data"])) if c.get("data") else None, seed=seed,
        nodes=int(c.get("nodes", base.nodes)), days=int(c.get("days", base.days)),
        steps_per_day=int(c.get("steps_per_day", base.steps_per_day)),
        train=dataclasses.replace(base.train, seed=seed),
    )  # fmt: skip
    work = Path(str(c.get("work_dir") or tempfile.mkdtemp(prefix="veil-forecast-")))
    work.mkdir(parents=True, exist_ok=True)
    data = load_or_synthesize(cfg, work / "data")
    model = {k: v for k, v in dataclasses.asdict(cfg.model).items() if k not in ("nodes", "steps_per_day")}
    model.update(in_steps=cfg.in_steps, out_steps=cfg.out_steps)
    clip = float(c.get("clipping_norm", 0.0))
    return prepare_plan(
        data, int(c.get("regions", 3)), work / "regions", model, cfg.train,
        rounds=int(c.get("rounds", cfg.train.epochs)), local_epochs=int(c.get("local_epochs", 1)),
        dp=FederatedDP(float(c.get("noise_multiplier", 0.0)), clip) if clip > 0 else None,
        horizons=horizon_steps(cfg.horizons, data.steps_per_day, cfg.out_steps),
        eval_windows=int(c.get("eval_windows", 0)) or None,
    )  # fmt: skip


def result_json(result: FederatedResult) -> dict[str, Any]:
    """``result`` as JSON-ready data (the regions' states left out)."""
    return {
        "mean": result.mean, "train_seconds": result.train_seconds, "history": result.history,
        "shared": list(result.shared), "privacy": result.privacy,
        "peak_memory_mb": result.peak_memory_mb, "peak_rss_mb": result.peak_rss_mb,
        "regions": [
            {"region": r.region, "nodes": r.nodes.tolist(), "metrics": r.metrics,
             "train_seconds": r.train_seconds, "peak_memory_mb": r.peak_memory_mb}
            for r in result.regions
        ],
    }  # fmt: skip


def make_server_app(
    plan: FederatedPlan | None = None,
    progress: Progress | None = None,
    out: list[FederatedResult] | None = None,
) -> ServerApp:
    """A ServerApp running ``plan`` (from the run config when ``None``); the result is appended to
    ``out`` when given, and written to ``<work_dir>/forecasting-federated.json`` when the plan came from
    the run config."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_plan = plan if plan is not None else plan_from_run_config(context.run_config)
        result = federate(grid, run_plan, progress)
        if out is not None:
            out.append(result)
        if plan is None:
            path = Path(run_plan.order["work_dir"]).parent / "forecasting-federated.json"
            path.write_text(json.dumps(result_json(result), indent=1) + "\n", encoding="utf-8")

    return app


server_app = make_server_app()
