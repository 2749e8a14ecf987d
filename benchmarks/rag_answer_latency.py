"""What a DeepRAG answer costs per question, against single-shot RAG and no retrieval.

DeepRAG (arXiv:2502.01142) answers step by step: per step the model writes a subquery, decides whether to
search, and writes an intermediate answer, so a question costs several generations and possibly several
searches. Single-shot RAG searches once with the whole question, then runs the same step loop with the
passages in the user turn; no retrieval runs the loop without any search. Each is one policy of
:func:`veil.models.rag.deeprag.answer_questions` (``deeprag``, ``single``, ``never``), timed here on the
same model, the same questions and the same retriever, one question at a time as the service answers
them (``POST /v1/rag/answers``).

Questions are the generated multi-hop world's (:mod:`veil.models.rag.world`, test split first), retrieval
is BM25 over its corpus (:func:`veil.models.rag.experiment.bm25_retriever`, DeepRAG's retriever). The
policies run interleaved, question by question, in an order that rotates, so a change in the machine's
load hits every policy alike. Printed per policy: p50 / p95 / mean seconds per question, steps,
searches, generation calls, generated tokens (counted by re-tokenising each completion with its stop
string) and how the loop ended (``final``, ``step_cap``, ``malformed``), and each policy's p50 and mean
as a ratio to single-shot's from the same run.

SmolLM2-135M-Instruct is not trained for DeepRAG's protocol: writing its own steps (``--decisions
model``) it ends questions ``malformed`` at the first follow-up, so every policy does about the same
work. ``--decisions gold`` keeps the model's real cost and takes the text from the world's gold path (see
``_GoldPacedLM``): what a model trained to the protocol, decomposing as the gold path does, would cost.

    VEIL_DATA_DIR=/tmp/vd .venv/bin/python benchmarks/rag_answer_latency.py --questions 8 --decisions gold --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

POLICY_NAMES = {"deeprag": "DeepRAG loop", "single": "single-shot RAG", "never": "no retrieval"}


def _percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of a non-empty list."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _machine(threads: int) -> dict[str, Any]:
    import torch
    from lm_timing import cpu_name  # benchmarks/, this script's folder

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": threads,
    }


class _GoldPacedLM:
    """SmolLM2's real work, the world's gold decisions: each completion's *text* comes from the scripted
    reader of the world (``tests/models/rag_world_reader.py``: gold subqueries, a search for every hop
    whose fact is external, the gold answer), and its *cost* is the real model generating exactly as
    many tokens after the real prompt (passages, earlier steps and all). The latency of a model trained
    to DeepRAG's protocol that decomposes as the gold path does, without training one."""

    def __init__(self, lm: Any, reader: Any) -> None:
        self.lm, self.reader, self.tokenizer = lm, reader, lm.tokenizer
        self._turns: dict[str, tuple[str, str]] = {}  # real prompt -> (user, assistant prefix)

    def chat_prompt(self, user: str, assistant_prefix: str = "") -> str:
        prompt = self.lm.chat_prompt(user, assistant_prefix)
        self._turns[prompt] = (user, assistant_prefix)
        return prompt

    def complete(self, prompts: Any, stop: Any, max_new_tokens: int) -> Any:
        import torch

        from veil.models.generation import SamplingParams, generate_batch

        scripted = [self.reader.chat_prompt(*self._turns[p]) for p in prompts]
        outs = self.reader.complete(scripted, stop, max_new_tokens)
        for prompt, out in zip(prompts, outs, strict=True):
            text = out.text + (out.stop or "")
            n = min(max_new_tokens, max(1, len(self.tokenizer(text, add_special_tokens=False)["input_ids"])))
            ids = [self.tokenizer(prompt, add_special_tokens=False)["input_ids"]]
            # no stop token: exactly n tokens, each decoded as HFTextLM decodes to look for stop strings
            made: list[int] = []

            def on_step(new: list[int | None], made: list[int] = made) -> set[int]:
                made.extend(t for t in new if t is not None)
                self.tokenizer.decode(made, skip_special_tokens=True)
                return set()

            with torch.inference_mode():
                generate_batch(
                    self.lm.lm, ids, [None], [SamplingParams(max_new_tokens=n, temperature=0.0)],
                    pad_id=self.lm._pad, on_step=on_step,
                )  # fmt: skip
        self._turns.clear()
        return outs


