"""The Flower apps (Message API): ``flwr run .`` and ``veil simulate`` run these two.

``client_app``: a cell of phones per SuperNode (its ``partition-id`` names the cell,
:func:`~veil.simulation.fleet.phone.cell`). ``query.choose`` makes them choose their prototypes
(:func:`~veil.simulation.fleet.phone.choose`), ``query.take_part`` makes them upload and evaluate
(:func:`~veil.simulation.fleet.phone.take_part`), both answered with the cell's counts only; ``train``
(FedAvg's) makes each take one local step on its prototype row
(:func:`~veil.simulation.fleet.phone.train_prototypes`).

``server_app``: sets up the cloud and runs the rounds (:func:`~veil.simulation.fleet.server.run_fleet`);
its settings are the run config (``[tool.flwr.app.config]``), overridden by :func:`make_server_app`'s
argument when ``veil simulate`` builds it.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from veil.simulation.fleet.config import FleetConfig
from veil.simulation.fleet.phone import cell, choose, take_part, train_prototypes
from veil.simulation.fleet.population import ensure_phones
from veil.simulation.fleet.server import FleetReport, RoundReport, run_fleet

__all__ = ["client_app", "make_server_app", "server_app"]

client_app = ClientApp()


def _phone(msg: Message, context: Context, record: str) -> tuple[Path, range, dict[str, Any]]:
    """The phones' folder, this SuperNode's phones and the server's order (the ``record`` config).

    With a deployed cloud the node's own settings win: its ``phones-dir`` (where its phones keep their
    files; their synthetic data is written there on first use), its ``relay-url`` and ``gateway-key``
    (what the phones' app ships), each falling back to the run's."""
    order = dict(msg.content[record])
    node = context.node_config
    pids = cell(int(node["partition-id"]), int(order["nodes"]), int(order["phones"]))
    work_dir = Path(str(order.pop("work_dir")))
    if order.get("cloud") == "deployed":
        work_dir = Path(str(node.get("phones-dir") or work_dir)).expanduser()
        relay = str(node.get("relay-url") or order.get("relay_base") or "").rstrip("/")
        if not relay:
            raise ValueError(
                "no relay: give the run config relay-url or this SuperNode's node config relay-url"
            )
        order.update(relay_url=relay + "/ohttp", key_config_url=relay + "/.well-known/ohttp-gateway")
        order["gateway_key"] = str(node.get("gateway-key") or order.get("gateway_key") or "")
        if not order["gateway_key"]:
            raise ValueError(
                "no gateway key to pin: give gateway-key (veil gateway public-key) in the run or node config"
            )
        ensure_phones(work_dir, pids, json.loads(str(order["population"])))
    return work_dir, pids, order


def _reply(msg: Message, context: Context, step: Callable[..., dict[str, Any]]) -> Message:
    return Message(RecordDict({"metrics": MetricRecord(step(*_phone(msg, context, "order")))}), reply_to=msg)


@client_app.query("choose")
def _choose(msg: Message, context: Context) -> Message:
    return _reply(msg, context, choose)


@client_app.query("take_part")
def _take_part(msg: Message, context: Context) -> Message:
    return _reply(msg, context, take_part)


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    """Federated training of the public prototypes (FedAvg's ``train`` messages)."""
    table = msg.content["arrays"]["prototypes"].numpy()
    new, metrics = train_prototypes(*_phone(msg, context, "config"), table)
    content = RecordDict(
        {"arrays": ArrayRecord({"prototypes": Array(new)}), "metrics": MetricRecord(metrics)}
    )
    return Message(content, reply_to=msg)


def make_server_app(
    overrides: Mapping[str, Any] | None = None,
    on_round: Callable[[RoundReport], None] | None = None,
    result: list[FleetReport] | None = None,
) -> ServerApp:
    """A ServerApp running :func:`run_fleet` with the run config plus ``overrides``; the report is
    appended to ``result`` when given (``veil simulate`` reads it there)."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        values = {str(k).replace("-", "_"): v for k, v in {**context.run_config, **(overrides or {})}.items()}
        if not values.get("work_dir"):
            values["work_dir"] = tempfile.mkdtemp(prefix="veil-fleet-")
        report = run_fleet(grid, FleetConfig.from_mapping(values), on_round)
        if result is not None:
            result.append(report)

    return app


server_app = make_server_app()
