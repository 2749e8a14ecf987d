"""The fleet's server side: the cloud (model, codebook, API, relay, stage 3) and Flower's round loop.

Each SuperNode hosts a cell of phones (:func:`~veil.simulation.fleet.phone.cell`). Each round has two
kinds of Flower message, both sent to every registered node:

1. ``query`` (choice): every phone that joined checks its stored choice against the published codebook
   version and chooses again if it went stale (loss requests through the relay); the node replies with
   its cell's count of phones per prototype, which the server only ever sums. The cloud retires
   prototypes chosen by fewer than ``k_min`` phones
   (:func:`~veil.cloud_service.codebooks.retire_by_counts`) and publishes the new version; this repeats
   until nothing is retired, so no upload carries a prototype below ``k_min``.
2. ``train`` (take part): every phone uploads its examples anonymously and evaluates the personalised
   model on its held-out examples; the node replies with its cell's counts (phones that took part,
   dropped out or failed, examples, correct, uploads).

Between rounds the cloud runs stage 3 on what the store received (the service's codebook training job)
and serves the new model and codebook, or FedAvg trains the prototypes over Flower. The cloud is the
ServerApp's own (``cloud=local``: ``veil simulate``, one machine) or a deployment's running API and relay
(``cloud=deployed``: the ServerApp publishes codebooks with the operator key and runs no stage 3). Flower carries only aggregated quantities; the one-hot of a
choice reaches the server unmasked when a cell holds one phone (SecAgg+ exists in flwr 1.42 only on the
legacy ``LegacyContext`` workflow, not on the Message API this fleet uses), which reveals a phone's group,
the k-anonymous set its uploads already name, but never links the phone to an upload.

The simulator's own attribution figure uses ground truth the cloud never has: each cell reports, per
prototype, the most uploads one of its phones made with it (:func:`~veil.simulation.fleet.phone.attribution`
makes the exact single-upload Bayes attribution of it, since a group's phones share one law). A local
cloud also audits the phones' parameter files and the store after each round.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from veil.client_sdk.distributions import Codebook, UserDistribution
from veil.client_sdk.param_store import ParamStore
from veil.simulation.fleet.config import FleetConfig
from veil.simulation.fleet.phone import attribution
from veil.simulation.fleet.population import POPULATION_FIELDS, fleet_population, phone_dir, write_phone

__all__ = ["CLOUD_KEY_ENV", "FleetError", "FleetReport", "RoundReport", "run_fleet"]


class FleetError(RuntimeError):
    """The fleet cannot run as asked (for example, fewer phones registered than asked for)."""


@dataclass
class RoundReport:
    round: int
    phones_asked: int
    phones: int
    """Phones that took part (joined, uploaded and reported)."""
    dropped: int
    """Phones that left mid-round (their uploads are stored; they never reported)."""
    failed: int
    """Phones that raised mid-round, and the phones of cells whose ClientApp raised."""
    not_joined: int
    missing: int
    """Phones of cells that did not answer before the round's timeout."""
    accuracy: float
    attribution: float
    attribution_floor: float
    uploads: int
    choice_passes: int
    usable_prototypes: int
    smallest_group: int
    codebook_version: str
    seconds: float
    seconds_choice: float
    seconds_uploads: float
    seconds_passes: list[float] = field(default_factory=list)
    """Each choice pass (the first scores the prototypes; later ones follow retirements)."""
    audit: dict[str, Any] = field(default_factory=dict)
    federated: dict[str, Any] = field(default_factory=dict)
    """With ``shared_training=federated``: FedAvg's rounds, the phones that took part in each, and the
    privacy spent (epsilon, delta, accountant) under DP."""
    """``veil audit`` on the phones' parameters (``params``) and on the store (``store``); empty when
    the fleet's ``audit_phones`` is 0."""

    def to_json(self) -> dict[str, Any]:
        def tidy(v: Any) -> Any:
            return round(v, 4) if isinstance(v, float) else [tidy(x) for x in v] if isinstance(v, list) else v

        return {k: tidy(v) for k, v in self.__dict__.items()}


