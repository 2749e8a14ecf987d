"""DeepRAG's two training stages with TRL (arXiv:2502.01142, §3.2-3.3).

* :func:`imitate` (stage I, imitation): supervised fine-tuning on the cheapest correct paths with TRL's
  ``SFTTrainer``, on pre-tokenized examples whose ``completion_mask`` leaves the prompt and the retrieved
  passages out of the loss (:func:`veil.models.rag.search.imitation_example`).
* :func:`calibrate` (stage II, chain of calibration): DPO with TRL's ``DPOTrainer`` on the per-step
  decision pairs (:func:`veil.models.rag.search.calibration_pairs`).

The configs' defaults are the paper's (full fine-tuning; imitation lr 1e-5, 1 epoch, accumulation 4;
calibration beta 0.4, lr 5e-7, 8 epochs, accumulation 2; cosine schedules with 10 % warm-up), set for
7-8B models; the experiment overrides them for small models.

Where this departs from TRL's defaults: ``DPOTrainer`` appends the end-of-sequence token to a
plain-text chosen or rejected completion that lacks it, so a pair of decision markers would also teach
the model to end its turn after the chosen marker. :class:`_MarkerDPOTrainer` keeps TRL's loss, reference
model and optimisation and tokenizes the pairs itself: the prompt, then each marker's tokens, no EOS.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["CalibrationConfig", "ImitationConfig", "calibrate", "imitate"]


@dataclass(frozen=True)
class ImitationConfig:
    """``group_by_length``: batches of examples of similar length (transformers' ``LengthGroupedSampler``),
    which pads less; off by default, as in TRL."""

    lr: float = 1e-5
    epochs: float = 1.0
    batch_size: int = 1
    grad_accum: int = 4
    warmup_ratio: float = 0.1
    max_length: int = 4096
    seed: int = 0
    group_by_length: bool = False

    def __post_init__(self) -> None:
        _check(self)


@dataclass(frozen=True)
class CalibrationConfig:
    beta: float = 0.4
    lr: float = 5e-7
    epochs: float = 8.0
    batch_size: int = 1
    grad_accum: int = 2
    warmup_ratio: float = 0.1
    max_length: int = 4096
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self)
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")


def _check(cfg: Any) -> None:
    if cfg.lr <= 0 or cfg.epochs <= 0:
        raise ValueError(f"lr and epochs must be > 0, got {cfg.lr}, {cfg.epochs}")
    if cfg.batch_size < 1 or cfg.grad_accum < 1 or cfg.max_length < 8:
        raise ValueError("batch_size and grad_accum must be >= 1 and max_length >= 8")
    if not 0.0 <= cfg.warmup_ratio < 1.0:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {cfg.warmup_ratio}")


def _common(cfg: Any, out: str) -> dict[str, Any]:
    import torch

    return {
        "output_dir": out, "learning_rate": cfg.lr, "num_train_epochs": cfg.epochs,
        "per_device_train_batch_size": cfg.batch_size, "gradient_accumulation_steps": cfg.grad_accum,
        "lr_scheduler_type": "cosine", "warmup_steps": float(cfg.warmup_ratio), "seed": cfg.seed,
        "max_length": cfg.max_length, "logging_strategy": "no", "save_strategy": "no", "report_to": [],
        "disable_tqdm": True, "use_cpu": not torch.cuda.is_available(), "bf16": False,
        "dataloader_num_workers": 0,
    }  # fmt: skip


def imitate(
    model: Any,
    tokenizer: Any,
    examples: Sequence[dict[str, list[int]]],
    config: ImitationConfig | None = None,
) -> dict[str, float]:
    """Stage I in place on ``model``; returns TRL's final training metrics (``train_loss``, ...)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    cfg = config or ImitationConfig()
    if not examples:
        raise ValueError("imitation needs at least one example")
    if any(
        len(e["input_ids"]) != len(e["completion_mask"]) or not any(e["completion_mask"]) for e in examples
    ):
        raise ValueError(
            "every example needs input_ids and a completion_mask of the same length with a learned token"
        )
    data = Dataset.from_list(
        [{"input_ids": e["input_ids"], "completion_mask": e["completion_mask"]} for e in examples]
    )
    with tempfile.TemporaryDirectory() as out:
        # grouping by length keeps a batch from padding short drills to a demonstration's length
        strategy = "group_by_length" if cfg.group_by_length else "random"
        args = SFTConfig(
            **_common(cfg, out), completion_only_loss=True, packing=False, train_sampling_strategy=strategy
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
        result = trainer.train()
    model.eval()
    return dict(result.metrics)


def _marker_dpo_trainer() -> Any:
    from trl import DPOTrainer

    class _MarkerDPOTrainer(DPOTrainer):
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

    return _MarkerDPOTrainer


def calibrate(
    model: Any, tokenizer: Any, pairs: Sequence[dict[str, str]], config: CalibrationConfig | None = None
) -> dict[str, float]:
    """Stage II in place on ``model`` (its copy before training is the reference); TRL's final metrics."""
    from datasets import Dataset
    from trl import DPOConfig

    cfg = config or CalibrationConfig()
    if not pairs:
        raise ValueError("calibration needs at least one pair")
    if any(not p.get("prompt") or not p.get("chosen") or not p.get("rejected") for p in pairs):
        raise ValueError("every pair needs a non-empty prompt, chosen and rejected")
    data = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    with tempfile.TemporaryDirectory() as out:
        # the reference is the model before training: its log-probabilities once, before the first step
        args = DPOConfig(**_common(cfg, out), beta=cfg.beta, precompute_ref_log_probs=True)
        trainer = _marker_dpo_trainer()(
            model=model, args=args, train_dataset=data, processing_class=tokenizer
        )
        result = trainer.train()
    model.eval()
    return dict(result.metrics)
