"""``run_federated``: Extralonger (arXiv:2411.00844) across regions on Flower's simulation engine (Ray),
in this process."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from veil.models.forecasting.data import TrafficData
from veil.models.forecasting.train import TrainConfig
from veil.simulation.forecasting_fleet.plan import prepare_plan
from veil.simulation.forecasting_fleet.regions import FederatedDP, FederatedResult

__all__ = ["run_federated"]


def run_federated(
    data: TrafficData,
    regions: int,
    model: Mapping[str, Any] | None = None,
    train: TrainConfig | None = None,
    rounds: int = 5,
    local_epochs: int = 1,
    dp: FederatedDP | None = None,
    horizons: Mapping[str, int] | None = None,
    eval_windows: int | None = None,
    return_models: bool = False,
    work_dir: str | Path | None = None,
    progress: Any = None,
    timeout_s: float = 3600.0,
    concurrency: int | None = None,
) -> FederatedResult:
    """Train one Extralonger per region with FedAvg over the shared parameters, on Flower's simulation
    engine (one SuperNode per region), and score every region on its test windows.

    Parameters
    ----------
    data: the whole network; each region sees only its block of sensors.
    regions: how many contiguous blocks (:func:`partition_regions`), 1..N.
    model: :class:`ExtralongerConfig` fields other than ``nodes`` and ``steps_per_day`` (those come from
        the region), e.g. ``{"in_steps": 12, "out_steps": 12, "d_in": 16}``.
    train: the local optimiser's settings; its ``epochs`` is replaced by ``local_epochs``.
    rounds, local_epochs: FedAvg rounds, and local epochs per round.
    dp: server-side fixed clipping with Gaussian noise, or ``None``.
    horizons: name -> 1-based step scored on its own (``evaluate``'s), besides the whole forecast.
    eval_windows: evenly spaced test windows per region (all when ``None``).
    return_models: bring each region's final state back in :attr:`RegionResult.state`.
    work_dir: where the regions' data files go (a temporary folder when ``None``).
    progress: ``progress(round, summary)`` after each round, ``summary`` as in ``history``.
    timeout_s: how long the server waits for one round's replies.
    concurrency: regions training at once (each simulation worker is given ``cpus / concurrency`` of
        the machine's CPUs, Flower's ``client_resources``); ``None``: one per CPU.
    """
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="veil-forecast-"))
    plan = prepare_plan(data, regions, work, model, train, rounds, local_epochs, dp, horizons, eval_windows,
                        return_models, timeout_s)  # fmt: skip

    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no usage events leave the machine
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    from flwr.simulation import run_simulation

    from veil.simulation.forecasting_fleet.apps import client_app, make_server_app

    out: list[FederatedResult] = []
    cpus = os.cpu_count() or 1
    run_simulation(
        make_server_app(plan, progress, out), client_app, num_supernodes=regions,
        backend_config={"client_resources": {"num_cpus": cpus / (concurrency or cpus), "num_gpus": 0.0}},
    )  # fmt: skip
    if not out:
        raise RuntimeError("the federated run ended without a result (see Flower's log above)")
    return out[0]
