"""The server side of federated Extralonger (arXiv:2411.00844): FedAvg over the shared parameters (with
Flower's server-side DP wrapper as an option), then one scoring query to every region."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

from veil.models.forecasting.model import Extralonger
from veil.simulation.forecasting_fleet.plan import FederatedPlan
from veil.simulation.forecasting_fleet.regions import (
    FederatedResult,
    RegionResult,
    unflatten_metrics,
    weighted_metrics,
)

__all__ = ["Progress", "federate"]

Progress = Callable[[int, dict[str, Any]], None]
"""``progress(round, summary)`` after each round; ``summary`` as in ``FederatedResult.history``."""


class _RoundGrid:
    """The grid, keeping each training round's replies (region, losses, seconds, memory), so that a round
    in which a region did not answer fails the run instead of silently averaging fewer regions."""

    def __init__(self, grid: Grid, regions: int, progress: Progress | None):
        self._grid, self.regions, self.progress = grid, regions, progress
        self.rounds: list[list[dict[str, float]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
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

    def per_region(self, key: str, combine: Callable[[float, float], float]) -> dict[int, float]:
        """``key`` of every round's replies, combined over the rounds region by region."""
        out: dict[int, float] = {}
        for rows in self.rounds:
            for row in rows:
                k = int(row["region"])
                out[k] = combine(out[k], float(row[key])) if k in out else float(row[key])
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


def _strategy(plan: FederatedPlan) -> tuple[Any, Any, float]:
    """FedAvg over every region each round, wrapped in server-side DP under ``plan.dp``; with the
    accountant and its delta (one over the regions plus one)."""
    n = plan.regions
    strategy: Any = FedAvg(
        fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n,
        min_evaluate_nodes=0,
    )  # fmt: skip
    delta = 1.0 / (n + 1)
    if plan.dp is None:
        return strategy, None, delta
    from flwr.serverapp import NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod

    accountant = RdpAccountant(
        PrivacyConfig(
            target_delta=delta,
            population_size=n,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )
    strategy = DifferentialPrivacyServerSideFixedClipping(
        strategy, plan.dp.noise_multiplier, plan.dp.clipping_norm, n, accountant=accountant
    )
    return strategy, accountant, delta


def federate(grid: Grid, plan: FederatedPlan, progress: Progress | None = None) -> FederatedResult:
    """Run ``plan.rounds`` FedAvg rounds on ``grid``, then score every region under the final shared
    parameters; raises ``RuntimeError`` when a region does not answer."""
    shared = plan.shared
    torch.manual_seed(plan.seed)
    n = plan.config.nodes
    init = Extralonger(plan.config, torch.ones(n, n, dtype=torch.bool)).state_dict()
    strategy, accountant, delta = _strategy(plan)
    counting = _RoundGrid(grid, plan.regions, progress)
    start = time.perf_counter()
    fed = strategy.start(
        counting, ArrayRecord({k: init[k] for k in shared}), num_rounds=plan.rounds, timeout=plan.timeout_s,
        train_config=ConfigRecord(plan.order),
    )  # fmt: skip
    seconds = time.perf_counter() - start

    ask = {**plan.order, "horizons": json.dumps(plan.horizons), "eval_windows": plan.eval_windows or 0,
           "return_model": plan.return_models}  # fmt: skip
    messages = [
        Message(
            RecordDict({"arrays": fed.arrays, "config": ConfigRecord(ask)}),
            dst_node_id=node,
            message_type="query.evaluate",
        )  # fmt: skip
        for node in grid.get_node_ids()
    ]
    replies = [m for m in grid.send_and_receive(messages, timeout=plan.timeout_s) if m.has_content()]
    if len(replies) != plan.regions:
        raise RuntimeError(f"{len(replies)} of {plan.regions} regions answered the final evaluation")
    spent = counting.per_region("train_seconds", lambda a, b: a + b)
    peaks = counting.per_region("peak_memory_mb", max)
    rss = max([*counting.per_region("max_rss_mb", max).values()]
              + [float(m.content["metrics"]["max_rss_mb"]) for m in replies])  # fmt: skip
    results = []
    for m in sorted(replies, key=lambda m: int(m.content["metrics"]["region"])):
        k = int(m.content["metrics"]["region"])
        state = {name: a.numpy() for name, a in m.content["model"].items()} if plan.return_models else None
        metrics = unflatten_metrics(m.content["metrics"], list(plan.horizons))
        results.append(RegionResult(k, plan.blocks[k], metrics, spent[k], state, peaks[k]))
    privacy = None
    if accountant is not None and plan.dp is not None:
        used = accountant.get_privacy_spent(delta)
        privacy = {
            "epsilon": used.epsilon, "delta": used.delta, "noise_multiplier": plan.dp.noise_multiplier,
            "clipping_norm": plan.dp.clipping_norm, "unit_of_privacy": "one region, add or remove one",
        }  # fmt: skip
    return FederatedResult(
        results,
        weighted_metrics([r.metrics for r in results], [len(b) for b in plan.blocks]),
        seconds,
        [_round_summary(i + 1, rows) for i, rows in enumerate(counting.rounds)],
        tuple(shared),
        privacy,
        max(peaks.values()),
        rss,
    )
