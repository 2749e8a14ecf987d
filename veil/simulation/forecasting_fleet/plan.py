"""A federated Extralonger run, checked and laid out before Flower starts: the settings every round
sends, and each region's data file in the work folder (what a simulated SuperNode reads)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from veil.models.forecasting.data import ForecastingDataError, TrafficData, split_windows
from veil.models.forecasting.model import ExtralongerConfig
from veil.models.forecasting.train import TrainConfig
from veil.simulation.forecasting_fleet.regions import FederatedDP, partition_regions, shared_parameter_names

__all__ = ["FederatedPlan", "prepare_plan"]


@dataclass(frozen=True)
class FederatedPlan:
    """What the ServerApp needs.

    Attributes
    ----------
    config: Extralonger at the smallest region's size (the server's initial shared parameters).
    order: the ``ConfigRecord`` every training round sends: ``work_dir``, ``model`` and ``train`` (JSON),
        ``shared`` (the averaged parameters' names, JSON, in the order Flower's DP wrapper pairs them),
        ``local_epochs``.
    blocks: each region's sensors (global ids), by region id.
    rounds, dp, horizons, eval_windows, return_models, timeout_s: as :func:`run_federated` takes them.
    """

    config: ExtralongerConfig
    order: dict[str, Any]
    blocks: tuple[np.ndarray, ...]
    rounds: int
    dp: FederatedDP | None
    horizons: dict[str, int]
    eval_windows: int | None
    return_models: bool
    timeout_s: float

    @property
    def regions(self) -> int:
        return len(self.blocks)

    @property
    def shared(self) -> list[str]:
        return list(json.loads(self.order["shared"]))

    @property
    def seed(self) -> int:
        return int(json.loads(self.order["train"])["seed"])


def prepare_plan(
    data: TrafficData,
    regions: int,
    work: Path,
    model: Mapping[str, Any] | None = None,
    train: TrainConfig | None = None,
    rounds: int = 5,
    local_epochs: int = 1,
    dp: FederatedDP | None = None,
    horizons: Mapping[str, int] | None = None,
    eval_windows: int | None = None,
    return_models: bool = False,
    timeout_s: float = 3600.0,
) -> FederatedPlan:
    """Check the settings (``ValueError``, or :class:`ForecastingDataError` for a horizon beyond the forecast
    or a series shorter than a window) and write ``work/region-<k>.npz`` for each region; see :func:`run_federated`."""
    if rounds < 1 or local_epochs < 1:
        raise ValueError(f"rounds and local_epochs must be >= 1, got {rounds} and {local_epochs}")
    blocks = partition_regions(data.nodes, regions)
    kwargs = dict(model or {})
    known = {f.name for f in fields(ExtralongerConfig)} - {"nodes", "steps_per_day"}
    if set(kwargs) - known:
        raise ValueError(f"unknown model settings {sorted(set(kwargs) - known)}; known: {sorted(known)}")
    config = ExtralongerConfig(nodes=min(len(b) for b in blocks), steps_per_day=data.steps_per_day, **kwargs)
    train = train or TrainConfig()
    horizons = dict(horizons or {})
    for name, step in horizons.items():
        if not 1 <= step <= config.out_steps:
            raise ForecastingDataError(
                f"horizon {name!r} is step {step}, outside the forecast's 1..{config.out_steps}"
            )
    split_windows(data, config.in_steps, config.out_steps)  # the horizon fits the series, or a typed error

    work.mkdir(parents=True, exist_ok=True)
    for k, block in enumerate(blocks):
        part = data.nodes_subset(block)
        np.savez(
            work / f"region-{k}.npz", series=part.series, edges=part.edges, steps_per_day=part.steps_per_day
        )
    order = {
        "work_dir": str(work), "model": json.dumps(kwargs),
        "shared": json.dumps(list(shared_parameter_names(config))),
        "train": json.dumps({f.name: getattr(train, f.name) for f in fields(TrainConfig)}),
        "local_epochs": local_epochs,
    }  # fmt: skip
    return FederatedPlan(
        config, order, tuple(blocks), rounds, dp, horizons, eval_windows, return_models, timeout_s
    )
