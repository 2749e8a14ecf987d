"""IDfree-PL stage 3 on stored uploads: fine-tune the personalised LM, evaluate, save a checkpoint.

The cloud pools anonymous uploads, each (text, label, one embedding sampled on the phone, task), and
fine-tunes the personalised LM on them (arXiv:2501.06062, stage 3), optionally with DP-SGD
(:mod:`veil.models.dp_training`), which reports (epsilon, delta) per upload.

Uploads are duck-typed: any object with ``text``, ``label`` (class name, or the next word without a
leading space; ``None`` when unlabelled), ``task`` and ``embedding`` (float32 ``(n_tokens, hidden)`` or
``None``). Which uploads are used, and why the others are not:

- another task, no label, a class outside a fixed class set: skipped and counted by reason;
- an embedding whose shape is not the model's ``(n_tokens, hidden)`` (for example one sampled for
  another model) or that holds NaN/Inf: skipped and counted. We skip rather than fail because the store
  may legitimately hold uploads made for an earlier model, and one stale upload should not block a job;
  the report says how many were dropped;
- no embedding: used as a cold-start row (trained and evaluated with the population model), except in
  codebook mode, where it is skipped (``no_embedding``): there is no prototype to train with it.

With ``codebook=True`` (and the published codebook passed in), every upload is mapped to its nearest
usable prototype and the prototype vectors train with the model (:mod:`.codebook`); the trained codebook
is saved in the checkpoint folder as a new version, which the job runner publishes.

Choices the paper leaves open: LoRA on by default (DP-SGD needs per-sample gradients, which for full
fine-tuning cost batch x model memory), lr 1e-3 (LoRA and DP-SGD both want a larger step than the
paper's full fine-tune at 5e-5), a random held-out share for evaluation. Held-out uploads are not
trained on and are not covered by the DP guarantee; the accuracies reported on them are plain statistics.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from veil.client_sdk.codebook_wire import float32_codebook
from veil.client_sdk.constants import TASKS
from veil.client_sdk.distributions import Codebook
from veil.cloud_service.jobs.codebook import CHECKPOINT_CODEBOOK
from veil.models.checkpoint import is_personalized_checkpoint, load_personalized, save_personalized
from veil.models.dp_codebook import CodebookStage3Config, fit_codebook_stage3
from veil.models.dp_training import DPTrainConfig, fit_private
from veil.models.loading import load_model
from veil.models.personalization import PersonalizationConfig, PersonalizedLM
from veil.models.tasks import TokenizedTask, predict, tokenize_task
from veil.models.training import LoraSettings

__all__ = ["PersonalizedTrainingConfig", "PersonalizedTrainingReport", "train_personalized"]

ProgressFn = Callable[[int, int, float], None]


@dataclass
class PersonalizedTrainingConfig(DPTrainConfig):
    """Settings of one stage-3 job: :class:`~veil.models.dp_training.DPTrainConfig`'s optimisation and
    DP-SGD fields (``epochs`` passes over the training uploads, ``batch_size`` rows per step, the
    expected batch size under Poisson sampling; ``seed`` also draws the held-out split), plus these."""

    lr: float = 1e-3
    """AdamW learning rate (warm-up then linear decay); LoRA and DP-SGD want more than the paper's 5e-5."""
    lora: LoraSettings | None = field(default_factory=LoraSettings)
    """LoRA adapters (merged into the weights when saving); ``None`` fine-tunes every weight."""
    task: str = "classification"
    """``"classification"`` or ``"next_word"``; uploads of the other task are skipped."""
    max_tokens: int = 48
    """Tokens kept per text (the last ones)."""
    eval_fraction: float = 0.1
    """Share of usable uploads held out for evaluation (0 disables evaluation)."""
    n_tokens: int | None = None
    """Soft tokens per embedding; ``None``: the checkpoint's, or 1 for a base model (as the simulator)."""
    classes: tuple[str, ...] | None = None
    """Classification: the class names in head order; ``None``: a checkpoint's, else the uploads'
    labels sorted. A fixed set keeps the label set itself out of what the job reveals."""
    device: str = "auto"
    """``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ..."""
    codebook: bool = False
    """Decode every upload to its nearest usable prototype of the published codebook and train the
    prototype vectors with the model (:mod:`veil.cloud_service.jobs.codebook`); with ``dp`` the model and
    the prototypes train under DP-SGD (:mod:`veil.models.dp_codebook`: each upload's gradient on its
    prototype row is clipped with the rest of its gradient, so the accounting covers the prototypes)."""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.n_tokens is not None and self.n_tokens < 1:
            raise ValueError(f"n_tokens must be >= 1 (soft tokens carry the embedding), got {self.n_tokens}")
        if self.classes is not None:
            self.classes = tuple(self.classes)
            if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
                raise ValueError(f"classes must be >= 2 unique names, got {list(self.classes)}")
        super().__post_init__()  # epochs, batch_size, lr, cold_start_fraction, warmup_ratio

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable copy (tuples become lists)."""
        out = asdict(self)
        out["classes"] = None if self.classes is None else list(self.classes)
        if out["lora"] is not None:
            out["lora"]["target_modules"] = list(out["lora"]["target_modules"])
        return out


@dataclass
class PersonalizedTrainingReport:
    """Outcome of :func:`train_personalized`.

    ``heldout_accuracy`` uses each held-out upload's own embedding (population model where it has
    none); ``heldout_accuracy_population`` uses none. Both are ``None`` without a held-out split.
    ``final_loss`` is the mean loss over the last epoch's steps. ``epsilon``/``delta`` are ``None``
    without DP; with DP the unit of privacy is one upload (add/remove one).
    """

    n_uploads: int
    n_skipped: int
    skipped: dict[str, int]
    n_train: int
    n_heldout: int
    steps: int
    final_loss: float
    heldout_accuracy: float | None
    heldout_accuracy_population: float | None
    epsilon: float | None
    delta: float | None
    noise_multiplier: float | None
    accountant: str | None
    checkpoint: Path
    seconds: float
    codebook_version: str | None = None
    """Codebook mode: version of the trained codebook (saved in the checkpoint folder)."""
    codebook_previous_version: str | None = None
    """Codebook mode: version of the codebook the uploads were decoded with."""
    codebook_prototypes_used: int | None = None
    """Codebook mode: prototypes at least one training upload decoded to."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the checkpoint as a string, NaN as ``None``)."""
        out = asdict(self)
        out["checkpoint"] = str(self.checkpoint)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


