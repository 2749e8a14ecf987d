"""Batched, step-wise text generation for the personalised LM, with per-row sampling settings.

``transformers``' ``generate`` applies one set of sampling settings to the whole batch and returns only
at the end. The service needs rows with their own ``temperature``, ``top_p``, ``seed`` and length,
streaming of every token as it is produced, and stopping a row early when the caller sees a stop
string. :func:`generate_batch` is that loop: one prefill of the packed (soft-token) prompts, then one
forward step per new token over the KV cache; finished rows ride along until the whole batch is done.
Optionally, the prompt's KV cache is compressed once between the two (:mod:`veil.models.compression`),
and the prefill may come in two parts, the question after compression (``question_lengths``).

Per-row seeds use a per-row ``torch.Generator``, so a seeded row's samples do not depend on which other
requests shared its batch (the logits themselves can differ in the last bits with batch composition).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from veil.client_sdk.batching import left_pad
from veil.client_sdk.sampling import DecodingParams, decode_step
from veil.models.compression import (
    KV_MASKS_KWARG,
    KVCompressor,
    KVKept,
    PrefillCompression,
    append_masks,
    per_row,
)
from veil.models.personalization import PersonalizedLM
from veil.models.two_part_prefill import question_tails, split_packed

__all__ = [
    "MAX_TOP_LOGPROBS",
    "SamplingParams",
    "TokenLogprobs",
    "first_stop",
    "generate_batch",
    "sample_next",
    "token_logprobs",
]

MAX_TOP_LOGPROBS = 20
"""The most alternatives a row may ask for (OpenAI's limit for ``top_logprobs``)."""


@dataclass(frozen=True)
class SamplingParams(DecodingParams):
    """How one row is decoded on the server: the shared fields and limits of
    :class:`~veil.client_sdk.sampling.DecodingParams` (``seed`` seeds this row's torch generator;
    ``None`` draws from the global generator, and the seed must be in torch's range), and

    Attributes
    ----------
    stop_token_ids: token ids that end the row (reason ``"stop"``); the token itself is not emitted.
    top_logprobs: ``None``: no log-probabilities; ``k`` in ``[0, 20]``: each emitted token's
        log-probability and the ``k`` most likely alternatives (see :func:`token_logprobs`).
    top_k: sample among the ``k`` most likely tokens only (after the temperature, before top-p);
        0 keeps them all.
    repetition_penalty: CTRL's penalty (arXiv:1909.05858, §4.1) on every token already in the row,
        prompt included: its logit is divided by it when positive and multiplied when negative
        (greedy rows too); 1 is none.
    """

    stop_token_ids: tuple[int, ...] = ()
    top_logprobs: int | None = None
    top_k: int = 0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.top_logprobs is not None and not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs}")
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:  # torch.Generator.manual_seed's range
            raise ValueError(f"seed must be in [-2**63, 2**64), got {self.seed}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: off), got {self.top_k}")
        if not self.repetition_penalty > 0.0:
            raise ValueError(f"repetition_penalty must be > 0 (1: none), got {self.repetition_penalty}")


def first_stop(text: str, stop: Sequence[str]) -> int | None:
    """Where ``text`` must be cut for the earliest of the ``stop`` strings it contains (``None``: none).

    The text is cut before the stop string, as OpenAI's ``stop`` does.

    >>> first_stop("Follow up: who? Let's search", ["Intermediate answer:", "Let"])
    16
    """
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return min(hits) if hits else None


@dataclass(frozen=True)
class TokenLogprobs:
    """One emitted token's log-probability and the most likely alternatives at its position.

    Attributes
    ----------
    token: the emitted id.
    logprob: its log-probability.
    top_ids: int64 ``(k,)``, the ``k`` most likely ids, most likely first.
    top_logprobs: float64 ``(k,)``, their log-probabilities (non-increasing).
    """

    token: int
    logprob: float
    top_ids: np.ndarray
    top_logprobs: np.ndarray


