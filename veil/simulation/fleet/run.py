"""``veil simulate``: the fleet's apps on Flower's simulation engine (Ray), in this process."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

from veil.simulation.fleet.config import FleetConfig
from veil.simulation.fleet.server import FleetError, FleetReport, RoundReport

__all__ = ["simulate"]


def simulate(cfg: FleetConfig, on_round: Callable[[RoundReport], None] | None = None) -> FleetReport:
    """Run ``cfg`` on ``cfg.resolved_nodes`` simulated SuperNodes; raises :class:`FleetError` when it
    cannot.

    ``cfg.concurrency`` nodes run at once: each simulation worker is given ``cpus / concurrency`` of
    the machine's CPUs (Flower's ``client_resources``; phones mostly wait on the relay, so several share
    a core).
    """
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no usage events leave the machine
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    from flwr.simulation import run_simulation

    from veil.simulation.fleet.apps import client_app, make_server_app

    values = cfg.to_mapping()
    if not cfg.work_dir:
        values["work_dir"] = tempfile.mkdtemp(prefix="veil-fleet-")
    result: list[FleetReport] = []
    cpus = os.cpu_count() or 1
    run_simulation(
        make_server_app(values, on_round, result),
        client_app,
        num_supernodes=cfg.resolved_nodes,
        backend_config={"client_resources": {"num_cpus": cpus / cfg.concurrency, "num_gpus": 0.0}},
    )
    if not result:
        raise FleetError("the simulation ended without a report (see Flower's log above)")
    return result[0]