class _CountingLM:
    """The text LM, counting generation calls and the tokens they generated (the loop's real work)."""

    def __init__(self, lm: Any) -> None:
        self.lm, self.calls, self.tokens = lm, 0, 0

    def chat_prompt(self, user: str, assistant_prefix: str = "") -> str:
        return self.lm.chat_prompt(user, assistant_prefix)

    def complete(self, prompts: Any, stop: Any, max_new_tokens: int) -> Any:
        outs = self.lm.complete(prompts, stop, max_new_tokens)
        self.calls += len(prompts)
        for out in outs:
            self.tokens += len(
                self.lm.tokenizer(out.text + (out.stop or ""), add_special_tokens=False)["input_ids"]
            )
        return outs


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    from veil.models.loading import load_model, quiet_transformers
    from veil.models.rag.deeprag import LoopConfig, answer_questions
    from veil.models.rag.experiment import bm25_retriever
    from veil.models.rag.lm import HFTextLM
    from veil.models.rag.world import WorldConfig, build_world

    quiet_transformers()
    load_before = os.getloadavg()
    started = time.perf_counter()
    loaded = load_model(args.model, args.data_dir)
    world = build_world(WorldConfig(seed=args.seed))
    text_lm: Any = HFTextLM(loaded.model, loaded.tokenizer, batch_size=1)
    if args.decisions == "gold":
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "models"))
        from rag_world_reader import WorldReader

        text_lm = _GoldPacedLM(text_lm, WorldReader(world))
    lm = _CountingLM(text_lm)
    questions = [q.text for q in world.split("test") + world.split("dev") + world.split("train")]
    if len(questions) < args.questions:
        raise SystemExit(f"the world has {len(questions)} questions, --questions asked for {args.questions}")
    questions = questions[: args.questions]
    base_retrieve = bm25_retriever(world)
    search_s = [0.0]

    def retrieve(query: str, k: int) -> list[tuple[str, str]]:
        t = time.perf_counter()
        out = base_retrieve(query, k)
        search_s[0] += time.perf_counter() - t
        return list(out)

    configs = {p: LoopConfig(policy=p, max_steps=args.max_steps, top_k=args.top_k) for p in args.policies}
    setup_s = time.perf_counter() - started
    with torch.inference_mode():
        answer_questions(lm, questions[:1], retrieve, configs[args.policies[0]])  # warm-up, not timed
    rows: dict[str, list[dict[str, Any]]] = {p: [] for p in args.policies}
    for i, question in enumerate(questions):
        order = args.policies[i % len(args.policies) :] + args.policies[: i % len(args.policies)]
        for policy in order:
            search_s[0] = 0.0
            lm.calls = lm.tokens = 0
            t = time.perf_counter()
            with torch.inference_mode():
                (answer,) = answer_questions(lm, [question], retrieve, configs[policy])
            seconds = time.perf_counter() - t
            rows[policy].append(
                {
                    "seconds": seconds,
                    "search_s": search_s[0],
                    "steps": len(answer.trace.steps),
                    "retrievals": answer.retrievals,
                    "ended": answer.ended,
                    "generations": lm.calls,
                    "generated_tokens": lm.tokens,
                }
            )
        if args.progress:
            line = "  ".join(f"{p} {rows[p][-1]['seconds']:.1f}s" for p in args.policies)
            print(f"[{i + 1}/{len(questions)}] {line}", flush=True)
    load_after = os.getloadavg()

    single = rows.get("single")
    policies: dict[str, Any] = {}
    for policy, rs in rows.items():
        secs = [r["seconds"] for r in rs]
        policies[policy] = {
            "name": POLICY_NAMES.get(policy, policy),
            "p50_s": _percentile(secs, 0.5),
            "p95_s": _percentile(secs, 0.95),
            "mean_s": statistics.fmean(secs),
            "search_ms_mean": 1000 * statistics.fmean(r["search_s"] for r in rs),
            "steps_mean": statistics.fmean(r["steps"] for r in rs),
            "retrievals_mean": statistics.fmean(r["retrievals"] for r in rs),
            "generations_mean": statistics.fmean(r["generations"] for r in rs),
            "generated_tokens_mean": statistics.fmean(r["generated_tokens"] for r in rs),
            "ended": dict(Counter(r["ended"] for r in rs)),
        }
    if single is not None:
        s_p50 = _percentile([r["seconds"] for r in single], 0.5)
        s_mean = statistics.fmean(r["seconds"] for r in single)
        for stats in policies.values():
            stats["p50_vs_single"] = stats["p50_s"] / s_p50
            stats["mean_vs_single"] = stats["mean_s"] / s_mean
    return {
        "benchmark": "rag_answer_latency",
        "model": loaded.name,
        "decisions": args.decisions,
        "questions": len(questions),
        "max_steps": args.max_steps,
        "top_k": args.top_k,
        "world_seed": args.seed,
        "corpus_passages": len(world.corpus()),
        "setup_s": setup_s,
        "policies": policies,
        "machine": {**_machine(args.threads), "load_before": load_before, "load_after": load_after},
    }


