"""The state of one personalisation experiment run and the stages every method is built from.

:class:`ExperimentRun` holds the population, the tokenised data, the model and the stage-1 weights; its
methods run IDfree-PL's stages (arXiv:2501.06062) for one distribution family, the oracle per-type
embedding, the k-anonymous codebook and private mixing, and score what each method uploads
(:mod:`veil.simulation.experiments.scoring`).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from veil.client_sdk.distributions import (
    BasisMixtureDistribution,
    BetaDistribution,
    GaussianDistribution,
    UserDistribution,
)
from veil.client_sdk.policy_guard import PolicyGuard
from veil.models.loading import load_model
from veil.models.personalization import PersonalizationConfig, PersonalizedLM
from veil.models.tasks import TokenizedTask, tokenize_task
from veil.models.training import evaluate, fit
from veil.progress import Progress
from veil.simulation.codebook import CodebookResult, learn_codebook
from veil.simulation.data import Population, make_population
from veil.simulation.devices import learn_distributions
from veil.simulation.experiments.scoring import export_uploads, score_privacy
from veil.simulation.mixing import private_mixing

if TYPE_CHECKING:
    from veil.simulation.experiments.personalization import ExperimentConfig, MethodResult

__all__ = ["ExperimentRun"]


class ExperimentRun:
    """State shared by the methods of one experiment run."""

    def __init__(self, cfg: ExperimentConfig, progress: Progress) -> None:
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
        self.train: dict[str, list[int]] = {u: [] for u in self.users}
        self.test: dict[str, list[int]] = {u: [] for u in self.users}
        for i, ex in enumerate(examples):
            (self.train if i < n_train else self.test)[ex.user].append(i)
        self.train_idx = np.arange(n_train)
        self.test_idx = np.concatenate([np.asarray(self.test[u], dtype=np.int64) for u in self.users])
        self.owner = np.empty(len(examples), dtype=object)
        for i, ex in enumerate(examples):
            self.owner[i] = ex.user
        user_types = self.population.meta["user_types"]
        self.types = np.array([user_types[u] for u in self.users], dtype=np.int64)  # (users,)
        self.texts = [[examples[i].text for i in self.train[u]] for u in self.users]
        placement = "suffix" if task == "classification" else "prefix"
        num_labels = len(self.population.labels) if task == "classification" else None
        device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
        self.model = PersonalizedLM(loaded.model, PersonalizationConfig(1, placement, num_labels)).to(device)
        self.shape = self.model.embedding_shape
        self.stage1_state: dict[str, torch.Tensor] | None = None
        self.basis_means = np.random.default_rng(cfg.seed + 17).normal(
            0.0, cfg.basis_scale, size=(cfg.basis_size, *self.shape)
        )
        self.codebook_result: CodebookResult | None = None

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
    def _steps(self, epochs: int, batch_size: int) -> int:
        return epochs * -(-self.train_idx.size // batch_size)

    def stage1(self) -> None:
        cfg = self.cfg.stage1
        with self.progress.stage("stage 1: central training", self._steps(cfg.epochs, cfg.batch_size)) as bar:
            fit(self.model, self.data, self.train_idx, cfg, on_step=lambda _: bar.advance())
        self.stage1_state = copy.deepcopy(self.model.state_dict())

    def reset(self) -> None:
        if self.stage1_state is None:
            raise RuntimeError("stage 1 must run before any personalised method")
        self.model.load_state_dict(self.stage1_state)

    def stage3(self, tag: str, dists: dict[str, UserDistribution], r: int = 0) -> None:
        s3 = self.cfg.stage3
        with self.progress.stage(
            f"{tag}: cloud fine-tune (stage 3)", self._steps(s3.epochs, s3.batch_size)
        ) as bar:
            fit(
                self.model,
                self.data,
                self.train_idx,
                dataclasses.replace(s3, seed=s3.seed + r),
                self.source(dists),
                on_step=lambda _: bar.advance(),
            )

    def stage2(
        self,
        tag: str,
        family: str,
        dists: dict[str, UserDistribution],
        mode: str = "local",
        r: int = 0,
        groups: dict[str, list[int]] | None = None,
        batch_scale: int = 1,
    ) -> dict[str, UserDistribution]:
        s2 = dataclasses.replace(
            self.cfg.stage2,
            mode=mode,
            trainable=self.trainable(family),
            batch_size=self.cfg.stage2.batch_size * batch_scale,
        )
        s2 = dataclasses.replace(s2, seed=s2.seed + r)
        with self.progress.stage(f"{tag}: on-device (stage 2)", s2.epochs) as bar:
            return learn_distributions(
                self.model, self.data, groups or self.train, dists, s2, on_epoch=lambda _: bar.advance()
            )

    def cold_accuracy(self) -> float:
        return float(evaluate(self.model, self.data, self.test_idx).mean())

    def personalised(
        self, label: str, family: str, spread: float, mode: str = "local", max_gdp_mu: float | None = None
    ) -> tuple[dict[str, UserDistribution], float]:
        """Stages 2 and 3 from the stage-1 weights, alternated ``rounds`` times.

        With ``max_gdp_mu`` every learned distribution is projected inside that Gaussian-DP distance of
        the prior (the phone's policy guard) before it is used. Returns the distributions and the
        cold-start accuracy of the final model.
        """
        self.reset()
        dists = self.init_distributions(family, spread)
        for r in range(self.cfg.rounds):
            tag = f"{label} [round {r + 1}/{self.cfg.rounds}]" if self.cfg.rounds > 1 else label
            learned = self.stage2(tag, family, dists, mode, r)
            if max_gdp_mu is not None:
                guards = {u: PolicyGuard(dists[u], max_gdp_mu=max_gdp_mu) for u in self.users}
                learned = {u: guards[u].project(learned[u]) for u in self.users}
            dists = learned
            self.stage3(tag, dists, r)
        return dists, self.cold_accuracy()

    def oracle_type(self, label: str) -> tuple[dict[str, UserDistribution], float]:
        """A static embedding per *true type*, learned on the pooled data of the type's users: the
        ceiling of any mechanism that serves groups, at attribution exactly the floor."""
        self.reset()
        groups: dict[str, list[int]] = {}
        for u, t in zip(self.users, self.types, strict=True):
            groups.setdefault(f"type{t:03d}", []).extend(self.train[u])
        init = self.init_distributions("gaussian", self.cfg.static_std)
        start = {g: init[self.users[0]] for g in groups}
        # a type's pooled data is (users per type) phones' worth: take that many phones' rows per step,
        # so stage 2 costs what it costs for per-user embeddings
        per_type = max(1, round(len(self.users) / len(groups)))
        learned = self.stage2(label, "gaussian", start, groups=groups, batch_scale=per_type)
        dists = {u: learned[f"type{t:03d}"] for u, t in zip(self.users, self.types, strict=True)}
        self.stage3(label, dists)
        return dists, self.cold_accuracy()

    def codebook(self) -> CodebookResult:
        """Learn the k-anonymous codebook from the stage-1 weights (cached: private mixing reuses it)."""
        if self.codebook_result is not None:
            return self.codebook_result
        self.reset()
        cfg = self.cfg.codebook
        k_min = cfg.resolved_k_min(len(self.users), len(np.unique(self.types)))
        s3 = self.cfg.stage3
        s3 = dataclasses.replace(s3, epochs=max(1, round(s3.epochs / cfg.rounds)))
        total = cfg.rounds * (1 + self._steps(s3.epochs, s3.batch_size)) + 1
        with self.progress.stage(
            f"codebook (K={cfg.size}, k_min={k_min}): choices and stage 3", total
        ) as bar:
            self.codebook_result = learn_codebook(
                self.model,
                self.data,
                self.train,
                self.train_idx,
                self.owner,
                cfg,
                s3,
                k_min,
                self.rng,
                on_step=lambda *_: bar.advance(),
            )
        return self.codebook_result

    def mixing_correct(self) -> np.ndarray:
        """Per-example correctness of private mixing on top of the learned codebook."""
        book = self.codebook()
        with self.progress.stage("private mixing: per-prototype answers, heads on the phones", None):
            return private_mixing(
                self.model, self.data, self.train, self.test, book.codebook, book.losses, self.cfg.mixing
            )

    # -- scoring ----------------------------------------------------------------------------------
    def export(self, method: str, dists: dict[str, UserDistribution]) -> None:
        """Write ``<method>.npz`` uploads with ground truth when the config asks for it."""
        if self.cfg.export_uploads is None:
            return
        ordered = [dists[u] for u in self.users]
        path = Path(self.cfg.export_uploads) / f"{method}.npz"
        export_uploads(path, ordered, self.texts, self.types, self.cfg.scoring.attack_uploads, self.rng)

    def score(
        self,
        method: str,
        family: str | None,
        spread: float | None,
        dists: dict[str, UserDistribution] | None,
        cold: float | None,
        started: float,
        correct: np.ndarray | None = None,
    ) -> MethodResult:
        """Accuracy (from ``correct`` when given, else the model with fresh samples of ``dists``) and
        the privacy of ``dists``' uploads; exported when the config asks for it."""
        # lazy: personalization imports this module (an import cycle at module level)
        from veil.simulation.experiments.personalization import MethodResult

        chance = 1.0 / len(self.users)
        floor = float(len(np.unique(self.types)) / len(self.users))
        if correct is None:
            source = None if dists is None else self.source(dists)
            correct = evaluate(self.model, self.data, self.test_idx, source)
        acc = float(np.mean(correct))
        if dists is None:  # nothing uploaded but text: the embedding carries no information
            return MethodResult(
                method, family, spread, acc, chance, (chance, chance), chance, chance, False, cold,
                time.perf_counter() - started, attribution_floor=floor,
            )  # fmt: skip
        ordered = [dists[u] for u in self.users]
        with self.progress.stage(f"{method}: attribution and attacks", None):
            score = score_privacy(ordered, self.texts, self.types, self.cfg.scoring, self.rng)
        self.export(method, dists)
        attacks = score.attacks
        return MethodResult(
            method,
            family,
            spread,
            acc,
            score.bayes,
            score.bayes_ci,
            attacks.get("linkage_kmeans", {}).get("accuracy", float("nan")),
            chance,
            True,
            cold,
            time.perf_counter() - started,
            attribution_floor=score.floor,
            learned_accuracy=attacks.get("learned_attributor", {}).get("accuracy"),
            stylometric_accuracy=attacks.get("stylometric", {}).get("accuracy"),
            uploads_for_half=score.uploads_for_half,
            attacks=attacks,
        )
