"""Held-out metrics for distilled students, and the SFT baseline every method is compared against.

Metrics (over the responses of :class:`~veil.models.distillation.data.Example` rows; prompts are
conditioning only):

- **NLL per response token** (nats), and **bits per character**: the responses' total NLL in bits over
  their characters. Token counts differ between tokenizers, string probabilities do not, so bits per
  character compares students of different tokenizers (the per-character normalisation of the
  language-modelling literature, e.g. Graves, arXiv:1308.0850). The end-of-response token is
  counted in the NLL (ending is part of the answer) but not as a character.
- **ROUGE-L** F-measure of greedy generations against the references (Lin, 2004; the
  ``rouge-score`` package, its default tokenizer, no stemming), as reported by CDM (arXiv:2502.11104).
- **Exact match** where an example's answers are formats of one correct answer: the normalised
  generation equals one of them (case, surrounding space and a final period ignored).
- **KL from the true answer distribution** ``sum_i p_i log(p_i / q_i)`` where ``q_i`` is the model's
  probability of answer ``i`` as a whole response (its canonical tokenization, eos included), not
  renormalised over the answers: mass the model puts on other strings counts against it, and the value
  stays >= 0 (Gibbs' inequality holds for sub-normalised ``q``).

:func:`train_sft` is supervised fine-tuning on the reference responses: AdamW on the mean NLL of
response tokens, the baseline of both papers (arXiv:2502.11766, arXiv:2502.11104).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from veil.models.distillation.data import (
    Encoded,
    Example,
    collate,
    encode_example,
    greedy_generate,
    model_device,
)

__all__ = [
    "EvalReport",
    "NLLReport",
    "SFTConfig",
    "bits_per_char",
    "evaluate",
    "exact_match",
    "kl_from_truth",
    "kl_to_truth",
    "normalise_answer",
    "response_nll",
    "rouge_l",
    "row_nll",
    "train_sft",
]


def bits_per_char(total_nll_nats: float, n_chars: int) -> float:
    """Total NLL in nats -> bits per character.

    >>> round(bits_per_char(10 * math.log(2), 5), 6)
    2.0
    """
    if n_chars <= 0:
        raise ValueError(f"n_chars must be > 0, got {n_chars}")
    return total_nll_nats / math.log(2) / n_chars


def kl_from_truth(p: Sequence[float], log_q: Sequence[float]) -> float:
    """``sum_i p_i (log p_i - log q_i)`` in nats; terms with ``p_i = 0`` are 0.

    >>> kl_from_truth([0.5, 0.5], [math.log(0.5), math.log(0.5)])
    0.0
    """
    if len(p) != len(log_q):
        raise ValueError(f"p and log_q need equal lengths, got {len(p)} and {len(log_q)}")
    return sum(pi * (math.log(pi) - lq) for pi, lq in zip(p, log_q, strict=True) if pi > 0)


def row_nll(model: Any, batch: dict[str, Tensor]) -> Tensor:
    """Summed NLL (nats) of each row's response tokens, ``(B,)``, from a :func:`collate` batch."""
    ids, resp = batch["input_ids"], batch["response_mask"]
    hidden = model.base_model(input_ids=ids, attention_mask=batch["attention_mask"]).last_hidden_state
    # position t predicts token t+1; only the N positions before a response token need the output
    # head (prompts are the longer part and the vocabulary is large): hidden (B, T-1, H) -> (N, H)
    rows, cols = resp[:, 1:].nonzero(as_tuple=True)
    logits = model.get_output_embeddings()(hidden[rows, cols])  # (N, V)
    token_nll = -torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[rows, cols + 1, None]).squeeze(-1)
    return torch.zeros(ids.shape[0], dtype=token_nll.dtype, device=ids.device).index_add(0, rows, token_nll)


@dataclass(frozen=True)
class NLLReport:
    """Totals over the response tokens of a set of examples."""

    total_nats: float
    n_tokens: int
    n_chars: int

    @property
    def nll_per_token(self) -> float:
        return self.total_nats / self.n_tokens

    @property
    def bits_per_char(self) -> float:
        return bits_per_char(self.total_nats, self.n_chars)


def _batches(rows: Sequence[Encoded], size: int):
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def response_nll(model: Any, tokenizer: Any, examples: Sequence[Example], batch_size: int = 16) -> NLLReport:
    """NLL of the reference responses given their prompts (see the module docstring)."""
    if not examples:
        raise ValueError("need at least one example")
    rows = [encode_example(tokenizer, e.instruction, e.response) for e in examples]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total = 0.0
    model.eval()
    device = model_device(model)
    with torch.no_grad():
        for chunk in _batches(rows, batch_size):
            total += float(row_nll(model, collate(chunk, pad, device)).sum())
    n_tokens = sum(sum(r.response_mask) for r in rows)
    return NLLReport(total, n_tokens, sum(len(e.response) for e in examples))


