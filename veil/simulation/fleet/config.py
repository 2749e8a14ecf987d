"""Settings of a simulated fleet: how many phones, how many rounds, and how realistic the population is.

Every field is a flat value, so the whole config travels as Flower's run config (``[tool.flwr.app.config]``
in ``pyproject.toml``, ``flwr run . --run-config "phones=100 rounds=2"``) and as ``veil simulate`` flags.
What the papers leave open and we chose: the private default (a k-anonymous codebook, issue 9's mechanism)
is what phones run; a phone that joins late sits out the rounds before it joins; a dropout happens after
the phone's choice and uploads, before its evaluation (the worst place for the server: the work is stored
but the phone never reports).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veil.client_sdk.constants import TASKS

__all__ = ["CLOUDS", "FleetConfig", "FleetConfigError"]

MAX_PHONES = 20_000
"""The most phones one machine's simulation takes (each needs its folder of files)."""

AUTO_NODES = 32
"""SuperNodes a fleet gets when ``nodes`` is 0: one per phone up to this many, then cells of phones.
Flower 1.42's simulation engine polls its message store once per node for every delivery (its
``add_messages_to_queue``), so one more node costs every message a little: a no-op message took 4.5 ms
at 1,000 nodes and 16.3 ms at 10,000 on the 2-core VM (``benchmarks/flower_overhead.py``)."""


CLOUDS = ("local", "deployed")
"""Where the fleet's cloud runs (:attr:`FleetConfig.cloud`)."""


class FleetConfigError(ValueError):
    """A fleet setting is out of range; the message names the setting and the value."""