@dataclass
class FleetReport:
    config: dict[str, Any]
    rounds: list[RoundReport] = field(default_factory=list)
    setup_seconds: float = 0.0
    stage3_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    """Why the fleet stopped before its last round (the rounds before it are kept)."""

    def to_json(self) -> dict[str, Any]:
        phones = self.config["phones"]
        round_s = sum(r.seconds for r in self.rounds)
        return {
            **({"error": self.error} if self.error else {}),
            "config": self.config,
            "rounds": [r.to_json() for r in self.rounds],
            "setup_seconds": round(self.setup_seconds, 1),
            "stage3_seconds": [round(s, 1) for s in self.stage3_seconds],
            "seconds": round(self.seconds, 1),
            "phones_per_minute": round(60.0 * phones * len(self.rounds) / round_s, 1) if round_s else None,
        }


CLOUD_KEY_ENV = "VEIL_FLEET_API_KEY"
"""The setting holding the operator API key of a deployed cloud (``veil.settings.Settings.fleet_api_key``;
never in the run config, which the SuperLink stores)."""


def _stage1(cfg: FleetConfig, out: Path) -> tuple[Path, tuple[int, int]]:
    """Train the cloud's model on its public cohort and save it where the API loads it."""
    from veil.models.checkpoint import save_personalized
    from veil.models.loading import load_tokenizer
    from veil.progress import NullProgress
    from veil.simulation.experiments.personalization import ExperimentConfig
    from veil.simulation.experiments.runner import ExperimentRun

    exp = ExperimentConfig.quick(cfg.task, cfg.seed, cfg.cohort, cfg.types)
    run = ExperimentRun(exp, NullProgress())
    run.stage1()
    classes = run.population.labels if cfg.task == "classification" else None
    path = save_personalized(
        run.model, load_tokenizer(exp.model), out, {"name": "veil-fleet"}, classes=classes, overwrite=True
    )
    return Path(path), run.shape


