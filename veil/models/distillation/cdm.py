"""CDM: cross-tokenizer distillation by contextual dynamic mapping (Chen et al., arXiv:2502.11104).

For a batch of responses tokenised by both models:

1. align each (teacher, student) pair of label sequences by entropy-weighted DTW over token strings
   (:func:`veil.models.distillation.align.align_batch`), giving many-to-many *units*;
2. mean-merge each side's logits over the positions of every unit: ``(U, V_T)`` and ``(U, V_S)``;
3. take the top-K ids of both sides per unit (K = 100) and map them to the other vocabulary: the static
   exact-match map, completed inside the unit by the dynamic map
   (:func:`veil.models.distillation.vocab_map.dynamic_map`);
4. gather a ``2K`` "shared vocabulary" per unit, teacher top-K then student top-K, with the entries
   that map nowhere masked on both sides;
5. KD = ``T^2 KL(p_T^(T) || p_S^(T))`` over the unmasked entries, the sum divided by the number of
   unmasked entries (the ports' average); total ``alpha CE + (1 - alpha) KD``.

Choices where the paper's ports differ or say nothing: the standard ``T^2`` scaling (the ports scale the
teacher's log-probabilities by ``T^2``); an id in both top-K lists appears twice in the shared vocabulary,
as in the ports' concatenation; logits wider than the tokenizer (padded embedding matrices) are cut to
the tokenizer's length, since no text holds those ids.

Inputs are *shifted*: ``logits[b, t]`` is the distribution of ``labels[b, t]``; ``labels == -100`` marks
positions outside the response.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from veil.models.distillation.align import Alignment, align_batch, entropy_weights
from veil.models.distillation.losses import get_loss, kl_divergence
from veil.models.distillation.vocab_map import UNMAPPED, VocabPair, dynamic_map

__all__ = [
    "IGNORE_INDEX",
    "CDMConfig",
    "CDMOutput",
    "DualTeacherConfig",
    "cdm_kd",
    "cdm_loss",
    "dual_teacher_loss",
    "masked_kl",
    "merge_units",
    "shared_vocab_logits",
]

IGNORE_INDEX = -100


@dataclass
class CDMConfig:
    """CDM's hyperparameters; defaults are the HF-Trainer port of arXiv:2502.11104."""

    top_k: int = 100
    """Top-K ids taken from each side per unit (the shared vocabulary has ``2 top_k`` entries)."""
    temperature: float = 0.8
    """Softmax temperature ``T`` of both sides in the KD term."""
    alpha: float = 0.9
    """Weight of the student's cross-entropy; KD gets ``1 - alpha``."""
    threshold: float = 0.3
    """Dynamic map: normalised edit distance a candidate must stay below; 0 disables the dynamic map."""
    entropy_weighted: bool = True
    """Weight the DTW costs by entropy (CDM); ``False``: plain edit-distance DTW."""

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")
        if self.threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold}")