def token_logprobs(logits: Tensor, token: int, k: int) -> TokenLogprobs:
    """Log-probabilities of next-token ``logits`` ``(vocab,)``: of ``token`` and of the top ``k``.

    They are ``log_softmax(logits)``: the model's distribution before the row's temperature and top-p
    (OpenAI's convention), so they do not depend on how the token was drawn, and equal the cloud half of
    private mixing (:func:`veil.simulation.mixing.head_answers`) on the same prompt and embedding.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    top = logp.topk(min(k, logp.shape[-1]))
    return TokenLogprobs(
        int(token),
        min(float(logp[token]), 0.0),
        top.indices.numpy().astype(np.int64),
        np.minimum(top.values.numpy().astype(np.float64), 0.0),
    )


def sample_next(
    logits: Tensor, params: SamplingParams, generator: torch.Generator | None, seen: Collection[int] = ()
) -> int:
    """One token id from next-token ``logits`` ``(vocab,)`` under ``params``; ``seen``: the distinct
    tokens of the row so far (prompt and generated), for ``repetition_penalty``."""
    if params.repetition_penalty != 1.0 and len(seen):
        index = torch.as_tensor(list(seen), dtype=torch.long)
        old = logits[index]
        logits = logits.clone()
        logits[index] = torch.where(old > 0, old / params.repetition_penalty, old * params.repetition_penalty)
    if params.temperature == 0.0:
        return int(torch.argmax(logits))
    # Shifted before the division: a tiny temperature (1e-40) overflows raw logits to inf and inf - inf is
    # nan; shifted logits are <= 0 and only underflow, the top token keeping exp(0) = 1. float64 holds
    # temperatures and top_p down to 5e-324, which float32 would round to 0.
    shifted = logits.double() - logits.double().max()
    probs = torch.softmax(shifted / params.temperature, dim=-1)
    if 0 < params.top_k < probs.numel():
        # ties at the k-th probability are kept, so the top token is never dropped
        probs = torch.where(probs >= torch.topk(probs, params.top_k).values[-1], probs, 0.0)
        probs = probs / probs.sum()
    if params.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        keep = (sorted_p.cumsum(0) - sorted_p) < params.top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=generator))


def _cache_keyword(base: Any) -> str:
    # transformers 5.2x renamed ``past_key_values`` to ``cache``; earlier 5.x only know the old name
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _teacher_forced(
    base: Any,
    cache: Any,
    cache_kw: str,
    extra: dict[str, Any],
    attn: Tensor,
    pos: Tensor,
    last: Tensor,
    fed: Sequence[Sequence[int]],
    pad_id: int,
) -> Tensor:
    """Next-token logits ``(B, 1 + T, V)`` with ``fed`` (right-padded to ``T``) appended to the prompt.

    The cache is cut back to its length before the call, so the caller decodes from the prompt as if
    nothing had been fed; right padding sits after every real token, so it changes no real position.
    """
    width = max(len(f) for f in fed)
    if width == 0:
        return last[:, None].float().cpu()
    dev = last.device
    ids = torch.tensor([list(f) + [pad_id] * (width - len(f)) for f in fed], dtype=torch.long, device=dev)
    lengths = [layer.keys.shape[2] for layer in cache.layers]
    out = base(
        input_ids=ids,  # (B, T)
        attention_mask=None if KV_MASKS_KWARG in extra else torch.cat([attn, torch.ones_like(ids)], dim=1),
        position_ids=pos + torch.arange(1, width + 1, device=dev),  # (B, T)
        use_cache=True,
        **{cache_kw: cache},
        **extra,
    )
    for layer, n in zip(cache.layers, lengths, strict=True):  # back to the prompt's slots
        layer.keys, layer.values = layer.keys[:, :, :n], layer.values[:, :, :n]
    return torch.cat([last[:, None], out.logits], dim=1).float().cpu()  # (B, 1 + T, V)


@torch.no_grad()
def generate_batch(
    model: PersonalizedLM,
    prompts: Sequence[Sequence[int]],
    embeddings: Sequence[np.ndarray | None],
    params: Sequence[SamplingParams],
    pad_id: int,
    on_step: Callable[[list[int | None]], set[int] | None] | None = None,
    on_logits: Callable[[Tensor], None] | None = None,
    compression: KVCompressor | Sequence[KVCompressor | None] | None = None,
    on_kv_kept: Callable[[list[KVKept | None]], None] | None = None,
    question_lengths: Sequence[int] | None = None,
    teacher_tokens: Sequence[Sequence[int]] | None = None,
    on_teacher_logits: Callable[[Tensor], None] | None = None,
) -> list[tuple[list[int], str]]:
    """Generate for a batch of prompts; returns ``(token_ids, finish_reason)`` per row.

    Parameters
    ----------
    prompts: token ids of each row (no padding).
    embeddings: per row, a user embedding ``(n_tokens, hidden)`` or ``None`` (population model).
    params: per-row :class:`SamplingParams`.
    pad_id: the id used for left padding and for finished rows' dummy inputs.
    on_step: called after every step with the new token of each row (``None`` for rows that were
        already finished or just hit a stop token); it may return row indices to stop now (reason
        ``"stop"``), e.g. when the caller found a stop string in the decoded text.
    on_logits: called before every step's sampling with the next-token logits ``(B, V)`` (float32, CPU),
        e.g. to report log-probabilities of the tokens ``on_step`` then receives.
    compression: a KV-cache compressor (:mod:`veil.models.compression`) for every row, or one per row
        (``None``: that row keeps its full cache); applied once, after the prefill forward and before the
        first decode step. Soft tokens are never pruned.
    on_kv_kept: called once after compression with each row's kept fractions (``None`` for rows
        without a compressor), e.g. to report ``usage.kv_kept_fraction``.
    question_lengths: ``None``: one prefill of the whole prompt. Otherwise, per row, how many of the
        prompt's last tokens (the question) are prefilled in a second forward, after compression, on
        top of the compressed cache, at the positions they have in the whole prompt; the compressor
        then scores with the context's last token as the query (the question-agnostic regime of
        arXiv:2412.10319). ``0`` leaves the whole prompt in the first part; every row keeps at least
        one context token; soft tokens placed after the text go with the question. Without compression
        the tokens equal one prefill's.
    teacher_tokens: per row, a continuation (e.g. another cache's greedy output) to score before
        decoding: after the prefill (and compression), the rows' continuations minus their last token are
        fed in one forward, ``on_teacher_logits`` receives the teacher-forced next-token logits
        ``(B, T, V)`` (float32, CPU; ``T`` the longest continuation, ``[r, i]`` predicting row ``r``'s
        token ``i``; positions past a shorter row's end are padding), and the cache is cut back to the
        prompt, so decoding is unchanged. One extra forward, e.g. for a per-token KL against the full cache.
    """
    n = len(prompts)
    if not (n == len(embeddings) == len(params)) or n == 0:
        raise ValueError(f"need equal, non-zero numbers of prompts/embeddings/params, got {n}")
    if (teacher_tokens is None) != (on_teacher_logits is None):
        raise ValueError("teacher_tokens and on_teacher_logits go together: give both or neither")
    if teacher_tokens is not None and (len(teacher_tokens) != n or not all(teacher_tokens)):
        raise ValueError(f"need one non-empty teacher continuation per row ({n} rows)")
    dev = model.device
    for r, toks in enumerate(prompts):
        if not toks:
            raise ValueError(f"prompt {r} is empty")
    ids, mask = (torch.from_numpy(a) for a in left_pad([list(p) for p in prompts], pad_id))  # (B, W)
    has = torch.tensor([e is not None for e in embeddings])
    emb = None
    if bool(has.any()):
        shape = model.embedding_shape
        emb = torch.zeros((n, *shape), dtype=torch.float32)
        for r, e in enumerate(embeddings):
            if e is not None:
                emb[r] = torch.as_tensor(np.asarray(e, dtype=np.float32))
        emb = emb.to(dev)
    packed = model.pack(ids.to(dev), mask.to(dev), emb, has.to(dev) if emb is not None else None)
    tail = None
    if question_lengths is not None:
        tail = question_tails(question_lengths, [len(p) for p in prompts], packed, model.config.placement)
    first, question = split_packed(packed, tail) if tail is not None and bool(tail.any()) else (packed, None)
    gens = [None if p.seed is None else torch.Generator().manual_seed(p.seed) for p in params]
    compressors = per_row(compression, n)
    pruning = PrefillCompression(model.base, compressors) if any(c is not None for c in compressors) else None
    with pruning.capture() if pruning is not None else contextlib.nullcontext():
        out = model.base(
            **first.as_kwargs(),
            use_cache=True,
            logits_to_keep=1,
        )
    cache_kw = _cache_keyword(model.base)
    cache = _cache_of(out)
    extra: dict[str, Any] = {}
    if pruning is not None:
        valid = first.attention_mask.to(torch.bool)
        soft = first.soft_mask if first.soft_mask is not None else torch.zeros_like(valid)
        # from here on each layer attends to its own kept keys: the masks replace the attention mask
        extra[KV_MASKS_KWARG] = pruning.apply(cache, valid, soft)
        if on_kv_kept is not None:
            on_kv_kept(list(pruning.kept))
    attn = first.attention_mask
    last = out.logits[:, -1, :]  # (B, V)
    if question is not None:
        if pruning is not None:
            extra[KV_MASKS_KWARG] = append_masks(extra[KV_MASKS_KWARG], cache, question.attention_mask)
        attn = torch.cat([attn, question.attention_mask], dim=1)  # (B, W1 + W2), padding inside
        out = model.base(
            inputs_embeds=question.inputs_embeds,
            attention_mask=attn if pruning is None else None,
            position_ids=question.position_ids,
            use_cache=True,
            logits_to_keep=1,
            **{cache_kw: cache},
            **extra,
        )
        cache = _cache_of(out)
        # a row without a question (tail 0) is all padding in the second part: its logits are the first's
        last = torch.where((tail > 0)[:, None], out.logits[:, -1, :], last)
    pos = packed.position_ids[:, -1:]  # (B, 1), the last prompt position of every row
    if teacher_tokens is not None and on_teacher_logits is not None:
        fed = [list(t[:-1]) for t in teacher_tokens]
        on_teacher_logits(_teacher_forced(model.base, cache, cache_kw, extra, attn, pos, last, fed, pad_id))
    tokens: list[list[int]] = [[] for _ in range(n)]
    reasons: list[str | None] = [None] * n
    # each penalised row's distinct tokens so far, kept up to date step by step
    penalised = [p.repetition_penalty != 1.0 for p in params]
    seen: list[set[int]] = [set(prompts[r]) if penalised[r] else set() for r in range(n)]
    while True:
        logits = last.float().cpu()  # (B, V)
        if on_logits is not None:
            on_logits(logits)
        step = decode_step(
            lambda r, lg=logits: sample_next(lg[r], params[r], gens[r], seen[r]),
            [p.stop_token_ids for p in params], [p.max_new_tokens for p in params], tokens, reasons, on_step,
        )  # fmt: skip
        if step is None:
            break
        for r, t in enumerate(step):
            if t is not None and penalised[r]:
                seen[r].add(t)
        feed = torch.tensor([[t if t is not None else pad_id] for t in step], dtype=torch.long)
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)  # (B, L + 1)
        pos = pos + 1
        out = model.base(
            input_ids=feed.to(dev),
            attention_mask=attn if pruning is None else None,
            position_ids=pos,
            use_cache=True,
            **{cache_kw: cache},
            **extra,
        )
        cache, last = _cache_of(out), out.logits[:, -1, :]
    return [(tokens[r], reasons[r] or "length") for r in range(n)]