def _nodes(grid: Any, wanted: int, timeout_s: float) -> list[int]:
    """Every registered node, once ``wanted`` have registered (else :class:`FleetError`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        ids = sorted(grid.get_node_ids())
        if len(ids) >= wanted or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if len(ids) != wanted:
        raise FleetError(
            f"{len(ids)} SuperNodes registered within {timeout_s:.0f} s, {wanted} asked for (the run config's "
            "nodes; 0 means one per phone up to 32)"
        )
    return ids


def _send(
    grid: Any, ids: list[int], kind: str, order: dict[str, Any], timeout_s: float
) -> tuple[list, int, int]:
    """Send one message per phone; returns (metric records of the replies with content, errors, missing)."""
    from flwr.app import ConfigRecord, Message, RecordDict

    messages = [
        Message(RecordDict({"order": ConfigRecord(order)}), dst_node_id=node, message_type=kind)
        for node in ids
    ]
    replies = list(grid.send_and_receive(messages, timeout=timeout_s))
    good = [r.content["metrics"] for r in replies if r.has_content()]
    errors = sum(1 for r in replies if r.has_error())
    return good, errors, len(ids) - len(replies)


def _lost(asked: int, accounted: int, errors: int, missing: int) -> tuple[int, int]:
    """Phones of cells that raised and of cells that never answered, ``(failed, missing)``: the phones
    no reply accounts for, split by cell count (cells differ in size by one phone at most)."""
    lost = asked - accounted
    if not lost:
        return 0, 0
    gone = round(lost * missing / (errors + missing)) if errors + missing else lost
    return lost - gone, gone


class _LocalCloud:
    """The ServerApp's own cloud on its machine: stage 1 trains the served model, every round runs the
    API with its gateway behind a relay process on loopback, stage 3 runs between rounds."""

    def __init__(self, cfg: FleetConfig, exp: Any) -> None:
        self.cfg, self.exp = cfg, exp
        self.base, self.shape = _stage1(cfg, cfg.path / "cloud" / "stage1")
        self.model_id = "veil-fleet"  # stage 1's name; each stage 3 serves under its folder's name

    def publish(self, book: Codebook, r: int) -> Codebook:
        from veil.cloud_service.codebooks import CodebookStore

        return CodebookStore(self._dir(r)).publish(book)

    def _dir(self, r: int) -> Path:
        return self.cfg.path / "cloud" / f"round-{r}"

    @contextlib.contextmanager
    def channel(self, r: int) -> Iterator[dict[str, Any]]:
        from veil.simulation.service_demo import service_stack

        with service_stack(self._dir(r), self.base, max_batch=256) as (relay, public_key):
            yield {
                "relay_url": relay.url + "/ohttp", "key_config_url": relay.url + "/.well-known/ohttp-gateway",
                "gateway_key": base64.b64encode(public_key).decode(),
            }  # fmt: skip

    def stage3(self, r: int, book: Codebook) -> Codebook:
        """Stage 3 on what the store received in round ``r``; the next round serves its result."""
        from veil.cloud_service.codebooks import CodebookStore
        from veil.cloud_service.jobs.personalized import PersonalizedTrainingConfig
        from veil.cloud_service.jobs.runner import run_training_job
        from veil.cloud_service.store import make_engine, session_factory

        cfg, exp = self.cfg, self.exp
        job = PersonalizedTrainingConfig(
            task=cfg.task, epochs=cfg.stage3_epochs, batch_size=exp.stage3.batch_size, lr=exp.stage3.lr,
            lora=None, cold_start_fraction=exp.stage3.cold_start_fraction, max_tokens=exp.max_tokens,
            seed=cfg.seed + r, eval_fraction=0.0, codebook=True,
            freeze_model=cfg.shared_training == "prototypes",
        )  # fmt: skip
        sessions = session_factory(make_engine(None, self._dir(r)))
        target = cfg.path / "cloud" / f"round-{r + 1}-model"
        trained = run_training_job(sessions, str(self.base), target, job, self._dir(r), show_progress=False)
        self.base, self.model_id = trained.checkpoint, target.name
        return CodebookStore(self._dir(r)).current() or book

    def audit(self, r: int) -> dict[str, Any]:
        return _audit(self.cfg, _phone_laws(self.cfg), self._dir(r), r) if self.cfg.audit_phones else {}


class _DeployedCloud:
    """A running ``veil serve`` and its relay (``cfg.api_url``, ``cfg.relay_url``): the ServerApp serves
    that API's model, publishes codebooks with the operator key (``PUT /v1/codebook``) and keeps no
    data of its own; the relay, the gateway key and the phones' files belong to the deployment."""

    def __init__(self, cfg: FleetConfig) -> None:
        from veil.settings import get_settings

        secret = get_settings().fleet_api_key
        key = secret.get_secret_value().strip() if secret is not None else ""
        if not key:
            raise FleetError(
                f"cloud=deployed needs the operator API key in {CLOUD_KEY_ENV} on the ServerApp's machine "
                "(veil keys create --operator)"
            )
        self.cfg, self._key = cfg, key
        card = self._call("GET", "/v1/models")["data"][0]
        self.model_id, self.shape = str(card["id"]), tuple(int(n) for n in card["embedding_shape"])
        self.classes = card.get("classes")

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        """One request with the operator key (a handful per round: a client per call leaves nothing open)."""
        import ssl

        import httpx

        try:
            with httpx.Client(
                base_url=self.cfg.api_url.rstrip("/"), headers={"authorization": f"Bearer {self._key}"},
                timeout=60, verify=ssl.create_default_context(), trust_env=False,  # SSL_CERT_FILE: a private CA
            ) as http:  # fmt: skip
                response = http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise FleetError(f"the API at {self.cfg.api_url} cannot be reached: {exc}") from exc
        if response.status_code >= 400:
            raise FleetError(
                f"{method} {path} on {self.cfg.api_url}: {response.status_code} {response.text[:300]}"
            )
        return response.json()

    def publish(self, book: Codebook, r: int) -> Codebook:
        from veil.client_sdk.codebook_wire import codebook_from_json, codebook_to_json

        body = {**codebook_to_json(book), "model": self.model_id}
        return codebook_from_json(self._call("PUT", "/v1/codebook", body))

    @contextlib.contextmanager
    def channel(self, r: int) -> Iterator[dict[str, Any]]:
        yield {"relay_base": self.cfg.relay_url, "gateway_key": self.cfg.gateway_key}

    def stage3(self, r: int, book: Codebook) -> Codebook:  # FleetConfig refuses it for a deployed cloud
        raise FleetError("a deployed cloud runs no stage 3 from the ServerApp")

    def audit(self, r: int) -> dict[str, Any]:
        return {
            "skipped": "the phones' parameters are on their machines and the store on the API's: run "
            "veil audit --db there"
        }


