"""DPO on text pairs whose completions are tokenized as given: one trainer for every Veil method.

Both DeepRAG's chain of calibration (arXiv:2502.01142, §3.3: the prompt is the trace so far, the
completions are one decision marker each) and LongDPO's step-level pairs (arXiv:2502.02095, §3: the
prompt is the instruction plus the chosen steps so far, the completions are one step each) are DPO on
partial sequences: the completion does not end the turn, so it must not be followed by the
end-of-sequence token. TRL's ``DPOTrainer`` appends that token to a plain-text completion that lacks it;
:func:`prefix_dpo` keeps TRL's loss, reference model and optimisation and tokenizes the pairs itself:
the prompt's ids, then each completion's ids, nothing added. A completion that does end the turn says
so in its text (e.g. ends with ``</s>`` or ``<|im_end|>``, which the tokenizer maps to the special token).

:class:`PairDPOConfig`'s defaults are TRL's sigmoid loss with the settings LongDPO trains with
(arXiv:2502.02095, §4.1: beta 0.1, AdamW lr 1e-6, weight decay 0, gradient clipping 1.0, 2 epochs,
10 % warm-up, batch 1, the frozen start model as reference); methods subclass it with their own
defaults.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["PairDPOConfig", "TrainConfigBase", "prefix_dpo", "restore_forward", "trainer_kwargs"]


@dataclass(frozen=True)
class TrainConfigBase:
    """Fields shared by Veil's TRL runs (SFT and DPO).

    Attributes
    ----------
    lr, epochs, batch_size, grad_accum, warmup_ratio, max_length, seed: as TRL's arguments.
    weight_decay: AdamW's decoupled weight decay.
    max_grad_norm: gradient clipping.
    max_steps: ``None``: ``epochs`` passes; otherwise exactly this many optimizer updates (what an
        equal-budget comparison of methods with different numbers of examples fixes).
    scheduler: the learning-rate schedule after warm-up (transformers' names).
    """

    lr: float = 1e-6
    epochs: float = 2.0
    batch_size: int = 1
    grad_accum: int = 1
    warmup_ratio: float = 0.1
    max_length: int = 4096
    seed: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_steps: int | None = None
    scheduler: str = "cosine"

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.epochs <= 0:
            raise ValueError(f"lr and epochs must be > 0, got {self.lr}, {self.epochs}")
        if self.batch_size < 1 or self.grad_accum < 1 or self.max_length < 8:
            raise ValueError("batch_size and grad_accum must be >= 1 and max_length >= 8")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.weight_decay < 0 or self.max_grad_norm <= 0:
            raise ValueError(
                f"weight_decay must be >= 0 and max_grad_norm > 0, got {self.weight_decay}, {self.max_grad_norm}"
            )
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {self.max_steps}")


@dataclass(frozen=True)
class PairDPOConfig(TrainConfigBase):
    """DPO with TRL (Rafailov et al., arXiv:2305.18290); defaults as LongDPO's (arXiv:2502.02095, §4.1).

    Attributes
    ----------
    beta: the KL weight of the sigmoid loss.
    loss_type: TRL's ``loss_type`` (``sigmoid`` is the paper's).
    label_smoothing: the conservative-DPO smoothing (0: none, as the paper).
    sft_weight: the weight of an added negative log-likelihood of the chosen completion (TRL's ``sft``
        loss term, mean over its tokens; RPO, Pang et al., arXiv:2404.19733), which keeps DPO from
        lowering the chosen completion's own likelihood (0: none, as the paper).
    """

    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    sft_weight: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.sft_weight < 0:
            raise ValueError(f"sft_weight must be >= 0, got {self.sft_weight}")


def trainer_kwargs(cfg: Any, out: str) -> dict[str, Any]:
    """TRL ``SFTConfig`` / ``DPOConfig`` arguments from a config with :class:`TrainConfigBase`'s fields
    (a config without the optional ones gets their defaults)."""
    import torch

    kwargs = {
        "output_dir": out, "learning_rate": cfg.lr, "num_train_epochs": cfg.epochs,
        "per_device_train_batch_size": cfg.batch_size, "gradient_accumulation_steps": cfg.grad_accum,
        "lr_scheduler_type": getattr(cfg, "scheduler", "cosine"), "warmup_steps": float(cfg.warmup_ratio),
        "seed": cfg.seed, "max_length": cfg.max_length, "logging_strategy": "no", "save_strategy": "no",
        "report_to": [], "disable_tqdm": True, "use_cpu": not torch.cuda.is_available(), "bf16": False,
        "dataloader_num_workers": 0, "weight_decay": getattr(cfg, "weight_decay", 0.0),
        "max_grad_norm": getattr(cfg, "max_grad_norm", 1.0),
    }  # fmt: skip
    if getattr(cfg, "max_steps", None) is not None:
        kwargs["max_steps"] = cfg.max_steps
    return kwargs


def restore_forward(model: Any) -> Any:
    """Undoes the ``forward`` a TRL trainer left on ``model`` (in place; returns ``model``).

    TRL's trainers (1.16) patch the instance with a fused LM head (``trl.trainer.utils.add_fused_lm_head``)
    whose plain path calls the forward *bound at patch time*. A ``copy.deepcopy`` of the patched model
    keeps that closure, so the copy's ``copy(x)`` runs the original model's weights, however the copy is
    trained afterwards (its training goes through the fused path and does update the copy). An
    experiment that trains a base model, then copies it per method, would evaluate the base every time.
    Removing the instance attribute brings back the class's forward; the next trainer patches again.
    """
    model.__dict__.pop("forward", None)
    return model


def _prefix_dpo_trainer() -> Any:
    from trl import DPOTrainer

    class _PrefixDPOTrainer(DPOTrainer):
        """TRL's DPO on pairs tokenized here: prompt ids, then each completion's ids, no EOS added."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):  # noqa: ANN001, ANN202
            tok = getattr(processing_class, "tokenizer", processing_class)

            def encode(example: dict[str, str]) -> dict[str, list[int]]:
                prompt = tok(example["prompt"], add_special_tokens=False)["input_ids"]
                return {
                    "prompt_ids": prompt,
                    "chosen_ids": tok(example["chosen"], add_special_tokens=False)["input_ids"],
                    "rejected_ids": tok(example["rejected"], add_special_tokens=False)["input_ids"],
                }

            return dataset.map(encode, remove_columns=list(dataset.column_names))

    return _PrefixDPOTrainer


