"""Timing helpers shared by ``veil bench`` and ``benchmarks/``."""

from __future__ import annotations

import platform
import time
from typing import Any

import numpy as np
import torch

from veil.models.loading import load_model
from veil.models.personalization import PersonalizationConfig, PersonalizedLM
from veil.settings import get_settings

__all__ = ["interleaved_latency", "personalization_latency", "time_calls"]


def time_calls(fn: Any, repeats: int, warmup: int = 3) -> np.ndarray:
    """Wall-clock milliseconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = np.empty(repeats)
    for i in range(repeats):
        t = time.perf_counter()
        fn()
        out[i] = (time.perf_counter() - t) * 1e3
    return out


def interleaved_latency(
    base: Any, batch: int, tokens: int, repeats: int, full_sequence: bool = False
) -> dict[str, Any]:
    """Time the bare model against ``PersonalizedLM`` (one prefix soft token) on the same batch.

    Next-token logits by default, logits at every position with ``full_sequence``. Calls are
    interleaved so drifts in machine load hit both paths alike. Returns per-path median and p90 ms
    and their ``ratio``.
    """
    wrapped = PersonalizedLM(base, PersonalizationConfig(n_tokens=1, placement="prefix"))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, base.config.vocab_size, (batch, tokens), generator=gen)
    mask = torch.ones_like(ids)
    emb = torch.randn(batch, 1, wrapped.hidden_size, generator=gen) * 0.02

    def plain() -> None:
        if full_sequence:
            base(input_ids=ids, attention_mask=mask)
        else:
            base(input_ids=ids, attention_mask=mask, logits_to_keep=1)

    def personal() -> None:
        if full_sequence:
            wrapped(ids, mask, emb)
        else:
            wrapped.next_token_logits(ids, mask, emb)

    with torch.inference_mode():
        for _ in range(3):
            plain(), personal()
        a, b = np.empty(repeats), np.empty(repeats)
        for i in range(repeats):
            a[i] = time_calls(plain, 1, warmup=0)[0]
            b[i] = time_calls(personal, 1, warmup=0)[0]
    stats = {
        k: {"median_ms": float(np.median(v)), "p90_ms": float(np.percentile(v, 90))}
        for k, v in (("unpersonalised", a), ("personalised", b))
    }
    ratio = stats["personalised"]["median_ms"] / stats["unpersonalised"]["median_ms"]
    return {"batch": batch, "tokens": tokens, "repeats": repeats, **stats, "ratio": ratio}


def personalization_latency(model_name: str | None, batch: int, tokens: int, repeats: int) -> dict[str, Any]:
    """Next-token forward pass with and without a user embedding, same model, same batch."""
    loaded = load_model(model_name or get_settings().model)
    result = interleaved_latency(loaded.model, batch, tokens, repeats)
    return {
        "model": loaded.name,
        **result,
        "machine": f"{platform.machine()} CPU x{torch.get_num_threads()} threads",
    }