def _print(result: dict[str, Any]) -> None:
    m = result["machine"]
    print(
        f"{result['model']} ({result['decisions']} decisions), {result['questions']} questions, max_steps {result['max_steps']}, "
        f"top_k {result['top_k']}, BM25 over {result['corpus_passages']} passages; "
        f"{m['cpu']} x{m['cores']}, {m['torch_threads']} torch thread(s), load "
        f"{m['load_before'][0]:.2f} -> {m['load_after'][0]:.2f}"
    )
    head = (
        f"{'policy':<16}{'p50 s':>8}{'p95 s':>8}{'mean s':>8}{'p50/single':>11}{'mean/single':>12}"
        f"{'steps':>7}{'searches':>9}{'search ms':>10}{'calls':>7}{'tokens':>8}  ended"
    )
    print(head)
    for policy, s in result["policies"].items():
        ended = ", ".join(f"{k} {v}" for k, v in sorted(s["ended"].items()))
        print(
            f"{policy:<16}{s['p50_s']:>8.2f}{s['p95_s']:>8.2f}{s['mean_s']:>8.2f}"
            f"{s.get('p50_vs_single', float('nan')):>10.2f}x{s.get('mean_vs_single', float('nan')):>11.2f}x"
            f"{s['steps_mean']:>7.2f}{s['retrievals_mean']:>9.2f}{s['search_ms_mean']:>10.2f}"
            f"{s['generations_mean']:>7.1f}{s['generated_tokens_mean']:>8.1f}  {ended}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="registered name or model dir")
    parser.add_argument("--data-dir", default=None, help="where converted models live (VEIL_DATA_DIR)")
    parser.add_argument(
        "--decisions",
        choices=("model", "gold"),
        default="model",
        help="model: the model writes the steps; gold: the world's gold steps at the model's real cost",
    )
    parser.add_argument("--questions", type=int, default=20, help="questions per policy")
    parser.add_argument("--policies", nargs="+", default=["deeprag", "single", "never"])
    parser.add_argument("--max-steps", type=int, default=6, help="step cap (the paper: 6 on HotpotQA)")
    parser.add_argument("--top-k", type=int, default=3, help="passages per search (the paper: 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="the world's seed")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--out", type=Path, default=None, help="append the JSON result to this file")
    parser.add_argument("--progress", action="store_true", help="one line per question on stdout")
    args = parser.parse_args()
    from veil.models.rag.deeprag import POLICIES

    unknown = [p for p in args.policies if p not in POLICIES]
    if unknown:
        parser.error(f"unknown policies {unknown}; choose from {', '.join(POLICIES)}")
    if min(args.questions, args.max_steps, args.top_k, args.threads) < 1:
        parser.error("--questions, --max-steps, --top-k and --threads must be >= 1")
    result = run(args)
    if args.out is not None:
        with args.out.open("a", encoding="utf-8") as f:
            f.write(json.dumps(result) + "\n")
    if args.json:
        print(json.dumps(result))
    else:
        _print(result)


if __name__ == "__main__":
    main()