@dataclass(frozen=True)
class FleetConfig:
    """One simulated fleet.

    Attributes
    ----------
    phones: simulated phones, each with its own folder and ``VeilClient``.
    nodes: Flower SuperNodes; node ``p`` hosts the cell of phones ``p, p + nodes, ...``
        (``0``: one node per phone up to ``AUTO_NODES``, then ``AUTO_NODES`` cells). What a node returns
        is summed over its cell.
    phone_concurrency: phones of one cell running at once (they share the node's connection pool).
    rounds: Flower rounds; between rounds the cloud runs stage 3 on what it received and publishes the
        trained codebook (phones choose again against it).
    task: ``classification`` (the phone evaluates by the cloud's loss of each label) or ``next_word``.
    types: preference types of the synthetic population.
    train_per_phone, test_per_phone: examples each phone holds (train: uploaded; test: evaluated).
    choice_examples: of its training examples, how many a phone scores the prototypes on.
    codebook_size: public prototypes K.
    k_min: smallest usable group (``0``: the experiment's default for this fleet).
    cohort: users of the public population stage 1 trains on (the cloud's own data).
    dropout: probability that a phone drops out mid-round (after uploading, before reporting).
    late_join: share of phones that join one round late (they sit out round 1).
    skew: sigma of a log-normal factor on each phone's amount of training data (``0``: equal).
    latency_ms: simulated one-way latency of each request on the relay path.
    stage3_epochs: cloud passes over the stored uploads between rounds.
    shared_training: how the shared parts train between rounds: ``central`` (stage 3 on the stored
        uploads, model and prototypes), ``prototypes`` (the same, prototypes only, model frozen) or
        ``federated`` (the prototypes by FedAvg over Flower: each phone one local step on its own row,
        from loss requests through the relay; the model stays as it is).
    fed_rounds, fed_lr, fed_examples: FedAvg rounds per fleet round, the phones' step size and the
        examples each uses per step.
    fed_noise, fed_clip: central DP on the FedAvg updates (Flower's server-side fixed clipping: each
        phone's update clipped to ``fed_clip``, Gaussian noise ``fed_noise * fed_clip / phones`` on the
        average; ``0``: no DP); the privacy spent is reported by Flower's RDP accountant.
    concurrency: SuperNodes simulated at once (Flower's simulation workers).
    audit_phones: after each round, ``veil audit`` runs on this many phones' parameter files (a random
        sample) and on the store (``0``: no audit).
    timeout_s: the longest a round may take before the missing phones are reported.
    seed: every random choice of the simulation.
    work_dir: where phones keep their files and the cloud its data ("" = a temporary folder).
    cloud: ``local``: the ServerApp runs its own cloud on its machine (stage 1, API with gateway, relay
        and stage 3, as ``veil simulate`` does); ``deployed``: it uses a running ``veil serve`` (reached
        at ``api_url`` with the operator key in ``VEIL_FLEET_API_KEY``) and its relay, serves that API's
        model, publishes codebooks with ``PUT /v1/codebook``, and runs no stage 3 (between rounds only
        ``shared_training=federated`` trains the shared parts). Phones keep their files on their
        SuperNode's machine (node config ``phones-dir``) and write their synthetic data there on first use.
    api_url: the API as the ServerApp reaches it (``deployed``).
    relay_url: the relay as phones reach it (``deployed``; a SuperNode's node config ``relay-url``
        overrides it for its phones).
    gateway_key: the gateway's signing public key phones pin (``deployed``; base64, as ``veil gateway
        public-key`` prints it; node config ``gateway-key`` overrides it).
    """

    phones: int = 100
    nodes: int = 0
    phone_concurrency: int = 8
    rounds: int = 1
    task: str = "classification"
    types: int = 10
    train_per_phone: int = 4
    test_per_phone: int = 4
    choice_examples: int = 2
    codebook_size: int = 16
    k_min: int = 0
    cohort: int = 200
    dropout: float = 0.0
    late_join: float = 0.0
    skew: float = 0.0
    latency_ms: float = 0.0
    stage3_epochs: int = 2
    shared_training: str = "central"
    fed_rounds: int = 3
    fed_lr: float = 0.5
    fed_examples: int = 4
    fed_noise: float = 0.0
    fed_clip: float = 1.0
    concurrency: int = 4
    audit_phones: int = 200
    timeout_s: float = 600.0
    seed: int = 0
    work_dir: str = ""
    cloud: str = "local"
    api_url: str = ""
    relay_url: str = ""
    gateway_key: str = ""

    def __post_init__(self) -> None:
        ints = {
            "phones": (2, MAX_PHONES),
            "nodes": (0, MAX_PHONES),
            "phone_concurrency": (1, 1024),
            "rounds": (1, 1000),
            "types": (1, 16),
            "train_per_phone": (1, 10_000),
            "test_per_phone": (1, 10_000),
            "choice_examples": (1, 10_000),
            "codebook_size": (1, 4096),
            "k_min": (0, MAX_PHONES),
            "cohort": (2, 100_000),
            "stage3_epochs": (1, 1000),
            "fed_rounds": (1, 1000),
            "fed_examples": (1, 10_000),
            "concurrency": (1, 256),
            "audit_phones": (0, MAX_PHONES),
            "seed": (0, 2**31 - 1),
        }
        for name, (low, high) in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise FleetConfigError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        if self.task not in TASKS:
            raise FleetConfigError(f"task must be one of {list(TASKS)}, got {self.task!r}")
        if self.nodes > self.phones:
            raise FleetConfigError(f"nodes ({self.nodes}) cannot exceed phones ({self.phones})")
        if self.types > self.phones:
            raise FleetConfigError(f"types ({self.types}) cannot exceed phones ({self.phones})")
        for name in ("dropout", "late_join"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= value < 1.0):
                raise FleetConfigError(f"{name} must be a probability in [0, 1), got {value!r}")
        for name, high in (("skew", 3.0), ("latency_ms", 10_000.0), ("timeout_s", 86_400.0)):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and 0.0 <= value <= high):
                raise FleetConfigError(f"{name} must be a number in [0, {high}], got {value!r}")
        if self.timeout_s <= 0:
            raise FleetConfigError(f"timeout_s must be > 0, got {self.timeout_s!r}")
        if self.shared_training not in ("central", "prototypes", "federated"):
            raise FleetConfigError(
                f"shared_training must be central, prototypes or federated, got {self.shared_training!r}"
            )
        for name in ("fed_lr", "fed_clip"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise FleetConfigError(f"{name} must be a number > 0, got {value!r}")
        if not (isinstance(self.fed_noise, int | float) and 0.0 <= self.fed_noise <= 100.0):
            raise FleetConfigError(f"fed_noise must be a number in [0, 100], got {self.fed_noise!r}")
        if self.cloud not in CLOUDS:
            raise FleetConfigError(f"cloud must be one of {list(CLOUDS)}, got {self.cloud!r}")
        if self.cloud == "deployed":
            for name in ("api_url", "relay_url"):
                value = getattr(self, name)
                if value and not value.startswith(("http://", "https://")):
                    raise FleetConfigError(f"{name} must be an http(s) URL, got {value!r}")
            if not self.api_url:
                raise FleetConfigError(
                    "cloud=deployed needs api_url (the running API, e.g. https://api:8443)"
                )
            if self.rounds > 1 and self.shared_training != "federated":
                raise FleetConfigError(
                    f"cloud=deployed runs no stage 3 between rounds (it trains on the API's machine: "
                    f"veil train); use shared_training=federated or rounds=1, got {self.shared_training!r}"
                )
        if self.late_join and self.rounds < 2:
            raise FleetConfigError("late_join needs rounds >= 2 (late phones sit out round 1)")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> FleetConfig:
        """Build from a run config (Flower's, or flags): unknown keys are an error, values are coerced."""
        values = {str(k).replace("-", "_"): v for k, v in values.items()}  # Flower's keys use hyphens
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise FleetConfigError(f"unknown fleet settings {unknown}; known: {sorted(known)}")
        out: dict[str, Any] = {}
        for key, value in values.items():
            kind = type(known[key].default)
            try:
                if kind is int and not isinstance(value, bool) and float(value).is_integer():
                    value = int(float(value))
                elif kind is not int:
                    value = kind(value)
            except (TypeError, ValueError) as exc:
                noun = {int: "an integer", float: "a number"}.get(kind, "a string")
                raise FleetConfigError(f"{key} must be {noun}, got {value!r}") from exc
            out[key] = value
        return cls(**out)

    @property
    def resolved_nodes(self) -> int:
        """SuperNodes the fleet runs on (``nodes``, or the automatic choice when it is 0)."""
        return self.nodes or min(self.phones, AUTO_NODES)

    def to_mapping(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def path(self) -> Path:
        if not self.work_dir:
            raise FleetConfigError("work_dir is not set")
        return Path(self.work_dir)
