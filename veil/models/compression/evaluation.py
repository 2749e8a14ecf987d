"""Quality of KV-cache compression on the synthetic suite: ``veil bench kv`` and ``benchmarks/kv_compression.py``.

For every example, greedy decoding with the full cache gives the reference output; each method then
decodes the same prompt with its compressed cache. DBudgetKV variants run first; every fixed-budget
baseline then gets the mean kept fraction of the first DBudgetKV variant on the same examples as its
budget, so all compare at the same average cache size. Rows are decoded one at a time (batch 1), so a
row's logits never depend on its batch-mates and agreement measures compression alone.

Two regimes (:data:`REGIMES`): ``question_before`` prefills and compresses the whole prompt, question
included (the paper's, arXiv:2502.16886 Sec. 3); ``question_after`` prefills and compresses the context
(``prompt_ids[:question_start]``), scored with the context's last token as the query, then prefills the
question on top of the compressed cache (the question-agnostic regime of SCBench, arXiv:2412.10319). The
full-cache reference of ``question_after`` is prefilled in the same two parts, which without
compression gives the tokens of one prefill.

Besides exact agreement, every row carries a per-token divergence: the mean (and max) of
``KL(full || compressed)`` over the full cache's greedy continuation, the compressed cache being
teacher-forced on those tokens in one extra forward (:func:`next_token_kl`), and the first position where
the greedy outputs part (:func:`first_divergence`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor

from veil.models.compression.registry import METHODS, from_spec
from veil.models.compression.suite import SuiteConfig, SuiteExample, build_suite, is_correct
from veil.progress import NullProgress, Progress

__all__ = [
    "BENCH_METHODS",
    "DBUDGET_METHODS",
    "Decoded",
    "KVBenchConfig",
    "REGIMES",
    "Regime",
    "SuiteRun",
    "decode_one",
    "first_divergence",
    "method_spec",
    "next_token_kl",
    "run_kv_benchmark",
    "summarize",
]

DBUDGET_METHODS = ("dbudgetkv", "dbudgetkv_non_sink")
"""DBudgetKV at the paper's defaults, and with the released code's norm that excludes the sinks."""
BASELINES = tuple(m for m in METHODS if m != "dbudgetkv")
BENCH_METHODS = DBUDGET_METHODS + BASELINES
Regime = Literal["question_before", "question_after"]
REGIMES: tuple[str, ...] = get_args(Regime)


def method_spec(method: str, threshold: float, budget: float | None) -> dict[str, Any]:
    """The ``from_spec`` object of a benchmark method name (baselines need the matched ``budget``)."""
    if method == "dbudgetkv":
        return {"method": "dbudgetkv", "threshold": threshold}
    if method == "dbudgetkv_non_sink":
        return {"method": "dbudgetkv", "threshold": threshold, "norm_scope": "non_sink"}
    if method in BASELINES:
        if budget is None:
            raise ValueError(f"baseline {method!r} needs a budget (run a DBudgetKV variant first)")
        return {"method": method, "budget": budget}
    raise ValueError(f"unknown method {method!r}; known: {', '.join(BENCH_METHODS)}")


@dataclass(frozen=True)
class KVBenchConfig:
    """One benchmark run.

    Attributes
    ----------
    model: a registered model name or a directory (``veil.models.loading``).
    examples: suite examples.
    context_tokens: prompt length target per example.
    methods: from :data:`BENCH_METHODS`; baselines need at least one DBudgetKV variant, whose mean kept
        fraction becomes their budget.
    threshold: DBudgetKV's T, in ``(0, 1)``.
    max_new_tokens: greedy tokens per output (the answers are at most ~25 tokens).
    seed: the suite's seed.
    tasks: the suite's task types.
    regime: ``"question_before"`` (compress the whole prompt) or ``"question_after"`` (compress the
        context, then prefill the question), see :data:`REGIMES`.
    """

    model: str = "smollm2-135m-instruct"
    examples: int = 24
    context_tokens: int = 1024
    methods: tuple[str, ...] = BENCH_METHODS
    threshold: float = 0.01
    max_new_tokens: int = 32
    seed: int = 0
    tasks: tuple[str, ...] = field(default_factory=lambda: SuiteConfig().tasks)
    regime: Regime = "question_before"

    def __post_init__(self) -> None:
        if self.regime not in REGIMES:
            raise ValueError(f"regime must be one of {', '.join(REGIMES)}, got {self.regime!r}")
        unknown = [m for m in self.methods if m not in BENCH_METHODS]
        if unknown or not self.methods:
            raise ValueError(
                f"unknown method(s) {unknown or '(none given)'}; known: {', '.join(BENCH_METHODS)}"
            )
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if any(m in BASELINES for m in self.methods) and not any(m in DBUDGET_METHODS for m in self.methods):
            raise ValueError("baselines are run at DBudgetKV's measured budget: add dbudgetkv to the methods")
        if self.examples < 1 or self.max_new_tokens < 2:
            raise ValueError(
                f"need examples >= 1 and max_new_tokens >= 2, got {self.examples}, {self.max_new_tokens}"
            )


def next_token_kl(reference: Tensor, other: Tensor) -> Tensor:
    """``KL(p || q)`` per position of two next-token logit sequences, in float64.

    Parameters
    ----------
    reference: logits ``(T, V)`` of ``p`` (the full cache).
    other: logits ``(T, V)`` of ``q`` (a compressed cache), teacher-forced on the same tokens.

    Returns
    -------
    Tensor
        ``(T,)``: ``sum_v p_v (log p_v - log q_v)``, exactly 0 where the logits are equal.
    """
    if reference.shape != other.shape or reference.dim() != 2:
        raise ValueError(f"need two (T, V) logit tensors of one shape, got {reference.shape}, {other.shape}")
    logp = torch.log_softmax(reference.double(), dim=-1)
    logq = torch.log_softmax(other.double(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(dim=-1).clamp_min(0.0)  # rounding can dip below 0


def first_divergence(reference: Sequence[int], other: Sequence[int]) -> int | None:
    """The first index where two token sequences differ (a missing token counts), ``None`` if equal.

    >>> first_divergence([5, 6, 7], [5, 6, 9]), first_divergence([5, 6], [5, 6, 7]), first_divergence([1], [1])
    (2, 2, None)
    """
    for i, (a, b) in enumerate(zip(reference, other, strict=False)):
        if a != b:
            return i
    return None if len(reference) == len(other) else min(len(reference), len(other))


@dataclass(frozen=True)
class Decoded:
    """One greedy decode of one example.

    Attributes
    ----------
    tokens: the output, without the stop token.
    sequence: the output with the stop token drawn, if any (the continuation to teacher-force on).
    kept: the compressor's kept fractions (``None`` for the full cache).
    logits: ``(T, V)`` next-token logits teacher-forced on a reference ``sequence`` of ``T`` tokens, or
        ``None`` when no reference was given.
    """

    tokens: list[int]
    sequence: list[int]
    kept: Any
    logits: Tensor | None


def decode_one(
    lm: Any,
    example: SuiteExample,
    compressor: Any,
    stop: tuple[int, ...],
    new: int,
    regime: str,
    teacher: Sequence[int] | None = None,
) -> Decoded:
    """Greedy decode of ``example`` (batch 1), with ``teacher``'s teacher-forced logits if given."""
    from veil.models.generation import SamplingParams, generate_batch

    kept: list[Any] = []
    forced: list[Tensor] = []
    last: list[Tensor] = []
    params = SamplingParams(temperature=0.0, max_new_tokens=new, stop_token_ids=stop)
    question = len(example.prompt_ids) - example.question_start  # the question and the generation prompt

    def keep_last(logits: Tensor) -> None:
        last[:] = [logits]

    [(tokens, reason)] = generate_batch(
        lm,
        [list(example.prompt_ids)],
        [None],
        [params],
        stop[0],
        on_logits=keep_last,
        compression=compressor,
        on_kv_kept=kept.extend,
        question_lengths=[question] if regime == "question_after" else None,
        teacher_tokens=None if teacher is None else [list(teacher)],
        on_teacher_logits=None if teacher is None else forced.append,
    )
    # greedy: the stop token drawn is the argmax of the last step's logits
    sequence = tokens + ([int(torch.argmax(last[0][0]))] if reason == "stop" else [])
    return Decoded(tokens, sequence, kept[0] if kept else None, forced[0][0] if forced else None)


