"""Cloud-side training of the personalised LM: IDfree-PL stages 1 and 3 (arXiv:2501.06062).

- Stage 1 (:func:`fit` with ``embeddings=None``): central fine-tuning without personalisation; every
  row carries the population embedding.
- Stage 3 (:func:`fit` with an ``EmbeddingSource``): fine-tuning on pooled anonymous (text, sample)
  pairs. The source is asked for a *fresh* sample for every row of every step; in the simulator it is
  the devices drawing from their own distributions (equivalent to re-uploading each example with a new
  sample), so the trainer never sees a distribution or an identity. A share of rows
  (``cold_start_fraction``) is trained with the population embedding so cold-start users are served.

:func:`fit` is the one training loop. Its ``update`` says how a step's rows are picked and turned into
an update: plain mini-batch steps (:class:`Update`, the default), or DP-SGD (Abadi et al.,
arXiv:1607.00133) through Opacus (:class:`veil.models.dp_training.DPSGD`: Poisson sampling, per-example
clipping, Gaussian noise and the accountant). Configs pair with it as in TRL: :class:`TrainConfig` holds
the shared optimisation fields, and job configs inherit them.

:func:`embedding_gradients` is the cloud half of *gradient-return* on-device learning: dL/de for
anonymous examples against the frozen model.

Choices the paper leaves open (each a field of :class:`TrainConfig`): the cold-start share during
stage 3, linear warm-up then linear decay, gradient clipping at 1.0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from veil.models.personalization import PersonalizedLM
from veil.models.tasks import TokenizedTask, predict, row_losses

__all__ = [
    "EmbeddingSource",
    "LoraSettings",
    "TrainConfig",
    "Update",
    "apply_lora",
    "embedding_gradients",
    "embedding_losses",
    "evaluate",
    "fit",
    "freeze_token_embeddings",
    "trainable_parameters",
]

EmbeddingSource = Callable[[np.ndarray], "np.ndarray | torch.Tensor"]
"""Maps example indices ``(B,)`` to fresh user embeddings ``(B, n_tokens, hidden)``. A float32 tensor
that requires grad keeps its graph, so the embeddings themselves can be trained (``fit``'s ``extra``)."""


@dataclass
class LoraSettings:
    """LoRA adapters (peft) on the attention projections instead of full fine-tuning."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {self.r}")


@dataclass
class TrainConfig:
    """Optimisation settings for stages 1 and 3.

    Attributes
    ----------
    epochs: passes over the training indices (paper, stage 3: 10).
    batch_size: rows per step.
    lr: AdamW learning rate (paper: 5e-5 for pretrained backbones; a random-init tiny model needs ~3e-3).
    weight_decay: AdamW weight decay.
    warmup_ratio: share of steps with linear warm-up; then linear decay to zero.
    max_grad_norm: gradient clipping; ``None`` disables it.
    cold_start_fraction: stage 3 only: share of rows trained with the population embedding.
    seed: shuffling and cold-start masks.
    lora: ``None`` for full fine-tuning, else LoRA adapters (the head always trains).
    freeze_embeddings: full fine-tuning without the token embedding matrix (and the LM head tied to it).
        Under DP-SGD that matrix dominates the per-example gradients (3.1M of tiny-llama's 3.3M
        weights), so freezing it makes private training several times faster.
    freeze_model: no model weight trains, only ``fit``'s ``extra`` module (the codebook's prototypes
        alone, for instance).
    """

    epochs: int = 3
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    max_grad_norm: float | None = 1.0
    cold_start_fraction: float = 0.1
    seed: int = 0
    lora: LoraSettings | None = field(default=None)
    freeze_embeddings: bool = False
    freeze_model: bool = False

    def __post_init__(self) -> None:
        if self.freeze_model and self.lora is not None:
            raise ValueError("freeze_model trains no model weight, so it takes no LoRA adapters")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.cold_start_fraction < 1.0:
            raise ValueError(f"cold_start_fraction must be in [0, 1), got {self.cold_start_fraction}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


def apply_lora(model: PersonalizedLM, settings: LoraSettings) -> list[nn.Parameter]:
    """Inject LoRA adapters into the base model in place; freeze the rest of the base.

    Returns the trainable parameters (adapters and head).
    """
    # lazy: peft loads only for LoRA runs (start-up time)
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
    )
    if not any("lora_" in n for n, _ in model.base.named_parameters()):
        inject_adapter_in_model(config, model.base)
    for name, param in model.base.named_parameters():
        param.requires_grad_("lora_" in name)
    return [p for p in model.parameters() if p.requires_grad]


def trainable_parameters(model: PersonalizedLM, cfg: TrainConfig, task: str) -> list[nn.Parameter]:
    """Set ``requires_grad`` for training ``task`` (LoRA adapters + head, or every used weight) and
    return the trainable parameters."""
    if cfg.freeze_model:
        model.requires_grad_(False)
        return []
    if cfg.lora is not None:
        apply_lora(model, cfg.lora)
    else:
        for p in model.base.parameters():
            p.requires_grad_(True)
        if cfg.freeze_embeddings:
            freeze_token_embeddings(model)
    # Freeze what the task's forward never touches: the LM head for classification (unless tied to the
    # input embeddings), the classification head for next-word prediction. Without DP these weights
    # would get no gradient anyway; DP-SGD (Opacus) needs a per-sample gradient for every trainable one.
    if task == "classification":
        out = model.base.get_output_embeddings()
        if out is not None and out.weight is not model.base.get_input_embeddings().weight:
            out.requires_grad_(False)
        if model.head is not None:
            model.head.requires_grad_(True)
    elif model.head is not None:
        model.head.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def freeze_token_embeddings(model: PersonalizedLM) -> None:
    """Stop training the input embedding matrix and an output head that shares (ties) it."""
    emb = model.base.get_input_embeddings()
    emb.requires_grad_(False)
    out = model.base.get_output_embeddings()
    if out is not None and out.weight is emb.weight:
        out.requires_grad_(False)


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / max(warmup, 1)
    return max(0.0, (total - step) / max(total - warmup, 1))


class Update:
    """How :func:`fit` picks each step's rows and turns their losses into a step: plain mini-batch SGD.

    Shuffled fixed-size batches drawn from the run's seeded generator, the mean loss backpropagated and
    the batch gradient clipped to ``TrainConfig.max_grad_norm``. DP-SGD is the other update
    (:class:`veil.models.dp_training.DPSGD`); the loop around both is the same.

    Parameters
    ----------
    rng:
        Draws the batch order; ``None`` (the default) shares the run's generator, seeded by
        ``TrainConfig.seed``, with the cold-start masks.
    """

    def __init__(self, rng: np.random.Generator | None = None) -> None:
        self.rng = rng

    def attach(self, module: nn.Module, optimizer: Any, n_examples: int, cfg: TrainConfig) -> Any:
        """Called once before training; returns the optimiser to step (here ``optimizer`` itself)."""
        return optimizer

    def batches(
        self, indices: np.ndarray, cfg: TrainConfig, rng: np.random.Generator
    ) -> Iterator[np.ndarray]:
        """One epoch's batches of example indices: a permutation of ``indices`` in ``batch_size`` slices."""
        order = (self.rng or rng).permutation(indices)
        for start in range(0, order.size, cfg.batch_size):
            yield order[start : start + cfg.batch_size]

    def step(self, optimizer: Any, params: list[nn.Parameter], rows: Tensor | None, cfg: TrainConfig) -> None:
        """Backpropagate the row losses ``(B,)`` of one batch and step (``None``: an empty batch)."""
        if rows is None:
            raise ValueError("plain mini-batch training never draws an empty batch")
        rows.mean().backward()
        if cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()

    def detach(self, module: nn.Module) -> None:
        """Called once after training, also when it failed."""


