"""Latency cost of personalisation: a forward pass with vs without one user-embedding soft token.

For each (batch, tokens) pair, :func:`veil.models.benchmarking.personalization_latency` times a
next-token forward pass of the bare causal LM against the same pass through ``PersonalizedLM`` (one
prefix soft token per row), interleaved, and this script prints the two medians and their ratio next to
the target (< 1.05). ``--full-sequence`` also times a full-sequence forward (logits at every position).

The personalised pass always covers ``tokens + 1`` positions: the soft token is one more position of
attention and MLP work, so the ratio cannot reach 1.0 even with free packing.

Usage::

    .venv/bin/python benchmarks/personalization_latency.py
    .venv/bin/python benchmarks/personalization_latency.py --model tiny-llama --repeats 50 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from typing import Any

__all__ = ["TARGET_RATIO", "full_sequence_latency", "main"]

TARGET_RATIO = 1.05


def _quiet_libraries() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from veil.models.loading import quiet_transformers

    quiet_transformers()


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def full_sequence_latency(loaded: Any, batch: int, tokens: int, repeats: int) -> dict[str, Any]:
    """Like ``personalization_latency`` but with logits at every position, ``(B, T[+1], vocab)``."""
    from veil.models.benchmarking import interleaved_latency

    return interleaved_latency(loaded.model, batch, tokens, repeats, full_sequence=True)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


_HEAD = (
    f"{'batch':>6}{'tokens':>8}{'plain ms':>11}{'p90':>9}{'personal ms':>13}{'p90':>9}"
    f"{'ratio':>8}{'target':>9}  result"
)


def _row(r: dict[str, Any]) -> str:
    u, p = r["unpersonalised"], r["personalised"]
    return (
        f"{r['batch']:>6}{r['tokens']:>8}{u['median_ms']:>11.2f}{u['p90_ms']:>9.2f}"
        f"{p['median_ms']:>13.2f}{p['p90_ms']:>9.2f}{r['ratio']:>8.3f}{'< ' + str(TARGET_RATIO):>9}"
        f"  {'PASS' if r['pass'] else 'FAIL'}"
    )


def _section(title: str, grid: list[tuple[int, int]], measure: Any, table: bool) -> list[dict[str, Any]]:
    """Measure every (batch, tokens) point; in table mode print each row as soon as it is known."""
    if table:
        print(f"{title}\n{_HEAD}\n{'-' * len(_HEAD)}", flush=True)
    rows = []
    for b, t in grid:
        print(f"{title.split(' (')[0]}: batch {b} x {t} tokens", file=sys.stderr)
        r = measure(b, t)
        rows.append({**r, "pass": r["ratio"] < TARGET_RATIO})
        if table:
            print(_row(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="registered model name or directory")
    parser.add_argument("--batch", type=_positive, nargs="+", default=[1, 4, 8], help="rows per pass")
    parser.add_argument(
        "--tokens", type=_positive, nargs="+", default=[32, 128], help="prompt tokens per row"
    )
    parser.add_argument("--repeats", type=_positive, default=30, help="timed passes per path")
    parser.add_argument("--threads", type=_positive, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--full-sequence", action="store_true", help="also time a full-sequence forward")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = parser.parse_args(argv)

    _quiet_libraries()
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from veil.models.benchmarking import personalization_latency
    from veil.models.loading import ModelLoadError, load_model

    table = not args.json
    grid = [(b, t) for b in args.batch for t in args.tokens]
    machine = f"{platform.machine()} CPU x{torch.get_num_threads()} threads, {cpu_model()}"
    if table:
        print(
            f"model {args.model}; {machine}; {args.repeats} interleaved repeats; medians; target: personal / plain < {TARGET_RATIO}"
        )
    try:
        next_token = _section(
            "next token (logits at the last position)",
            grid,
            lambda b, t: personalization_latency(args.model, b, t, args.repeats),
            table,
        )
        full = []
        if args.full_sequence:
            loaded = load_model(args.model)
            if table:
                print()
            full = _section(
                "full sequence (logits at every position)",
                grid,
                lambda b, t: full_sequence_latency(loaded, b, t, args.repeats),
                table,
            )
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        out = {"model": next_token[0]["model"], "machine": machine, "target_ratio": TARGET_RATIO}
        print(json.dumps({**out, "next_token": next_token, "full_sequence": full}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
