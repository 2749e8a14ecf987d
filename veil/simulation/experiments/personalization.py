"""``veil experiment personalization``: personalisation the cloud cannot attribute, on a synthetic
population built on real English text.

Methods (one row each, any subset with ``methods``):

- ``none``: the stage-1 model (no personalisation); ``static``: a per-user point-mass embedding (an
  identifier in disguise, the non-anonymous upper bound); ``oracle-type``: a point mass per *true type*
  (the ceiling of any group-level mechanism, attributed exactly at the floor);
- IDfree-PL's freely learned families (arXiv:2501.06062): ``idfree-beta``, ``idfree-gaussian``,
  ``idfree-basis_mixture``, ``idfree-gaussian-gradient-return``; their spreads are swept for the frontier;
- ``idfree-gaussian-gdp``: the Gaussian under the phone's policy guard (Gaussian-DP mu to the prior at
  most ``gdp_mu``): a calibrated individual residual;
- ``codebook``: the k-anonymous prototype codebook (:mod:`veil.simulation.codebook`);
- ``codebook-mixing``: the codebook plus private mixing on the phone (:mod:`veil.simulation.mixing`);
- ``on-device-finetune``: every phone fine-tunes its own copy (no upload).

For every method: accuracy on each user's held-out examples and, on fresh uploads, the Bayes-optimal
attribution accuracy next to chance and the floor 1/(users per type), practical attacks, and how many
uploads an attacker must link for 50 % attribution (:mod:`veil.simulation.experiments.scoring`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from veil.models.training import TrainConfig
from veil.progress import NullProgress, Progress
from veil.simulation.codebook import CodebookConfig
from veil.simulation.data import PopulationConfig
from veil.simulation.devices import DeviceLearningConfig, on_device_finetune
from veil.simulation.experiments.runner import ExperimentRun
from veil.simulation.experiments.scoring import ScoringConfig
from veil.simulation.mixing import MixingConfig

__all__ = [
    "METHODS",
    "PRIVATE_DEFAULT",
    "ExperimentConfig",
    "ExperimentResult",
    "MethodResult",
    "run_personalization_experiment",
]

SPREAD_NAMES = {"beta": "concentration", "gaussian": "std", "basis_mixture": "component std"}
METHODS: tuple[str, ...] = (
    "none",
    "static",
    "oracle-type",
    "idfree-beta",
    "idfree-gaussian",
    "idfree-basis_mixture",
    "idfree-gaussian-gradient-return",
    "idfree-gaussian-gdp",
    "codebook",
    "codebook-mixing",
    "on-device-finetune",
)
PRIVATE_DEFAULT = "codebook-mixing"
"""What Veil ships: the k-anonymous codebook, with private mixing on the phone."""
_LARGE = 100  # populations above this many users get the scaled presets (fewer epochs, one spread)


@dataclass
class ExperimentConfig:
    """Everything that defines one run; ``quick()`` and ``full()`` are the two presets.

    Attributes
    ----------
    model: registered model name or local directory (``veil.models.loading``).
    population: the synthetic population (users, types, examples per user, task).
    max_tokens: texts are cut to their last ``max_tokens`` tokens.
    stage1, stage3: cloud training (stage 3 starts from the stage-1 weights for every method; the
        codebook spreads ``stage3.epochs`` over its rounds).
    stage2: on-device learning of each user's distribution.
    ondevice: the on-device fine-tuning baseline.
    methods: the rows to run, from :data:`METHODS`.
    families: distribution families the ``idfree-*`` methods may use.
    spreads: per family, the spread values swept for the frontier (Beta: concentration alpha+beta,
        smaller is wider; Gaussian: std; basis mixture: std of each public basis component).
    default_spread: per family, the operating point shown in the main table.
    gaussian_init_mean: initial mean of every Gaussian (paper: 0.1).
    beta_init_mean: initial Beta mean (paper: alpha=2, beta=5, i.e. 2/7).
    init_jitter: std of a per-device random offset of the initial location (Gaussian mean, Beta
        logit-mean, mixture logits); the paper starts every device at the same point (0).
    basis_size, basis_scale: number of public basis components and the std of their random means.
    static_std: the static embedding is a Gaussian with this (tiny, fixed) std: a point mass.
    gradient_return_family: family of the ``idfree-<family>-gradient-return`` row.
    gdp_mu: the policy guard's Gaussian-DP limit for ``idfree-gaussian-gdp``.
    codebook, mixing: the private default's settings.
    scoring: how uploads are sampled and attacked.
    attribution_uploads: fresh uploads per user for the Bayes estimate (``scoring.bayes_uploads``).
    export_uploads: directory to write ``<method>.npz`` uploads with ground truth into (``None``: no).
    private_default: the method reported as ``private_default`` in the JSON.
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
    methods: tuple[str, ...] = METHODS
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
    gdp_mu: float = 1.0
    codebook: CodebookConfig = field(default_factory=CodebookConfig)
    mixing: MixingConfig = field(default_factory=MixingConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    attribution_uploads: int = 50
    export_uploads: str | None = None
    private_default: str = PRIVATE_DEFAULT
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
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"unknown methods {bad}; choose from {', '.join(METHODS)}")
        missing = [m for m in self.methods if m.startswith("idfree-") and _family(m) not in self.families]
        if missing:
            raise ValueError(f"methods {missing} need their family in families {self.families}")
        if self.private_default not in METHODS:
            raise ValueError(f"private_default must be one of {METHODS}, got {self.private_default!r}")
        if not self.gdp_mu > 0:
            raise ValueError(f"gdp_mu must be > 0, got {self.gdp_mu}")
        self.scoring.bayes_uploads = self.attribution_uploads

    @classmethod
    def quick(
        cls, task: str = "next_word", seed: int = 0, users: int | None = None, types: int | None = None
    ) -> ExperimentConfig:
        """Tiny random-init model, small population: the whole pipeline in minutes on 2 CPU cores.

        Stage 1 is kept short (2 epochs): trained longer on the population embedding alone, the tiny
        model locks into ignoring the soft-token position and stage 3 cannot undo it (measured:
        ``benchmarks/README.md``, "Stage-1 epochs in the quick experiment"). Populations of more
        than 100 users get 24 + 8 examples each and fewer epochs (each epoch already has many more
        steps), and no spread sweep.
        """
        users = 24 if users is None else users
        large = users > _LARGE
        per_user = (24, 8) if large else (40, 16)
        return cls(
            model="tiny-llama",
            population=_population(task, users, types, per_user, seed),
            max_tokens=32,
            stage1=TrainConfig(epochs=1 if large else 2, lr=3e-3, batch_size=64 if large else 32, seed=seed),
            stage2=DeviceLearningConfig(epochs=6 if large else 12, batch_size=12, lr=0.5, seed=seed),
            stage3=TrainConfig(epochs=3 if large else 6, lr=3e-3, batch_size=64 if large else 32, seed=seed),
            ondevice=TrainConfig(epochs=4, lr=2e-3, batch_size=8, seed=seed),
            spreads={"beta": (20.0,), "gaussian": (1.0,), "basis_mixture": (0.25,)}
            if large
            else {"beta": (20.0, 3.0), "gaussian": (1.0, 8.0), "basis_mixture": (0.25, 1.0)},
            default_spread={"beta": 20.0, "gaussian": 1.0, "basis_mixture": 0.25},
            codebook=CodebookConfig(
                size=16 if large else 8,
                rounds=2 if large else 3,
                choice_examples=8 if large else 16,
                seed=seed,
            ),
            seed=seed,
        )

    @classmethod
    def full(
        cls, task: str = "next_word", seed: int = 0, users: int | None = None, types: int | None = None
    ) -> ExperimentConfig:
        """SmolLM2-135M-Instruct on the default population (paper settings where they fit: 20 local
        epochs, the Gaussian's fixed scale 0.2, Beta starting at alpha=2, beta=5)."""
        users = 40 if users is None else users
        large = users > _LARGE
        return cls(
            population=_population(task, users, types, (24, 8) if large else (48, 16), seed),
            stage1=TrainConfig(epochs=1 if large else 2, lr=5e-5, batch_size=32 if large else 16, seed=seed),
            stage2=DeviceLearningConfig(epochs=6 if large else 20, batch_size=16, lr=0.5, seed=seed),
            stage3=TrainConfig(epochs=2 if large else 3, lr=1e-4, batch_size=32 if large else 16, seed=seed),
            ondevice=TrainConfig(epochs=3, lr=1e-4, batch_size=8, seed=seed),
            spreads={"beta": (7.0,), "gaussian": (0.2,), "basis_mixture": (0.25,)}
            if large
            else {"beta": (7.0, 2.0), "gaussian": (0.2, 1.0, 4.0), "basis_mixture": (0.25, 1.0)},
            default_spread={"beta": 7.0, "gaussian": 0.2, "basis_mixture": 0.25},
            codebook=CodebookConfig(
                size=16 if large else 8,
                rounds=2 if large else 3,
                choice_examples=8 if large else 16,
                init_scale=0.2,  # the paper's Gaussian scale: SmolLM2's input embeddings are small
                reseed_scale=0.05,
                seed=seed,
            ),
            seed=seed,
        )


