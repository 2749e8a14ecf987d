"""``veil experiment personalization``: the IDfree-PL comparison (arXiv:2501.06062) on a synthetic
population built on real English text.

Methods (one row each): no personalisation (the stage-1 model); a static per-user embedding (an
identifier in disguise: a point mass, learned on the device like the others); IDfree-PL with each
distribution family (stage 2 on the device, stage 3 in the cloud); IDfree-PL with gradient-return
on-device learning; on-device full fine-tuning. For every method: accuracy on each user's held-out
examples, and on the embeddings it uploads, the Bayes-optimal attribution accuracy (the ceiling) and a
clustering linkage attack, next to chance. Then every family's spread is swept: the privacy-utility
frontier.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from veil.client_sdk.distributions import (
    BasisMixtureDistribution,
    BetaDistribution,
    GaussianDistribution,
    UserDistribution,
)
from veil.models.personalization import PersonalizationConfig, PersonalizedLM
from veil.models.tasks import TokenizedTask, tokenize_task
from veil.models.training import TrainConfig, evaluate, fit
from veil.privacy_analysis.attribution import bayes_attribution
from veil.privacy_analysis.linkage import linkage_attack
from veil.simulation.data import Population, PopulationConfig, make_population
from veil.simulation.devices import DeviceLearningConfig, learn_distributions, on_device_finetune
from veil.simulation.progress import NullProgress, Progress

__all__ = ["ExperimentConfig", "MethodResult", "ExperimentResult", "run_personalization_experiment"]

SPREAD_NAMES = {"beta": "concentration", "gaussian": "std", "basis_mixture": "component std"}


@dataclass
class ExperimentConfig:
    """Everything that defines one run; ``quick()`` and ``full()`` are the two presets.

    Attributes
    ----------
    model: registered model name or local directory (``veil.models.loading``).
    population: the synthetic population (users, examples per user, task).
    max_tokens: texts are cut to their last ``max_tokens`` tokens.
    stage1, stage3: cloud training (stage 3 starts from the stage-1 weights for every method).
    stage2: on-device learning of each user's distribution.
    ondevice: the on-device fine-tuning baseline.
    families: distribution families to run.
    spreads: per family, the spread values swept for the frontier (Beta: concentration alpha+beta,
        smaller is wider; Gaussian: std; basis mixture: std of each public basis component).
    default_spread: per family, the operating point shown in the main table.
    gaussian_init_mean: initial mean of every Gaussian (paper: 0.1).
    beta_init_mean: initial Beta mean (paper: alpha=2, beta=5, i.e. 2/7).
    init_jitter: std of a per-device random offset of the initial location (Gaussian mean, Beta
        logit-mean, mixture logits); the paper starts every device at the same point (0).
    basis_size, basis_scale: number of public basis components and the std of their random means.
    static_std: the static embedding is a Gaussian with this (tiny, fixed) std: a point mass.
    gradient_return_family: family also run with gradient-return stage 2 (``None`` to skip).
    attribution_uploads: fresh uploads per user for the attribution estimates.
    rounds: stage 2 and stage 3 alternate this many times (the paper's ``--init_path`` restarts stage 2
        from the previous parameters; alternation itself is our reading of it).
    device: torch device for the model (``"auto"``: CUDA when available, else CPU).
    seed: everything random in the run.
    """

    model: str = "smollm2-135m-instruct"
    population: PopulationConfig = field(default_factory=PopulationConfig)
    max_tokens: int = 48
    stage1: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2, lr=5e-5, batch_size=16))
    stage2: DeviceLearningConfig = field(default_factory=DeviceLearningConfig)
    stage3: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, lr=5e-5, batch_size=16))
    ondevice: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, lr=5e-5, batch_size=8))
    families: tuple[str, ...] = ("beta", "gaussian", "basis_mixture")
    spreads: dict[str, tuple[float, ...]] = field(
        default_factory=lambda: {
            "beta": (200.0, 20.0, 5.0),
            "gaussian": (0.1, 0.5, 2.0),
            "basis_mixture": (0.1, 0.5, 2.0),
        }
    )
    default_spread: dict[str, float] = field(
        default_factory=lambda: {"beta": 20.0, "gaussian": 0.5, "basis_mixture": 0.5}
    )
    gaussian_init_mean: float = 0.1
    init_jitter: float = 0.0
    beta_init_mean: float = 2.0 / 7.0
    basis_size: int = 8
    basis_scale: float = 1.0
    static_std: float = 1e-4
    gradient_return_family: str | None = "gaussian"
    attribution_uploads: int = 50
    rounds: int = 1
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [f for f in self.families if f not in SPREAD_NAMES]
        if unknown:
            raise ValueError(f"unknown families {unknown}; choose from {sorted(SPREAD_NAMES)}")
        for fam in self.families:
            if fam not in self.spreads or fam not in self.default_spread:
                raise ValueError(f"family {fam!r} needs spreads and a default_spread")
            if self.default_spread[fam] not in self.spreads[fam]:
                raise ValueError(f"default_spread[{fam!r}] must be one of spreads[{fam!r}]")
        if self.gradient_return_family not in (None, *self.families):
            raise ValueError(f"gradient_return_family must be one of {self.families} or None")

    @classmethod
    def quick(cls, task: str = "next_word", seed: int = 0) -> ExperimentConfig:
        """Tiny random-init model, small population: the whole pipeline in minutes on 2 CPU cores.

        Stage 1 is kept short (2 epochs): trained longer on the population embedding alone, the tiny
        model locks into ignoring the soft-token position and stage 3 cannot undo it (measured: with 6
        stage-1 epochs a static embedding reached 0.33 accuracy instead of 0.81).
        """
        return cls(
            model="tiny-llama",
            population=PopulationConfig(
                task=task, n_users=24, train_per_user=40, test_per_user=16, seed=seed
            ),
            max_tokens=32,
            stage1=TrainConfig(epochs=2, lr=3e-3, batch_size=32, seed=seed),
            stage2=DeviceLearningConfig(epochs=12, batch_size=12, lr=0.5, seed=seed),
            stage3=TrainConfig(epochs=6, lr=3e-3, batch_size=32, seed=seed),
            ondevice=TrainConfig(epochs=4, lr=2e-3, batch_size=8, seed=seed),
            spreads={"beta": (20.0, 3.0), "gaussian": (1.0, 8.0), "basis_mixture": (0.25, 1.0)},
            default_spread={"beta": 20.0, "gaussian": 1.0, "basis_mixture": 0.25},
            seed=seed,
        )

    @classmethod
    def full(cls, task: str = "next_word", seed: int = 0) -> ExperimentConfig:
        """SmolLM2-135M-Instruct on the default population (paper settings where they fit: 20 local
        epochs, the Gaussian's fixed scale 0.2, Beta starting at alpha=2, beta=5)."""
        return cls(
            population=PopulationConfig(task=task, seed=seed),
            stage1=TrainConfig(epochs=2, lr=5e-5, batch_size=16, seed=seed),
            stage2=DeviceLearningConfig(epochs=20, batch_size=16, lr=0.5, seed=seed),
            stage3=TrainConfig(epochs=3, lr=1e-4, batch_size=16, seed=seed),
            ondevice=TrainConfig(epochs=3, lr=1e-4, batch_size=8, seed=seed),
            spreads={"beta": (7.0, 2.0), "gaussian": (0.2, 1.0, 4.0), "basis_mixture": (0.25, 1.0)},
            default_spread={"beta": 7.0, "gaussian": 0.2, "basis_mixture": 0.25},
            seed=seed,
        )


@dataclass
class MethodResult:
    """One row of the comparison or one point of the frontier."""

    method: str
    family: str | None
    spread: float | None
    accuracy: float
    attribution_accuracy: float
    attribution_ci: tuple[float, float]
    linkage_accuracy: float
    chance: float
    uploads_embedding: bool
    cold_start_accuracy: float | None = None
    seconds: float = 0.0


@dataclass
class ExperimentResult:
    """The table, the frontier and what produced them."""

    task: str
    model: str
    users: int
    test_examples: int
    methods: list[MethodResult]
    frontier: list[MethodResult]
    seconds: float
    config: dict[str, Any]

    def method(self, name: str) -> MethodResult:
        for m in self.methods:
            if m.method == name:
                return m
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        none_acc = self.method("none").accuracy
        return {
            "task": self.task,
            "model": self.model,
            "users": self.users,
            "test_examples": self.test_examples,
            "seconds": round(self.seconds, 1),
            "methods": {m.method: asdict(m) for m in self.methods},
            "frontier": [{**asdict(m), "gain_over_none": m.accuracy - none_acc} for m in self.frontier],
            "config": self.config,
        }


class _Run:
    """State shared by the methods of one experiment run."""

    def __init__(self, cfg: ExperimentConfig, progress: Progress) -> None:
        from veil.models.loading import load_model

        self.cfg = cfg
        self.progress = progress
        self.rng = np.random.default_rng(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.population: Population = make_population(cfg.population)
        loaded = load_model(cfg.model)
        task = self.population.task
        examples = self.population.train + self.population.test
        self.data: TokenizedTask = tokenize_task(
            loaded.tokenizer,
            task,
            [e.text for e in examples],
            [e.label for e in examples],
            self.population.labels,
            max_tokens=cfg.max_tokens,
        )
        n_train = len(self.population.train)
        self.users = self.population.users
        self.train = {u: [] for u in self.users}
        self.test = {u: [] for u in self.users}
        for i, ex in enumerate(examples):
            (self.train if i < n_train else self.test)[ex.user].append(i)
        self.train_idx = np.arange(n_train)
        self.test_idx = np.concatenate([np.asarray(self.test[u], dtype=np.int64) for u in self.users])
        self.owner = np.empty(len(examples), dtype=object)
        for i, ex in enumerate(examples):
            self.owner[i] = ex.user
        placement = "suffix" if task == "classification" else "prefix"
        num_labels = len(self.population.labels) if task == "classification" else None
        device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
        self.model = PersonalizedLM(loaded.model, PersonalizationConfig(1, placement, num_labels)).to(device)
        self.shape = self.model.embedding_shape
        self.stage1_state: dict[str, torch.Tensor] | None = None
        self.basis_means = np.random.default_rng(cfg.seed + 17).normal(
            0.0, cfg.basis_scale, size=(cfg.basis_size, *self.shape)
        )

    # -- distributions --------------------------------------------------------------------------
    def init_distributions(self, family: str, spread: float) -> dict[str, UserDistribution]:
        """Every device's starting distribution: the population prior, plus a per-device random offset
        of its location (std ``init_jitter``) so that devices do not all start from one point."""
        n, d = self.shape
        rng = np.random.default_rng(self.cfg.seed + 101)
        out: dict[str, UserDistribution] = {}
        for u in self.users:
            if family == "basis_mixture":
                jitter = rng.normal(0.0, self.cfg.init_jitter, size=self.cfg.basis_size)
                basis = [GaussianDistribution(m, np.full((n, d), spread)) for m in self.basis_means]
                out[u] = BasisMixtureDistribution(basis, np.exp(jitter) / np.exp(jitter).sum())
                continue
            jitter = rng.normal(0.0, self.cfg.init_jitter, size=(n, d))
            if family == "gaussian":
                out[u] = GaussianDistribution(self.cfg.gaussian_init_mean + jitter, np.full((n, d), spread))
            elif family == "beta":
                m0 = self.cfg.beta_init_mean
                mean = 1.0 / (1.0 + np.exp(-(np.log(m0 / (1 - m0)) + jitter)))
                out[u] = BetaDistribution.from_mean_concentration(mean, np.full((n, d), spread))
            else:
                raise ValueError(f"unknown family {family!r}")
        return out

    def trainable(self, family: str) -> tuple[str, ...]:
        # The spread is the swept, policy-set quantity: devices learn location/weights only.
        return {"gaussian": ("mean",), "beta": ("logit_mean",), "basis_mixture": ("logits",)}[family]

    def source(self, dists: dict[str, UserDistribution]) -> Callable[[np.ndarray], np.ndarray]:
        """Fresh samples, each drawn on the device that owns the example."""

        def draw(idx: np.ndarray) -> np.ndarray:
            out = np.empty((idx.size, *self.shape))
            for r, i in enumerate(idx):
                out[r] = dists[self.owner[i]].sample(self.rng)
            return out

        return draw

    # -- stages -----------------------------------------------------------------------------------
    def stage1(self) -> None:
        cfg = self.cfg.stage1
        steps = cfg.epochs * -(-self.train_idx.size // cfg.batch_size)
        with self.progress.stage("stage 1: central training", steps) as bar:
            fit(self.model, self.data, self.train_idx, cfg, on_step=lambda _: bar.advance())
        self.stage1_state = copy.deepcopy(self.model.state_dict())

    def reset(self) -> None:
        if self.stage1_state is None:
            raise RuntimeError("stage 1 must run before any personalised method")
        self.model.load_state_dict(self.stage1_state)

    def personalised(
        self, label: str, family: str, spread: float, mode: str = "local"
    ) -> tuple[dict[str, UserDistribution], float]:
        """Stages 2 and 3 from the stage-1 weights, alternated ``rounds`` times.

        Returns the learned distributions and the cold-start accuracy of the final model.
        """
        self.reset()
        dists = self.init_distributions(family, spread)
        s2 = dataclasses.replace(self.cfg.stage2, mode=mode, trainable=self.trainable(family))
        s3 = self.cfg.stage3
        steps = s3.epochs * -(-self.train_idx.size // s3.batch_size)
        for r in range(self.cfg.rounds):
            tag = f"{label} [round {r + 1}/{self.cfg.rounds}]" if self.cfg.rounds > 1 else label
            s2 = dataclasses.replace(s2, seed=s2.seed + r)
            with self.progress.stage(f"{tag}: on-device (stage 2)", s2.epochs) as bar:
                dists = learn_distributions(
                    self.model, self.data, self.train, dists, s2, on_epoch=lambda _: bar.advance()
                )
            with self.progress.stage(f"{tag}: cloud fine-tune (stage 3)", steps) as bar:
                fit(
                    self.model,
                    self.data,
                    self.train_idx,
                    dataclasses.replace(s3, seed=s3.seed + r),
                    self.source(dists),
                    on_step=lambda _: bar.advance(),
                )
        cold = float(evaluate(self.model, self.data, self.test_idx).mean())
        return dists, cold

    def score(
        self,
        method: str,
        family: str | None,
        spread: float | None,
        dists: dict[str, UserDistribution] | None,
        cold: float | None,
        started: float,
    ) -> MethodResult:
        chance = 1.0 / len(self.users)
        if dists is None:  # nothing uploaded but text: the embedding carries no information
            acc = float(evaluate(self.model, self.data, self.test_idx).mean())
            return MethodResult(
                method,
                family,
                spread,
                acc,
                chance,
                (chance, chance),
                chance,
                chance,
                False,
                cold,
                time.perf_counter() - started,
            )
        acc = float(evaluate(self.model, self.data, self.test_idx, self.source(dists)).mean())
        ordered = [dists[u] for u in self.users]
        bayes = bayes_attribution(ordered, self.cfg.attribution_uploads, self.rng)
        uploads = np.concatenate([d.sample(self.rng, size=self.cfg.attribution_uploads) for d in ordered])
        owners = np.repeat(np.arange(len(ordered)), self.cfg.attribution_uploads)
        link = linkage_attack(uploads, owners, self.rng)
        return MethodResult(
            method,
            family,
            spread,
            acc,
            bayes.accuracy,
            (bayes.ci_low, bayes.ci_high),
            link.accuracy,
            chance,
            True,
            cold,
            time.perf_counter() - started,
        )


def run_personalization_experiment(
    cfg: ExperimentConfig, progress: Progress | None = None
) -> ExperimentResult:
    """Run every method and the spread sweep; see the module docstring."""
    t0 = time.perf_counter()
    run = _Run(cfg, progress or NullProgress())
    methods: list[MethodResult] = []
    frontier: list[MethodResult] = []

    started = time.perf_counter()
    run.stage1()
    methods.append(run.score("none", None, None, None, None, started))

    started = time.perf_counter()
    dists, cold = run.personalised("static embedding", "gaussian", cfg.static_std)
    methods.append(run.score("static", None, None, dists, cold, started))

    for family in cfg.families:
        for spread in cfg.spreads[family]:
            started = time.perf_counter()
            dists, cold = run.personalised(
                f"IDfree-PL {family} {SPREAD_NAMES[family]}={spread:g}", family, spread
            )
            result = run.score(f"idfree-{family}", family, spread, dists, cold, started)
            frontier.append(result)
            if spread == cfg.default_spread[family]:
                methods.append(result)

    if cfg.gradient_return_family is not None:
        fam = cfg.gradient_return_family
        started = time.perf_counter()
        dists, cold = run.personalised(
            f"IDfree-PL {fam} (gradient-return)", fam, cfg.default_spread[fam], mode="gradient_return"
        )
        methods.append(
            run.score(f"idfree-{fam}-gradient-return", fam, cfg.default_spread[fam], dists, cold, started)
        )

    started = time.perf_counter()
    run.reset()
    with run.progress.stage("on-device fine-tuning (baseline)", len(run.users)) as bar:
        correct = on_device_finetune(
            run.model, run.data, run.train, run.test, cfg.ondevice, on_user=lambda _: bar.advance()
        )
    chance = 1.0 / len(run.users)
    methods.append(
        MethodResult(
            "on-device-finetune",
            None,
            None,
            float(correct.mean()),
            chance,
            (chance, chance),
            chance,
            chance,
            False,
            None,
            time.perf_counter() - started,
        )
    )
    return ExperimentResult(
        task=run.population.task,
        model=cfg.model,
        users=len(run.users),
        test_examples=int(run.test_idx.size),
        methods=methods,
        frontier=frontier,
        seconds=time.perf_counter() - t0,
        config=_jsonable(asdict(cfg)),
    )


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj
