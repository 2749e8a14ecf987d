"""Token-level distillation losses between a student's and a teacher's next-token distributions.

Every loss is a frozen dataclass whose fields are its hyperparameters; calling it on student logits
``(B, T, V)``, a teacher (logits ``(B, T, V)`` or a :class:`TopKTeacher`) and an optional mask ``(B, T)``
returns the mean, over unmasked positions, of a per-position divergence ``D(p_T, q_S)`` between the
teacher's ``p_T`` and the student's ``q_S``, both softmaxes at ``temperature``. This equals TRL's
``GKDTrainer.generalized_jsd_loss`` with ``reduction="batchmean"`` and labels (sum over positions and
vocabulary, divided by the unmasked count); like it, no ``T**2`` factor is applied (multiply the loss if
your schedule assumes one).

* ``forward_kl``: ``KL(p_T || q_S)`` (mean-seeking).
* ``reverse_kl``: ``KL(q_S || p_T)`` (mode-seeking; MiniLLM, arXiv:2306.08543).
* ``skewed_forward_kl``: ``KL(p_T || lam p_T + (1 - lam) q_S)``; ``skewed_reverse_kl``:
  ``KL(q_S || lam q_S + (1 - lam) p_T)``; DistiLLM (arXiv:2402.03898, section 3.1), ``lam = 0.1``. The
  paper's code minimises the cross-entropy ``-sum p_T log(mix)`` for the forward one; the KL here differs
  by the teacher's entropy, a constant, so the gradients agree and the value is 0 at ``q_S = p_T``.
* ``adaptive_kl``: AKL (arXiv:2404.02657, section 4): ``w_head FKL + w_tail RKL`` with ``w`` the share of
  ``sum |p_T - q_S|`` on the teacher's head (its most likely ids until their cumulative probability
  reaches ``mu = 0.5``) and on the rest. Open choices, named: the weights are computed without gradient
  (``detach_weights``, as the paper's released code does) and the id whose probability crosses ``mu`` is
  in the head.
* ``js``: the Jensen-Shannon divergence, ``generalized_jsd`` at ``beta = 0.5``.
* ``tv``: total variation, ``0.5 sum |p_T - q_S|`` (DistiLLM's baseline).
* ``generalized_jsd``: GKD's JSD(beta) (arXiv:2306.13649, eq. 1),
  ``beta KL(p_T || m) + (1 - beta) KL(q_S || m)`` with ``m = beta p_T + (1 - beta) q_S``. That expression
  tends to 0 at both ends, so, as in TRL, ``beta = 0`` *is* forward KL and ``beta = 1`` reverse KL.

Top-k teachers
--------------
With a :class:`TopKTeacher` the two distributions are compared on ``k + 1`` categories: the teacher's
``k`` ids (their exact log-probabilities on both sides) and one tail bucket holding everything else (the
teacher's cached tail mass against the student's mass on the same ids). Consequences:

* With ``k = V`` there is no tail and the loss equals the full one.
* Merging categories can only lose information: for the f-divergences (every loss here but AKL, whose
  head/tail split is itself taken over the ``k + 1`` categories), the top-k value is at most the full one,
  with equality when the student spreads its tail mass over the tail ids in the teacher's proportions.
* Gradients reach the student's logits of the ``k`` ids individually; all tail ids receive one common
  signal, scaled by each id's own student probability (the tail enters only through its log-sum-exp).
* Use forward KL (or its skewed form) with top-k teachers. Forward KL weights each category by the
  teacher, whose top-k holds most of the mass, so the bucket's error is bounded by the small tail mass.
  Reverse KL weights by the student: it is mode-seeking, and the bucket hides where inside the tail the
  student puts its mass, so it can shrink its mass on the top-k set and grow it on ids the teacher deems
  unlikely with little penalty; training with top-k reverse KL is unstable in practice.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor

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
    "TotalVariation",
    "get_loss",
    "kl_divergence",
    "log_distributions",
    "masked_mean",
]

LossName = Literal[
    "forward_kl",
    "reverse_kl",
    "skewed_forward_kl",
    "skewed_reverse_kl",
    "adaptive_kl",
    "js",
    "tv",
    "generalized_jsd",
]
LOSS_NAMES: tuple[str, ...] = get_args(LossName)


# ---- divergences between log-probability vectors (last dimension), pure functions ----


def kl_divergence(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``KL(p || q) = sum p (log p - log q)`` over the last dimension, with ``0 log 0 = 0``.

    Where ``p`` is 0 both logs are replaced before the product: ``where`` alone would still send
    ``0 * inf = nan`` into the backward pass.
    """
    present = log_p > float("-inf")
    log_p = torch.where(present, log_p, 0.0)
    log_q = torch.where(present, log_q, 0.0)
    return torch.where(present, log_p.exp() * (log_p - log_q), 0.0).sum(-1)


