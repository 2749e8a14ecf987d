"""KV-cache compression quality on the synthetic long-context suite (the function ``veil bench kv`` runs).

For SmolLM2-135M-Instruct by default: greedy decoding of every suite example with the full cache, with
DBudgetKV (paper defaults, and the ``non_sink`` norm) and with each fixed-budget baseline (StreamingLLM,
SnapKV, H2O, PyramidKV) at DBudgetKV's measured mean kept fraction
(:func:`veil.models.compression.evaluation.run_kv_benchmark`), with exact agreement, the mean per-token
``KL(full || compressed)`` teacher-forced on the full cache's output and the first diverging token.
Prints the per-method table and the target: >= 25 % of the cache pruned on average at >= 99 % exact
agreement with full-cache output.
``--regime question_after`` compresses the context alone and prefills the question afterwards (default
``question_before``: the whole prompt, the paper's regime).

Usage::

    VEIL_DATA_DIR=/tmp/vd .venv/bin/python benchmarks/kv_compression.py --examples 7 --context-tokens 512 \\
        --out benchmarks/results/kv_compression_2core.jsonl
    # options: --regime question_after  --methods dbudgetkv,snapkv  --threshold 0.01  --max-new-tokens 32
    #          --model tiny-llama  --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from typing import Any

__all__ = ["TARGET_AGREEMENT", "TARGET_PRUNED", "main", "target_verdict"]

TARGET_PRUNED = 0.25
TARGET_AGREEMENT = 0.99


def target_verdict(summary: dict[str, Any], method: str = "dbudgetkv") -> dict[str, Any]:
    """Whether ``method`` pruned >= 25 % on average with >= 99 % exact agreement."""
    s = summary[method]
    pruned = 1.0 - s["kept_mean"]
    return {
        "method": method,
        "pruned": pruned,
        "agreement": s["agreement"],
        "met": pruned >= TARGET_PRUNED and s["agreement"] >= TARGET_AGREEMENT,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--examples", type=int, default=24)
    parser.add_argument("--context-tokens", type=int, default=1024)
    parser.add_argument("--methods", default="", help="comma-separated (default: all)")
    parser.add_argument("--threshold", type=float, default=0.01)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--regime", default="question_before", help="question_before or question_after")
    parser.add_argument("--out", help="append one JSON line per (example, method) and a summary line")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)

    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch

    from veil.cli.bench_kv import kv_table
    from veil.models.compression.evaluation import BENCH_METHODS, KVBenchConfig, run_kv_benchmark
    from veil.models.loading import quiet_transformers
    from veil.progress import NullProgress, RichProgress

    quiet_transformers()
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip()) or BENCH_METHODS
    try:
        config = KVBenchConfig(
            args.model,
            args.examples,
            args.context_tokens,
            methods,
            args.threshold,
            args.max_new_tokens,
            regime=args.regime,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = open(args.out, "w") if args.out else None  # noqa: SIM115 - rows are written as they come
    on_row = (lambda r: (out.write(json.dumps({"kind": "row", **r}) + "\n"), out.flush())) if out else None
    result = run_kv_benchmark(config, progress=NullProgress() if args.json else RichProgress(), on_row=on_row)
    result["machine"] = f"{platform.machine()} CPU x{torch.get_num_threads()} threads"
    if "dbudgetkv" in result["summary"]:
        result["target"] = target_verdict(result["summary"])
    if out:
        out.write(json.dumps({"kind": "summary", **{k: v for k, v in result.items() if k != "rows"}}) + "\n")
        out.close()
    if args.json:
        print(json.dumps(result))
        return 0
    from rich.console import Console

    Console().print(kv_table(result))
    if "target" in result:
        t = result["target"]
        print(
            f"target (>= {TARGET_PRUNED:.0%} pruned at >= {TARGET_AGREEMENT:.0%} agreement): "
            f"{t['pruned']:.1%} pruned, {t['agreement']:.1%} agreement: {'met' if t['met'] else 'NOT met'}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
