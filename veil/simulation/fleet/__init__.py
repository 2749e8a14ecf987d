"""Fleets on Flower: one SuperNode per phone, each running the SDK's ``VeilClient`` through the relay.

:mod:`~veil.simulation.fleet.apps` holds the ServerApp and ClientApp (Message API) that ``flwr run .``
and ``veil simulate`` run; :mod:`~veil.simulation.fleet.server` the cloud side and the round loop;
:mod:`~veil.simulation.fleet.phone` one phone's round; :mod:`~veil.simulation.fleet.config` the settings.
Importing this package does not import Flower (the apps module does).
"""

from __future__ import annotations

from veil.simulation.fleet.config import FleetConfig, FleetConfigError
from veil.simulation.fleet.server import FleetError, FleetReport, RoundReport

__all__ = ["FleetConfig", "FleetConfigError", "FleetError", "FleetReport", "RoundReport"]
