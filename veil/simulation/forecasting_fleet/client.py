"""One region per SuperNode: local training of Extralonger (arXiv:2411.00844) on the region's sensors,
and its final scoring.

A region's data is ``region-<partition-id>.npz`` in the run's ``work_dir`` (the coordinator writes it
in simulation), or the file its node config's ``data-path`` names (a deployed SuperNode). The parameters
whose shapes depend on the region's sensor count never leave it: they live in ``context.state["local"]``
between rounds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from veil.models.forecasting.data import TrafficData, split_windows
from veil.models.forecasting.memory import PeakMemory, max_rss_mb
from veil.models.forecasting.model import Extralonger, ExtralongerConfig
from veil.models.forecasting.train import TrainConfig, evaluate, predict, train_forecaster
from veil.simulation.forecasting_fleet.regions import flatten_metrics

__all__ = ["Region", "evaluate_region", "train_region"]


class Region:
    """A SuperNode's region: its data, windows, scaler, and a model built from the server's shared
    arrays plus its own local ones (``context.state["local"]``, fresh on the first round)."""

    def __init__(self, context: Context, order: Mapping[str, Any]) -> None:
        self.context = context
        self.index = int(context.node_config["partition-id"])
        path = (
            context.node_config.get("data-path") or Path(str(order["work_dir"])) / f"region-{self.index}.npz"
        )
        with np.load(path) as f:
            self.data = TrafficData(f["series"], f["edges"], int(f["steps_per_day"]))
        kwargs = json.loads(str(order["model"]))
        self.config = ExtralongerConfig(
            nodes=self.data.nodes, steps_per_day=self.data.steps_per_day, **kwargs
        )
        self.windows, self.scaler = split_windows(self.data, self.config.in_steps, self.config.out_steps)
        # in the server's order: Flower's DP wrapper pairs the arrays by position, not by name
        self.shared: tuple[str, ...] = tuple(json.loads(str(order["shared"])))
        self.seed = int(json.loads(str(order["train"])).get("seed", 0))

    def model(self, arrays: ArrayRecord) -> Extralonger:
        torch.manual_seed(self.seed + self.index)  # the local parameters' first values
        model = Extralonger(self.config, torch.as_tensor(self.data.mask()))
        state = dict(arrays.to_torch_state_dict())
        missing = sorted(set(self.shared) - set(state))
        if missing:
            raise ValueError(f"region {self.index}: the server sent no values for {missing}")
        if "local" in self.context.state:  # else the first round: the fresh values above
            state.update(self.context.state["local"].to_torch_state_dict())
        model.load_state_dict(state, strict=False)
        return model


def train_region(msg: Message, context: Context) -> Message:
    """FedAvg's ``train`` message: ``local_epochs`` epochs on the region's windows (seeded by round and
    region), the best-validation state kept; the shared parameters go back, the local ones stay."""
    order = dict(msg.content["config"])
    region = Region(context, order)
    model = region.model(msg.content["arrays"])
    train = TrainConfig(**{**json.loads(str(order["train"])), "epochs": int(order["local_epochs"])})
    seed = train.seed + 1000 * int(order["server-round"]) + region.index
    with PeakMemory(torch.device("cpu")) as memory:
        result = train_forecaster(model, region.windows, region.scaler, replace(train, seed=seed))
    state = model.state_dict()
    context.state["local"] = ArrayRecord({k: v for k, v in state.items() if k not in region.shared})
    last = result.history[result.best_epoch - 1]
    metrics = {
        "num-examples": region.data.nodes, "region": region.index,
        "train_loss": last["train_loss"], "val_loss": last["val_loss"],
        "train_seconds": result.train_seconds,
        "peak_memory_mb": memory.peak_mb, "max_rss_mb": max_rss_mb(),
    }  # fmt: skip
    shared = ArrayRecord({k: state[k] for k in region.shared})
    return Message(RecordDict({"arrays": shared, "metrics": MetricRecord(metrics)}), reply_to=msg)


def evaluate_region(msg: Message, context: Context) -> Message:
    """``query.evaluate``: the region's test metrics under the final shared parameters (flattened, see
    :func:`~veil.simulation.forecasting_fleet.regions.flatten_metrics`), and its whole state when
    ``return_model``."""
    order = dict(msg.content["config"])
    region = Region(context, order)
    model = region.model(msg.content["arrays"])
    model.eval()
    cap = int(order["eval_windows"])
    result = evaluate(
        lambda w, i: predict(model, w, i, region.scaler), region.windows["test"],
        json.loads(str(order["horizons"])), max_windows=cap if cap > 0 else None,
    )  # fmt: skip
    metrics = {"region": region.index, "max_rss_mb": max_rss_mb(), **flatten_metrics(result)}
    content = RecordDict({"metrics": MetricRecord(metrics)})
    if bool(order["return_model"]):
        content["model"] = ArrayRecord(model.state_dict())
    return Message(content, reply_to=msg)