@dataclass
class _Usable:
    texts: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    embeddings: list[np.ndarray | None] = field(default_factory=list)
    n_seen: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


def _collect(
    uploads: Iterable[Any],
    task: str,
    shape: tuple[int, int],
    classes: set[str] | None,
    need_embedding: bool = False,
) -> _Usable:
    out = _Usable()
    for upload in uploads:
        out.n_seen += 1
        label = getattr(upload, "label", None)
        if getattr(upload, "task", None) != task:
            out.skipped["other_task"] += 1
            continue
        if label is None or not str(label).strip():
            out.skipped["no_label"] += 1
            continue
        if classes is not None and label not in classes:
            out.skipped["unknown_class"] += 1
            continue
        raw = getattr(upload, "embedding", None)
        emb = None if raw is None else np.asarray(raw, dtype=np.float32)
        if emb is None and need_embedding:
            out.skipped["no_embedding"] += 1
            continue
        if emb is not None and emb.shape != shape:
            out.skipped["embedding_shape"] += 1
            continue
        if emb is not None and not np.isfinite(emb).all():
            out.skipped["embedding_nonfinite"] += 1
            continue
        out.texts.append(str(getattr(upload, "text", "")))
        out.labels.append(str(label))
        out.embeddings.append(emb)
    return out


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _load(
    base: str | Path, cfg: PersonalizedTrainingConfig, data_dir: str | Path | None
) -> tuple[Any, Any, Any]:
    """(PersonalizedLM, tokenizer, its classes) for a checkpoint; (base LM, tokenizer, None) otherwise."""
    if is_personalized_checkpoint(base):
        model, tokenizer, meta = load_personalized(base)
        has_head = model.head is not None
        if has_head != (cfg.task == "classification"):
            kind = "classification (it has a head)" if has_head else "next_word (no head)"
            raise ValueError(
                f"checkpoint {str(base)!r} was trained for {kind}, but the job's task is {cfg.task}"
            )
        if cfg.n_tokens is not None and cfg.n_tokens != model.config.n_tokens:
            raise ValueError(
                f"checkpoint {str(base)!r} takes {model.config.n_tokens} soft tokens, not {cfg.n_tokens}"
            )
        classes = meta.get("classes")
        if cfg.classes is not None and classes is not None and list(cfg.classes) != list(classes):
            raise ValueError(f"classes {list(cfg.classes)} differ from the checkpoint's {classes}")
        return model, tokenizer, classes
    loaded = load_model(base, data_dir)
    return loaded.model, loaded.tokenizer, None


