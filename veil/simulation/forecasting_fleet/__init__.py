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
its own file with the node config's ``data-path``.

Modules: :mod:`~.regions` (the pure parts: regions, shared parameters, results, metrics),
:mod:`~.plan` (a run checked and laid out before Flower starts), :mod:`~.client` (one region's round),
:mod:`~.server` (the rounds and the scoring), :mod:`~.apps` (the ClientApp and ServerApp, also for
``flwr run deploy/flwr/forecasting``), :mod:`~.run` (:func:`run_federated` on the simulation engine).
Importing this package does not import Flower (``client_app`` is fetched from :mod:`~.apps` on first
use).
"""

from __future__ import annotations

from typing import Any

from veil.simulation.forecasting_fleet.regions import (
    FederatedDP,
    FederatedResult,
    RegionResult,
    partition_regions,
    shared_parameter_names,
    weighted_metrics,
)
from veil.simulation.forecasting_fleet.run import run_federated

__all__ = [
    "FederatedDP",
    "FederatedResult",
    "RegionResult",
    "partition_regions",
    "run_federated",
    "shared_parameter_names",
    "weighted_metrics",
]


def __getattr__(name: str) -> Any:
    """``client_app``, the regions' ClientApp, imported on first use so that importing this package does
    not import Flower."""
    if name == "client_app":
        from veil.simulation.forecasting_fleet.apps import client_app

        return client_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
