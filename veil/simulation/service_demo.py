"""``veil demo``: personalisation end to end through the real service.

The default mechanism is the k-anonymous prototype codebook (``mechanism="codebook"``):

1. The cloud trains the stage-1 model centrally, publishes random Gaussian prototypes
   (:func:`veil.cloud_service.codebooks.init_codebook`) and serves both: ``veil.cloud_service`` on a
   loopback port (SQLite in the round's folder), a ``veil relay`` process in front of its gateway.
2. Each phone is a :class:`veil.client_sdk.client.VeilClient` with an in-memory parameter store. It
   fetches ``GET /v1/codebook`` through the relay, scores every usable prototype on its own examples by
   loss requests (``/v1/embedding-gradients``) and keeps the best one. The cloud sees only the
   aggregate count of choices (in deployment, from secure aggregation; here the simulator adds them
   up) and retires prototypes chosen by fewer than ``k_min`` phones
   (:func:`~veil.cloud_service.codebooks.retire_by_counts`), which publishes a new version: every phone's
   next version check fails (``CodebookMismatchError``) and it chooses again, until nothing is retired.
3. Phones upload each training example once with their prototype plus tiny noise (a second upload
   would carry the same prototype); the stage-3 job with ``codebook=True`` decodes every upload to its
   prototype, trains the model and the prototypes, and publishes the trained codebook.
4. Steps 2 and 3 alternate ``codebook_rounds`` times, each round on a fresh service folder serving the
   last checkpoint (its uploads alone train that round); then the phones choose once more against the
   final model and codebook, and the report gives accuracy and Bayes attribution next to the floor
   1 / (users per type).

With ``mechanism="gaussian"`` (or another family; IDfree-PL, the paper's mechanism):

1. The cloud trains the stage-1 model centrally and serves it: ``veil.cloud_service`` on a loopback
   port (SQLite in the run's folder), with a ``veil relay`` process in front of its OHTTP gateway.
2. Simulated phones learn their private distributions in *gradient-return* mode: every example goes out
   with a fresh sample through the relay to ``/v1/embedding-gradients``; the phone turns dL/de into an
   Adam step on its own parameters (``veil.client_sdk``). Each phone keeps the parameters with the best
   held-out loss, measured the same way (the returned loss), as the paper keeps its best validation.
3. Phones upload their examples with fresh samples to ``/v1/uploads`` through the relay, each with a
   random idempotency key.
4. The cloud runs stage 3 on the stored uploads (``veil train personalized``'s job), once without and
   once with DP-SGD, and the report compares accuracy and attribution against no personalisation.

The simulator alone knows which phone sent which upload (to score the attacks); nothing it sends says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import math
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from veil.client_sdk.api import PhoneAPI
from veil.client_sdk.client import CodebookMismatchError, ModelMismatchError, RetryPolicy, VeilClient
from veil.client_sdk.distributions import UserDistribution
from veil.client_sdk.math_backends import LearningConfig, NumpyBackend
from veil.client_sdk.ohttp import AsyncOHTTPClient
from veil.client_sdk.param_store import MemoryParamStore
from veil.client_sdk.policy_guard import PolicyGuard
from veil.cloud_service.app import create_app
from veil.cloud_service.background import BackgroundServer, RelayProcess
from veil.cloud_service.codebooks import CodebookStore, init_codebook, retire_by_counts
from veil.cloud_service.config import ServiceConfig
from veil.cloud_service.engine import EngineConfig
from veil.cloud_service.gateway_signing import KeyConfigSigner
from veil.cloud_service.jobs.personalized import PersonalizedTrainingConfig
from veil.cloud_service.jobs.runner import run_training_job
from veil.cloud_service.store import count_uploads, iter_uploads, make_engine, session_factory
from veil.models.checkpoint import load_personalized, save_personalized
from veil.models.dp_training import DPConfig
from veil.models.loading import load_tokenizer
from veil.models.training import evaluate
from veil.privacy_analysis.attribution import bayes_attribution
from veil.privacy_analysis.linkage import linkage_attack
from veil.progress import NullProgress, Progress
from veil.simulation.experiments.personalization import (
    ExperimentConfig,
    ExperimentResult,
    MethodResult,
    _jsonable,
)
from veil.simulation.experiments.runner import ExperimentRun

__all__ = ["ServiceDemoConfig", "ServiceDemoResult", "run_service_demo"]


@dataclass
class ServiceDemoConfig:
    """What ``veil demo`` runs.

    Attributes
    ----------
    experiment: population, model, stage-1/2/3 and codebook settings (default: the quick preset).
    mechanism: ``"codebook"`` (the k-anonymous prototype codebook) or a distribution family the phones
        learn by IDfree-PL (``"gaussian"``, the paper's; ``"beta"``, ``"basis_mixture"``).
    codebook_rounds: codebook: choice / upload / stage-3 rounds before the final choice.
    spread: the family's spread (``None``: the experiment's default for the family).
    stage2_epochs: passes of each phone over its examples in gradient-return learning.
    stage3_epochs: passes of the cloud over the stored uploads.
    uploads_per_example: each example is uploaded this many times, each with a fresh sample (the
        paper's stage 3 draws a fresh sample per step; stored uploads freeze one each). Distribution
        families only: a codebook upload is the same prototype each time.
    dp_noise_multiplier: noise of an extra DP-SGD stage-3 run (batch 128, 10 epochs, embedding matrix
        frozen); ``None`` skips it.
    max_batch: most requests per model batch in the service.
    hold_window_ms: the relay holds requests up to this long and forwards them shuffled.
    max_in_flight: most requests the simulated phones have outstanding at once.
    max_gdp_mu: the phones' privacy policy: every update is projected back so that the Gaussian-DP
        ``mu`` between a phone's distribution and the population prior stays below this
        (:class:`veil.client_sdk.policy_guard.PolicyGuard`; Gaussian family only); ``None``: no guard.
    """

    experiment: ExperimentConfig = field(default_factory=ExperimentConfig.quick)
    mechanism: str = "codebook"
    codebook_rounds: int = 2
    spread: float | None = None
    stage2_epochs: int = 8
    stage3_epochs: int = 6
    uploads_per_example: int = 2
    dp_noise_multiplier: float | None = None
    max_batch: int = 64
    hold_window_ms: float = 5.0
    max_in_flight: int = 128
    max_gdp_mu: float | None = None

    def __post_init__(self) -> None:
        mechanisms = ("codebook", *self.experiment.families)
        if self.mechanism not in mechanisms:
            raise ValueError(f"mechanism must be one of {mechanisms}, got {self.mechanism!r}")
        if self.codebook_rounds < 1:
            raise ValueError(f"codebook_rounds must be >= 1, got {self.codebook_rounds}")
        if self.mechanism == "codebook" and self.dp_noise_multiplier is not None:
            raise ValueError("the codebook's stage 3 runs without DP-SGD; use a distribution family for --dp")
        if min(self.stage2_epochs, self.stage3_epochs, self.uploads_per_example, self.max_batch) < 1:
            raise ValueError("stage2_epochs, stage3_epochs, uploads_per_example and max_batch must be >= 1")
        if self.dp_noise_multiplier is not None and self.dp_noise_multiplier <= 0:
            raise ValueError(f"dp_noise_multiplier must be > 0 or None, got {self.dp_noise_multiplier}")
        if self.max_gdp_mu is not None and (self.mechanism != "gaussian" or not self.max_gdp_mu > 0):
            raise ValueError(
                f"max_gdp_mu needs the gaussian mechanism and a value > 0, got {self.max_gdp_mu}"
            )

    @property
    def family(self) -> str:
        """The distribution family the phones use (``"prototype"`` for the codebook)."""
        return "prototype" if self.mechanism == "codebook" else self.mechanism

    @classmethod
    def quick(cls, task: str = "next_word", seed: int = 0, mechanism: str = "codebook") -> ServiceDemoConfig:
        return cls(experiment=ExperimentConfig.quick(task, seed), mechanism=mechanism)


@dataclass
class ServiceDemoResult:
    """The comparison (as an :class:`ExperimentResult`) and what went over the wire."""

    result: ExperimentResult
    service: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {**self.result.to_json(), "service": self.service}


async def _phone_session(
    relay_url: str,
    model: str,
    run: ExperimentRun,
    cfg: ServiceDemoConfig,
    progress: Progress,
    gateway_public_key: bytes,
) -> tuple[dict[str, UserDistribution], dict[int, str], int]:
    """Each phone is a :class:`VeilClient` (in-memory parameters) that learns its distribution in
    gradient-return mode, keeps the parameters with the lowest validation loss (stage 2's rule), and
    uploads its examples with fresh samples of them."""
    spread = cfg.spread if cfg.spread is not None else run.cfg.default_spread[cfg.family]
    s2, users, task = run.cfg.stage2, run.users, run.population.task
    pool = run.population.train + run.population.test
    init = run.init_distributions(cfg.family, spread)
    learning = LearningConfig(lr=s2.lr, trainable=run.trainable(cfg.family))
    seeds = np.random.SeedSequence(run.cfg.seed + 7).spawn(len(users))
    split_rng = np.random.default_rng(run.cfg.seed + 8)
    splits = {}
    for u in users:
        idx = split_rng.permutation(np.asarray(run.train[u], dtype=np.int64))
        n_val = int(round(s2.val_fraction * idx.size)) if idx.size > 1 else 0
        splits[u] = ([(task, pool[i].text, pool[i].label) for i in idx[n_val:]],
                     [(task, pool[i].text, pool[i].label) for i in idx[:n_val]])  # fmt: skip
    async with AsyncOHTTPClient(
        relay_url + "/ohttp",
        key_config_url=relay_url + "/.well-known/ohttp-gateway",
        timeout=120,
        retries=0,  # the VeilClients below are the one layer that retries
        gateway_public_key=gateway_public_key,  # shipped with the app: the relay cannot swap keys
    ) as transport:
        counted = _CountingTransport(transport)
        per_phone = max(1, cfg.max_in_flight // len(users))
        clients, gens = {}, {u: np.random.default_rng(sq) for u, sq in zip(users, seeds, strict=True)}
        for u in users:
            guard = None if cfg.max_gdp_mu is None else PolicyGuard(init[u], max_gdp_mu=cfg.max_gdp_mu)
            clients[u] = VeilClient(
                counted, MemoryParamStore(u), model=model, backend=NumpyBackend(learning, guard),
                family=cfg.family, rng=itertools.repeat(gens[u]).__next__,
                retry=RetryPolicy(retries=3, backoff_s=0.05), max_in_flight=per_phone,
            )  # fmt: skip
            clients[u].initialise(init[u])
        best: dict[str, tuple[float, UserDistribution]] = {u: (math.inf, init[u]) for u in users}

        async def epoch(u: str) -> None:
            client, (train, val) = clients[u], splits[u]
            order = [train[i] for i in gens[u].permutation(len(train))]
            for start in range(0, len(order), s2.batch_size):
                await client.learn_batch(order[start : start + s2.batch_size])
            loss = await client.mean_loss(val) if val else -math.inf
            if loss < best[u][0] or not val:
                best[u] = (loss, client.state.distribution)

        with progress.stage("phones learn through OHTTP (stage 2)", cfg.stage2_epochs) as bar:
            for _ in range(cfg.stage2_epochs):
                await asyncio.gather(*map(epoch, users))
                bar.advance()
        dists = {u: best[u][1] for u in users}
        owners: dict[int, str] = {}
        slots = asyncio.Semaphore(cfg.max_in_flight)

        async def one(u: str, i: int) -> None:
            async with slots:
                answer = await clients[u].upload(task, pool[int(i)].text, pool[int(i)].label)
            owners[int(answer["id"])] = u

        with progress.stage("phones upload through OHTTP", len(users)) as bar:
            for u in users:
                clients[u].initialise(dists[u], overwrite=True)  # upload with the kept parameters
                await asyncio.gather(
                    *[one(u, i) for i in run.train[u] for _ in range(cfg.uploads_per_example)]
                )
                bar.advance()
    return dists, owners, counted.requests


def _stored_linkage(
    sessions: Any, owners: dict[int, str], users: list[str], rng: np.random.Generator
) -> float:
    """The clustering attack on the embeddings the cloud actually stored."""
    index = {u: k for k, u in enumerate(users)}
    with sessions() as s:
        rows = [(u.id, u.embedding) for u in iter_uploads(s) if u.embedding is not None]
    x = np.stack([e for _, e in rows]).astype(np.float64)
    truth = np.array([index[owners[i]] for i, _ in rows])
    return linkage_attack(x, truth, rng).accuracy


class _CountingTransport:
    """Counts the requests that go out through the relay (the wrapped transport sends them)."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.requests = 0

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        self.requests += 1
        return await self.transport.request(method, path, **kwargs)


async def _codebook_phones(
    relay_url: str,
    run: ExperimentRun,
    cfg: ServiceDemoConfig,
    stores: dict[str, Any],
    examples: dict[str, list[tuple[str, str, str]]],
    codebooks: Any,
    upload: bool,
    progress: Progress,
    gateway_public_key: bytes,
) -> dict[str, Any]:
    """Phones choose (again, after each retirement, a new version or a new model), then upload when asked.

    Returns the requests sent, the uploads (id -> phone, simulator only), the version mismatches the
    phones' checks caught, the phones whose choice was for another model, and the versions published
    by retirements.
    """
    users = run.users
    noise_std = run.cfg.codebook.noise_std
    seeds = np.random.SeedSequence(run.cfg.seed + 7).spawn(len(users))
    out: dict[str, Any] = {"owners": {}, "mismatches": 0, "model_changes": 0, "published": []}
    async with AsyncOHTTPClient(
        relay_url + "/ohttp",
        key_config_url=relay_url + "/.well-known/ohttp-gateway",
        timeout=120,
        retries=0,  # the VeilClients below are the one layer that retries
        gateway_public_key=gateway_public_key,
    ) as transport:
        counted = _CountingTransport(transport)
        model = (await PhoneAPI(counted, "").models())[0]["id"]  # each round serves a new checkpoint
        per_phone = max(1, cfg.max_in_flight // len(users))
        clients = {
            u: VeilClient(
                counted,
                stores[u],
                model=model,
                family="prototype",
                rng=itertools.repeat(np.random.default_rng(sq)).__next__,  # a seeded stream per phone
                retry=RetryPolicy(retries=3, backoff_s=0.05),
                max_in_flight=per_phone,
            )  # fmt: skip
            for u, sq in zip(users, seeds, strict=True)
        }

        async def stale(u: str) -> bool:
            if not stores[u].exists():
                return True
            try:
                await clients[u].check_codebook()
            except CodebookMismatchError:
                out["mismatches"] += 1
                return True
            except ModelMismatchError:  # chosen under the previous round's model
                out["model_changes"] += 1
                return True
            return False

        with progress.stage("phones choose prototypes through OHTTP (loss requests)", None):
            while True:
                again = [u for u, s in zip(users, await asyncio.gather(*map(stale, users)), strict=True) if s]
                await asyncio.gather(
                    *[clients[u].choose_prototype(examples[u], noise_std=noise_std) for u in again]
                )
                book = codebooks.current()
                # the aggregate of the choices: all the cloud learns (secure aggregation in deployment)
                chosen = [clients[u].state.distribution.index for u in users]
                new = retire_by_counts(book, np.bincount(chosen, minlength=book.size))
                if new.version == book.version:
                    break
                out["published"].append(codebooks.publish(new).version)
        if upload:
            slots = asyncio.Semaphore(cfg.max_in_flight)
            pool = run.population.train + run.population.test

            async def one(u: str, i: int) -> None:
                ex = pool[int(i)]
                async with slots:
                    answer = await clients[u].upload(run.population.task, ex.text, ex.label)
                out["owners"][int(answer["id"])] = u

            with progress.stage("phones upload their prototype through OHTTP", len(users)) as bar:
                for u in users:
                    await asyncio.gather(*[one(u, i) for i in run.train[u]])
                    bar.advance()
    out["requests"] = counted.requests
    return out


@contextlib.contextmanager
def service_stack(
    data_dir: Path, model: Path, max_batch: int = 64, hold_window_ms: float = 0.0
) -> Iterator[tuple[Any, bytes]]:
    """The API with its gateway on loopback behind a ``veil relay`` process; yields the relay and the
    gateway's public signing key (what the app would ship). The gateway answers only this relay."""
    relay_secret = secrets.token_urlsafe(32)
    config = ServiceConfig(
        data_dir=data_dir,
        model=str(model),
        engine=EngineConfig(max_batch, batch_window_s=0.01),
        relay_secret=relay_secret.encode(),
    )
    public_key = KeyConfigSigner.from_config(config).public_key
    with (
        BackgroundServer(create_app(config)) as api,
        RelayProcess(api.url, hold_window_ms, relay_secret=relay_secret) as relay,
    ):
        yield relay, public_key


def _service(cfg: ServiceDemoConfig, data_dir: Path, model: Path) -> contextlib.AbstractContextManager[Any]:
    return service_stack(data_dir, model, cfg.max_batch, cfg.hold_window_ms)


def _codebook_demo(
    cfg: ServiceDemoConfig, run: ExperimentRun, service_dir: Path, stage1: Path, progress: Progress
) -> tuple[list[MethodResult], dict[str, Any]]:
    """Rounds of choice, upload and stage 3 through the service, then the final choice and the scores."""
    exp, book_cfg = run.cfg, run.cfg.codebook
    users, types = run.users, len(np.unique(run.types))
    k_min = book_cfg.resolved_k_min(len(users), types)
    book = init_codebook(book_cfg.size, k_min, run.shape, book_cfg.seed, book_cfg.init_scale)
    versions = [book.version]
    stores = {u: MemoryParamStore(u) for u in users}
    pick = np.random.default_rng(book_cfg.seed + 1)
    pool = run.population.train + run.population.test
    examples = {}
    for u in users:
        idx = np.asarray(run.train[u], dtype=np.int64)
        n = idx.size if book_cfg.choice_examples is None else min(idx.size, book_cfg.choice_examples)
        examples[u] = [
            (run.population.task, pool[i].text, pool[i].label) for i in pick.choice(idx, n, replace=False)
        ]
    show = not isinstance(progress, NullProgress)
    base, requests, uploads_stored, mismatches, model_changes, retirements = stage1, 0, 0, 0, 0, 0
    training: dict[str, Any] = {}
    linkage, started, phones_s = math.nan, time.perf_counter(), 0.0
    for r in range(cfg.codebook_rounds + 1):
        final = r == cfg.codebook_rounds
        round_dir = service_dir / f"round-{r}"
        codebooks = CodebookStore(round_dir)
        codebooks.publish(book)
        with _service(cfg, round_dir, base) as (relay, public_key):
            phones_started = time.perf_counter()
            out = asyncio.run(
                _codebook_phones(
                    relay.url, run, cfg, stores, examples, codebooks, not final, progress, public_key
                )
            )
        phones_s += time.perf_counter() - phones_started
        requests += out["requests"]
        mismatches += out["mismatches"]
        model_changes += out["model_changes"]
        retirements += len(out["published"])
        versions += out["published"]
        book = codebooks.current()
        if final:
            break
        sessions = session_factory(make_engine(None, round_dir))
        with sessions() as s:
            uploads_stored += count_uploads(s)
        linkage = _stored_linkage(sessions, out["owners"], users, run.rng)
        job = PersonalizedTrainingConfig(
            task=run.population.task,
            epochs=max(1, math.ceil(cfg.stage3_epochs / cfg.codebook_rounds)),
            batch_size=exp.stage3.batch_size,
            lr=exp.stage3.lr,
            lora=None,
            cold_start_fraction=exp.stage3.cold_start_fraction,
            max_tokens=exp.max_tokens,
            seed=exp.seed + r,
            eval_fraction=0.0,
            codebook=True,
        )
        target = round_dir / f"veil-demo-round{r + 1}"  # the folder's name is the served model id
        report = run_training_job(sessions, str(base), target, job, round_dir, show_progress=show)
        training[f"stage3-round{r + 1}"] = report.to_json()
        base, book = report.checkpoint, codebooks.current()
        versions.append(book.version)
    dists = {u: stores[u].load("prototype").distribution for u in users}
    model, _, _ = load_personalized(base)
    model.to(run.model.device)
    acc = float(evaluate(model, run.data, run.test_idx, run.source(dists)).mean())
    cold = float(evaluate(model, run.data, run.test_idx).mean())
    bayes = bayes_attribution([dists[u] for u in users], exp.attribution_uploads, run.rng)
    floor = types / len(users)
    method = MethodResult(
        "codebook-service", "prototype", None, acc, bayes.accuracy, (bayes.ci_low, bayes.ci_high), linkage,
        1.0 / len(users), True, cold, time.perf_counter() - started, attribution_floor=floor,
    )  # fmt: skip
    groups = np.bincount([d.index for d in dists.values()], minlength=book.size)  # type: ignore[attr-defined]
    service = {
        "mechanism": "codebook",
        "requests_through_relay": requests,
        "uploads_stored": uploads_stored,
        "phones_seconds": round(phones_s, 1),
        "requests_per_second": round(requests / phones_s, 1),
        "relay_hold_window_ms": cfg.hold_window_ms,
        "codebook": {
            "size": book.size,
            "k_min": k_min,
            "usable": int(book.active.sum()),
            "smallest_group": int(groups[groups > 0].min()),
            "versions": versions,  # every version published, in order
            "retirement_rounds": retirements,
            "version_mismatches_caught": mismatches,
            "model_changes_caught": model_changes,
            "attribution_floor": floor,
        },
        "training": training,
    }
    return [method], service


def _result(
    cfg: ServiceDemoConfig, run: ExperimentRun, methods: list[MethodResult], t0: float
) -> ExperimentResult:
    return ExperimentResult(
        task=run.population.task,
        model=run.cfg.model,
        users=len(run.users),
        test_examples=int(run.test_idx.size),
        methods=methods,
        frontier=[],
        seconds=time.perf_counter() - t0,
        config=_jsonable({**dataclasses.asdict(cfg), "family": cfg.family}),
    )


def run_service_demo(
    cfg: ServiceDemoConfig, work_dir: Path, progress: Progress | None = None
) -> ServiceDemoResult:
    """Run the demo in ``work_dir`` (its ``service/`` folder is recreated); see the module docstring."""
    progress = progress or NullProgress()
    t0 = time.perf_counter()
    exp = cfg.experiment
    run = ExperimentRun(exp, progress)
    work_dir = Path(work_dir)
    service_dir = work_dir / "service"
    shutil.rmtree(service_dir, ignore_errors=True)
    service_dir.mkdir(parents=True)

    started = time.perf_counter()
    run.stage1()
    methods = [run.score("none", None, None, None, None, started)]
    stage1 = save_personalized(
        run.model, load_tokenizer(exp.model), service_dir / "stage1", {"name": "veil-demo"}, overwrite=True
    )
    if cfg.mechanism == "codebook":
        more, service = _codebook_demo(cfg, run, service_dir, stage1, progress)
        return ServiceDemoResult(_result(cfg, run, methods + more, t0), service)

    started = time.perf_counter()
    with _service(cfg, service_dir, stage1) as (relay, public_key):
        dists, owners, requests = asyncio.run(
            _phone_session(relay.url, "veil-demo", run, cfg, progress, public_key)
        )
    phones_s = time.perf_counter() - started

    sessions = session_factory(make_engine(None, service_dir))
    with sessions() as s:
        stored = count_uploads(s)
    spread = cfg.spread if cfg.spread is not None else exp.default_spread[cfg.family]
    ordered = [dists[u] for u in run.users]
    bayes = bayes_attribution(ordered, exp.attribution_uploads, run.rng)
    linkage = _stored_linkage(sessions, owners, run.users, run.rng)
    show = not isinstance(progress, NullProgress)
    runs = [("", None)] + ([("-dp", cfg.dp_noise_multiplier)] if cfg.dp_noise_multiplier else [])
    training: dict[str, Any] = {}
    for suffix, noise in runs:
        started = time.perf_counter()
        private = noise is not None
        job = PersonalizedTrainingConfig(
            task=run.population.task,
            # DP-SGD: larger batches (less noise per step), more epochs, and the embedding matrix
            # frozen (its per-example gradients would cost minutes); choices measured on this demo
            epochs=max(cfg.stage3_epochs, 10) if private else cfg.stage3_epochs,
            batch_size=128 if private else exp.stage3.batch_size,
            lr=1e-2 if private else exp.stage3.lr,
            lora=None,
            freeze_embeddings=private,
            cold_start_fraction=exp.stage3.cold_start_fraction,
            max_tokens=exp.max_tokens,
            dp=None if noise is None else DPConfig(noise_multiplier=noise),
            seed=exp.seed,
            eval_fraction=0.0,
        )
        report = run_training_job(
            sessions, str(stage1), service_dir / f"stage3{suffix}", job, service_dir, show_progress=show
        )
        model, _, _ = load_personalized(report.checkpoint)
        model.to(run.model.device)
        acc = float(evaluate(model, run.data, run.test_idx, run.source(dists)).mean())
        cold = float(evaluate(model, run.data, run.test_idx).mean())
        methods.append(
            MethodResult(
                f"idfree-{cfg.family}-service{suffix}",
                cfg.family,
                spread,
                acc,
                bayes.accuracy,
                (bayes.ci_low, bayes.ci_high),
                linkage,
                1.0 / len(run.users),
                True,
                cold,
                time.perf_counter() - started + phones_s,
                attribution_floor=len(np.unique(run.types)) / len(run.users),
            )
        )
        training[f"stage3{suffix}"] = report.to_json()
    result = _result(cfg, run, methods, t0)
    service = {
        "mechanism": cfg.mechanism,
        "requests_through_relay": requests,
        "uploads_stored": stored,
        "phones_seconds": round(phones_s, 1),
        "requests_per_second": round(requests / phones_s, 1),
        "relay_hold_window_ms": cfg.hold_window_ms,
        "phone_policy_max_gdp_mu": cfg.max_gdp_mu,
        "training": training,
    }
    return ServiceDemoResult(result, service)