def _population(
    task: str, users: int, types: int | None, per_user: tuple[int, int], seed: int
) -> PopulationConfig:
    if types is not None and types > users:
        raise ValueError(f"types ({types}) cannot exceed users ({users})")
    kwargs = {} if types is None else {"n_types": types}
    return PopulationConfig(
        task=task, n_users=users, train_per_user=per_user[0], test_per_user=per_user[1], seed=seed, **kwargs
    )


def _family(method: str) -> str:
    return method.removeprefix("idfree-").split("-")[0]


@dataclass
class MethodResult:
    """One row of the comparison or one point of the frontier.

    ``attacks`` maps a practical attack's name to its accuracy, the Bayes accuracy on the same uploads,
    and the users, chance and floor of the subset it ran on. ``uploads_for_half`` is the number of
    uploads an attacker must link to attribute them with probability 1/2 (``None``: never, up to the
    largest number tried).
    """

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
    attribution_floor: float | None = None
    learned_accuracy: float | None = None
    stylometric_accuracy: float | None = None
    uploads_for_half: int | None = None
    attacks: dict[str, dict[str, Any]] = field(default_factory=dict)


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

    def gain_retained(self, m: MethodResult) -> float | None:
        """``(accuracy - none) / (static - none)``; ``None`` without both baselines or with no gap."""
        names = {r.method for r in self.methods}
        if not {"none", "static"} <= names:
            return None
        none, static = self.method("none").accuracy, self.method("static").accuracy
        return None if math.isclose(static, none) else (m.accuracy - none) / (static - none)

    def private_default(self) -> str | None:
        """The shipped mechanism if it ran, else the plain codebook if that ran."""
        names = {m.method for m in self.methods}
        wanted = self.config.get("private_default", PRIVATE_DEFAULT)
        return next((n for n in (wanted, "codebook") if n in names), None)

    def to_json(self) -> dict[str, Any]:
        names = {m.method for m in self.methods}
        none_acc = self.method("none").accuracy if "none" in names else None

        def row(m: MethodResult) -> dict[str, Any]:
            out = _jsonable({**asdict(m), "gain_retained": self.gain_retained(m)})
            if none_acc is not None:
                out["gain_over_none"] = m.accuracy - none_acc
            return out

        return {
            "task": self.task,
            "model": self.model,
            "users": self.users,
            "test_examples": self.test_examples,
            "seconds": round(self.seconds, 1),
            "private_default": self.private_default(),
            "methods": {m.method: row(m) for m in self.methods},
            "frontier": [row(m) for m in self.frontier],
            "config": self.config,
        }


