"""Same-tokenizer knowledge distillation with a mix of off- and on-policy sequences (GKD, arXiv:2306.13649).

Generalized Knowledge Distillation (Agarwal et al., ICLR 2024) trains the student on a mixture of fixed
(off-policy) responses and responses the student samples itself (on-policy); with probability ``lmbda``
a step's responses are the student's own samples for that step's prompts, otherwise the given ones. The
token-level divergence between teacher and student next-token distributions is minimised on the
response tokens only. ``lmbda = 0`` is supervised KD on the given responses, ``lmbda = 1`` is fully
on-policy KD.

Everything works on token ids (teacher and student share one tokenizer): a prompt and a response are
``list[int]``, and :func:`pack` lays rows out right-padded with a mask of response tokens.

Choices the paper leaves open (each a field of :class:`KDConfig`):

- ``lmbda`` is drawn once per step for the whole batch (the paper's Algorithm 1 draws per batch too);
- student samples use the same ``temperature`` as the loss, pure sampling (no top-k / top-p), and stop
  at EOS or ``max_new_tokens``; the EOS token is trained like any response token, padding never is;
- the loss is any name of ``veil.models.distillation.losses.get_loss`` (default ``generalized_jsd``,
  the paper's objective, with its ``beta`` and other hyperparameters in ``loss_params``), built with
  ``temperature`` so both models' logits are softened alike;
- plain AdamW at a constant ``lr``, gradient clipping at ``max_grad_norm``, prompts drawn uniformly
  without replacement within a step.

A small loop instead of TRL's ``GKDTrainer``: that trainer lives under ``trl.experimental`` (no stable
API), fixes the loss to its generalized JSD, and takes text or chat-message datasets that it
re-tokenizes; here any registered loss runs on exactly the token ids given, and the Warmup-Distill
stage (:mod:`veil.models.distillation.warmup`) hands its student straight in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from veil.models.distillation.data import model_device

__all__ = [
    "KDConfig",
    "KDStep",
    "LossFn",
    "distill",
    "generate",
    "pack",
    "response_logits",
    "response_rows",
]

LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``loss(student_logits (B, T, V), teacher_logits (B, T, V), mask (B, T) bool) -> scalar``, raw
logits in; the loss applies its own temperature (as ``get_loss``'s losses do). A token-level mean over
the masked positions: :func:`distill` passes a batch's response tokens as one row ``(1, N, V)``."""