@dataclass
class DualTeacherConfig(CDMConfig):
    """CDM with a second, same-tokenizer teacher: ``alpha CE + beta_same KL_same + beta_cdm L_CDM``.

    arXiv:2502.11104 combines the two teachers but the weights are our choice: the KD share ``1 - alpha``
    of single-teacher CDM, split evenly.
    """

    beta_same: float = 0.05
    """Weight of the full-vocabulary ``T^2 KL`` to the same-tokenizer teacher."""
    beta_cdm: float = 0.05
    """Weight of the CDM KD term to the other-tokenizer teacher."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta_same < 0 or self.beta_cdm < 0:
            raise ValueError(f"beta_same and beta_cdm must be >= 0, got {self.beta_same}, {self.beta_cdm}")


@dataclass
class CDMOutput:
    """What :func:`cdm_loss` computed."""

    loss: Tensor
    """``alpha CE + (1 - alpha) KD``."""
    ce: Tensor
    kd: Tensor
    unmasked_rate: float
    """Fraction of the ``U x 2K`` shared-vocabulary entries that map on both sides."""
    alignments: list[Alignment] = field(default_factory=list)


def merge_units(logits: Tensor, unit: Tensor, n_units: int) -> Tensor:
    """Mean of the ``(N, V)`` rows of ``logits`` per unit id ``(N,)`` in ``0..n_units-1``: ``(U, V)``."""
    total = logits.new_zeros(n_units, logits.shape[-1]).index_add(0, unit, logits)
    count = torch.bincount(unit, minlength=n_units).clamp(min=1).to(logits.dtype)
    return total / count[:, None]


def shared_vocab_logits(
    teacher: Tensor, student: Tensor, vocab: VocabPair, top_k: int, threshold: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Both sides' logits on the ``2K`` shared vocabulary of every unit.

    Parameters
    ----------
    teacher, student : Tensor
        ``(U, V_T)`` and ``(U, V_S)`` merged logits.

    Returns
    -------
    tuple of Tensor
        Teacher ``(U, 2K)``, student ``(U, 2K)``, and the bool mask ``(U, 2K)`` of mapped entries.
    """
    k = min(top_k, teacher.shape[-1], student.shape[-1])
    t_top = teacher.topk(k, dim=-1).indices  # (U, K)
    s_top = student.detach().topk(k, dim=-1).indices  # (U, K)
    t_np, s_np = t_top.cpu().numpy(), s_top.cpu().numpy()
    t2s = dynamic_map(
        vocab.teacher_to_student, t_np, s_np, vocab.teacher.stripped, vocab.student.stripped, threshold
    )
    s2t = dynamic_map(
        vocab.student_to_teacher, s_np, t_np, vocab.student.stripped, vocab.teacher.stripped, threshold
    )
    t2s_t = torch.from_numpy(t2s).to(teacher.device)
    s2t_t = torch.from_numpy(s2t).to(teacher.device)
    teacher_shared = torch.cat([teacher.gather(1, t_top), teacher.gather(1, s2t_t.clamp(min=0))], dim=1)
    student_shared = torch.cat([student.gather(1, t2s_t.clamp(min=0)), student.gather(1, s_top)], dim=1)
    mask = torch.cat([t2s_t != UNMAPPED, s2t_t != UNMAPPED], dim=1)
    return teacher_shared, student_shared, mask


def masked_kl(teacher: Tensor, student: Tensor, mask: Tensor, temperature: float) -> Tensor:
    """``T^2 sum p_T (log p_T - log p_S)`` over the unmasked entries, divided by their number.

    Both softmaxes run over the unmasked entries of a row only; masked entries get no gradient.
    ``teacher``, ``student`` and ``mask`` are ``(U, E)``; a row without unmasked entries adds 0.
    """
    # The teacher's masked entries are -inf (absent for kl_divergence, even in a fully masked row); the
    # student's are a finite floor, so that its log-softmax stays NaN-free.
    t = (teacher.detach().float() / temperature).masked_fill(~mask, float("-inf"))
    s = (student.float() / temperature).masked_fill(~mask, torch.finfo(torch.float32).min / 2)
    kl = kl_divergence(torch.log_softmax(t, dim=-1), torch.log_softmax(s, dim=-1))  # (U,)
    return temperature**2 * kl.sum() / mask.sum().clamp(min=1)


def _cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=IGNORE_INDEX)


def _response_rows(
    logits: Tensor, labels: Tensor, width: int
) -> tuple[Tensor, list[np.ndarray], list[Tensor]]:
    """Labelled rows ``(N, width)`` in (batch, position) order, and per sample its label ids and rows."""
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree")
    if logits.shape[-1] < width:
        raise ValueError(f"logits have {logits.shape[-1]} entries, fewer than the tokenizer's {width}")
    keep = labels != IGNORE_INDEX  # (B, L)
    rows = logits[..., :width][keep]  # (N, width)
    counts = keep.sum(dim=1).tolist()
    ids = [labels[b][keep[b]].cpu().numpy() for b in range(labels.shape[0])]
    return rows, ids, list(rows.split(counts))


