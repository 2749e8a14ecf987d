"""Cloud-side training of the personalised LM: IDfree-PL stages 1 and 3 (arXiv:2501.06062).

- Stage 1 (:func:`fit` with ``embeddings=None``): central fine-tuning without personalisation; every
  row carries the population embedding.
- Stage 3 (:func:`fit` with an ``EmbeddingSource``): fine-tuning on pooled anonymous (text, sample)
  pairs. The source is asked for a *fresh* sample for every row of every step; in the simulator it is
  the devices drawing from their own distributions (equivalent to re-uploading each example with a new
  sample), so the trainer never sees a distribution or an identity. A share of rows
  (``cold_start_fraction``) is trained with the population embedding so cold-start users are served.

:func:`embedding_gradients` is the cloud half of *gradient-return* on-device learning: dL/de for
anonymous examples against the frozen model.

Choices the paper leaves open (each a field of :class:`TrainConfig`): the cold-start share during
stage 3, linear warm-up then linear decay, gradient clipping at 1.0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from veil.models.personalization import PersonalizedLM
from veil.models.tasks import TokenizedTask, predict, row_losses

__all__ = [
    "EmbeddingSource",
    "LoraSettings",
    "TrainConfig",
    "apply_lora",
    "embedding_gradients",
    "evaluate",
    "fit",
    "freeze_token_embeddings",
]

EmbeddingSource = Callable[[np.ndarray], "np.ndarray | torch.Tensor"]
"""Maps example indices ``(B,)`` to fresh user embeddings ``(B, n_tokens, hidden)``. A float32 tensor
that requires grad keeps its graph, so the embeddings themselves can be trained (``extra_parameters``)."""


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

    def __post_init__(self) -> None:
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


def _trainable(model: PersonalizedLM, cfg: TrainConfig) -> list[nn.Parameter]:
    if cfg.lora is not None:
        return apply_lora(model, cfg.lora)
    for p in model.parameters():
        p.requires_grad_(True)
    if cfg.freeze_embeddings:
        freeze_token_embeddings(model)
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


def fit(
    model: PersonalizedLM,
    data: TokenizedTask,
    indices: Sequence[int] | np.ndarray,
    cfg: TrainConfig,
    embeddings: EmbeddingSource | None = None,
    on_step: Callable[[float], None] | None = None,
    extra_parameters: Sequence[nn.Parameter] = (),
) -> list[float]:
    """Train ``model`` on ``data[indices]``; returns the mean loss of every step.

    With ``embeddings=None`` this is stage 1 (population embedding everywhere); otherwise stage 3.
    ``extra_parameters`` are trained with the model by the same optimiser (e.g. the public prototype
    embeddings of a codebook, which ``embeddings`` then returns as a differentiable tensor).
    """
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size == 0:
        raise ValueError("no training examples")
    rng = np.random.default_rng(cfg.seed)
    params = _trainable(model, cfg) + list(extra_parameters)
    optim = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(indices.size / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: _schedule(s, total, int(cfg.warmup_ratio * total))
    )
    model.train()
    losses: list[float] = []
    for _ in range(cfg.epochs):
        order = rng.permutation(indices)
        for start in range(0, order.size, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            if embeddings is None:
                batch = data.batch(idx)
            else:
                has = rng.random(idx.size) >= cfg.cold_start_fraction
                batch = data.batch(idx, embeddings(idx), has)
            loss = row_losses(model, batch, data.task).mean()
            optim.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optim.step()
            sched.step()
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(losses[-1])
    model.eval()
    return losses


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
