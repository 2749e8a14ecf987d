"""``veil simulate``: a fleet of phones on Flower's simulation engine (:mod:`veil.simulation.fleet`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from veil.cli.errors import UserError

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate)


def simulate(
    phones: Annotated[int, typer.Option(help="Phones, each with its own folder and VeilClient.")] = 100,
    nodes: Annotated[
        int,
        typer.Option(help="Flower SuperNodes, each hosting a cell of phones (0: one per phone up to 32)."),
    ] = 0,
    phone_concurrency: Annotated[int, typer.Option(help="Phones of one node running at once.")] = 8,
    rounds: Annotated[int, typer.Option(help="Rounds; the cloud runs stage 3 between rounds.")] = 1,
    task: Annotated[str, typer.Option(help="classification | next_word")] = "classification",
    types: Annotated[int, typer.Option(help="Preference types of the synthetic population.")] = 10,
    train_per_phone: Annotated[int, typer.Option(help="Examples a phone uploads per round.")] = 4,
    test_per_phone: Annotated[int, typer.Option(help="Held-out examples a phone evaluates on.")] = 4,
    dropout: Annotated[float, typer.Option(help="Chance a phone drops out mid-round.")] = 0.0,
    late_join: Annotated[float, typer.Option(help="Share of phones that join one round late.")] = 0.0,
    skew: Annotated[float, typer.Option(help="Log-normal sigma of each phone's amount of data.")] = 0.0,
    latency_ms: Annotated[float, typer.Option(help="Simulated latency of each request's link.")] = 0.0,
    shared_training: Annotated[
        str,
        typer.Option(
            help="Between rounds: central (stage 3) | prototypes (central, model frozen) | federated."
        ),
    ] = "central",
    fed_rounds: Annotated[int, typer.Option(help="FedAvg rounds per fleet round (federated).")] = 3,
    fed_lr: Annotated[float, typer.Option(help="Phones' step on their prototype row (federated).")] = 0.5,
    fed_noise: Annotated[
        float, typer.Option(help="Central DP noise multiplier on the FedAvg updates (0: none).")
    ] = 0.0,
    fed_clip: Annotated[float, typer.Option(help="Clipping norm of each phone's update under DP.")] = 1.0,
    concurrency: Annotated[int, typer.Option(help="Nodes simulated at once (Flower's workers).")] = 4,
    audit_phones: Annotated[
        int, typer.Option(help="Phones whose parameters veil audit samples after each round (0: no audit).")
    ] = 200,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    timeout_s: Annotated[
        float, typer.Option(help="Longest wait for the nodes' answers to one message of a round.")
    ] = 600.0,
    api_url: Annotated[
        str,
        typer.Option(
            help="A running API (operator key in VEIL_FLEET_API_KEY): the phones use it and --relay-url "
            "instead of a cloud of the simulation's own (cloud=deployed; no stage 3, no audit)."
        ),
    ] = "",
    relay_url: Annotated[str, typer.Option(help="With --api-url: the relay the phones reach.")] = "",
    gateway_key: Annotated[
        str, typer.Option(help="With --api-url: the gateway's signing public key (veil gateway public-key).")
    ] = "",
    out: Annotated[Path | None, typer.Option(help="Work folder (phones' files, the cloud's data).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
) -> None:
    """Run the fleet: each round, every phone chooses its prototype, uploads through the relay and
    evaluates; Flower aggregates the counts. Reports accuracy and attribution round by round."""
    import os

    from veil.models.loading import quiet_transformers
    from veil.simulation.fleet import FleetConfig, FleetError
    from veil.simulation.fleet.run import simulate as run

    os.environ["VEIL_ENVIRONMENT"] = "development"  # the simulated cloud makes throwaway secrets
    work = out or Path(__import__("tempfile").mkdtemp(prefix="veil-fleet-"))
    cfg = FleetConfig(
        phones=phones, nodes=nodes, phone_concurrency=phone_concurrency, rounds=rounds, task=task,
        types=types, train_per_phone=train_per_phone, test_per_phone=test_per_phone, dropout=dropout, late_join=late_join, skew=skew,
        latency_ms=latency_ms, concurrency=concurrency, audit_phones=audit_phones, seed=seed,
        shared_training=shared_training, fed_rounds=fed_rounds, fed_lr=fed_lr, fed_noise=fed_noise,
        fed_clip=fed_clip, timeout_s=timeout_s, work_dir=str(work), cloud="deployed" if api_url else "local", api_url=api_url,
        relay_url=relay_url, gateway_key=gateway_key,
    )  # fmt: skip
    quiet_transformers()

    def progress(r: object) -> None:
        print(
            f"round {r.round}: {r.phones}/{r.phones_asked} phones, {r.dropped} dropped, {r.failed} failed, "  # type: ignore[attr-defined]
            f"{r.missing} missing, accuracy "  # type: ignore[attr-defined]
            f"{r.accuracy:.3f}, attribution {r.attribution:.3f} (floor {r.attribution_floor:.3f}), "  # type: ignore[attr-defined]
            f"{r.seconds:.1f} s",  # type: ignore[attr-defined]
            file=sys.stderr,
            flush=True,
        )

    try:
        report = run(cfg, on_round=progress)
    except FleetError as exc:
        raise UserError(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps(report.to_json()))
        return
    typer.echo(f"report: {work / 'report.json'}")
