"""DeepRAG's two training stages with TRL (arXiv:2502.01142, §3.2-3.3).

* :func:`imitate` (stage I, imitation): supervised fine-tuning on the cheapest correct paths with TRL's
  ``SFTTrainer``, on pre-tokenized examples whose ``completion_mask`` leaves the prompt and the retrieved
  passages out of the loss (:func:`veil.models.rag.search.imitation_example`).
* :func:`calibrate` (stage II, chain of calibration): DPO with TRL's ``DPOTrainer`` on the per-step
  decision pairs (:func:`veil.models.rag.search.calibration_pairs`).

The configs' defaults are the paper's (full fine-tuning; imitation lr 1e-5, 1 epoch, accumulation 4;
calibration beta 0.4, lr 5e-7, 8 epochs, accumulation 2; cosine schedules with 10 % warm-up), set for
7-8B models; the experiment overrides them for small models.

Both stages share Veil's TRL plumbing (:mod:`veil.models.dpo`): the pairs' completions are tokenized
as given, after the prompt, because TRL's ``DPOTrainer`` would append the end-of-sequence token to a
plain-text decision marker and so also teach the model to end its turn after the chosen marker.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from veil.models.dpo import PairDPOConfig, TrainConfigBase, prefix_dpo, restore_forward, trainer_kwargs

__all__ = ["CalibrationConfig", "ImitationConfig", "calibrate", "imitate"]


@dataclass(frozen=True)
class ImitationConfig(TrainConfigBase):
    """``group_by_length``: batches of examples of similar length (transformers' ``LengthGroupedSampler``),
    which pads less; off by default, as in TRL. The loss is a per-batch mean over learned tokens, so a
    batch of short examples weighs each of its tokens more than a random batch would: the RAG
    experiment's base model, trained grouped, learned its facts worse (base loss 1.37 against 1.03)."""

    lr: float = 1e-5
    epochs: float = 1.0
    grad_accum: int = 4
    group_by_length: bool = False


@dataclass(frozen=True)
class CalibrationConfig(PairDPOConfig):
    """The chain of calibration's DPO: :class:`~veil.models.dpo.PairDPOConfig` with DeepRAG's defaults."""

    beta: float = 0.4
    lr: float = 5e-7
    epochs: float = 8.0
    grad_accum: int = 2


def imitate(
    model: Any,
    tokenizer: Any,
    examples: Sequence[dict[str, list[int]]],
    config: ImitationConfig | None = None,
) -> dict[str, float]:
    """Stage I in place on ``model``; returns TRL's final training metrics (``train_loss``, ...)."""
    from datasets import Dataset
    from transformers import PrinterCallback
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
            **trainer_kwargs(cfg, out),
            completion_only_loss=True,
            packing=False,
            train_sampling_strategy=strategy,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
        # with its progress bar off the Trainer prints each log on stdout, where a --json run's result goes
        trainer.remove_callback(PrinterCallback)
        result = trainer.train()
    restore_forward(model).eval()  # so that a copy of it runs its own weights
    return dict(result.metrics)


def calibrate(
    model: Any, tokenizer: Any, pairs: Sequence[dict[str, str]], config: CalibrationConfig | None = None
) -> dict[str, float]:
    """Stage II in place on ``model`` (its copy before training is the reference); TRL's final metrics."""
    if not pairs:
        raise ValueError("calibration needs at least one pair")
    return prefix_dpo(model, tokenizer, pairs, config or CalibrationConfig())
