"""Where DBudgetKV's threshold must sit for near-lossless output: a sweep of T on the synthetic suite.

DBudgetKV (arXiv:2502.16886) keeps the shortest ranked prefix of the prompt whose relative attention-norm
loss is ``<= T``; the paper's universal T = 0.01 was found on 7B-70B models. This sweep decodes every suite
example (question before compression, the paper's regime) with the full cache and with DBudgetKV at each
T, for the paper's norm (``dbudgetkv``) and the released code's sink-free norm (``dbudgetkv_non_sink``);
then, for the (variant, T) with the best agreement among those pruning >= 25 % on average (ties: lower
mean KL), StreamingLLM, SnapKV, H2O and PyramidKV at its mean kept fraction. Per run: mean kept fraction
(p10/p50/p90), exact agreement with the full cache, mean teacher-forced ``KL(full || compressed)`` per
token, median first divergence, task accuracy, seconds
(:class:`veil.models.compression.evaluation.SuiteRun`). Rows go to ``--out`` as they come;
``--summarize-only`` rebuilds the summary, table and plot from such a file (e.g. a run stopped early, or
rows of another run appended); ``--first-example`` resumes a stopped run.

Usage::

    VEIL_DATA_DIR=/tmp/vd .venv/bin/python benchmarks/kv_threshold_sweep.py --examples 24 \\
        --context-tokens 1024 --thresholds 0.0001 0.001 0.003 0.01 \\
        --out benchmarks/results/kv_threshold_sweep_2core.jsonl \\
        --plot benchmarks/results/kv_threshold_sweep_2core.png
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

__all__ = ["BASELINES", "VARIANTS", "choose", "main", "markdown_table", "plot", "summarize_sweep"]

VARIANTS = ("dbudgetkv", "dbudgetkv_non_sink")
BASELINES = ("streaming_llm", "snapkv", "h2o", "pyramidkv")
MIN_PRUNED = 0.25


def label(variant: str, threshold: float) -> str:
    """The summary key of one DBudgetKV run: ``dbudgetkv@0.001``."""
    return f"{variant}@{threshold:g}"


def summarize_sweep(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method label: :func:`veil.models.compression.evaluation.summarize` plus mean seconds."""
    from veil.models.compression.evaluation import summarize

    out = summarize(rows)
    for method, s in out.items():
        mine = [r for r in rows if r["method"] == method]
        s["seconds_mean"] = sum(r["seconds"] for r in mine) / len(mine)
        s["threshold"] = mine[0].get("threshold")
        s["budget"] = mine[0].get("budget")
    return out


def choose(summary: dict[str, Any]) -> str | None:
    """The DBudgetKV label with the best agreement among those pruning >= 25 % (ties: lower KL)."""
    pruning = [
        m for m, s in summary.items() if "@" in m and 1.0 - s["kept_mean"] >= MIN_PRUNED
    ]  # fmt: skip
    return max(pruning, key=lambda m: (summary[m]["agreement"], -summary[m]["kl_mean"]), default=None)


