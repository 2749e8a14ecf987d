"""Each method of the distillation experiment, training one student in place from the shared
:class:`~veil.models.distillation.pairs.Models`: GKD with a named loss, Warmup-Distill, and the
cross-tokenizer loop that CDM, ULD, MinED and dual-teacher share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from veil.models.distillation.data import Example, collate, encode_example, model_device

if TYPE_CHECKING:
    from veil.models.distillation.experiment import ExperimentConfig
    from veil.models.distillation.pairs import Models

__all__ = [
    "CrossLoss",
    "cross_losses",
    "pad_id",
    "run_cross",
    "run_kd",
    "run_warmup_distill",
    "shifted_logits",
    "split_ids",
]

IGNORE_INDEX = -100


def split_ids(tokenizer: Any, rows: Sequence[Example]) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt ids and response ids (eos included) of each example."""
    enc = [encode_example(tokenizer, e.instruction, e.response) for e in rows]
    prompts = [r.input_ids[: r.response_mask.index(1)] for r in enc]
    responses = [r.input_ids[r.response_mask.index(1) :] for r in enc]
    return prompts, responses


def pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _kd(cfg: ExperimentConfig, seed: int, loss: str, steps: int | None = None) -> Any:
    from veil.models.distillation.kd import KDConfig

    return KDConfig(loss=loss, lmbda=cfg.lmbda, max_new_tokens=cfg.max_new_tokens, steps=steps or cfg.steps,
                    lr=cfg.lr, batch_size=cfg.batch_size, seed=seed)  # fmt: skip


def run_kd(
    student: Any, m: Models, rows: Sequence[Example], cfg: ExperimentConfig, seed: int, loss: str
) -> None:
    """GKD with ``loss`` from the teacher's responses (``lmbda`` of them the student's own)."""
    from veil.models.distillation.kd import distill

    prompts, responses = split_ids(m.tokenizer, rows)
    tok = m.tokenizer
    distill(
        student,
        m.teacher,
        prompts,
        responses,
        _kd(cfg, seed, loss),
        eos_id=tok.eos_token_id,
        pad_id=pad_id(tok),
    )


def run_warmup_distill(
    student: Any, m: Models, rows: Sequence[Example], cfg: ExperimentConfig, seed: int
) -> Any:
    """Warm-up on corrected student samples, then forward-KL KD for the rest of the step budget."""
    from veil.models.distillation.kd import distill
    from veil.models.distillation.warmup import WarmupConfig, warm_up

    prompts, responses = split_ids(m.tokenizer, rows)
    tok = m.tokenizer
    ids = dict(eos_id=tok.eos_token_id, pad_id=pad_id(tok))
    warm = WarmupConfig(n_samples=cfg.warmup_samples, max_new_tokens=cfg.max_new_tokens, lr=cfg.lr,
                        batch_size=cfg.batch_size, seed=seed)  # fmt: skip
    report = warm_up(student, m.teacher, prompts[: cfg.warmup_prompts], warm, **ids)
    kd_steps = max(1, cfg.steps - len(report.losses))
    distill(student, m.teacher, prompts, responses, _kd(cfg, seed, "forward_kl", kd_steps), **ids)
    return report


def shifted_logits(model: Any, tokenizer: Any, rows: Sequence[Example], grad: bool) -> tuple[Tensor, Tensor]:
    """Logits ``(B, R, V)`` and labels ``(B, R)`` of the responses: ``logits[b, r]`` predicts
    ``labels[b, r]``, the ``r``-th token of row ``b``'s response; -100 past its end (``R``: the longest).

    The cross-tokenizer losses read labelled positions only, in order, so the prompt positions are left
    out before the output head, the largest matmul when the vocabulary is large.
    """
    encoded = [encode_example(tokenizer, e.instruction, e.response) for e in rows]
    device = model_device(model)
    batch = collate(encoded, pad_id(tokenizer), device)
    starts = [r.response_mask.index(1) for r in encoded]
    lengths = [len(r.input_ids) - s for r, s in zip(encoded, starts, strict=True)]
    width, longest = batch["input_ids"].shape[1], max(lengths)
    # prompt [p1 p2] + response [r1 eos]: position 1 (p2) predicts r1, position 2 (r1) predicts eos;
    # positions past a row's end are clamped into the row, their labels are -100
    where = [[min(s - 1 + r, width - 1) for r in range(longest)] for s in starts]
    labels = [
        r.input_ids[s:] + [IGNORE_INDEX] * (longest - n)
        for r, s, n in zip(encoded, starts, lengths, strict=True)
    ]
    index = torch.tensor(where, device=device)  # (B, R)
    with torch.set_grad_enabled(grad):
        hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        hidden = hidden.last_hidden_state  # (B, L, H)
        picked = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))  # (B, R, H)
        logits = model.get_output_embeddings()(picked)
    return logits, torch.tensor(labels, device=device)


CrossLoss = Callable[[Tensor, Tensor, Tensor, Tensor, list[Example]], Tensor]


def run_cross(
    student: Any, m: Models, rows: Sequence[Example], cfg: ExperimentConfig, seed: int, loss: CrossLoss
) -> None:
    """A cross-tokenizer loop: the same examples under both tokenizers, ``loss(s_logits, s_labels, t_logits, t_labels, batch)``."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=cfg.lr)
    m.teacher.eval()
    student.train()
    for _ in range(cfg.cross_steps):
        batch = [rows[i] for i in torch.randperm(len(rows), generator=gen)[: cfg.batch_size].tolist()]
        t_logits, t_labels = shifted_logits(m.teacher, m.tokenizer, batch, grad=False)
        s_logits, s_labels = shifted_logits(student, m.other_tokenizer, batch, grad=True)
        value = loss(s_logits, s_labels, t_logits, t_labels, batch)
        opt.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
    student.eval()


def cross_losses(m: Models, cfg: ExperimentConfig) -> dict[str, CrossLoss]:
    from veil.models.distillation.cdm import CDMConfig, DualTeacherConfig, cdm_loss, dual_teacher_loss
    from veil.models.distillation.mined import mined_loss
    from veil.models.distillation.uld import uld_loss

    exact, mined = m.vocab["exact"], m.vocab["mined"]
    cdm_cfg = CDMConfig(top_k=cfg.cdm_top_k)
    dual_cfg = DualTeacherConfig(top_k=cfg.cdm_top_k)

    def dual(s, sl, t, tl, batch):  # noqa: ANN001, ANN202 - the CrossLoss signature
        same, _ = shifted_logits(m.other_teacher, m.other_tokenizer, batch, grad=False)
        return dual_teacher_loss(s, sl, same, t, tl, exact, dual_cfg)

    return {
        "cdm": lambda s, sl, t, tl, _: cdm_loss(s, sl, t, tl, exact, cdm_cfg).loss,
        "uld": lambda s, sl, t, tl, _: uld_loss(s, sl, t, tl),
        "minED": lambda s, sl, t, tl, _: mined_loss(s, sl, t, tl, mined),
        "dual-teacher": dual,
    }