def _log_mixture(log_p: Tensor, log_q: Tensor, weight_p: float) -> Tensor:
    """``log(weight_p p + (1 - weight_p) q)`` for ``0 < weight_p < 1``."""
    return torch.logaddexp(log_p + math.log(weight_p), log_q + math.log1p(-weight_p))


def _generalized_jsd(log_p: Tensor, log_q: Tensor, beta: float) -> Tensor:
    if beta == 0.0:
        return kl_divergence(log_p, log_q)
    if beta == 1.0:
        return kl_divergence(log_q, log_p)
    log_m = _log_mixture(log_p, log_q, beta)
    return beta * kl_divergence(log_p, log_m) + (1.0 - beta) * kl_divergence(log_q, log_m)


# ---- from logits to the two distributions ----


def log_distributions(
    student_logits: Tensor, teacher: Tensor | TopKTeacher, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """The teacher's and the student's log-probabilities over the categories the losses compare.

    Parameters
    ----------
    student_logits : Tensor
        ``(B, T, V)``; computed in at least float32.
    teacher : Tensor or TopKTeacher
        Logits ``(B, T, V)``, or a :class:`TopKTeacher` taken at ``temperature`` with vocabulary ``V``.
    temperature : float
        Softmax temperature applied to both.

    Returns
    -------
    (log_p_teacher, log_q_student) : tuple of Tensor
        ``(B, T, V)`` each for logits; ``(B, T, k + 1)`` for a top-k teacher (the last category is the
        tail), ``(B, T, k)`` when ``k = V``.
    """
    if student_logits.dim() != 3:
        raise ValueError(f"student_logits must be (B, T, V), got {tuple(student_logits.shape)}")
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    log_q = torch.log_softmax(student_logits.to(dtype) / temperature, dim=-1)  # (B, T, V)
    if isinstance(teacher, TopKTeacher):
        return _topk_distributions(log_q, teacher, temperature)
    if teacher.shape != student_logits.shape:
        raise ValueError(
            f"teacher logits must have the student's shape {tuple(student_logits.shape)}, "
            f"got {tuple(teacher.shape)}"
        )
    log_p = torch.log_softmax(teacher.to(dtype) / temperature, dim=-1)
    return log_p, log_q


def _topk_distributions(log_q: Tensor, teacher: TopKTeacher, temperature: float) -> tuple[Tensor, Tensor]:
    batch, length, vocab = log_q.shape
    if teacher.vocab_size != vocab:
        raise ValueError(
            f"the TopKTeacher's vocab_size is {teacher.vocab_size}, the student's logits have {vocab}"
        )
    if teacher.ids.shape[:2] != (batch, length):
        raise ValueError(
            f"the TopKTeacher covers (B, T) = {tuple(teacher.ids.shape[:2])}, the student {(batch, length)}"
        )
    if not math.isclose(teacher.temperature, temperature, rel_tol=1e-9):
        raise ValueError(
            f"the TopKTeacher was taken at temperature {teacher.temperature}, the loss uses "
            f"{temperature}; rebuild it at the loss's temperature"
        )
    ids = teacher.ids.to(log_q.device)
    log_q_top = log_q.gather(-1, ids)  # (B, T, k)
    log_p_top = teacher.logprobs.to(log_q)
    if teacher.k == vocab:
        return log_p_top, log_q_top
    # the student's tail: its mass on every id outside the teacher's top-k, as one category
    log_q_tail = torch.logsumexp(log_q.scatter(-1, ids, float("-inf")), dim=-1, keepdim=True)
    log_p_tail = teacher.tail_logmass.to(log_q).unsqueeze(-1)  # (B, T, 1)
    return torch.cat([log_p_top, log_p_tail], -1), torch.cat([log_q_top, log_q_tail], -1)


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``values`` ``(B, T)`` over positions where ``mask`` ``(B, T)`` is true (all if None).

    A mask with no true position gives 0 (with a gradient path), not ``nan``.
    """
    if mask is None:
        return values.mean()
    if mask.shape != values.shape:
        raise ValueError(f"mask must be (B, T) = {tuple(values.shape)}, got {tuple(mask.shape)}")
    keep = mask.to(device=values.device, dtype=torch.bool)
    return torch.where(keep, values, 0.0).sum() / keep.sum().clamp_min(1)


# ---- the losses ----


@dataclass(frozen=True)
class DistillLoss(ABC):
    """Base class: a per-position divergence, averaged over the unmasked positions.

    Attributes
    ----------
    temperature : float
        Softmax temperature applied to student and teacher logits (a :class:`TopKTeacher` must have
        been taken at the same one).
    """

    name: ClassVar[LossName]
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be finite and > 0, got {self.temperature}")

    @abstractmethod
    def divergence(self, log_p: Tensor, log_q: Tensor) -> Tensor:
        """``D(p_T, q_S)`` over the last dimension of teacher ``log_p`` and student ``log_q``."""

    def per_token(self, student_logits: Tensor, teacher: Tensor | TopKTeacher) -> Tensor:
        """The divergence at every position, ``(B, T)``."""
        log_p, log_q = log_distributions(student_logits, teacher, self.temperature)
        return self.divergence(log_p, log_q)

    def __call__(
        self, student_logits: Tensor, teacher: Tensor | TopKTeacher, mask: Tensor | None = None
    ) -> Tensor:
        """Mean divergence over positions where ``mask`` ``(B, T)`` is true (prompt/padding false)."""
        return masked_mean(self.per_token(student_logits, teacher), mask)


@dataclass(frozen=True)
class ForwardKL(DistillLoss):
    """``KL(p_T || q_S)``."""

    name: ClassVar[LossName] = "forward_kl"

    def divergence(self, log_p: Tensor, log_q: Tensor) -> Tensor:
        return kl_divergence(log_p, log_q)


@dataclass(frozen=True)
class ReverseKL(DistillLoss):
    """``KL(q_S || p_T)`` (arXiv:2306.08543). Avoid with a :class:`TopKTeacher` (module docstring)."""

    name: ClassVar[LossName] = "reverse_kl"

    def divergence(self, log_p: Tensor, log_q: Tensor) -> Tensor:
        return kl_divergence(log_q, log_p)


def _check_skew(lam: float) -> None:
    if not 0.0 < lam < 1.0:
        raise ValueError(f"lam must be in (0, 1), got {lam}")


@dataclass(frozen=True)
class SkewedForwardKL(DistillLoss):
    """``KL(p_T || lam p_T + (1 - lam) q_S)`` (DistiLLM, arXiv:2402.03898).

    Attributes
    ----------
    lam : float
        Share of the teacher in the mixture, in (0, 1); the paper's 0.1.
    """

    name: ClassVar[LossName] = "skewed_forward_kl"
    lam: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_skew(self.lam)

    def divergence(self, log_p: Tensor, log_q: Tensor) -> Tensor:
        return kl_divergence(log_p, _log_mixture(log_p, log_q, self.lam))


@dataclass(frozen=True)
class SkewedReverseKL(DistillLoss):
    """``KL(q_S || lam q_S + (1 - lam) p_T)`` (DistiLLM, arXiv:2402.03898).

    Attributes
    ----------
    lam : float
        Share of the student in the mixture, in (0, 1); the paper's 0.1.
    """

    name: ClassVar[LossName] = "skewed_reverse_kl"
    lam: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_skew(self.lam)

    def divergence(self, log_p: Tensor, log_q: Tensor) -> Tensor:
        return kl_divergence(log_q, _log_mixture(log_q, log_p, self.lam))


@dataclass(frozen=True)
class AdaptiveKL(DistillLoss):
    """AKL (arXiv:2404.02657): forward and reverse KL weighted by the gaps on the head and the tail.

    Attributes
    ----------
    mu : float
        The head is the teacher's most likely ids until their cumulative probability reaches ``mu``
        (the crossing id included), in (0, 1]; the paper's 0.5.
    detach_weights : bool
        Compute the weights without gradient, as the paper's code does; False makes the loss a plain
        differentiable function of the student (used to check gradients).
    """

    name: ClassVar[LossName] = "adaptive_kl"
    mu: float = 0.5
    detach_weights: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.mu <= 1.0:
            raise ValueError(f"mu must be in (0, 1], got {self.mu}")

    def divergence(self, log_p: Tensor, log_q: Tensor) -> Tensor:
        p, q = log_p.exp(), log_q.exp()
        if self.detach_weights:
            p, q = p.detach(), q.detach()
        order = p.argsort(dim=-1, descending=True)
        p_sorted = p.gather(-1, order)
        gap = (p - q).abs().gather(-1, order)
        # mass strictly before each id, so the id that crosses mu is still in the head
        # e.g. p_sorted [0.4 0.3 0.2 0.1], mu 0.5: before [0 0.4 0.7 0.9] -> head [1 1 0 0]
        head = (p_sorted.cumsum(-1) - p_sorted) < self.mu
        g_head = torch.where(head, gap, 0.0).sum(-1)
        g_tail = torch.where(head, 0.0, gap).sum(-1)
        # both gaps are 0 only when q = p, where both KLs are 0 too: any finite weight will do
        total = (g_head + g_tail).clamp_min(torch.finfo(gap.dtype).tiny)
        fkl, rkl = kl_divergence(log_p, log_q), kl_divergence(log_q, log_p)
        return (g_head / total) * fkl + (g_tail / total) * rkl


@dataclass(frozen=True)
class JensenShannon(DistillLoss):
    """``0.5 KL(p_T || m) + 0.5 KL(q_S || m)``, ``m = (p_T + q_S) / 2``."""

    name: ClassVar[LossName] = "js"

    def divergence(self, log_p: Tensor, log_q: Tensor) -> Tensor:
        return _generalized_jsd(log_p, log_q, 0.5)


@dataclass(frozen=True)
class TotalVariation(DistillLoss):
    """``0.5 sum |p_T - q_S|``."""

    name: ClassVar[LossName] = "tv"

    def divergence(self, log_p: Tensor, log_q: Tensor) -> Tensor:
        return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)


@dataclass(frozen=True)
class GeneralizedJSD(DistillLoss):
    """GKD's JSD(beta) (arXiv:2306.13649, eq. 1); ``beta = 0`` forward KL, ``beta = 1`` reverse KL.

    Attributes
    ----------
    beta : float
        Weight of the teacher in the mixture ``m = beta p_T + (1 - beta) q_S``, in [0, 1]; TRL's
        default 0.5.
    """

    name: ClassVar[LossName] = "generalized_jsd"
    beta: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")

    def divergence(self, log_p: Tensor, log_q: Tensor) -> Tensor:
        return _generalized_jsd(log_p, log_q, self.beta)


LOSSES: dict[str, type[DistillLoss]] = {
    cls.name: cls
    for cls in (
        ForwardKL,
        ReverseKL,
        SkewedForwardKL,
        SkewedReverseKL,
        AdaptiveKL,
        JensenShannon,
        TotalVariation,
        GeneralizedJSD,
    )
}


def get_loss(name: str, **params: float | bool) -> DistillLoss:
    """The loss called ``name`` (one of :data:`LOSS_NAMES`) with hyperparameters ``params``.

    >>> get_loss("skewed_forward_kl", lam=0.2, temperature=0.9)
    SkewedForwardKL(temperature=0.9, lam=0.2)
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSS_NAMES)}")
    cls = LOSSES[name]
    allowed = [f.name for f in fields(cls)]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"loss {name!r} takes {allowed}, got unknown parameters {unknown}")
    return cls(**params)  # type: ignore[arg-type]
