"""MinED: cross-tokenizer distillation through minimum-edit-distance maps (FuseLLM, arXiv:2401.10491).

The two label sequences are aligned by DTW with the plain edit distance of token strings as cost
(:func:`veil.models.distillation.align.align_batch` without weights). At a student position aligned
one-to-one with a teacher position, the target is the teacher's softened distribution carried into the
student vocabulary by the MinED map (every teacher id goes to the student id of nearest string; mass of
several teacher ids on one student id adds up). Every other student position (one-to-many or
many-to-many units) falls back to the gold one-hot. KD is ``T^2 KL(target || p_S^(T))`` averaged over
positions; total ``(1 - kd_rate) CE + kd_rate KD``.

Shifted inputs, ``-100`` outside the response, as in :mod:`veil.models.distillation.cdm`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from veil.models.distillation.align import align_batch
from veil.models.distillation.vocab_map import UNMAPPED, VocabPair

__all__ = ["MinEDConfig", "mined_loss", "mined_targets"]

IGNORE_INDEX = -100


@dataclass
class MinEDConfig:
    """MinED's weights; defaults follow the DSKD benchmark's MinED script (arXiv:2406.17328)."""

    kd_rate: float = 0.5
    """Weight of the KD term; CE gets ``1 - kd_rate``."""
    temperature: float = 2.0
    """Softmax temperature of the teacher and the student in the KD term."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.kd_rate <= 1.0:
            raise ValueError(f"kd_rate must lie in [0, 1], got {self.kd_rate}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


def mined_targets(
    student_labels: Tensor,
    teacher_logits: Tensor,
    teacher_labels: Tensor,
    vocab: VocabPair,
    temperature: float,
) -> tuple[Tensor, Tensor]:
    """Target distributions ``(N_S, V_S)`` of the labelled student positions, and which used the teacher.

    ``vocab.teacher_to_student`` must be total (``VocabPair.from_tokenizers(..., mapper="mined")``).
    """
    t2s = vocab.teacher_to_student
    if (t2s == UNMAPPED).any():
        raise ValueError("MinED needs a total teacher->student map: build the VocabPair with mapper='mined'")
    s_keep, t_keep = student_labels != IGNORE_INDEX, teacher_labels != IGNORE_INDEX
    s_ids = [student_labels[b][s_keep[b]].cpu().numpy() for b in range(student_labels.shape[0])]
    t_ids = [teacher_labels[b][t_keep[b]].cpu().numpy() for b in range(teacher_labels.shape[0])]
    alignments = align_batch(
        [vocab.teacher.stripped[i] for i in t_ids], [vocab.student.stripped[i] for i in s_ids]
    )
    # Per labelled student position (in (b, t) order): its teacher row if the unit is one-to-one, else -1.
    t_offsets = np.cumsum([0] + [len(i) for i in t_ids])
    source = []
    for a, off in zip(alignments, t_offsets[:-1], strict=True):
        teacher_of_unit = np.full(a.n_units, -1, dtype=np.int64)
        one = a.one_to_one
        teacher_of_unit[a.teacher_unit[one[a.teacher_unit]]] = np.flatnonzero(one[a.teacher_unit]) + off
        source.append(teacher_of_unit[a.student_unit])
    src = torch.from_numpy(np.concatenate(source)).to(teacher_logits.device)  # (N_S,)
    v_t, v_s = len(vocab.teacher), len(vocab.student)
    t_probs = torch.softmax(
        teacher_logits.detach()[..., :v_t][t_keep].float() / temperature, dim=-1
    )  # (N_T, V_T)
    use = src >= 0
    gold = student_labels[s_keep]  # (N_S,)
    target = F.one_hot(gold, v_s).float()  # (N_S, V_S)
    index = torch.from_numpy(t2s).to(teacher_logits.device).expand(int(use.sum()), v_t)
    target[use] = torch.zeros(int(use.sum()), v_s, device=target.device).scatter_add(
        1, index, t_probs[src[use]]
    )
    return target, use


def mined_loss(
    student_logits: Tensor,
    student_labels: Tensor,
    teacher_logits: Tensor,
    teacher_labels: Tensor,
    vocab: VocabPair,
    config: MinEDConfig | None = None,
) -> Tensor:
    """``(1 - kd_rate) CE + kd_rate T^2 KL(target || p_S^(T))``; shapes as in :func:`cdm_loss`."""
    config = config or MinEDConfig()
    ce = F.cross_entropy(
        student_logits.flatten(0, 1).float(), student_labels.flatten(), ignore_index=IGNORE_INDEX
    )
    target, _ = mined_targets(student_labels, teacher_logits, teacher_labels, vocab, config.temperature)
    s_keep = student_labels != IGNORE_INDEX
    log_ps = torch.log_softmax(
        student_logits[..., : len(vocab.student)][s_keep].float() / config.temperature, dim=-1
    )
    kl = (torch.xlogy(target, target) - target * log_ps).sum(dim=-1)  # (N_S,)
    kd = config.temperature**2 * kl.mean() if kl.numel() else kl.sum()
    return (1.0 - config.kd_rate) * ce + config.kd_rate * kd