def run_fleet(
    grid: Any, cfg: FleetConfig, on_round: Callable[[RoundReport], None] | None = None
) -> FleetReport:
    """Set up the cloud (the ServerApp's own, or the deployed one of ``cfg.api_url``) and, locally, the
    phones' data, then run ``cfg.rounds`` rounds on ``grid``. ``report.json`` in the work folder gets the
    report, also when a :class:`FleetError` stops the fleet (with its ``error`` and the rounds before)."""
    started = time.perf_counter()
    report = FleetReport(cfg.to_mapping())
    try:
        _run(grid, cfg, report, on_round)
    except Exception as exc:
        report.error = str(exc) if isinstance(exc, FleetError) else repr(exc)
        raise
    finally:
        report.seconds = time.perf_counter() - started
        cfg.path.mkdir(parents=True, exist_ok=True)
        (cfg.path / "report.json").write_text(json.dumps(report.to_json(), indent=2))
    return report


def _run(
    grid: Any, cfg: FleetConfig, report: FleetReport, on_round: Callable[[RoundReport], None] | None
) -> None:
    from veil.cloud_service.codebooks import init_codebook, retire_by_counts
    from veil.simulation.experiments.personalization import ExperimentConfig

    started = time.perf_counter()
    work = cfg.path
    exp = ExperimentConfig.quick(cfg.task, cfg.seed, cfg.cohort, cfg.types)
    spec = {name: getattr(cfg, name) for name in POPULATION_FIELDS}
    labels, phones = fleet_population(spec)
    cloud: _LocalCloud | _DeployedCloud
    if cfg.cloud == "deployed":
        cloud = _DeployedCloud(cfg)
        if cfg.task == "classification" and not set(labels) <= set(cloud.classes or ()):
            raise FleetError(
                f"the API's model {cloud.model_id!r} classifies into {cloud.classes}, the fleet's phones "
                f"label {labels}"
            )
    else:
        shutil.rmtree(work / "phones", ignore_errors=True)
        shutil.rmtree(work / "cloud", ignore_errors=True)
        for pid, data in enumerate(phones):
            write_phone(work, pid, data)
        cloud = _LocalCloud(cfg, exp)
    del phones  # the phones' data is theirs from here on
    k_min = cfg.k_min or exp.codebook.resolved_k_min(cfg.phones, cfg.types)
    book = init_codebook(cfg.codebook_size, k_min, cloud.shape, cfg.seed, exp.codebook.init_scale)
    ids = _nodes(grid, cfg.resolved_nodes, min(cfg.timeout_s, 120.0))
    report.setup_seconds = time.perf_counter() - started
    for r in range(1, cfg.rounds + 1):
        book = cloud.publish(book, r)
        t0 = time.perf_counter()
        with cloud.channel(r) as channel:
            order: dict[str, Any] = {
                "round": r, "seed": cfg.seed, "work_dir": str(work), "task": cfg.task, "labels": labels,
                "model": cloud.model_id, "cloud": cfg.cloud, "population": json.dumps(spec), **channel,
                "codebook_size": book.size, "choice_examples": cfg.choice_examples, "phones": cfg.phones,
                "nodes": len(ids), "phone_concurrency": cfg.phone_concurrency,
                "noise_std": exp.codebook.noise_std, "latency_ms": cfg.latency_ms, "dropout": cfg.dropout,
            }  # fmt: skip
            passes: list[float] = []
            while True:
                order.update(
                    codebook_version=book.version,
                    codebook_active=book.active.tolist(),
                    codebook_k_min=book.k_min,
                )  # public: the same announcement to every node
                t_pass = time.perf_counter()
                replies, errors, missing = _send(grid, ids, "query.choose", order, cfg.timeout_s)
                passes.append(time.perf_counter() - t_pass)
                if errors or missing:
                    raise FleetError(
                        f"round {r}: {errors} nodes failed and {missing} did not answer the choice "
                        "(see Flower's log for the phone that raised)"
                    )
                counts = np.sum([np.asarray(m["choice"], dtype=np.int64) for m in replies], axis=0)
                chose = sum(int(m["joined"]) for m in replies)
                new = retire_by_counts(book, counts)
                if new.version == book.version:
                    break
                book = cloud.publish(new, r)
            t_choice = time.perf_counter() - t0
            replies, errors, missing = _send(grid, ids, "query.take_part", order, cfg.timeout_s)
        sums = {k: sum(int(m[k]) for m in replies) for k in _CELL_COUNTS}
        group_max = np.max([np.asarray(m["group-max"], dtype=np.int64) for m in replies] or [[0]], axis=0)
        failed, lost = _lost(cfg.phones, sum(sums[k] for k in _CELL_PHONES), errors, missing)
        n_eval = sums["num-examples"]
        chosen = counts[counts > 0]
        rr = RoundReport(
            round=r, phones_asked=cfg.phones, phones=sums["took-part"], dropped=sums["dropped"],
            failed=sums["failed"] + failed, not_joined=sums["not-joined"], missing=lost,
            accuracy=sums["correct"] / n_eval if n_eval else math.nan,
            attribution=attribution(group_max, sums["uploads"]), attribution_floor=cfg.types / cfg.phones,
            uploads=sums["uploads"], choice_passes=len(passes), seconds_passes=passes,
            usable_prototypes=int(book.active.sum()), smallest_group=int(chosen.min()) if chosen.size else 0,
            codebook_version=book.version, seconds=time.perf_counter() - t0, seconds_choice=t_choice,
            seconds_uploads=time.perf_counter() - t0 - t_choice,
        )  # fmt: skip
        rr.audit = cloud.audit(r)
        report.rounds.append(rr)
        if on_round is not None:
            on_round(rr)
        if r < cfg.rounds:
            t3 = time.perf_counter()
            if cfg.shared_training == "federated":  # FedAvg on the prototypes, over Flower
                with cloud.channel(r) as channel:
                    order.update(channel)
                    book, rr.federated = _federated(grid, ids, book, cfg, order, chose)
            else:
                book = cloud.stage3(r, book)
            report.stage3_seconds.append(time.perf_counter() - t3)


