"""RAGtrans (arXiv:2412.04342) as the paper runs it: a *pretrained* model fine-tuned on the multi-task
mixture, against the same model fine-tuned on translation records alone at the same budget, and against
it untouched (zero-shot), on the generated document-grounded set's held-out entities.

``veil experiment translation`` trains its two grounded models from scratch, and they never learn to copy
an entity's rendering from its document; this script asks whether a pretrained model (SmolLM2-135M-Instruct
by default, the served model) does once fine-tuned. The data, objectives, budgets and evaluation are the
experiment's (:mod:`veil.models.translation.grounded_experiment`); only the model and the optimiser differ.
One torch thread by default (``--threads``); the result is one JSON object on stdout (``--out`` also
writes it). A SmolLM2 step on 4 examples costs about 1 TFLOP, tens of seconds on one CPU core.

Usage::

    VEIL_DATA_DIR=DIR .venv/bin/python benchmarks/translation_grounded_pretrained.py --train-examples 400 \\
        --test-examples 32 --out benchmarks/results/translation_grounded_pretrained_2core.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from veil.models.loading import load_model
from veil.models.rag.lm import HFTextLM
from veil.models.translation.data import hsk_pairs
from veil.models.translation.grounded import GroundedSetConfig, grounded_set
from veil.models.translation.grounded_experiment import (
    GroundedExperimentConfig,
    evaluate_variants,
    grounded_variants,
    training_sets,
)
from veil.models.translation.grounded_translate import GroundedConfig
from veil.models.translation.sft import TranslationSFTConfig, fine_tune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--train-examples", type=int, default=400)
    parser.add_argument("--test-examples", type=int, default=32, help="held-out entities evaluated")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--methods", default="zero-shot,multitask,translation_only")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = GroundedExperimentConfig(
        grounded_set=GroundedSetConfig(n_examples=600, rendering_pool=40), test_examples=64, hsk_pairs=300,
        train_examples=args.train_examples,
        grounded=GroundedConfig(translation_tokens=40), batch_size=8,
        scratch=GroundedExperimentConfig().scratch,
    )  # fmt: skip
    sft = TranslationSFTConfig(lr=args.lr, epochs=1, batch_size=args.batch_size, grad_accum=1, max_length=384)
    examples = grounded_set(cfg.grounded_set)
    test, train = examples[-cfg.test_examples :], examples[: -cfg.test_examples]
    test = test[: args.test_examples]
    sets = training_sets(cfg, train, hsk_pairs("en", "zh")[: cfg.hsk_pairs])
    result: dict = {
        "config": {**vars(args), "out": str(args.out) if args.out else None, "sft": sft.__dict__},
        "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "platform": platform.platform()},
        "models": {},
    }
    for method in args.methods.split(","):
        t0, c0 = time.perf_counter(), time.process_time()
        loaded = load_model(args.model)
        model, tok = loaded.model, loaded.tokenizer
        row: dict = {}
        if method != "zero-shot":
            metrics = fine_tune(model.train(), tok, sets[method], sft)
            row["train_loss"] = round(float(metrics.get("train_loss", 0.0)), 4)
        lm = HFTextLM(model.eval(), tok, batch_size=cfg.batch_size)
        row |= evaluate_variants(lm, cfg, test, grounded_variants(cfg, own_judge=False))
        row["seconds"] = round(time.perf_counter() - t0, 1)
        row["cpu_seconds"] = round(time.process_time() - c0, 1)
        result["models"][method] = row
        summary = {k: (v["bleu"], v["term_accuracy"]) for k, v in row.items() if isinstance(v, dict)}
        print(method, summary, row["cpu_seconds"], file=sys.stderr, flush=True)
    text = json.dumps(result, indent=1, ensure_ascii=False)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
