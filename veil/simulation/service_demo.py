"""``veil demo``: IDfree-PL end to end through the real service.

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
import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from veil.client_sdk.distributions import UserDistribution
from veil.client_sdk.learning import OnDeviceLearner
from veil.simulation.experiments.personalization import (
    ExperimentConfig,
    ExperimentResult,
    MethodResult,
    _jsonable,
    _Run,
)
from veil.simulation.progress import NullProgress, Progress

__all__ = ["ServiceDemoConfig", "ServiceDemoResult", "run_service_demo"]


@dataclass
class ServiceDemoConfig:
    """What ``veil demo`` runs.

    Attributes
    ----------
    experiment: population, model, stage-1/2/3 settings (default: the quick preset).
    family: distribution family the phones learn.
    spread: its spread (``None``: the experiment's default for the family).
    stage2_epochs: passes of each phone over its examples in gradient-return learning.
    stage3_epochs: passes of the cloud over the stored uploads.
    uploads_per_example: each example is uploaded this many times, each with a fresh sample (the
        paper's stage 3 draws a fresh sample per step; stored uploads freeze one each).
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
    family: str = "gaussian"
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
        if self.family not in self.experiment.families:
            raise ValueError(f"family must be one of {self.experiment.families}, got {self.family!r}")
        if min(self.stage2_epochs, self.stage3_epochs, self.uploads_per_example, self.max_batch) < 1:
            raise ValueError("stage2_epochs, stage3_epochs, uploads_per_example and max_batch must be >= 1")
        if self.dp_noise_multiplier is not None and self.dp_noise_multiplier <= 0:
            raise ValueError(f"dp_noise_multiplier must be > 0 or None, got {self.dp_noise_multiplier}")
        if self.max_gdp_mu is not None and (self.family != "gaussian" or not self.max_gdp_mu > 0):
            raise ValueError(f"max_gdp_mu needs the gaussian family and a value > 0, got {self.max_gdp_mu}")

    @classmethod
    def quick(cls, task: str = "next_word", seed: int = 0) -> ServiceDemoConfig:
        return cls(experiment=ExperimentConfig.quick(task, seed))


@dataclass
class ServiceDemoResult:
    """The comparison (as an :class:`ExperimentResult`) and what went over the wire."""

    result: ExperimentResult
    service: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {**self.result.to_json(), "service": self.service}


class _Phones:
    """The simulated phones: each holds its examples and its distribution, and talks through OHTTP."""

    def __init__(self, run: _Run, cfg: ServiceDemoConfig, api: Any, rng: np.random.Generator) -> None:
        self.run, self.cfg, self.api, self.rng = run, cfg, api, rng
        pop = run.population
        self.examples = pop.train + pop.test
        self.task = pop.task
        self.requests = 0
        self._slots = asyncio.Semaphore(cfg.max_in_flight)

    async def _gradient(self, i: int, e: np.ndarray) -> tuple[float, np.ndarray]:
        ex = self.examples[int(i)]
        async with self._slots:
            self.requests += 1
            return await self.api.embedding_gradient(self.task, ex.text, ex.label, e)

    async def _learn_one(
        self, learner: OnDeviceLearner, train: np.ndarray, val: np.ndarray, batch: int, best: list[Any]
    ) -> None:
        order = self.rng.permutation(train)
        for start in range(0, order.size, batch):
            chunk = order[start : start + batch]
            samples = learner.distribution.sample(self.rng, size=chunk.size)
            answers = await asyncio.gather(
                *[self._gradient(i, e) for i, e in zip(chunk, samples, strict=True)]
            )
            learner.step(samples, np.stack([g for _, g in answers]) / chunk.size)
        if val.size == 0:
            best[1] = learner.distribution
            return
        samples = learner.distribution.sample(self.rng, size=val.size)
        losses = await asyncio.gather(*[self._gradient(i, e) for i, e in zip(val, samples, strict=True)])
        loss = float(np.mean([v for v, _ in losses]))
        if loss < best[0]:
            best[0], best[1] = loss, learner.distribution

    async def learn(
        self, init: dict[str, UserDistribution], trainable: tuple[str, ...], progress: Progress
    ) -> dict[str, UserDistribution]:
        from veil.client_sdk.policy_guard import PolicyGuard

        s2 = self.run.cfg.stage2
        mu = self.cfg.max_gdp_mu
        learners = {
            u: OnDeviceLearner(
                init[u],
                lr=s2.lr,
                trainable=trainable,
                guard=None if mu is None else PolicyGuard(init[u], max_gdp_mu=mu),
            )
            for u in self.run.users
        }
        splits = {}
        for u in self.run.users:
            idx = self.rng.permutation(np.asarray(self.run.train[u], dtype=np.int64))
            n_val = int(round(s2.val_fraction * idx.size)) if idx.size > 1 else 0
            splits[u] = (idx[n_val:], idx[:n_val])
        best = {u: [np.inf, init[u]] for u in self.run.users}
        with progress.stage("phones learn through OHTTP (stage 2)", self.cfg.stage2_epochs) as bar:
            for _ in range(self.cfg.stage2_epochs):
                await asyncio.gather(
                    *[
                        self._learn_one(learners[u], *splits[u], s2.batch_size, best[u])
                        for u in self.run.users
                    ]
                )
                bar.advance()
        return {u: best[u][1] for u in self.run.users}

    async def upload(self, dists: dict[str, UserDistribution], progress: Progress) -> dict[int, str]:
        """Every training example, ``uploads_per_example`` times; returns upload id -> phone (simulator only)."""
        owners: dict[int, str] = {}

        async def one(u: str, i: int) -> None:
            ex = self.examples[int(i)]
            e = dists[u].sample(self.rng)
            async with self._slots:
                self.requests += 1
                answer = await self.api.upload(self.task, ex.text, ex.label, e)
            owners[int(answer["id"])] = u

        with progress.stage("phones upload through OHTTP", len(self.run.users)) as bar:
            for u in self.run.users:
                jobs = [one(u, i) for i in self.run.train[u] for _ in range(self.cfg.uploads_per_example)]
                await asyncio.gather(*jobs)
                bar.advance()
        return owners


async def _phone_session(
    relay_url: str, model: str, run: _Run, cfg: ServiceDemoConfig, progress: Progress
) -> tuple[dict[str, UserDistribution], dict[int, str], int]:
    from veil.client_sdk.api import PhoneAPI
    from veil.client_sdk.ohttp import AsyncOHTTPClient

    spread = cfg.spread if cfg.spread is not None else run.cfg.default_spread[cfg.family]
    async with AsyncOHTTPClient(
        relay_url + "/ohttp", key_config_url=relay_url + "/.well-known/ohttp-gateway", timeout=120
    ) as transport:
        phones = _Phones(run, cfg, PhoneAPI(transport, model), np.random.default_rng(run.cfg.seed + 7))
        init = run.init_distributions(cfg.family, spread)
        dists = await phones.learn(init, run.trainable(cfg.family), progress)
        owners = await phones.upload(dists, progress)
    return dists, owners, phones.requests


def _stored_linkage(
    sessions: Any, owners: dict[int, str], users: list[str], rng: np.random.Generator
) -> float:
    """The clustering attack on the embeddings the cloud actually stored."""
    from veil.cloud_service.store import iter_uploads
    from veil.privacy_analysis.linkage import linkage_attack

    index = {u: k for k, u in enumerate(users)}
    with sessions() as s:
        rows = [(u.id, u.embedding) for u in iter_uploads(s) if u.embedding is not None]
    x = np.stack([e for _, e in rows]).astype(np.float64)
    truth = np.array([index[owners[i]] for i, _ in rows])
    return linkage_attack(x, truth, rng).accuracy


def run_service_demo(
    cfg: ServiceDemoConfig, work_dir: Path, progress: Progress | None = None
) -> ServiceDemoResult:
    """Run the demo in ``work_dir`` (its ``service/`` folder is recreated); see the module docstring."""
    from veil.cloud_service.app import create_app
    from veil.cloud_service.background import BackgroundServer, RelayProcess
    from veil.cloud_service.config import ServiceConfig
    from veil.cloud_service.engine import EngineConfig
    from veil.cloud_service.jobs.personalized import PersonalizedTrainingConfig
    from veil.cloud_service.jobs.runner import run_training_job
    from veil.cloud_service.store import count_uploads, make_engine, session_factory
    from veil.models.checkpoint import load_personalized, save_personalized
    from veil.models.dp_training import DPConfig
    from veil.models.loading import load_tokenizer
    from veil.models.training import evaluate
    from veil.privacy_analysis.attribution import bayes_attribution

    progress = progress or NullProgress()
    t0 = time.perf_counter()
    exp = cfg.experiment
    run = _Run(exp, progress)
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

    started = time.perf_counter()
    config = ServiceConfig(
        data_dir=service_dir, model=str(stage1), engine=EngineConfig(cfg.max_batch, batch_window_s=0.01)
    )
    with BackgroundServer(create_app(config)) as api, RelayProcess(api.url, cfg.hold_window_ms) as relay:
        dists, owners, requests = asyncio.run(_phone_session(relay.url, "veil-demo", run, cfg, progress))
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
            )
        )
        training[f"stage3{suffix}"] = report.to_json()
    result = ExperimentResult(
        task=run.population.task,
        model=exp.model,
        users=len(run.users),
        test_examples=int(run.test_idx.size),
        methods=methods,
        frontier=[],
        seconds=time.perf_counter() - t0,
        config=_jsonable(dataclasses.asdict(cfg)),
    )
    service = {
        "requests_through_relay": requests,
        "uploads_stored": stored,
        "phones_seconds": round(phones_s, 1),
        "requests_per_second": round(requests / phones_s, 1),
        "relay_hold_window_ms": cfg.hold_window_ms,
        "phone_policy_max_gdp_mu": cfg.max_gdp_mu,
        "training": training,
    }
    return ServiceDemoResult(result, service)