_CELL_PHONES = ("took-part", "not-joined", "dropped", "failed")
_CELL_COUNTS = (*_CELL_PHONES, "num-examples", "correct", "uploads")
"""What a cell reports, summed over cells (its ``group-max`` is maxed instead)."""


class _CountingGrid:
    """The grid, counting the replies with content of every exchange and the phones they trained
    (FedAvg samples from the nodes registered when a round starts: a fleet that silently trains fewer
    phones must not pass)."""

    def __init__(self, grid: Any) -> None:
        self._grid, self.replies, self.phones = grid, [], []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Any]:
        messages = list(messages)
        out = list(self._grid.send_and_receive(messages, timeout=timeout))
        if messages:  # the strategy's evaluation stage sends none (fraction_evaluate=0)
            good = [m for m in out if m.has_content()]
            self.replies.append(len(good))
            self.phones.append(sum(int(m.content["metrics"]["joined"]) for m in good))
        return out


def _federated(
    grid: Any, ids: list[int], book: Codebook, cfg: FleetConfig, order: dict[str, Any], phones: int
) -> tuple[Codebook, dict[str, Any]]:
    """``cfg.fed_rounds`` FedAvg rounds on the prototype table, under Flower's server-side DP when
    ``cfg.fed_noise`` is set; returns the new codebook (same usable set) and what happened.

    FedAvg's unit is a node, so under DP each cell's update is clipped and the privacy unit is one node
    with all its phones (one phone when cells hold one phone); ``phones`` phones must train each round."""
    from flwr.app import Array, ArrayRecord, ConfigRecord
    from flwr.serverapp import NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

    n = len(ids)
    strategy: Any = FedAvg(
        fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n,
        min_evaluate_nodes=0,
    )  # fmt: skip
    accountant, delta = None, 1.0 / (n + 1)
    if cfg.fed_noise > 0:
        accountant = RdpAccountant(
            PrivacyConfig(
                target_delta=delta,
                population_size=n,
                neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                sampling_method=SamplingMethod.NO_AMPLIFICATION,
            )  # fmt: skip
        )
        strategy = DifferentialPrivacyServerSideFixedClipping(
            strategy, cfg.fed_noise, cfg.fed_clip, n, accountant=accountant
        )
    train_config = {
        **order, "fed_lr": cfg.fed_lr, "fed_examples": cfg.fed_examples,
        "fed_delta_scale": float(book.active.sum()),
    }  # fmt: skip
    counting = _CountingGrid(grid)
    result = strategy.start(
        counting,
        ArrayRecord({"prototypes": Array(book.prototypes.astype(np.float32))}),
        num_rounds=cfg.fed_rounds,
        timeout=cfg.timeout_s,
        train_config=ConfigRecord(train_config),
    )
    if counting.replies != [n] * cfg.fed_rounds or counting.phones != [phones] * cfg.fed_rounds:
        raise FleetError(
            f"FedAvg rounds trained {counting.phones} phones on {counting.replies} nodes, "
            f"{phones} phones on {n} nodes asked for each"
        )
    trained = result.arrays["prototypes"].numpy().astype(np.float64)
    protos = np.where(book.active[:, None, None], trained, book.prototypes)  # retired rows stay
    info: dict[str, Any] = {
        "rounds": cfg.fed_rounds, "phones_per_round": counting.phones, "nodes_per_round": counting.replies,
    }  # fmt: skip
    if accountant is not None:
        spent = accountant.get_privacy_spent(delta)
        info["privacy"] = {
            "epsilon": spent.epsilon, "delta": spent.delta, "accountant": spent.accounting_method,
            "noise_multiplier": cfg.fed_noise, "clipping_norm": cfg.fed_clip, "releases": spent.num_releases,
            "unit_of_privacy": (
                "one phone (all its examples), add or remove one" if n == cfg.phones
                else f"one node (its cell of up to {math.ceil(cfg.phones / n)} phones), add or remove one"
            ),
        }  # fmt: skip
    return book.with_prototypes(protos), info


