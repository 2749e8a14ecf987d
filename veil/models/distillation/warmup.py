"""Warmup-Distill (Sun et al., arXiv:2502.11766): align the student with the teacher before KD.

The paper samples the student "in practical scenarios", uses the teacher as a checker to find the
student's low-probability knowledge, corrects it, warms the student up on the corrections, then runs
ordinary KD from the warmed-up student. No code was published; every rule the paper leaves open is a
field of :class:`WarmupConfig`:

1. **Detect.** ``n_samples`` completions per prompt from the student at temperature 1, top-p 1 (pure
   ancestral sampling, the student's own distribution), at most ``max_new_tokens`` each.
2. **Check.** Teacher and student are teacher-forced on each completion. Position ``t`` is flagged
   when ``mode="abs"``: ``p_T(y_t) < tau`` (default 0.1: the teacher gives the student's token less
   than one chance in ten), or ``mode="margin"``: ``log q_S(y_t) - log p_T(y_t) > delta`` (default
   ``log 10``: the student is ten times surer of the token than the teacher).
3. **Correct.** ``fix="regen"`` (default): the first flagged token becomes the teacher's argmax and
   the teacher continues greedily to EOS or ``max_new_tokens``, so the corrected text stays coherent
   after the change. ``fix="inplace"``: every flagged token becomes the teacher's argmax under the
   student's original prefix (cheaper; later tokens are not revisited). A flagged token that is
   already the teacher's argmax stays. Samples without flags are kept as SFT targets when
   ``keep_unflagged`` (they already passed the check); they never form DPO pairs.
4. **Warm up.** ``objective="sft"``: cross-entropy on the corrected completions. ``"dpo"``: the
   sigmoid DPO loss (Rafailov et al., arXiv:2305.18290) with chosen = corrected, rejected = original,
   reference = the frozen initial student, temperature ``beta``. ``"dpo+sft"`` (default; the paper
   names both a cross-entropy and a preference-optimisation term): DPO + ``alpha`` x CE on chosen.
5. **Distill.** :func:`warmup_distill` hands the warmed-up student to
   :func:`veil.models.distillation.kd.distill`.

:class:`WarmupReport` holds the flagged-token rate, the teacher NLL of student samples and the
token-level KL(teacher || student) on student samples, measured before and after warm-up on samples
drawn with the same seed.

DPO is computed here rather than with TRL's ``DPOTrainer``, although that trainer runs offline on CPU
with a tiny model: it takes (prompt, chosen, rejected) *strings* only, re-tokenizes them and appends
EOS to any that lacks it. The corrections are token-level (a flag and a teacher argmax per
token); a byte-level BPE often re-encodes an edited sequence's text to other ids, and a sample cut at
``max_new_tokens`` has no EOS, so the trainer would fit pairs other than the ones the teacher
checked. A token-level loss also lets SFT, DPO and DPO+SFT share one loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from veil.models.distillation.data import model_device
from veil.models.distillation.kd import KDConfig, KDStep, LossFn, distill, generate, pack, response_rows

__all__ = [
    "FIXES",
    "MODES",
    "OBJECTIVES",
    "Fix",
    "Mode",
    "Objective",
    "SampleScores",
    "WarmupConfig",
    "WarmupPair",
    "WarmupReport",
    "WarmupStats",
    "build_pairs",
    "correct_inplace",
    "correct_regen",
    "dpo_loss",
    "flag_tokens",
    "measure",
    "preference_pairs",
    "score_samples",
    "warm_up",
    "warmup_distill",
]

Mode = Literal["abs", "margin"]
Fix = Literal["inplace", "regen"]
Objective = Literal["sft", "dpo", "dpo+sft"]
MODES: tuple[str, ...] = get_args(Mode)
FIXES: tuple[str, ...] = get_args(Fix)
OBJECTIVES: tuple[str, ...] = get_args(Objective)


@dataclass
class WarmupConfig:
    """Warm-up settings (Warmup-Distill, arXiv:2502.11766; the paper publishes none of these values).

    Attributes
    ----------
    n_samples: student completions per prompt.
    max_new_tokens: longest student completion (and longest teacher regeneration).
    mode: flag rule, ``"abs"`` (teacher probability below ``tau``) or ``"margin"`` (student/teacher
        log-ratio above ``delta``).
    tau: threshold on ``p_T(y_t)`` for ``mode="abs"``.
    delta: threshold on ``log q_S(y_t) - log p_T(y_t)`` (nats) for ``mode="margin"``.
    fix: ``"regen"`` (teacher argmax at the first flag, then teacher greedy) or ``"inplace"``.
    keep_unflagged: with ``objective="sft"``, train on samples without flags too (as their own
        targets); DPO and DPO+SFT train on corrected pairs only.
    objective: ``"sft"``, ``"dpo"`` or ``"dpo+sft"``.
    beta: DPO temperature (arXiv:2305.18290; TRL's default 0.1).
    alpha: weight of the CE term in ``"dpo+sft"``.
    epochs: passes over the warm-up examples.
    lr: AdamW learning rate (constant).
    batch_size: examples per step.
    max_grad_norm: gradient-norm clip; ``0`` disables it.
    seed: seeds sampling and batch order; the before/after measurements use ``seed + 1``.
    """

    n_samples: int = 4
    max_new_tokens: int = 128
    mode: Mode = "abs"
    tau: float = 0.1
    delta: float = math.log(10.0)
    fix: Fix = "regen"
    keep_unflagged: bool = True
    objective: Objective = "dpo+sft"
    beta: float = 0.1
    alpha: float = 1.0
    epochs: int = 1
    lr: float = 5e-5
    batch_size: int = 8
    max_grad_norm: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name, allowed in (("mode", MODES), ("fix", FIXES), ("objective", OBJECTIVES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("n_samples", "max_new_tokens", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must lie in (0, 1], got {self.tau}")
        if self.beta <= 0 or self.lr <= 0:
            raise ValueError(f"beta and lr must be > 0, got beta={self.beta}, lr={self.lr}")
        if self.alpha < 0 or self.max_grad_norm < 0:
            raise ValueError(
                f"alpha and max_grad_norm must be >= 0, got alpha={self.alpha}, max_grad_norm={self.max_grad_norm}"
            )


@dataclass
class SampleScores:
    """Teacher-forced scores of one completion; every tensor is ``(T,)`` over its tokens."""

    teacher_logp: Tensor
    student_logp: Tensor
    teacher_argmax: Tensor
    kl: Tensor
    """KL(teacher || student) of the next-token distributions at each position."""


@dataclass
class WarmupStats:
    """The three quantities Warmup-Distill should lower, averaged over all sampled tokens."""

    flagged_rate: float
    teacher_nll: float
    kl: float


@dataclass
class WarmupPair:
    """One student sample and its correction (``chosen == rejected`` when nothing was changed)."""

    prompt: list[int]
    rejected: list[int]
    chosen: list[int]


@dataclass
class WarmupReport:
    """Before/after statistics of a warm-up and what it trained on."""

    before: WarmupStats
    after: WarmupStats
    n_samples: int
    n_corrected: int
    losses: list[float] = field(default_factory=list)


def flag_tokens(
    teacher_logp: Tensor, student_logp: Tensor, mode: Mode, tau: float = 0.1, delta: float = math.log(10.0)
) -> Tensor:
    """Flag tokens the teacher finds improbable; any shape, returns a bool tensor of that shape.

    >>> flag_tokens(torch.log(torch.tensor([0.05, 0.5])), torch.log(torch.tensor([0.9, 0.9])), "abs")
    tensor([ True, False])
    """
    if mode == "abs":
        return teacher_logp < math.log(tau)
    if mode == "margin":
        return student_logp - teacher_logp > delta
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def correct_inplace(
    completion: Sequence[int], flags: Sequence[bool], teacher_argmax: Sequence[int]
) -> list[int]:
    """Every flagged token becomes the teacher's argmax under the student's (original) prefix."""
    if not len(completion) == len(flags) == len(teacher_argmax):
        raise ValueError(f"lengths differ: {len(completion)}, {len(flags)}, {len(teacher_argmax)}")
    return [int(a) if f else int(y) for y, f, a in zip(completion, flags, teacher_argmax, strict=True)]


def correct_regen(
    teacher: nn.Module,
    prompt: Sequence[int],
    completion: Sequence[int],
    flags: Sequence[bool],
    teacher_argmax: Sequence[int],
    max_new_tokens: int,
    *,
    eos_id: int,
    pad_id: int,
) -> list[int]:
    """Keep ``y_<t*``, put the teacher's argmax at the first flag ``t*``, let the teacher continue greedily.

    The completion is at most ``max_new_tokens`` long; without flags it is returned unchanged.
    """
    if len(completion) != len(flags) or len(completion) != len(teacher_argmax):
        raise ValueError(f"lengths differ: {len(completion)}, {len(flags)}, {len(teacher_argmax)}")
    flagged = [t for t, f in enumerate(flags) if f]
    if not flagged:
        return list(completion)
    t_star = flagged[0]
    # [y1 y2 Y3 y4] with t*=2 -> [y1 y2 a3] + teacher greedy from prompt + [y1 y2 a3]
    head = [int(y) for y in completion[:t_star]] + [int(teacher_argmax[t_star])]
    if head[-1] == eos_id or len(head) >= max_new_tokens:
        return head
    tail = generate(
        teacher, [list(prompt) + head], max_new_tokens - len(head), eos_id=eos_id, pad_id=pad_id, greedy=True
    )
    return head + tail[0]


@torch.no_grad()
def score_samples(
    teacher: nn.Module,
    student: nn.Module,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    pad_id: int,
) -> list[SampleScores]:
    """Teacher-force both models on each ``prompt + completion``; one :class:`SampleScores` per row."""
    ids, attn, resp = pack(prompts, completions, pad_id, model_device(student))
    keep = resp[:, 1:]  # (B, L-1): position t predicts the response token t+1
    targets = ids[:, 1:][keep]  # (N,) in (row, position) order, as the rows below
    t_lp = torch.log_softmax(response_rows(teacher, ids, attn, resp), -1)  # (N, V)
    s_lp = torch.log_softmax(response_rows(student, ids, attn, resp), -1)
    t_tok = t_lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (N,)
    s_tok = s_lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    kl = (t_lp.exp() * (t_lp - s_lp)).sum(-1)  # (N,)
    argmax = t_lp.argmax(-1)
    counts = keep.sum(1).tolist()
    return [
        SampleScores(teacher_logp=t, student_logp=s, teacher_argmax=a, kl=k)
        for t, s, a, k in zip(
            t_tok.split(counts), s_tok.split(counts), argmax.split(counts), kl.split(counts), strict=True
        )
    ]


def _sample(
    student: nn.Module,
    prompts: Sequence[Sequence[int]],
    config: WarmupConfig,
    seed: int,
    eos_id: int,
    pad_id: int,
) -> tuple[list[list[int]], list[list[int]]]:
    """``n_samples`` completions of every prompt (temperature 1, no truncation); empty ones dropped."""
    gen = torch.Generator().manual_seed(seed)  # on the CPU: ``generate`` draws there on every device
    rows = [list(p) for p in prompts for _ in range(config.n_samples)]
    outs = generate(
        student, rows, config.max_new_tokens, eos_id=eos_id, pad_id=pad_id, temperature=1.0, generator=gen
    )
    kept = [(p, c) for p, c in zip(rows, outs, strict=True) if c]
    return [p for p, _ in kept], [c for _, c in kept]


def measure(
    student: nn.Module,
    teacher: nn.Module,
    prompts: Sequence[Sequence[int]],
    config: WarmupConfig,
    *,
    eos_id: int,
    pad_id: int,
    seed: int | None = None,
) -> WarmupStats:
    """Flagged rate, teacher NLL and KL(teacher || student) per token of fresh student samples."""
    rows, outs = _sample(student, prompts, config, config.seed + 1 if seed is None else seed, eos_id, pad_id)
    scores = score_samples(teacher, student, rows, outs, pad_id)
    t_lp = torch.cat([s.teacher_logp for s in scores])
    s_lp = torch.cat([s.student_logp for s in scores])
    flags = flag_tokens(t_lp, s_lp, config.mode, config.tau, config.delta)
    return WarmupStats(
        flagged_rate=float(flags.float().mean()),
        teacher_nll=float(-t_lp.mean()),
        kl=float(torch.cat([s.kl for s in scores]).mean()),
    )


def build_pairs(
    student: nn.Module,
    teacher: nn.Module,
    prompts: Sequence[Sequence[int]],
    config: WarmupConfig,
    *,
    eos_id: int,
    pad_id: int,
) -> list[WarmupPair]:
    """Sample, check and correct: one :class:`WarmupPair` per non-empty student sample."""
    rows, outs = _sample(student, prompts, config, config.seed, eos_id, pad_id)
    scores = score_samples(teacher, student, rows, outs, pad_id)
    pairs = []
    for prompt, y, s in zip(rows, outs, scores, strict=True):
        flags = flag_tokens(s.teacher_logp, s.student_logp, config.mode, config.tau, config.delta).tolist()
        argmax = s.teacher_argmax.tolist()
        if config.fix == "inplace":
            fixed = correct_inplace(y, flags, argmax)
        else:
            fixed = correct_regen(
                teacher, prompt, y, flags, argmax, config.max_new_tokens, eos_id=eos_id, pad_id=pad_id
            )
        pairs.append(WarmupPair(prompt=prompt, rejected=y, chosen=fixed))
    return pairs


def preference_pairs(pairs: Sequence[WarmupPair]) -> list[WarmupPair]:
    """The pairs DPO trains on: those whose correction changed the sample."""
    return [p for p in pairs if p.chosen != p.rejected]


def dpo_loss(
    policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float
) -> Tensor:
    """Sigmoid DPO loss (arXiv:2305.18290, eq. 7), mean over ``(B,)`` sequence log-probabilities.

    ``-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))``
    """
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin).mean()


def _sequence_logp(
    model: nn.Module, prompts: list[list[int]], completions: list[list[int]], pad_id: int
) -> tuple[Tensor, Tensor]:
    """Summed log-probability ``(B,)`` of each completion and the token count ``(B,)``."""
    ids, attn, resp = pack(prompts, completions, pad_id, model_device(model))
    keep = resp[:, 1:]  # (B, L-1): position t predicts the response token t+1
    rows, _ = keep.nonzero(as_tuple=True)  # (N,) the batch row of each response token
    logp = torch.log_softmax(response_rows(model, ids, attn, resp), -1)  # (N, V)
    tok = logp.gather(-1, ids[:, 1:][keep].unsqueeze(-1)).squeeze(-1)  # (N,)
    return tok.new_zeros(len(prompts)).index_add(0, rows, tok), keep.sum(-1)


def warm_up(
    student: nn.Module,
    teacher: nn.Module,
    prompts: Sequence[Sequence[int]],
    config: WarmupConfig,
    *,
    eos_id: int,
    pad_id: int,
) -> WarmupReport:
    """Warm ``student`` up in place on the teacher's corrections of its own samples."""
    if not prompts:
        raise ValueError("prompts is empty")
    device = model_device(student)
    if model_device(teacher) != device:
        raise ValueError(f"teacher and student must share a device, got {model_device(teacher)} and {device}")
    teacher.eval()
    before = measure(student, teacher, prompts, config, eos_id=eos_id, pad_id=pad_id)
    pairs = build_pairs(student, teacher, prompts, config, eos_id=eos_id, pad_id=pad_id)
    corrected = preference_pairs(pairs)
    sft = pairs if config.keep_unflagged else corrected
    dpo = corrected if config.objective != "sft" else []
    examples = sft if config.objective == "sft" else dpo
    ref_c = ref_r = torch.zeros(0, device=device)
    if dpo:
        # the reference is the student before any update: score once, before training
        with torch.no_grad():
            ref_c, _ = _sequence_logp(student, [p.prompt for p in dpo], [p.chosen for p in dpo], pad_id)
            ref_r, _ = _sequence_logp(student, [p.prompt for p in dpo], [p.rejected for p in dpo], pad_id)
    gen = torch.Generator().manual_seed(config.seed)  # batch order only: stays on the CPU
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=config.lr)
    student.train()
    losses = []
    for _ in range(config.epochs if examples else 0):
        order = torch.randperm(len(examples), generator=gen).tolist()
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            batch = [examples[i] for i in idx]
            prompts_b = [p.prompt for p in batch]
            chosen_lp, n_tok = _sequence_logp(student, prompts_b, [p.chosen for p in batch], pad_id)
            if config.objective == "sft":
                loss = -chosen_lp.sum() / n_tok.sum().clamp(min=1)
            else:
                rejected_lp, _ = _sequence_logp(student, prompts_b, [p.rejected for p in batch], pad_id)
                loss = dpo_loss(chosen_lp, rejected_lp, ref_c[idx], ref_r[idx], config.beta)
                if config.objective == "dpo+sft":
                    loss = loss + config.alpha * (-chosen_lp.sum() / n_tok.sum().clamp(min=1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(student.parameters(), config.max_grad_norm)
            opt.step()
            losses.append(float(loss.detach()))
    after = measure(student, teacher, prompts, config, eos_id=eos_id, pad_id=pad_id)
    return WarmupReport(
        before=before, after=after, n_samples=len(pairs), n_corrected=len(corrected), losses=losses
    )


def warmup_distill(
    student: nn.Module,
    teacher: nn.Module,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]] | None,
    warmup: WarmupConfig,
    kd: KDConfig,
    *,
    eos_id: int,
    pad_id: int,
    loss_fn: LossFn | None = None,
) -> tuple[WarmupReport, list[KDStep]]:
    """Warm the student up, then run GKD (:func:`~veil.models.distillation.kd.distill`) from it."""
    report = warm_up(student, teacher, prompts, warmup, eos_id=eos_id, pad_id=pad_id)
    history = distill(student, teacher, prompts, responses, kd, eos_id=eos_id, pad_id=pad_id, loss_fn=loss_fn)
    return report, history