@torch.no_grad()
def _accuracy(
    model: PersonalizedLM,
    data: TokenizedTask,
    idx: np.ndarray,
    emb: np.ndarray | None,
    has: np.ndarray | None,
) -> float | None:
    if idx.size == 0:
        return None
    model.eval()
    correct = 0
    for start in range(0, idx.size, 64):
        rows = idx[start : start + 64]
        batch = data.batch(rows) if emb is None else data.batch(rows, emb[rows], has[rows])  # type: ignore[index]
        correct += int((predict(model, batch, data.task) == batch.targets).sum())
    return correct / idx.size


def train_personalized(
    uploads: Iterable[Any],
    base: str | Path,
    out_dir: str | Path,
    cfg: PersonalizedTrainingConfig | None = None,
    data_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
    overwrite: bool = False,
    codebook: Codebook | None = None,
) -> PersonalizedTrainingReport:
    """Fine-tune on ``uploads``, evaluate on a held-out share and save a checkpoint at ``out_dir``.

    Parameters
    ----------
    uploads:
        Duck-typed uploads (see the module docstring); read once.
    base:
        A registered model name, a model directory, or a checkpoint of :func:`save_personalized`
        (training continues from it; its classes and soft-token count are kept).
    out_dir:
        Where the checkpoint goes; must not exist unless ``overwrite`` (checked before training).
    progress:
        Called after each step with ``(step, total_steps, loss)``.
    codebook:
        The published codebook (required when ``cfg.codebook``); the trained one is saved as
        ``<out_dir>/codebook.npz``.

    Raises
    ------
    ValueError
        When no upload is usable (the message counts each skip reason), fewer than two classes, an
        existing ``out_dir``, or a checkpoint of another task or soft-token count.
    ModelLoadError
        When ``base`` cannot be loaded.
    """
    cfg = cfg or PersonalizedTrainingConfig()
    start = time.perf_counter()
    target = Path(out_dir).expanduser()
    if target.exists() and not overwrite:
        raise ValueError(f"output {str(target)!r} already exists; choose another directory or overwrite it")
    if cfg.codebook and codebook is None:
        raise ValueError(
            "codebook training needs the published codebook; none is published (veil codebook init)"
        )
    loaded, tokenizer, ckpt_classes = _load(base, cfg, data_dir)
    if isinstance(loaded, PersonalizedLM):
        shape = loaded.embedding_shape
    else:
        shape = (cfg.n_tokens or 1, int(loaded.get_input_embeddings().weight.shape[1]))
    fixed = ckpt_classes if ckpt_classes is not None else cfg.classes
    if cfg.task != "classification":
        fixed = None
    if codebook is not None and cfg.codebook and codebook.shape != shape:
        raise ValueError(
            f"the codebook's embedding shape {list(codebook.shape)} is not the model's {list(shape)}"
        )
    usable = _collect(uploads, cfg.task, shape, None if fixed is None else set(fixed), cfg.codebook)
    n = len(usable.texts)
    n_skipped = sum(usable.skipped.values())
    if n == 0:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(usable.skipped.items())) or "none given"
        raise ValueError(f"no usable uploads for task {cfg.task!r}: {usable.n_seen} uploads ({reasons})")
    classes: list[str] | None = None
    if cfg.task == "classification":
        classes = list(fixed) if fixed is not None else sorted(set(usable.labels))
        if len(classes) < 2:
            raise ValueError(f"classification needs at least 2 classes, the uploads have {classes}")
    device = _device(cfg.device)
    if isinstance(loaded, PersonalizedLM):
        model = loaded
    else:
        placement = "suffix" if cfg.task == "classification" else "prefix"
        pers = PersonalizationConfig(shape[0], placement, None if classes is None else len(classes))
        model = PersonalizedLM(loaded, pers)
    model.to(device)
    data = tokenize_task(tokenizer, cfg.task, usable.texts, usable.labels, classes or [], cfg.max_tokens)  # type: ignore[arg-type]
    has = np.array([e is not None for e in usable.embeddings], dtype=bool)
    emb = np.zeros((n, *shape), dtype=np.float32)
    for i, e in enumerate(usable.embeddings):
        if e is not None:
            emb[i] = e
    order = np.random.default_rng(cfg.seed).permutation(n)
    n_eval = min(int(cfg.eval_fraction * n), n - 1)
    heldout, train = np.sort(order[:n_eval]), np.sort(order[n_eval:])
    total = math.ceil(train.size / cfg.batch_size) * cfg.epochs
    step = 0

    def on_step(loss: float) -> None:
        nonlocal step
        step += 1
        if progress is not None:
            progress(step, total, loss)

    trained: Codebook | None = None
    if cfg.codebook and codebook is not None:
        # under DP-SGD each upload's gradient on its prototype row is clipped with the rest of its gradient
        decoded = codebook.decode(emb)
        s3 = CodebookStage3Config(**{f.name: getattr(cfg, f.name) for f in fields(DPTrainConfig)})
        run = fit_codebook_stage3(model, data, train, decoded, codebook.prototypes, s3, on_step)
        result = run.train
        trained = float32_codebook(codebook.with_prototypes(run.prototypes))
        emb = trained.prototypes[decoded].astype(np.float32)
    else:
        result = fit_private(model, data, train, cfg, cfg.dp, emb, has, on_step)
    last = np.asarray(result.losses[-math.ceil(train.size / cfg.batch_size) :], dtype=float)
    final_loss = float(np.nanmean(last)) if np.isfinite(last).any() else math.nan
    acc = _accuracy(model, data, heldout, emb, has)
    acc_pop = _accuracy(model, data, heldout, None, None)
    privacy = None
    if cfg.dp is not None:
        privacy = {
            "epsilon": result.epsilon,
            "delta": result.delta,
            "noise_multiplier": result.noise_multiplier,
            "max_grad_norm": cfg.dp.max_grad_norm,
            "accountant": result.accountant,
            "sample_rate": result.sample_rate,
            "steps": result.steps,
            "sampling": "poisson" if cfg.dp.poisson_sampling else "shuffled (accounted as poisson)",
            "unit": "one upload (add or remove one)",
        }
    metadata = {
        "job": "personalized",
        "task": cfg.task,
        "base": str(base),
        "config": cfg.to_json(),
        "n_uploads": usable.n_seen,
        "n_train": int(train.size),
        "n_heldout": int(heldout.size),
        "skipped": dict(usable.skipped),
        "privacy": privacy,
        "heldout_accuracy": acc,
        "heldout_accuracy_population": acc_pop,
    }
    if trained is not None and codebook is not None:
        metadata["codebook"] = {"from_version": codebook.version, "version": trained.version}
    checkpoint = save_personalized(model, tokenizer, target, metadata, classes, overwrite=overwrite)
    if trained is not None:
        trained.save(str(Path(checkpoint) / CHECKPOINT_CODEBOOK))
    return PersonalizedTrainingReport(
        n_uploads=usable.n_seen,
        n_skipped=n_skipped,
        skipped=dict(usable.skipped),
        n_train=int(train.size),
        n_heldout=int(heldout.size),
        steps=result.steps,
        final_loss=final_loss,
        heldout_accuracy=acc,
        heldout_accuracy_population=acc_pop,
        epsilon=result.epsilon,
        delta=result.delta,
        noise_multiplier=result.noise_multiplier,
        accountant=result.accountant,
        checkpoint=checkpoint,
        seconds=time.perf_counter() - start,
        codebook_version=None if trained is None else trained.version,
        codebook_previous_version=None if trained is None or codebook is None else codebook.version,
        codebook_prototypes_used=None if trained is None else int(np.unique(decoded[train]).size),
    )