def _audit(cfg: FleetConfig, laws: dict[int, UserDistribution], round_dir: Path, r: int) -> dict[str, Any]:
    """``veil audit`` after round ``r``: on a sample of the phones' parameter files (``--params``), and
    on the store's upload stream (``--db``) with those phones' laws for the expected Bayes accuracy."""
    from veil.cloud_service.store import iter_uploads, make_engine, session_factory
    from veil.privacy_analysis.audit import AuditConfig, run_audit
    from veil.privacy_analysis.audit.stream import StreamAuditConfig, audit_stream

    rng = np.random.default_rng(cfg.seed + 1000 + r)
    pids = sorted(laws)
    chosen = rng.choice(len(pids), size=min(len(pids), cfg.audit_phones), replace=False)
    dists = [laws[pids[i]] for i in sorted(chosen)]
    out: dict[str, Any] = {"phones_audited": len(dists)}
    if len(dists) >= 2:
        audit_cfg = AuditConfig(uploads_per_user=20, linked=(1, 4), attacks=False, seed=cfg.seed + r)
        result = run_audit(dists, audit_cfg).to_json()
        out["params"] = {
            "bayes_attribution": result["bayes"], "upper_bound": result["upper_bound"],
            "linked": result["linked"], "chance": result["chance"],
        }  # fmt: skip
    engine = make_engine(None, round_dir)
    try:
        with session_factory(engine)() as session:
            stored = [(u.embedding, u.task) for u in iter_uploads(session) if u.embedding is not None]
    finally:
        engine.dispose()
    stream = audit_stream(
        [e for e, _ in stored], [t for _, t in stored], None, StreamAuditConfig(seed=cfg.seed)
    )
    out["store"] = {
        k: stream[k] for k in ("n_uploads", "distinct_embeddings", "clusters", "findings") if k in stream
    }
    return out


def _phone_laws(cfg: FleetConfig) -> dict[int, UserDistribution]:
    """Every phone's stored law, by phone, from the phones' folders (simulator only)."""
    stores = {pid: ParamStore(phone_dir(cfg.path, pid) / "params.npz") for pid in range(cfg.phones)}
    return {pid: store.load("prototype").distribution for pid, store in stores.items() if store.exists()}