class SuiteRun:
    """The suite on one model: full-cache references once per example, then any method against them.

    Per row: exact agreement of the output with the full cache's, task accuracy, kept fraction, the
    first position where the output leaves the full cache's (the stop token counts; ``None`` if never)
    and the mean and max per-token ``KL(full || compressed)`` of the next-token distributions,
    teacher-forced on the full cache's greedy continuation (stop token included; in ``question_before``
    the first token's distribution is the prefill's, identical for every method).
    """

    def __init__(self, config: KVBenchConfig, data_dir: str | None = None) -> None:
        from veil.models.loading import load_model
        from veil.models.personalization import PersonalizationConfig, PersonalizedLM

        self.config = config
        loaded = load_model(config.model, data_dir)
        self.model_name = loaded.name
        self.tok = loaded.tokenizer
        self.lm = PersonalizedLM(loaded.model, PersonalizationConfig(n_tokens=0)).eval()
        self.suite = build_suite(
            self.tok, SuiteConfig(config.examples, config.context_tokens, config.seed, tasks=config.tasks)
        )
        stops = {self.tok.eos_token_id, self.tok.convert_tokens_to_ids("<|im_end|>")} - {None}
        self.stop = tuple(sorted(int(s) for s in stops))
        self.references: dict[int, Decoded] = {}

    def _decode(self, i: int, compressor: Any, new: int, teacher: Sequence[int] | None) -> Decoded:
        c = self.config
        return decode_one(self.lm, self.suite[i], compressor, self.stop, new, c.regime, teacher)

    def reference(self, i: int) -> dict[str, Any]:
        """The full cache's row of example ``i`` (decoded, then teacher-forced on itself: one more prefill)."""
        t = time.perf_counter()
        free = self._decode(i, None, self.config.max_new_tokens, None)
        forced = self._decode(i, None, 1, free.sequence)
        self.references[i] = Decoded(free.tokens, free.sequence, None, forced.logits)
        return self._row(i, "full", None, self.references[i], time.perf_counter() - t)

    def run(self, i: int, method: str, spec: dict[str, Any], budget: float | None = None) -> dict[str, Any]:
        """The row of example ``i`` under ``spec`` (a ``from_spec`` object), labelled ``method``."""
        ref = self.references.get(i)
        if ref is None:
            raise ValueError(f"run reference({i}) before a method on example {i}")
        t = time.perf_counter()
        out = self._decode(i, from_spec(spec), self.config.max_new_tokens, ref.sequence)
        return self._row(i, method, budget, out, time.perf_counter() - t, spec.get("threshold"))

    def _row(
        self, i: int, method: str, budget: float | None, out: Decoded, seconds: float, threshold: Any = None
    ) -> dict[str, Any]:
        ex, ref = self.suite[i], self.references[i]
        text = self.tok.decode(out.tokens, skip_special_tokens=True)
        if out.logits is None or ref.logits is None:
            kl = torch.zeros(1, dtype=torch.float64)
        else:
            kl = next_token_kl(ref.logits, out.logits)
        return {
            "example": i, "task": ex.task, "depth": ex.depth, "prompt_tokens": len(ex.prompt_ids),
            "regime": self.config.regime, "method": method, "threshold": threshold, "budget": budget,
            "output": text, "correct": is_correct(ex, text), "agree": out.tokens == ref.tokens,
            "first_divergence": first_divergence(ref.sequence, out.sequence),
            "kl_mean": float(kl.mean()), "kl_max": float(kl.max()),
            "kept": 1.0 if out.kept is None else out.kept.mean,
            "kept_per_layer": None if out.kept is None else list(out.kept.per_layer), "seconds": seconds,
        }  # fmt: skip


