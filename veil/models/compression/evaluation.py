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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

from veil.models.compression.registry import METHODS, from_spec
from veil.models.compression.suite import SuiteConfig, SuiteExample, build_suite, is_correct
from veil.progress import NullProgress, Progress

__all__ = [
    "BENCH_METHODS",
    "DBUDGET_METHODS",
    "KVBenchConfig",
    "REGIMES",
    "Regime",
    "method_spec",
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


def _decode_one(
    lm: Any, example: SuiteExample, compressor: Any, stop: tuple[int, ...], new: int, regime: str
) -> tuple[list[int], Any]:
    from veil.models.generation import SamplingParams, generate_batch

    kept: list[Any] = []
    params = SamplingParams(temperature=0.0, max_new_tokens=new, stop_token_ids=stop)
    question = len(example.prompt_ids) - example.question_start  # the question and the generation prompt
    [(tokens, _)] = generate_batch(
        lm,
        [list(example.prompt_ids)],
        [None],
        [params],
        stop[0],
        compression=compressor,
        on_kv_kept=kept.extend,
        question_lengths=[question] if regime == "question_after" else None,
    )
    return tokens, (kept[0] if kept else None)


def run_kv_benchmark(
    config: KVBenchConfig,
    data_dir: str | None = None,
    progress: Progress | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the suite with the full cache and every method; returns rows and :func:`summarize`'s table."""
    from veil.models.loading import load_model
    from veil.models.personalization import PersonalizationConfig, PersonalizedLM

    progress = progress or NullProgress()
    loaded = load_model(config.model, data_dir)
    tok = loaded.tokenizer
    lm = PersonalizedLM(loaded.model, PersonalizationConfig(n_tokens=0)).eval()
    suite = build_suite(
        tok, SuiteConfig(config.examples, config.context_tokens, config.seed, tasks=config.tasks)
    )
    stop = tuple(sorted({int(tok.eos_token_id), int(tok.convert_tokens_to_ids("<|im_end|>"))} - {None}))
    rows: list[dict[str, Any]] = []
    full: list[list[int]] = []

    def record(
        i: int, method: str, budget: float | None, tokens: list[int], kept: Any, seconds: float
    ) -> None:
        ex = suite[i]
        text = tok.decode(tokens, skip_special_tokens=True)
        row = {
            "example": i, "task": ex.task, "depth": ex.depth, "prompt_tokens": len(ex.prompt_ids),
            "regime": config.regime, "method": method, "budget": budget, "output": text,
            "correct": is_correct(ex, text),
            "agree": method == "full" or tokens == full[i],
            "kept": 1.0 if kept is None else kept.mean,
            "kept_per_layer": None if kept is None else list(kept.per_layer), "seconds": seconds,
        }  # fmt: skip
        rows.append(row)
        if on_row is not None:
            on_row(row)

    dbudget = [m for m in config.methods if m in DBUDGET_METHODS]
    baselines = [m for m in config.methods if m in BASELINES]
    budget: float | None = None
    with progress.stage(f"full cache + {', '.join(dbudget)}", len(suite)) as bar:
        for i, ex in enumerate(suite):
            t = time.perf_counter()
            tokens, _ = _decode_one(lm, ex, None, stop, config.max_new_tokens, config.regime)
            full.append(tokens)
            record(i, "full", None, tokens, None, time.perf_counter() - t)
            for m in dbudget:
                t = time.perf_counter()
                spec = method_spec(m, config.threshold, None)
                out, kept = _decode_one(lm, ex, from_spec(spec), stop, config.max_new_tokens, config.regime)
                record(i, m, None, out, kept, time.perf_counter() - t)
            bar.advance()
    if baselines:
        budget = float(np.mean([r["kept"] for r in rows if r["method"] == dbudget[0]]))
        with progress.stage(f"baselines at budget {budget:.3f}", len(suite) * len(baselines)) as bar:
            for i, ex in enumerate(suite):
                for m in baselines:
                    t = time.perf_counter()
                    out, kept = _decode_one(
                        lm,
                        ex,
                        from_spec(method_spec(m, config.threshold, budget)),
                        stop,
                        config.max_new_tokens,
                        config.regime,
                    )
                    record(i, m, budget, out, kept, time.perf_counter() - t)
                    bar.advance()
    return {
        "model": loaded.name,
        "examples": len(suite),
        "context_tokens": config.context_tokens,
        "threshold": config.threshold,
        "matched_budget": budget,
        "regime": config.regime,
        "summary": summarize(rows),
        "rows": rows,
    }


def _stats(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    kept = np.array([r["kept"] for r in rows])
    return {
        "n": len(rows),
        "agreement": float(np.mean([r["agree"] for r in rows])),
        "accuracy": float(np.mean([r["correct"] for r in rows])),
        "kept_mean": float(kept.mean()),
        "kept_p10": float(np.percentile(kept, 10)),
        "kept_p50": float(np.percentile(kept, 50)),
        "kept_p90": float(np.percentile(kept, 90)),
    }


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per method: agreement with the full cache, accuracy, kept fraction (mean, p10/p50/p90), per task."""
    out: dict[str, Any] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        tasks = dict.fromkeys(r["task"] for r in mine)
        out[method] = {
            **_stats(mine),
            "per_task": {t: _stats([r for r in mine if r["task"] == t]) for t in tasks},
        }
    return out