def run_personalization_experiment(
    cfg: ExperimentConfig, progress: Progress | None = None
) -> ExperimentResult:
    """Run the selected methods (and the spread sweep of the selected families); see the module docstring."""
    t0 = time.perf_counter()
    run = ExperimentRun(cfg, progress or NullProgress())
    methods: list[MethodResult] = []
    frontier: list[MethodResult] = []
    wanted = set(cfg.methods)
    run.stage1()

    def started() -> float:
        return time.perf_counter()

    if "none" in wanted:
        t = started()
        methods.append(run.score("none", None, None, None, None, t))
    if "static" in wanted:
        t = started()
        dists, cold = run.personalised("static embedding", "gaussian", cfg.static_std)
        methods.append(run.score("static", None, None, dists, cold, t))
    if "oracle-type" in wanted:
        t = started()
        dists, cold = run.oracle_type("oracle per-type embedding")
        methods.append(run.score("oracle-type", None, None, dists, cold, t))
    for family in cfg.families:
        if f"idfree-{family}" not in wanted:
            continue
        for spread in cfg.spreads[family]:
            t = started()
            dists, cold = run.personalised(
                f"IDfree-PL {family} {SPREAD_NAMES[family]}={spread:g}", family, spread
            )
            result = run.score(f"idfree-{family}", family, spread, dists, cold, t)
            frontier.append(result)
            if spread == cfg.default_spread[family]:
                methods.append(result)
    fam = cfg.gradient_return_family
    if fam is not None and f"idfree-{fam}-gradient-return" in wanted:
        t = started()
        spread = cfg.default_spread[fam]
        dists, cold = run.personalised(
            f"IDfree-PL {fam} (gradient-return)", fam, spread, mode="gradient_return"
        )
        methods.append(run.score(f"idfree-{fam}-gradient-return", fam, spread, dists, cold, t))
    if "idfree-gaussian-gdp" in wanted:
        t = started()
        spread = cfg.default_spread["gaussian"]
        label = f"IDfree-PL gaussian, policy mu<={cfg.gdp_mu:g}"
        dists, cold = run.personalised(label, "gaussian", spread, max_gdp_mu=cfg.gdp_mu)
        methods.append(run.score("idfree-gaussian-gdp", "gaussian", spread, dists, cold, t))
    if wanted & {"codebook", "codebook-mixing"}:
        t = started()
        book = run.codebook()
        if "codebook" in wanted:
            methods.append(
                run.score("codebook", None, None, dict(book.distributions), run.cold_accuracy(), t)
            )
        if "codebook-mixing" in wanted:  # same uploads as the codebook: only the accuracy differs
            t = started()
            correct = run.mixing_correct()
            if "codebook" in wanted:
                mixed = dataclasses.replace(methods[-1], method="codebook-mixing", cold_start_accuracy=None)
                mixed.accuracy, mixed.seconds = float(correct.mean()), time.perf_counter() - t
                run.export("codebook-mixing", dict(book.distributions))
            else:
                dists = dict(book.distributions)
                mixed = run.score("codebook-mixing", None, None, dists, None, t, correct=correct)
            methods.append(mixed)
    if "on-device-finetune" in wanted:
        t = started()
        run.reset()
        with run.progress.stage("on-device fine-tuning (baseline)", len(run.users)) as bar:
            correct = on_device_finetune(
                run.model, run.data, run.train, run.test, cfg.ondevice, on_user=lambda _: bar.advance()
            )
        methods.append(run.score("on-device-finetune", None, None, None, None, t, correct=correct))
    order = {name: i for i, name in enumerate(METHODS)}
    methods.sort(key=lambda m: order.get(m.method, len(order)))
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
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
