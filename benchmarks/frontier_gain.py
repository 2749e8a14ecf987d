"""What personalisation buys at each point of the privacy-utility frontier.

Runs the quick IDfree-PL experiment (``ExperimentConfig.quick``: tiny random-init model, 24 users) or
reads the JSON it produced, and prints, per (family, spread) operating point: accuracy, the gain over no
personalisation (absolute and as the ratio accuracy / none accuracy) and the Bayes-optimal attribution
accuracy on the uploaded embeddings next to chance (1 / users).

Usage::

    .venv/bin/python benchmarks/frontier_gain.py --task next_word --save /tmp/frontier.json
    .venv/bin/python benchmarks/frontier_gain.py --from-json /tmp/frontier.json

``--from-json`` takes the output of this script's ``--save``, of ``veil experiment personalization
--json`` or the ``summary.json`` written by ``veil demo``: all three are ``ExperimentResult.to_json()``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["frontier_rows", "main"]

TASKS = ("next_word", "classification")


def _quiet_libraries() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from veil.models.loading import quiet_transformers

    quiet_transformers()


def run_quick(task: str, seed: int) -> dict[str, Any]:
    """Run the quick experiment and return its ``to_json()`` summary."""
    _quiet_libraries()
    from veil.simulation.experiments.personalization import ExperimentConfig, run_personalization_experiment

    result = run_personalization_experiment(ExperimentConfig.quick(task, seed))
    return result.to_json()


def frontier_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per frontier point: accuracy, gain over ``none`` (absolute and ratio), attribution.

    Raises
    ------
    ValueError
        If the summary lacks the ``none`` method or a ``frontier`` list.
    """
    methods = summary.get("methods", {})
    if "none" not in methods:
        raise ValueError(f"summary has no 'none' method; methods present: {sorted(methods)}")
    if not summary.get("frontier"):
        raise ValueError("summary has an empty or missing 'frontier' list")
    none_acc = float(methods["none"]["accuracy"])
    rows = []
    for point in summary["frontier"]:
        acc = float(point["accuracy"])
        chance = float(point["chance"])
        attribution = float(point["attribution_accuracy"])
        rows.append(
            {
                "family": point["family"],
                "spread": float(point["spread"]),
                "accuracy": acc,
                "none_accuracy": none_acc,
                "gain": acc - none_acc,
                "gain_ratio": acc / none_acc if none_acc > 0 else float("inf"),
                "attribution_accuracy": attribution,
                "chance": chance,
                "attribution_over_chance": attribution / chance,
                "linkage_accuracy": float(point["linkage_accuracy"]),
                "pass": acc > none_acc,
            }
        )
    return rows


def _print_table(summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    methods = summary["methods"]
    print(
        f"IDfree-PL frontier: task={summary['task']} model={summary['model']} users={summary['users']} "
        f"test examples={summary['test_examples']} (experiment took {summary.get('seconds', 0):.0f} s)"
    )
    ref = ", ".join(
        f"{name}={m['accuracy']:.3f}" for name, m in methods.items() if name in ("none", "static")
    )
    if "static" in methods:
        ref += f" (static attribution={methods['static']['attribution_accuracy']:.3f})"
    print(f"reference accuracy: {ref}")
    print(
        "target: gain over none > 0 (accuracy / none > 1); attribution is the privacy cost, shown vs chance"
    )
    head = (
        f"{'family':<14}{'spread':>8}{'accuracy':>10}{'none':>8}{'gain':>9}{'acc/none':>10}"
        f"{'attrib.':>9}{'chance':>8}{'x chance':>10}{'linkage':>9}  result"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['family']:<14}{r['spread']:>8g}{r['accuracy']:>10.3f}{r['none_accuracy']:>8.3f}"
            f"{r['gain']:>+9.3f}{r['gain_ratio']:>10.2f}{r['attribution_accuracy']:>9.3f}"
            f"{r['chance']:>8.3f}{r['attribution_over_chance']:>10.1f}{r['linkage_accuracy']:>9.3f}"
            f"  {'PASS' if r['pass'] else 'FAIL'}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=TASKS, help="population task (default next_word)")
    parser.add_argument("--seed", type=int, default=0, help="experiment seed")
    parser.add_argument("--from-json", type=Path, metavar="PATH", help="read a saved summary, do not run")
    parser.add_argument("--save", type=Path, metavar="PATH", help="write the experiment's summary JSON here")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON object")
    args = parser.parse_args(argv)

    if args.from_json is not None:
        try:
            summary = json.loads(args.from_json.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"error: cannot read {args.from_json}: {exc}", file=sys.stderr)
            return 2
        if args.task is not None and summary.get("task") != args.task:
            print(
                f"error: --task {args.task} but {args.from_json} holds task={summary.get('task')}",
                file=sys.stderr,
            )
            return 2
    else:
        args.task = args.task or "next_word"
        print(
            f"running the quick experiment (task={args.task}); a few minutes on 2 CPU cores", file=sys.stderr
        )
        t0 = time.perf_counter()
        summary = run_quick(args.task, args.seed)
        print(f"done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        if args.save is not None:
            args.save.write_text(json.dumps(summary, indent=2))
            print(f"summary written to {args.save}", file=sys.stderr)

    try:
        rows = frontier_rows(summary)
    except (ValueError, KeyError) as exc:
        print(f"error: not an experiment summary: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"task": summary["task"], "model": summary["model"], "rows": rows}))
    else:
        _print_table(summary, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
