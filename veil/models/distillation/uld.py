"""ULD: the universal logit distillation loss (Boizard et al., arXiv:2402.12030), a cross-tokenizer baseline.

Teacher and student answers are aligned by their start and cut to the shorter one (position ``t`` of one
answer faces position ``t`` of the other, whatever the tokens). Each side's softmax is sorted in
decreasing order and the smaller vocabulary is padded with zeros; the L1 distance of the two sorted
vectors is the closed form of the Wasserstein-1 distance between them under a uniform 0/1 ground cost
over ranks, and needs no vocabulary map. Total: ``ce_weight CE + distil_weight W1``.

Inputs are shifted as in :mod:`veil.models.distillation.cdm`: ``logits[b, t]`` predicts ``labels[b, t]``,
``-100`` outside the answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ULDConfig", "uld_distance", "uld_loss"]

IGNORE_INDEX = -100


@dataclass
class ULDConfig:
    """ULD's weights and temperatures; defaults are the paper's released recipe (arXiv:2402.12030)."""

    ce_weight: float = 1.0
    """Weight of the student's cross-entropy."""
    distil_weight: float = 1.5
    """Weight of the sorted-probability Wasserstein-1 term."""
    student_temperature: float = 1.0
    teacher_temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.ce_weight < 0 or self.distil_weight < 0:
            raise ValueError(f"weights must be >= 0, got {self.ce_weight}, {self.distil_weight}")
        if self.student_temperature <= 0 or self.teacher_temperature <= 0:
            raise ValueError(
                f"temperatures must be > 0, got {self.student_temperature}, {self.teacher_temperature}"
            )


def _start_aligned(labels_a: Tensor, labels_b: Tensor) -> tuple[Tensor, Tensor]:
    """Masks ``(B, L_a)``, ``(B, L_b)`` of the first ``min(n_a, n_b)`` answer positions of each row."""
    keep_a, keep_b = labels_a != IGNORE_INDEX, labels_b != IGNORE_INDEX
    common = torch.minimum(keep_a.sum(dim=1), keep_b.sum(dim=1))[:, None]  # (B, 1)
    rank_a = keep_a.cumsum(dim=1) - 1  # answer rank of each position: [-100 x y] -> [-1 0 1]
    rank_b = keep_b.cumsum(dim=1) - 1
    return keep_a & (rank_a < common), keep_b & (rank_b < common)


def uld_distance(student_probs: Tensor, teacher_probs: Tensor) -> Tensor:
    """Mean over rows of the L1 distance of the sorted ``(N, V_S)`` and ``(N, V_T)`` probabilities."""
    s = student_probs.sort(dim=-1, descending=True).values
    t = teacher_probs.sort(dim=-1, descending=True).values
    width = max(s.shape[-1], t.shape[-1])
    s = F.pad(s, (0, width - s.shape[-1]))  # zero padding of the smaller vocabulary
    t = F.pad(t, (0, width - t.shape[-1]))
    return (s - t).abs().sum(dim=-1).mean() if s.shape[0] else s.sum()


def uld_loss(
    student_logits: Tensor,
    student_labels: Tensor,
    teacher_logits: Tensor,
    teacher_labels: Tensor,
    config: ULDConfig | None = None,
) -> Tensor:
    """``ce_weight CE + distil_weight W1`` over ``(B, L_S, V_S)`` / ``(B, L_T, V_T)`` logits."""
    config = config or ULDConfig()
    if student_logits.shape[0] != teacher_logits.shape[0]:
        raise ValueError(f"batch sizes differ: {student_logits.shape[0]} != {teacher_logits.shape[0]}")
    ce = F.cross_entropy(
        student_logits.flatten(0, 1).float(), student_labels.flatten(), ignore_index=IGNORE_INDEX
    )
    s_keep, t_keep = _start_aligned(student_labels, teacher_labels)
    s_probs = torch.softmax(student_logits[s_keep].float() / config.student_temperature, dim=-1)  # (N, V_S)
    t_probs = torch.softmax(teacher_logits.detach()[t_keep].float() / config.teacher_temperature, dim=-1)
    return config.ce_weight * ce + config.distil_weight * uld_distance(s_probs, t_probs)