@dataclass
class KDConfig:
    """GKD settings (Agarwal et al., arXiv:2306.13649).

    Attributes
    ----------
    loss: name of the token-level divergence, looked up with ``losses.get_loss``.
    loss_params: the loss's hyperparameters other than temperature (e.g. ``{"beta": 0.5}``).
    lmbda: probability that a step trains on student samples (on-policy fraction); paper/TRL: 0.5.
    temperature: softmax temperature of the loss and of student sampling.
    max_new_tokens: longest student sample, in tokens.
    steps: optimiser steps.
    lr: AdamW learning rate (constant).
    batch_size: prompts per step.
    max_grad_norm: gradient-norm clip; ``0`` disables it.
    seed: seeds the batch order, the on-policy coin and student sampling.
    """

    loss: str = "generalized_jsd"
    loss_params: dict[str, float] = field(default_factory=dict)
    lmbda: float = 0.5
    temperature: float = 1.0
    max_new_tokens: int = 128
    steps: int = 100
    lr: float = 5e-5
    batch_size: int = 8
    max_grad_norm: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.lmbda <= 1.0:
            raise ValueError(f"lmbda must lie in [0, 1], got {self.lmbda}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        for name in ("max_new_tokens", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.max_grad_norm < 0:
            raise ValueError(f"max_grad_norm must be >= 0, got {self.max_grad_norm}")


@dataclass
class KDStep:
    """One optimiser step: its loss and whether its responses were student samples."""

    step: int
    loss: float
    on_policy: bool


def pack(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded ``prompt + response`` rows on ``device`` (default: the CPU).

    Returns
    -------
    input_ids: ``(B, L)`` long.
    attention_mask: ``(B, L)`` long, 1 on real tokens.
    response_mask: ``(B, L)`` bool, True on response tokens.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    rows = [list(p) + list(r) for p, r in zip(prompts, responses, strict=True)]
    width = max(len(r) for r in rows)
    # prompt [p1 p2] + response [r1 r2 eos] -> [p1 p2 r1 r2 eos pad ...]; response_mask on r1..eos
    ids = [row + [pad_id] * (width - len(row)) for row in rows]
    attn = [[1] * len(row) + [0] * (width - len(row)) for row in rows]
    resp = [[False] * len(p) + [True] * (len(row) - len(p)) + [False] * (width - len(row))
            for p, row in zip(prompts, rows, strict=True)]  # fmt: skip
    return (
        torch.tensor(ids, dtype=torch.long, device=device),
        torch.tensor(attn, dtype=torch.long, device=device),
        torch.tensor(resp, dtype=torch.bool, device=device),
    )


def response_logits(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Logits aligned with the tokens they predict.

    Returns
    -------
    logits: ``(B, L-1, V)``; ``logits[:, t]`` predicts ``targets[:, t] = input_ids[:, t+1]``.
    targets: ``(B, L-1)`` long.
    mask: ``(B, L-1)`` bool, True where the target is a response token.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return logits[:, :-1].float(), input_ids[:, 1:], response_mask[:, 1:]


def response_rows(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor
) -> Tensor:
    """Logits ``(N, V)`` of the ``N`` positions that predict a response token, in (row, position) order.

    The rows of :func:`response_logits`'s ``logits[mask]``, but the output head runs on those ``N``
    positions only: prompts are the longer part of a row and the head is the largest matmul when the
    vocabulary is large, so this is several times cheaper. Needs a ``PreTrainedModel``-style
    ``base_model`` and ``get_output_embeddings()`` (no logit soft-capping).
    """
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    # position t predicts token t+1: hidden (B, L, H) -> the N rows before a response token (N, H)
    rows, cols = response_mask[:, 1:].nonzero(as_tuple=True)
    return model.get_output_embeddings()(hidden[rows, cols]).float()


@torch.no_grad()
def generate(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    eos_id: int,
    pad_id: int,
    temperature: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Continue each prompt by sampling (or argmax with ``greedy``) until EOS or ``max_new_tokens``.

    Pure ancestral sampling from ``softmax(logits / temperature)``: no top-k, no top-p. Returns the
    new tokens of each row, EOS included when reached. Full forward per token (no cache): meant for
    the short completions of tests and warm-up, and free of ``generate``'s sampling defaults. The
    output head runs on each row's last position only (as :func:`response_rows`, same model needs).

    The batches live on the model's device; a ``generator`` on another device (a CPU generator with a
    CUDA model) draws there, so one seed gives one stream of draws whatever the model's device.
    """
    device = model_device(model)
    seqs = [list(p) for p in prompts]
    new: list[list[int]] = [[] for _ in prompts]
    live = list(range(len(seqs)))
    for _ in range(max_new_tokens):
        if not live:
            break
        ids, attn, _ = pack([seqs[i] for i in live], [[] for _ in live], pad_id, device)
        hidden = model.base_model(input_ids=ids, attention_mask=attn).last_hidden_state  # (b, L, H)
        # the output head on each row's last real position only: (b, H) -> (b, V)
        ends = hidden[torch.arange(len(live), device=device), attn.sum(1) - 1]
        last = model.get_output_embeddings()(ends).float()
        if greedy:
            nxt = last.argmax(-1)
        else:
            probs = torch.softmax(last / temperature, dim=-1)
            if generator is not None:
                probs = probs.to(generator.device)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        still = []
        for j, i in enumerate(live):
            tok = int(nxt[j])
            seqs[i].append(tok)
            new[i].append(tok)
            if tok != eos_id:
                still.append(i)
        live = still
    return new


def _resolve_loss(config: KDConfig) -> LossFn:
    from veil.models.distillation.losses import get_loss

    return get_loss(config.loss, temperature=config.temperature, **config.loss_params)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]] | None,
    config: KDConfig,
    *,
    eos_id: int,
    pad_id: int,
    loss_fn: LossFn | None = None,
) -> list[KDStep]:
    """Train ``student`` in place towards ``teacher`` (GKD, arXiv:2306.13649, Algorithm 1).

    Parameters
    ----------
    prompts: token ids of each prompt.
    responses: the off-policy response of each prompt; may be ``None`` only when ``lmbda == 1``.
    loss_fn: overrides ``config.loss`` (same call as ``get_loss``'s losses; it applies its own
        temperature, ``config.temperature`` then only sets the sampling temperature).

    Returns
    -------
    One :class:`KDStep` per optimiser step.
    """
    if not prompts:
        raise ValueError("prompts is empty")
    if responses is None and config.lmbda < 1.0:
        raise ValueError(f"responses are needed unless lmbda == 1, got lmbda={config.lmbda}")
    if responses is not None and len(responses) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    device = model_device(student)
    if model_device(teacher) != device:
        raise ValueError(f"teacher and student must share a device, got {model_device(teacher)} and {device}")
    loss_fn = loss_fn or _resolve_loss(config)
    given: Sequence[Sequence[int]] = responses if responses is not None else ()
    gen = torch.Generator().manual_seed(config.seed)  # on the CPU: the same draws on every device
    teacher.eval()
    student.train()
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=config.lr)
    history = []
    for step in range(config.steps):
        idx = torch.randperm(len(prompts), generator=gen)[: config.batch_size].tolist()
        batch_prompts = [prompts[i] for i in idx]
        on_policy = bool(torch.rand((), generator=gen) < config.lmbda)
        if on_policy:
            batch_responses = generate(
                student,
                batch_prompts,
                config.max_new_tokens,
                eos_id=eos_id,
                pad_id=pad_id,
                temperature=config.temperature,
                generator=gen,
            )
        else:
            batch_responses = [given[i] for i in idx]
        ids, attn, resp = pack(batch_prompts, batch_responses, pad_id, device)
        with torch.no_grad():
            t_rows = response_rows(teacher, ids, attn, resp)  # (N, V)
        s_rows = response_rows(student, ids, attn, resp)
        # the losses are means over response tokens: the N tokens as one row (1, N, V) give the same mean
        everywhere = torch.ones((1, s_rows.shape[0]), dtype=torch.bool, device=device)
        loss = loss_fn(s_rows[None], t_rows[None], everywhere)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(student.parameters(), config.max_grad_norm)
        opt.step()
        history.append(KDStep(step=step, loss=float(loss.detach()), on_policy=on_policy))
    return history