def fit(
    model: PersonalizedLM,
    data: TokenizedTask,
    indices: Sequence[int] | np.ndarray,
    cfg: TrainConfig,
    embeddings: EmbeddingSource | None = None,
    on_step: Callable[[float], None] | None = None,
    *,
    has: np.ndarray | None = None,
    extra: nn.Module | None = None,
    update: Update | None = None,
) -> list[float]:
    """Train ``model`` on ``data[indices]``; returns the mean loss of every step (NaN for an empty batch).

    Parameters
    ----------
    embeddings:
        ``None`` for stage 1 (population embedding everywhere); otherwise stage 3, with the soft tokens
        of each batch's rows. A tensor that requires grad keeps its graph.
    has:
        ``(len(data),)`` bool: False for examples without an embedding (trained as cold-start rows);
        default all True. A further ``cfg.cold_start_fraction`` of rows drops its embedding.
    extra:
        A module whose trainable parameters ``embeddings`` uses (e.g. a table of prototype embeddings):
        it trains with the model by the same optimiser (and under DP-SGD, its per-sample gradients are
        clipped together with the model's).
    update:
        The update rule: :class:`Update` (plain mini-batch steps) by default, or
        :class:`veil.models.dp_training.DPSGD`.

    Without DP one generator seeded by ``cfg.seed`` draws the batch order and the cold-start masks.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size == 0:
        raise ValueError("no training examples")
    update = update or Update()
    params = trainable_parameters(model, cfg, data.task)
    if extra is not None:
        params += [p for p in extra.parameters() if p.requires_grad]
    # What trains (and what DP-SGD hooks): the model, and the extra module beside it.
    module: nn.Module = model if extra is None else nn.ModuleList([model, extra])
    total = math.ceil(indices.size / cfg.batch_size) * cfg.epochs
    optim = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: _schedule(s, total, int(cfg.warmup_ratio * total))
    )
    rng = np.random.default_rng(cfg.seed)
    optim = update.attach(module, optim, indices.size, cfg)
    losses: list[float] = []
    module.train()
    try:
        with warnings.catch_warnings():
            # Input ids need no gradient, so torch notes that an embedding's backward hook (DP-SGD's
            # per-sample gradients) sees outputs only.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for _ in range(cfg.epochs):
                for idx in update.batches(indices, cfg, rng):
                    optim.zero_grad(set_to_none=True)
                    rows = None if idx.size == 0 else _row_losses(model, data, idx, cfg, embeddings, has, rng)
                    update.step(optim, params, rows, cfg)
                    sched.step()
                    losses.append(math.nan if rows is None else float(rows.detach().mean()))
                    if on_step is not None:
                        on_step(losses[-1])
    finally:
        module.eval()
        update.detach(module)
    return losses


def _row_losses(
    model: PersonalizedLM,
    data: TokenizedTask,
    idx: np.ndarray,
    cfg: TrainConfig,
    embeddings: EmbeddingSource | None,
    has: np.ndarray | None,
    rng: np.random.Generator,
) -> Tensor:
    """Per-row losses ``(B,)`` of rows ``idx``, a ``cfg.cold_start_fraction`` of them without embedding."""
    if embeddings is None:
        return row_losses(model, data.batch(idx), data.task)
    keep = rng.random(idx.size) >= cfg.cold_start_fraction
    if has is not None:
        keep &= has[idx]
    return row_losses(model, data.batch(idx, embeddings(idx), keep), data.task)


@torch.no_grad()
def evaluate(
    model: PersonalizedLM,
    data: TokenizedTask,
    indices: Sequence[int] | np.ndarray,
    embeddings: EmbeddingSource | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """Per-example correctness (bool array, in the order of ``indices``)."""
    indices = np.asarray(indices, dtype=np.int64)
    model.eval()
    correct = np.zeros(indices.size, dtype=bool)
    for start in range(0, indices.size, batch_size):
        idx = indices[start : start + batch_size]
        batch = data.batch(idx, None if embeddings is None else embeddings(idx))
        correct[start : start + idx.size] = (predict(model, batch, data.task) == batch.targets).numpy()
    return correct


@torch.no_grad()
def embedding_losses(
    model: PersonalizedLM, data: TokenizedTask, indices: Sequence[int] | np.ndarray, embeddings: np.ndarray
) -> np.ndarray:
    """Loss per row ``(B,)`` for anonymous examples under given embeddings (no gradient: one forward)."""
    e = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
    batch = data.batch(np.asarray(indices, dtype=np.int64), e)
    model.eval()
    return row_losses(model, batch, data.task).cpu().numpy()


def embedding_gradients(
    model: PersonalizedLM,
    data: TokenizedTask,
    indices: Sequence[int] | np.ndarray,
    embeddings: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Loss per row ``(B,)`` and dL/de ``(B, n_tokens, hidden)`` for anonymous examples.

    The model is not updated; only the embeddings receive gradients.
    """
    indices = np.asarray(indices, dtype=np.int64)
    e = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32).clone().requires_grad_(True)
    batch = data.batch(indices, e)
    batch.embeddings = e
    model.eval()
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        losses = row_losses(model, batch, data.task)
        (grad,) = torch.autograd.grad(losses.sum(), e)
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
    return losses.detach().cpu().numpy(), grad.cpu().numpy().astype(np.float64)
