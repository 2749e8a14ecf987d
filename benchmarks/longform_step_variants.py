"""Variants of step-level DPO (LongDPO, arXiv:2502.02095) on ``veil experiment longform --quick``'s data:
the same cached base model, search prompts and held-out prompts, each variant trained for the preset's
number of updates and evaluated as the experiment evaluates (greedy, S_l, quality, contradictions).

A variant is a name, a method (``sft``, ``outcome`` or ``step``) and JSON overrides: ``search`` replaces
fields of the search config (a new search when it changes), ``dpo`` / ``sft`` fields of the training
config, and ``balance`` (bool) thins step pairs with ``balance_end_pairs``. Each finished seed appends
one JSON line to ``--out``. Run the experiment once first, so that its base model is cached.

Usage::

    .venv/bin/python benchmarks/longform_step_variants.py --data-dir /tmp/vd \\
        --variant 'step-balanced:step:{"balance": true}' --variant 'sft:sft:{}' \\
        --out benchmarks/results/longform_step_variants_2core.jsonl
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import random
import time
from pathlib import Path

import torch


def describe(results: list, end: str) -> dict:
    """Per required length: the chosen paths' words, and the step pairs' kinds (which side ends the
    answer), mean words of the chosen and the rejected step, and how often the chosen one is longer;
    pairs per depth."""
    from veil.models.longform.length import count_words, length_score

    out: dict = {"by_length": {}, "pairs_by_depth": {}}
    for n in sorted({r.task.target_words for r in results}):
        mine = [r for r in results if r.task.target_words == n]
        pairs = [p for r in mine for p in r.pairs]
        words = [count_words(r.text) for r in mine]
        cw = [count_words(p["chosen"].replace(end, "")) for p in pairs]
        rw = [count_words(p["rejected"].replace(end, "")) for p in pairs]
        longer = sum(c > r for c, r in zip(cw, rw, strict=True))
        shorter = sum(c < r for c, r in zip(cw, rw, strict=True))
        ends = [(p["chosen"].endswith(end), p["rejected"].endswith(end)) for p in pairs]
        out["by_length"][str(n)] = {
            "paths": len(mine), "path_words": round(sum(words) / len(words), 1),
            "path_length_score": round(sum(length_score(w, n) for w in words) / len(words), 1),
            "pairs": len(pairs), "chosen_only_ends": ends.count((True, False)),
            "rejected_only_ends": ends.count((False, True)), "both_end": ends.count((True, True)),
            "neither_ends": ends.count((False, False)), "chosen_words": round(sum(cw) / len(cw), 1),
            "rejected_words": round(sum(rw) / len(rw), 1), "chosen_longer": longer,
            "chosen_shorter": shorter,
        }  # fmt: skip
    for r in results:
        for p in r.pairs:
            out["pairs_by_depth"][str(p["depth"])] = out["pairs_by_depth"].get(str(p["depth"]), 0) + 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, required=True, help="VEIL_DATA_DIR of a finished quick run")
    ap.add_argument("--variant", action="append", default=[], help="NAME:METHOD:JSON")
    ap.add_argument(
        "--describe", action="store_true", help="first, one line describing the preset's step pairs"
    )
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from veil.models.dpo import prefix_dpo, restore_forward
    from veil.models.longform.experiment import (
        LongformExperimentConfig,
        base_model_dir,
        evaluate,
        experiment_tasks,
    )
    from veil.models.longform.judge import RuleJudge
    from veil.models.longform.policy import HFStepPolicy
    from veil.models.longform.search import collect_pairs
    from veil.models.longform.train import balance_end_pairs, outcome_pairs, sft_examples, step_pairs
    from veil.models.rag.dense import load_minilm
    from veil.models.rag.train import imitate

    torch.set_num_threads(1)
    cfg = LongformExperimentConfig.quick()
    where = base_model_dir(cfg, args.data_dir)
    if where is None or not (where / "config.json").is_file():
        raise SystemExit(
            f"no cached base model in {args.data_dir}: run veil experiment longform --quick first"
        )
    base = AutoModelForCausalLM.from_pretrained(where).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(where)
    policy = HFStepPolicy(base, tokenizer)
    _, search_tasks, eval_tasks = experiment_tasks(cfg, random.Random(cfg.seed))
    encoder, judge = load_minilm(), RuleJudge()
    searches: dict[str, tuple] = {}

    def data(search_over: dict) -> tuple:
        key = json.dumps(search_over, sort_keys=True)
        if key not in searches:
            search = dataclasses.replace(cfg.search, **search_over)
            results, _ = collect_pairs(policy, judge, search_tasks, search, encoder)
            searches[key] = (results, outcome_pairs(policy, judge, search_tasks, search)[0])
        return searches[key]

    if args.describe:
        row = {"name": "pairs"} | describe(data({})[0], policy.end_text)
        print(json.dumps(row), flush=True)
        with args.out.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    budget = None
    for spec in args.variant:
        name, method, raw = spec.split(":", 2)
        over = json.loads(raw or "{}")
        results, outcome = data(over.get("search", {}))
        found = step_pairs(results)
        # the preset's budget: step DPO's epochs over the preset search's pairs
        if budget is None:
            n = len(step_pairs(data({})[0]))
            budget = max(1, round(-(-n // (cfg.dpo.batch_size * cfg.dpo.grad_accum)) * cfg.dpo.epochs))
        for seed in [int(s) for s in args.seeds.split(",")]:
            model = copy.deepcopy(base).train()
            start = time.process_time()
            if method == "sft":
                sft_cfg = dataclasses.replace(cfg.sft, max_steps=budget, seed=seed, **over.get("sft", {}))
                imitate(model, tokenizer, sft_examples(policy, tokenizer, results), sft_cfg)
                restore_forward(model)
            else:
                pairs = outcome if method == "outcome" else found
                if over.get("balance"):
                    pairs = balance_end_pairs(pairs, policy.end_text, cfg.seed)
                dpo_cfg = dataclasses.replace(cfg.dpo, max_steps=budget, seed=seed, **over.get("dpo", {}))
                prefix_dpo(model, tokenizer, pairs, dpo_cfg)
            r = evaluate(HFStepPolicy(model.eval(), tokenizer), eval_tasks, cfg.eval_tokens)
            row = {"name": name, "method": method, "overrides": over, "seed": seed, "updates": budget,
                   "cpu_s": round(time.process_time() - start, 1)} | {
                k: r[k] for k in ("length_score", "quality", "contradiction_rate", "words_by_target", "ended")
            }  # fmt: skip
            print(json.dumps(row), flush=True)
            with args.out.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