def run_kv_benchmark(
    config: KVBenchConfig,
    data_dir: str | None = None,
    progress: Progress | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the suite with the full cache and every method; returns rows and :func:`summarize`'s table."""
    progress = progress or NullProgress()
    run = SuiteRun(config, data_dir)
    rows: list[dict[str, Any]] = []

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    dbudget = [m for m in config.methods if m in DBUDGET_METHODS]
    baselines = [m for m in config.methods if m in BASELINES]
    budget: float | None = None
    with progress.stage(f"full cache + {', '.join(dbudget)}", len(run.suite)) as bar:
        for i in range(len(run.suite)):
            record(run.reference(i))
            for m in dbudget:
                record(run.run(i, m, method_spec(m, config.threshold, None)))
            bar.advance()
    if baselines:
        budget = float(np.mean([r["kept"] for r in rows if r["method"] == dbudget[0]]))
        with progress.stage(f"baselines at budget {budget:.3f}", len(run.suite) * len(baselines)) as bar:
            for i in range(len(run.suite)):
                for m in baselines:
                    record(run.run(i, m, method_spec(m, config.threshold, budget), budget))
                    bar.advance()
    return {
        "model": run.model_name,
        "examples": len(run.suite),
        "context_tokens": config.context_tokens,
        "threshold": config.threshold,
        "matched_budget": budget,
        "regime": config.regime,
        "summary": summarize(rows),
        "rows": rows,
    }


def _stats(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    kept = np.array([r["kept"] for r in rows])
    firsts = [r["first_divergence"] for r in rows if r.get("first_divergence") is not None]
    return {
        "n": len(rows),
        "agreement": float(np.mean([r["agree"] for r in rows])),
        "accuracy": float(np.mean([r["correct"] for r in rows])),
        "kl_mean": float(np.mean([r.get("kl_mean", 0.0) for r in rows])),
        "first_divergence_p50": None if not firsts else float(np.median(firsts)),
        "kept_mean": float(kept.mean()),
        "kept_p10": float(np.percentile(kept, 10)),
        "kept_p50": float(np.percentile(kept, 50)),
        "kept_p90": float(np.percentile(kept, 90)),
    }


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per method: agreement with the full cache, accuracy, mean KL, median first divergence (of the rows
    that diverge), kept fraction (mean, p10/p50/p90), and the same per task."""
    out: dict[str, Any] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        tasks = dict.fromkeys(r["task"] for r in mine)
        out[method] = {
            **_stats(mine),
            "per_task": {t: _stats([r for r in mine if r["task"] == t]) for t in tasks},
        }
    return out