def markdown_table(summary: dict[str, Any]) -> str:
    """The README table: one line per method label."""
    head = (
        "| method | T | budget | kept mean | p10 | p50 | p90 | agreement | mean KL (nats/token) "
        "| first divergence p50 | accuracy | s/row |\n" + "| --- " * 12 + "|"
    )
    lines = [head]
    for m, s in summary.items():
        n = s["n"]
        t = "-" if s["threshold"] is None else f"{s['threshold']:g}"
        b = "-" if s["budget"] is None else f"{s['budget']:.3f}"
        fd = "-" if s["first_divergence_p50"] is None else f"{s['first_divergence_p50']:g}"
        lines.append(
            f"| {m.split('@')[0]} | {t} | {b} | {s['kept_mean']:.3f} | {s['kept_p10']:.3f} | "
            f"{s['kept_p50']:.3f} | {s['kept_p90']:.3f} | {s['agreement']:.2f} ({round(s['agreement'] * n)}/{n}) "
            f"| {s['kl_mean']:.4f} | {fd} | {s['accuracy']:.2f} | {s['seconds_mean']:.1f} |"
        )
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: str, title: str) -> None:
    """Kept fraction vs agreement (left) and vs mean KL (right): a line per variant, a dot per baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    for variant in VARIANTS:
        pts = sorted(
            (s["kept_mean"], s["agreement"], s["kl_mean"], s["threshold"])
            for m, s in summary.items()
            if m.split("@")[0] == variant and "@" in m
        )
        if not pts:
            continue
        xs, ag, kl, ts = zip(*pts, strict=True)
        ax.plot(xs, ag, "o-", label=variant)
        bx.plot(xs, [max(k, 1e-6) for k in kl], "o-", label=variant)
        for x, y, t in zip(xs, ag, ts, strict=True):
            ax.annotate(f"T={t:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for m, s in summary.items():
        if "@" not in m and m != "full":
            ax.plot(s["kept_mean"], s["agreement"], "s", label=m)
            bx.plot(s["kept_mean"], max(s["kl_mean"], 1e-6), "s", label=m)
    for a in (ax, bx):
        a.axvline(1.0 - MIN_PRUNED, color="grey", ls=":", lw=1)
        a.set_xlabel("mean kept fraction of the prompt cache")
        a.grid(alpha=0.3)
    ax.axhline(0.99, color="grey", ls="--", lw=1)
    ax.set_ylabel("exact agreement with the full cache")
    ax.set_ylim(-0.03, 1.03)
    bx.set_yscale("log")
    bx.set_ylabel("mean KL(full || compressed), nats/token")
    ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--examples", type=int, default=24)
    parser.add_argument("--context-tokens", type=int, default=1024)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.0001, 0.001, 0.003, 0.01])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=BASELINES)
    parser.add_argument(
        "--baseline-examples", type=int, help="run the baselines on the first N examples only"
    )
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--out", required=True, help="JSON lines: one per (example, method), then a summary")
    parser.add_argument("--plot", help="PNG path")
    parser.add_argument("--summarize-only", action="store_true", help="read --out instead of running")
    parser.add_argument(
        "--first-example",
        type=int,
        default=0,
        help="resume: keep --out's rows of earlier examples, run the rest",
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads (1 wastes less on a core shared with others)"
    )
    args = parser.parse_args(argv)
    if args.summarize_only:
        with open(args.out) as f:
            lines = [json.loads(line) for line in f]
        rows = [r for r in lines if r["kind"] == "row"]
        meta = next((r for r in lines if r["kind"] == "meta"), {})
    else:
        rows, meta = run(args)
    summary = summarize_sweep(rows)
    chosen = choose({m: s for m, s in summary.items()})
    meta = {k: v for k, v in meta.items() if k not in ("kind", "elapsed_s")}
    result = {
        **meta, "kind": "summary", "chosen": chosen, "summary": summary,
        "row_seconds_total": sum(r["seconds"] for r in rows),
    }  # fmt: skip
    with open(args.out, "w" if args.summarize_only else "a") as f:
        if args.summarize_only:  # rewritten with one summary line, e.g. after rows were merged in
            f.write(json.dumps({"kind": "meta", **meta}) + "\n")
            f.writelines(json.dumps({**r, "kind": "row"}) + "\n" for r in rows)
        f.write(json.dumps(result) + "\n")
    print(markdown_table(summary))
    print(f"best DBudgetKV run pruning >= {MIN_PRUNED:.0%}: {chosen}")
    if args.plot:
        n = len({r["example"] for r in rows})
        plot(summary, args.plot, f"{meta.get('model', args.model)}, {n} examples x ~{args.context_tokens} "
             "tokens, question before compression, 32 new tokens")  # fmt: skip
    return 0


def run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Phase 1: the full cache and every (variant, T) on every example; phase 2: the baselines."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch

    from veil.models.compression.evaluation import KVBenchConfig, SuiteRun, method_spec
    from veil.models.loading import quiet_transformers

    quiet_transformers()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    config = KVBenchConfig(args.model, args.examples, args.context_tokens, max_new_tokens=args.max_new_tokens)
    sweep = SuiteRun(config)
    rows: list[dict[str, Any]] = []
    meta = {
        "kind": "meta", "model": sweep.model_name, "examples": args.examples,
        "context_tokens": args.context_tokens, "regime": config.regime, "thresholds": args.thresholds,
        "max_new_tokens": args.max_new_tokens,
        "machine": f"{platform.machine()} CPU x{torch.get_num_threads()} threads",
    }  # fmt: skip
    kept: list[dict[str, Any]] = []
    if args.first_example:
        with open(args.out) as f:
            lines = [json.loads(line) for line in f]
        meta = next(r for r in lines if r["kind"] == "meta")
        kept = [r for r in lines if r["kind"] == "row" and r["example"] < args.first_example]
        meta["machine"] += f"; examples >= {args.first_example}: x{torch.get_num_threads()} threads"
    out = open(args.out, "w")  # noqa: SIM115 - rows are written as they come
    out.write(json.dumps(meta) + "\n")
    for r in kept:
        out.write(json.dumps(r) + "\n")
        rows.append({k: v for k, v in r.items() if k != "kind"})

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        out.write(json.dumps({"kind": "row", **row}) + "\n")
        out.flush()
        print(
            f"{time.perf_counter() - start:7.0f}s ex {row['example']:2d} {row['method']:26s} kept "
            f"{row['kept']:.3f} agree {row['agree']!s:5s} KL {row['kl_mean']:.4f} {row['seconds']:.1f}s",
            flush=True,
        )

    for i in range(args.first_example, len(sweep.suite)):
        record(sweep.reference(i))
        for t in args.thresholds:
            for v in args.variants:
                record(sweep.run(i, label(v, t), method_spec(v, t, None)))
    chosen = choose(summarize_sweep(rows))
    if chosen is not None and args.baselines:
        budget = summarize_sweep(rows)[chosen]["kept_mean"]
        for i in range(min(len(sweep.suite), args.baseline_examples or len(sweep.suite))):
            if i not in sweep.references:  # examples of an earlier, resumed run
                sweep.reference(i)
            for m in args.baselines:
                record(sweep.run(i, m, method_spec(m, 0.01, budget), budget))
    out.close()
    return rows, meta


if __name__ == "__main__":
    raise SystemExit(main())