def kl_to_truth(model: Any, tokenizer: Any, examples: Sequence[Example]) -> float | None:
    """Mean KL (nats) from each example's true answer distribution to the model; ``None`` if none has one."""
    known = [e for e in examples if e.probs]
    if not known:
        return None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total = 0.0
    model.eval()
    device = model_device(model)
    with torch.no_grad():
        for e in known:
            rows = [encode_example(tokenizer, e.instruction, a) for a in e.answers]
            log_q = (-row_nll(model, collate(rows, pad, device))).tolist()
            total += kl_from_truth(e.probs, log_q)
    return total / len(known)


def normalise_answer(text: str) -> str:
    """Lower case, single spaces, no surrounding space or final period.

    >>> normalise_answer("  Saves   nine. ")
    'saves nine'
    """
    return re.sub(r"\s+", " ", text).strip().rstrip(".").strip().lower()


def exact_match(predictions: Sequence[str], examples: Sequence[Example]) -> float | None:
    """Share of single-answer examples whose prediction is one of the answer's formats; ``None`` if none."""
    if len(predictions) != len(examples):
        raise ValueError(f"need one prediction per example, got {len(predictions)} and {len(examples)}")
    hits = [
        normalise_answer(p) in {normalise_answer(a) for a in e.answers}
        for p, e in zip(predictions, examples, strict=True)
        if e.single_answer
    ]
    return sum(hits) / len(hits) if hits else None


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure of ``predictions`` against ``references``."""
    try:
        from rouge_score import rouge_scorer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("ROUGE-L needs rouge-score: pip install rouge-score") from exc
    if len(predictions) != len(references) or not predictions:
        raise ValueError(
            f"need equal, non-zero numbers of strings, got {len(predictions)} and {len(references)}"
        )
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    scores = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)]
    return sum(scores) / len(scores)


@dataclass(frozen=True)
class EvalReport:
    """Every metric of one model on one split (``None`` where the split has no such examples)."""

    nll_per_token: float
    bits_per_char: float
    rouge_l: float
    exact_match: float | None
    kl_to_truth: float | None


def evaluate(
    model: Any, tokenizer: Any, examples: Sequence[Example], max_new_tokens: int = 48, batch_size: int = 16
) -> EvalReport:
    """All metrics of the module docstring on ``examples``."""
    nll = response_nll(model, tokenizer, examples, batch_size)
    predictions = greedy_generate(
        model, tokenizer, [e.instruction for e in examples], max_new_tokens, batch_size
    )
    return EvalReport(
        nll_per_token=nll.nll_per_token,
        bits_per_char=nll.bits_per_char,
        rouge_l=rouge_l(predictions, [e.response for e in examples]),
        exact_match=exact_match(predictions, examples),
        kl_to_truth=kl_to_truth(model, tokenizer, examples),
    )


@dataclass
class SFTConfig:
    """Supervised fine-tuning on reference responses.

    Attributes
    ----------
    steps: optimiser steps.
    batch_size: examples per step (drawn without replacement, reshuffled each epoch).
    lr, weight_decay: AdamW's.
    max_grad_norm: gradient clipping by global norm (0: none).
    seed: seeds the batch order.
    schedule: ``"constant"`` lr, or ``"cosine"`` decay from ``lr`` to 0 over ``steps`` (no warm-up).
    """

    steps: int = 200
    batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    schedule: Literal["constant", "cosine"] = "constant"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if self.lr <= 0 or self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError(
                f"need lr > 0, weight_decay >= 0, max_grad_norm >= 0, got {self.lr}, "
                f"{self.weight_decay}, {self.max_grad_norm}"
            )
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")


def train_sft(
    student: Any, tokenizer: Any, data: Sequence[Example], cfg: SFTConfig | None = None
) -> list[float]:
    """Fine-tune ``student`` in place on the responses of ``data``; the loss of every step.

    The loss is the mean NLL over the batch's response tokens (nats per token).
    """
    cfg = cfg or SFTConfig()
    if not data:
        raise ValueError("need at least one training example")
    rows = [encode_example(tokenizer, e.instruction, e.response) for e in data]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    gen = torch.Generator().manual_seed(cfg.seed)  # batch order only: stays on the CPU
    device = model_device(student)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    decay = None
    if cfg.schedule == "cosine":
        decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps, eta_min=0.0)
    order: list[int] = []
    losses = []
    student.train()
    for _ in range(cfg.steps):
        while len(order) < cfg.batch_size:
            order += torch.randperm(len(rows), generator=gen).tolist()
        idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
        batch = collate([rows[i] for i in idx], pad, device)
        loss = row_nll(student, batch).sum() / batch["response_mask"][:, 1:].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        if decay is not None:
            decay.step()
        losses.append(float(loss.detach()))
    student.eval()
    return losses
