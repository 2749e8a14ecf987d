"""Knowledge distillation of language models: losses, teacher signals, alignment and training stages.

The package's parts, one concept per module:

* :mod:`~veil.models.distillation.losses`: token-level losses between student and teacher
  distributions (forward/reverse KL, DistiLLM's skewed KLs, AKL, JS, TV, GKD's generalized JSD), by
  name through :func:`get_loss`.
* :mod:`~veil.models.distillation.teacher`: :class:`TopKTeacher`, cached top-k teacher
  log-probabilities plus the tail's mass, whose memory does not grow with the vocabulary.
* :mod:`~veil.models.distillation.align`, :mod:`~veil.models.distillation.vocab_map`,
  :mod:`~veil.models.distillation.cdm`, :mod:`~veil.models.distillation.uld`,
  :mod:`~veil.models.distillation.mined`: cross-tokenizer distillation (sequence alignment, vocabulary
  maps, CDM, ULD, MinED).
* :mod:`~veil.models.distillation.warmup`: Warmup-Distill, a warm-up stage before distillation.
* :mod:`~veil.models.distillation.data`, :mod:`~veil.models.distillation.students`,
  :mod:`~veil.models.distillation.metrics`: the synthetic corpus, tiny teacher/student models and the
  tokenizer-independent metrics of the offline evaluation.

Only the losses and the teacher signals are re-exported here; import the other modules directly.
"""

from veil.models.distillation.losses import (
    LOSS_NAMES,
    LOSSES,
    AdaptiveKL,
    DistillLoss,
    ForwardKL,
    GeneralizedJSD,
    JensenShannon,
    LossName,
    ReverseKL,
    SkewedForwardKL,
    SkewedReverseKL,
    TotalVariation,
    get_loss,
    kl_divergence,
    log_distributions,
    masked_mean,
)
from veil.models.distillation.teacher import TopKTeacher

__all__ = [
    "LOSSES",
    "LOSS_NAMES",
    "AdaptiveKL",
    "DistillLoss",
    "ForwardKL",
    "GeneralizedJSD",
    "JensenShannon",
    "LossName",
    "ReverseKL",
    "SkewedForwardKL",
    "SkewedReverseKL",
    "TopKTeacher",
    "TotalVariation",
    "get_loss",
    "kl_divergence",
    "log_distributions",
    "masked_mean",
]
