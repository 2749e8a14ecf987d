"""Does LongDPO's memory pool (arXiv:2502.02095, §3.2) lower the contradiction rate? The comparison of
``veil experiment longform`` (:func:`~veil.models.longform.experiment.compare_memory_pool`) alone, with
no training, over several search seeds, on the quick preset with fields replaced (``--set``, as
``LongformExperimentConfig.overridden`` takes it): e.g. a base model whose drafts restate a fact with another
value more often (``drift_p``), which gives the pool more to veto.

Prints one JSON object on stdout (the comparison, the overrides, the base model's greedy contradiction
rate and the wall and CPU seconds); progress on stderr. The base model is cached in ``VEIL_DATA_DIR``.

Usage::

    VEIL_DATA_DIR=/tmp/vd3 .venv/bin/python benchmarks/longform_memory_pool.py \\
        --set '{"draft_words": [0.5, 1.5], "base_epochs": 20, "fact_p": 1.0, "drift_p": 1.0}' \\
        --pool-seeds 0 1 2 3 > OUT.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", default="{}", help="JSON: preset fields to replace")
    ap.add_argument("--pool-seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="search seeds")
    args = ap.parse_args()

    from veil.cli.main import _data_dir, _quiet_libraries
    from veil.models.longform.experiment import (
        LongformExperimentConfig,
        base_model,
        compare_memory_pool,
        evaluate,
        experiment_tasks,
    )
    from veil.models.longform.policy import HFStepPolicy
    from veil.models.rag.dense import load_minilm

    torch.set_num_threads(1)
    _quiet_libraries()
    over = json.loads(args.set)
    cfg = LongformExperimentConfig.quick().overridden(over)
    wall, cpu = time.perf_counter(), time.process_time()
    rng = random.Random(cfg.seed)
    topics, _, held_out = experiment_tasks(cfg, rng)
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    base, tokenizer, _ = base_model(cfg, topics, rng, _data_dir(), say)
    policy = HFStepPolicy(base.eval(), tokenizer)
    say(f"memory pool on {len(held_out)} held-out prompts, search seeds {args.pool_seeds}")
    pool = compare_memory_pool(policy, held_out, cfg, load_minilm(), seeds=args.pool_seeds)
    greedy = evaluate(policy, held_out, cfg.eval_tokens, cfg.eval_repetition_penalty)
    print(json.dumps({
        "overrides": over,
        "memory_pool": pool,
        "base_greedy": {k: greedy[k] for k in ("length_score", "contradiction_rate", "words_by_target")},
        "seconds": round(time.perf_counter() - wall, 1), "cpu_seconds": round(time.process_time() - cpu, 1),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