def prefix_dpo(
    model: Any, tokenizer: Any, pairs: Sequence[dict[str, str]], config: Any | None = None
) -> dict[str, float]:
    """DPO in place on ``model`` (its copy before training is the reference); TRL's final metrics.

    Parameters
    ----------
    pairs: ``{"prompt", "chosen", "rejected"}`` strings; the completions are tokenized after the prompt
        exactly as given (no end-of-sequence token is added).
    config: a :class:`PairDPOConfig` or any config with its fields (``beta`` and
        :class:`TrainConfigBase`'s); ``None``: the defaults.
    """
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import DPOConfig

    cfg = config or PairDPOConfig()
    if not pairs:
        raise ValueError("DPO needs at least one pair")
    if any(not p.get("prompt") or not p.get("chosen") or not p.get("rejected") for p in pairs):
        raise ValueError("every pair needs a non-empty prompt, chosen and rejected")
    data = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    with tempfile.TemporaryDirectory() as out:
        # the reference is the model before training: its log-probabilities once, before the first step
        losses, weights = [getattr(cfg, "loss_type", "sigmoid")], [1.0]
        if getattr(cfg, "sft_weight", 0.0) > 0:
            losses, weights = [*losses, "sft"], [1.0, cfg.sft_weight]
        args = DPOConfig(
            **trainer_kwargs(cfg, out), beta=cfg.beta, precompute_ref_log_probs=True, loss_type=losses,
            loss_weights=weights, label_smoothing=getattr(cfg, "label_smoothing", 0.0),
        )  # fmt: skip
        trainer = _prefix_dpo_trainer()(
            model=model, args=args, train_dataset=data, processing_class=tokenizer
        )
        trainer.remove_callback(PrinterCallback)  # stdout holds only a --json run's result
        result = trainer.train()
    restore_forward(model).eval()
    return dict(result.metrics)