def cdm_kd(
    student_logits: Tensor,
    student_labels: Tensor,
    teacher_logits: Tensor,
    teacher_labels: Tensor,
    vocab: VocabPair,
    config: CDMConfig,
) -> tuple[Tensor, float, list[Alignment]]:
    """CDM's KD term over a batch: ``(kd, unmasked_rate, alignments)``; shapes as in :func:`cdm_loss`."""
    s_rows, s_ids, s_split = _response_rows(student_logits, student_labels, len(vocab.student))
    t_rows, t_ids, t_split = _response_rows(teacher_logits.detach(), teacher_labels, len(vocab.teacher))
    for b, (ti, si) in enumerate(zip(t_ids, s_ids, strict=True)):
        if len(ti) == 0 or len(si) == 0:
            raise ValueError(
                f"sample {b} has no labelled positions on one side ({len(ti)} teacher, {len(si)} student)"
            )
    weights = None, None
    if config.entropy_weighted:
        weights = [entropy_weights(r) for r in t_split], [entropy_weights(r) for r in s_split]
    alignments = align_batch(
        [vocab.teacher.stripped[i] for i in t_ids], [vocab.student.stripped[i] for i in s_ids], *weights
    )
    # Global unit ids: sample b's units follow those of samples 0..b-1.
    offsets = np.cumsum([0] + [a.n_units for a in alignments])
    t_unit = torch.from_numpy(
        np.concatenate([a.teacher_unit + o for a, o in zip(alignments, offsets[:-1], strict=True)])
    )
    s_unit = torch.from_numpy(
        np.concatenate([a.student_unit + o for a, o in zip(alignments, offsets[:-1], strict=True)])
    )
    n_units = int(offsets[-1])
    teacher_units = merge_units(t_rows.float(), t_unit.to(t_rows.device), n_units)  # (U, V_T)
    student_units = merge_units(s_rows.float(), s_unit.to(s_rows.device), n_units)  # (U, V_S)
    t_shared, s_shared, mask = shared_vocab_logits(
        teacher_units, student_units, vocab, config.top_k, config.threshold
    )
    kd = masked_kl(t_shared, s_shared, mask, config.temperature)
    return kd, float(mask.float().mean()), alignments


def cdm_loss(
    student_logits: Tensor,
    student_labels: Tensor,
    teacher_logits: Tensor,
    teacher_labels: Tensor,
    vocab: VocabPair,
    config: CDMConfig | None = None,
) -> CDMOutput:
    """``alpha CE + (1 - alpha) KD`` of CDM.

    Parameters
    ----------
    student_logits : Tensor
        ``(B, L_S, V_S)``, shifted: ``student_logits[b, t]`` predicts ``student_labels[b, t]``.
    student_labels : Tensor
        ``(B, L_S)`` int64 student token ids, ``-100`` outside the response.
    teacher_logits, teacher_labels : Tensor
        ``(B, L_T, V_T)`` and ``(B, L_T)``: the same responses under the teacher's tokenizer.
    vocab : VocabPair
        Both tokenizers' strings and static maps.
    """
    config = config or CDMConfig()
    kd, rate, alignments = cdm_kd(
        student_logits, student_labels, teacher_logits, teacher_labels, vocab, config
    )
    ce = _cross_entropy(student_logits, student_labels)
    loss = config.alpha * ce + (1.0 - config.alpha) * kd
    return CDMOutput(loss=loss, ce=ce, kd=kd, unmasked_rate=rate, alignments=alignments)


def dual_teacher_loss(
    student_logits: Tensor,
    student_labels: Tensor,
    same_teacher_logits: Tensor,
    cross_teacher_logits: Tensor,
    cross_teacher_labels: Tensor,
    vocab: VocabPair,
    config: DualTeacherConfig | None = None,
) -> Tensor:
    """``alpha CE + beta_same KL_same + beta_cdm L_CDM`` (dual-teacher CDM, arXiv:2502.11104).

    ``same_teacher_logits`` ``(B, L_S, V_S)`` come from a teacher sharing the student's tokenizer;
    ``cross_teacher_logits``/``cross_teacher_labels`` from the other-tokenizer teacher, as in :func:`cdm_loss`.
    """
    config = config or DualTeacherConfig()
    if same_teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"the same-tokenizer teacher's logits {tuple(same_teacher_logits.shape)} must match the "
            f"student's {tuple(student_logits.shape)}"
        )
    ce = _cross_entropy(student_logits, student_labels)
    same_kl = get_loss("forward_kl", temperature=config.temperature)  # no T^2 inside: added here
    kl_same = config.temperature**2 * same_kl(
        student_logits, same_teacher_logits.detach(), mask=student_labels != IGNORE_INDEX
    )
    kd, _, _ = cdm_kd(
        student_logits, student_labels, cross_teacher_logits, cross_teacher_labels, vocab, config
    )
    return config.alpha * ce + config.beta_same * kl_same + config.beta_cdm * kd
