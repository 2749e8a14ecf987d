"""Extralonger (arXiv:2411.00844) trained federatedly across regions on Flower's simulation engine.

The paper has no federated setting; everything here is our choice:

* **Regions.** The sensors are cut into ``regions`` blocks of contiguous node ids
  (:func:`partition_regions`, sizes differ by one at most). On the synthetic ring road of
  :func:`~veil.models.forecasting.data.synthesize` consecutive ids are neighbours on the ring, so a block
  is a stretch of road; on real PEMS files the ids carry no such promise. A region sees only its own
  sensors (``TrafficData.nodes_subset``: the edges leaving it are dropped) with its own windows and
  scaler, and is one SuperNode running :data:`client_app`.
* **What is averaged (FedPer-style split).** Extralonger's ``input_noise``, ``flow_in``, ``temporal_out``,
  ``mixed_out`` and node embedding have shapes that depend on the region's sensor count, and even at
  equal counts their rows belong to different sensors, so averaging them is meaningless. Only the
  parameters whose shapes do not depend on N (:func:`shared_parameter_names`: the Transformer blocks,
  time-of-day and day-of-week embeddings, the time maps, ``series_in``, ``spatial_out``) travel and are
  averaged by Flower's ``FedAvg``; the N-dependent ones stay in the SuperNode's ``context.state``.
* **Weights.** ``FedAvg`` weights a region by its sensor count (``num-examples``): every region has
  the same time axis, so its number of series is its sensor count.
* **Local training.** Each round a region runs ``local_epochs`` epochs of
  :func:`~veil.models.forecasting.train.train_forecaster` (its optimiser and LR schedule start afresh
  each round, its best-validation state within the round is kept), seeded by round and region.
* **Differential privacy** (``dp``): Flower's ``DifferentialPrivacyServerSideFixedClipping`` around
  ``FedAvg``: each region's update of the shared parameters is clipped to ``clipping_norm`` and Gaussian
  noise of ``noise_multiplier * clipping_norm`` is added to the sum; the unit of privacy is a whole
  region, and the local parameters get no protection (they never leave the region).

In simulation the coordinator writes each region's data to ``work_dir``; a deployed SuperNode names
its own file with the node config's ``data-path``. The ClientApp is this module's ``client_app``
(built on first use, so importing the module does not import Flower).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from veil.models.forecasting.data import TrafficData, split_windows
from veil.models.forecasting.model import ExtralongerConfig
from veil.models.forecasting.train import TrainConfig

__all__ = [
    "FederatedDP",
    "FederatedResult",
    "RegionResult",
    "partition_regions",
    "run_federated",
    "shared_parameter_names",
    "weighted_metrics",
]

_METRICS = ("mae", "rmse", "mape")


@dataclass(frozen=True)
class FederatedDP:
    """Server-side fixed clipping (Flower's ``DifferentialPrivacyServerSideFixedClipping``).

    Attributes
    ----------
    noise_multiplier: Gaussian noise standard deviation over ``clipping_norm``.
    clipping_norm: L2 bound on one region's update of the shared parameters per round.
    """

    noise_multiplier: float
    clipping_norm: float

    def __post_init__(self) -> None:
        if self.noise_multiplier < 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if self.clipping_norm <= 0:
            raise ValueError(f"clipping_norm must be > 0, got {self.clipping_norm}")


@dataclass
class RegionResult:
    """One region after the last round: its sensors (global ids), test metrics (``evaluate``'s
    ``{"all": ..., "horizons": {...}}``), the seconds its local training took over all rounds, and
    its final ``state`` (name -> array) when ``run_federated(return_models=True)``."""

    region: int
    nodes: np.ndarray
    metrics: dict[str, Any]
    train_seconds: float
    state: dict[str, np.ndarray] | None = None


@dataclass
class FederatedResult:
    """``regions`` by region id; ``mean``: their metrics weighted by sensor count; ``train_seconds``: wall
    time of the rounds; ``history``: per round, the regions' ``train_loss``/``val_loss`` and their
    sensor-weighted means; ``privacy``: the accountant's spend under ``dp``."""

    regions: list[RegionResult]
    mean: dict[str, Any]
    train_seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    shared: tuple[str, ...] = ()
    privacy: dict[str, Any] | None = None


def partition_regions(nodes: int, regions: int) -> list[np.ndarray]:
    """``regions`` blocks of contiguous node ids covering ``0..nodes-1``, sizes differing by one at most.

    >>> [r.tolist() for r in partition_regions(7, 3)]
    [[0, 1, 2], [3, 4], [5, 6]]
    """
    if not 1 <= regions <= nodes:
        raise ValueError(f"regions must be in 1..{nodes} (the sensor count), got {regions}")
    return [np.asarray(block, dtype=np.int64) for block in np.array_split(np.arange(nodes), regions)]


def shared_parameter_names(config: ExtralongerConfig) -> tuple[str, ...]:
    """The parameters whose shapes do not depend on the sensor count: those that regions can average.

    Found by building the model at ``config.nodes`` and one more sensor on the meta device (no memory,
    no compute) and keeping the names whose shapes agree."""
    import torch

    from veil.models.forecasting.model import Extralonger

    def shapes(n: int) -> dict[str, tuple[int, ...]]:
        with torch.device("meta"):
            model = Extralonger(replace(config, nodes=n), torch.zeros(n, n, dtype=torch.bool))
        return {name: tuple(p.shape) for name, p in model.named_parameters()}

    a, b = shapes(config.nodes), shapes(config.nodes + 1)
    return tuple(name for name in a if a[name] == b[name])


def weighted_metrics(metrics: Sequence[Mapping[str, Any]], weights: Sequence[float]) -> dict[str, Any]:
    """The weighted mean of ``evaluate``-shaped metrics: MAE and MAPE averaged, RMSE as the root of the
    averaged squares (so equal regions give the pooled value)."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()

    def mean(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
        return {
            "mae": float(sum(wi * r["mae"] for wi, r in zip(w, rows, strict=True))),
            "rmse": float(np.sqrt(sum(wi * r["rmse"] ** 2 for wi, r in zip(w, rows, strict=True)))),
            "mape": float(sum(wi * r["mape"] for wi, r in zip(w, rows, strict=True))),
        }

    names = metrics[0]["horizons"].keys()
    return {
        "all": mean([m["all"] for m in metrics]),
        "horizons": {h: mean([m["horizons"][h] for m in metrics]) for h in names},
    }


# --- the ClientApp: one region per SuperNode -------------------------------------------------------


def _client_app() -> Any:
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def _train(msg: Any, context: Any) -> Any:
        from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

        order = dict(msg.content["config"])
        region = _Region(context, order)
        model = region.model(msg.content["arrays"])
        train = TrainConfig(**{**json.loads(str(order["train"])), "epochs": int(order["local_epochs"])})
        seed = train.seed + 1000 * int(order["server-round"]) + region.index
        from veil.models.forecasting.train import train_forecaster

        result = train_forecaster(model, region.windows, region.scaler, replace(train, seed=seed))
        state = model.state_dict()
        context.state["local"] = ArrayRecord({k: v for k, v in state.items() if k not in region.shared})
        last = result.history[result.best_epoch - 1]
        metrics = {
            "num-examples": region.data.nodes, "region": region.index,
            "train_loss": last["train_loss"], "val_loss": last["val_loss"],
            "train_seconds": result.train_seconds,
        }  # fmt: skip
        shared = ArrayRecord({k: state[k] for k in region.shared})
        return Message(RecordDict({"arrays": shared, "metrics": MetricRecord(metrics)}), reply_to=msg)

    @app.query("evaluate")
    def _evaluate(msg: Any, context: Any) -> Any:
        from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

        from veil.models.forecasting.train import evaluate, predict

        order = dict(msg.content["config"])
        region = _Region(context, order)
        model = region.model(msg.content["arrays"])
        model.eval()
        cap = int(order["eval_windows"])
        result = evaluate(
            lambda w, i: predict(model, w, i, region.scaler), region.windows["test"],
            json.loads(str(order["horizons"])), max_windows=cap if cap > 0 else None,
        )  # fmt: skip
        flat = {f"all.{k}": v for k, v in result["all"].items()}
        for h, values in result["horizons"].items():
            flat.update({f"h.{h}.{k}": v for k, v in values.items()})
        content = RecordDict({"metrics": MetricRecord({"region": region.index, **flat})})
        if bool(order["return_model"]):
            content["model"] = ArrayRecord(model.state_dict())
        return Message(content, reply_to=msg)

    return app


class _Region:
    """A SuperNode's region: its data, windows, scaler, and a model built from the server's shared
    arrays plus its own local ones (``context.state["local"]``, fresh on the first round)."""

    def __init__(self, context: Any, order: Mapping[str, Any]) -> None:
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

    def model(self, arrays: Any) -> Any:
        import torch

        from veil.models.forecasting.model import Extralonger

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


def _cached_client_app() -> Any:
    app = globals().get("client_app")
    if app is None:
        app = globals()["client_app"] = _client_app()
    return app


def __getattr__(name: str) -> Any:
    """``client_app``, the regions' ClientApp (FedAvg's ``train`` messages and the final
    ``query.evaluate``), built on first use so that importing this module does not import Flower."""
    if name == "client_app":
        return _cached_client_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- the ServerApp and the run ----------------------------------------------------------------------


class _RoundGrid:
    """The grid, keeping each training round's replies (region, losses, seconds), so that a round in
    which a region did not answer fails the run instead of silently averaging fewer regions."""

    def __init__(self, grid: Any, regions: int, progress: Callable[[int, dict[str, Any]], None] | None):
        self._grid, self.regions, self.progress = grid, regions, progress
        self.rounds: list[list[dict[str, float]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Any]:
        messages = list(messages)
        out = list(self._grid.send_and_receive(messages, timeout=timeout))
        if messages and messages[0].metadata.message_type == "train":
            rows = [dict(m.content["metrics"]) for m in out if m.has_content()]
            if len(rows) != self.regions:
                errors = [str(m.error.reason) for m in out if m.has_error()]
                raise RuntimeError(f"{len(rows)} of {self.regions} regions trained in round "
                                   f"{len(self.rounds) + 1}: {errors}")  # fmt: skip
            self.rounds.append(sorted(rows, key=lambda r: r["region"]))
            if self.progress is not None:
                self.progress(len(self.rounds), _round_summary(len(self.rounds), self.rounds[-1]))
        return out


def _round_summary(r: int, rows: list[dict[str, float]]) -> dict[str, Any]:
    w = np.array([row["num-examples"] for row in rows], dtype=np.float64)
    return {
        "round": r,
        "train_loss": float(np.average([row["train_loss"] for row in rows], weights=w)),
        "val_loss": float(np.average([row["val_loss"] for row in rows], weights=w)),
        "regions": [
            {"region": int(row["region"]), "train_loss": row["train_loss"], "val_loss": row["val_loss"]}
            for row in rows
        ],
    }


def _unflatten(metrics: Mapping[str, Any], horizons: Sequence[str]) -> dict[str, Any]:
    return {
        "all": {k: float(metrics[f"all.{k}"]) for k in _METRICS},
        "horizons": {h: {k: float(metrics[f"h.{h}.{k}"]) for k in _METRICS} for h in horizons},
    }


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
    progress: Callable[[int, dict[str, Any]], None] | None = None,
    timeout_s: float = 3600.0,
) -> FederatedResult:
    """Train one Extralonger per region with FedAvg over the shared parameters, on Flower's simulation
    engine (one SuperNode per region, one CPU each), and score every region on its test windows.

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
    """
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
            raise ValueError(f"horizon {name!r} is step {step}, outside the forecast's 1..{config.out_steps}")
    split_windows(data, config.in_steps, config.out_steps)  # the horizon fits the series, or a typed error
    shared = shared_parameter_names(config)

    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="veil-forecast-"))
    work.mkdir(parents=True, exist_ok=True)
    for k, block in enumerate(blocks):
        part = data.nodes_subset(block)
        np.savez(
            work / f"region-{k}.npz", series=part.series, edges=part.edges, steps_per_day=part.steps_per_day
        )
    order = {
        "work_dir": str(work), "model": json.dumps(kwargs), "shared": json.dumps(list(shared)),
        "train": json.dumps({f.name: getattr(train, f.name) for f in fields(TrainConfig)}),
        "local_epochs": local_epochs,
    }  # fmt: skip
    out: list[FederatedResult] = []
    server = _server_app(config, order, regions, rounds, dp, horizons, eval_windows, return_models,
                         progress, timeout_s, out)  # fmt: skip

    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no usage events leave the machine
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    from flwr.simulation import run_simulation

    run_simulation(
        server, _cached_client_app(), num_supernodes=regions,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )  # fmt: skip
    if not out:
        raise RuntimeError("the federated run ended without a result (see Flower's log above)")
    result = out[0]
    for r in result.regions:
        r.nodes = blocks[r.region]
    return result


def _server_app(
    config: ExtralongerConfig, order: dict[str, Any], regions: int, rounds: int, dp: FederatedDP | None,
    horizons: dict[str, int], eval_windows: int | None, return_models: bool,
    progress: Callable[[int, dict[str, Any]], None] | None, timeout_s: float, out: list[FederatedResult],
) -> Any:  # fmt: skip
    from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

    app = ServerApp()

    @app.main()
    def _main(grid: Any, context: Any) -> None:
        import torch

        from veil.models.forecasting.model import Extralonger

        shared = json.loads(order["shared"])
        torch.manual_seed(json.loads(order["train"])["seed"])
        init = Extralonger(config, torch.ones(config.nodes, config.nodes, dtype=torch.bool)).state_dict()
        strategy: Any = FedAvg(
            fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=regions,
            min_available_nodes=regions, min_evaluate_nodes=0,
        )  # fmt: skip
        accountant, delta = None, 1.0 / (regions + 1)
        if dp is not None:
            from flwr.serverapp import NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod

            accountant = RdpAccountant(
                PrivacyConfig(
                    target_delta=delta,
                    population_size=regions,
                    neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                    sampling_method=SamplingMethod.NO_AMPLIFICATION,
                )  # fmt: skip
            )
            strategy = DifferentialPrivacyServerSideFixedClipping(
                strategy, dp.noise_multiplier, dp.clipping_norm, regions, accountant=accountant
            )
        counting = _RoundGrid(grid, regions, progress)
        start = time.perf_counter()
        fed = strategy.start(
            counting, ArrayRecord({k: init[k] for k in shared}), num_rounds=rounds, timeout=timeout_s,
            train_config=ConfigRecord(order),
        )  # fmt: skip
        seconds = time.perf_counter() - start

        ask = {**order, "horizons": json.dumps(horizons), "eval_windows": eval_windows or 0,
               "return_model": return_models}  # fmt: skip
        messages = [
            Message(
                RecordDict({"arrays": fed.arrays, "config": ConfigRecord(ask)}),
                dst_node_id=node,
                message_type="query.evaluate",
            )  # fmt: skip
            for node in grid.get_node_ids()
        ]
        replies = [m for m in grid.send_and_receive(messages, timeout=timeout_s) if m.has_content()]
        if len(replies) != regions:
            raise RuntimeError(f"{len(replies)} of {regions} regions answered the final evaluation")
        spent: dict[int, float] = {}
        for rows in counting.rounds:
            for row in rows:
                spent[int(row["region"])] = spent.get(int(row["region"]), 0.0) + row["train_seconds"]
        results = []
        for m in sorted(replies, key=lambda m: int(m.content["metrics"]["region"])):
            k = int(m.content["metrics"]["region"])
            state = None
            if return_models:
                state = {name: a.numpy() for name, a in m.content["model"].items()}
            metrics = _unflatten(m.content["metrics"], list(horizons))
            results.append(RegionResult(k, np.empty(0, dtype=np.int64), metrics, spent[k], state))
        sizes = [row["num-examples"] for row in counting.rounds[-1]]
        privacy = None
        if accountant is not None and dp is not None:
            used = accountant.get_privacy_spent(delta)
            privacy = {
                "epsilon": used.epsilon, "delta": used.delta, "noise_multiplier": dp.noise_multiplier,
                "clipping_norm": dp.clipping_norm, "unit_of_privacy": "one region, add or remove one",
            }  # fmt: skip
        out.append(
            FederatedResult(
                results,
                weighted_metrics([r.metrics for r in results], sizes),
                seconds,
                [_round_summary(i + 1, rows) for i, rows in enumerate(counting.rounds)],
                tuple(shared),
                privacy,
            )  # fmt: skip
        )

    return app
