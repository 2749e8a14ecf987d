"""The personalisation comparison with the default model (SmolLM2-135M-Instruct), method by method.

The driver behind the SmolLM2 figures in the README (`results/*_h200.jsonl`, run on one NVIDIA H200
through the device tool). It runs the `ExperimentConfig.full()` settings for the chosen population and
methods and appends each method's result to a JSON-lines file as soon as it is done, so a run cut off by
a time limit still leaves what it finished.

    python benchmarks/smollm2_device_run.py --users 1000 --types 10 \\
        --methods none,static,oracle-type,codebook,codebook-mixing --out results.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="next_word", choices=["next_word", "classification"])
    parser.add_argument("--users", type=int, default=None)
    parser.add_argument("--types", type=int, default=None)
    parser.add_argument("--type-noise", type=float, default=None)
    parser.add_argument(
        "--methods", default="none,static,oracle-type,codebook,codebook-mixing,idfree-gaussian"
    )
    parser.add_argument("--quick", action="store_true", help="tiny-llama instead of SmolLM2")
    parser.add_argument("--out", default="smollm2_results.jsonl")
    args = parser.parse_args()

    from transformers.utils import logging

    from veil.simulation.experiments.personalization import ExperimentConfig
    from veil.simulation.experiments.runner import ExperimentRun
    from veil.simulation.progress import NullProgress

    logging.disable_progress_bar()
    logging.set_verbosity_error()
    preset = ExperimentConfig.quick if args.quick else ExperimentConfig.full
    cfg = preset(args.task, 0, args.users, args.types)
    if args.type_noise is not None:
        cfg.population = dataclasses.replace(cfg.population, type_noise=args.type_noise)
    wanted = [m.strip() for m in args.methods.split(",")]
    cfg.methods = tuple(wanted)
    cfg.__post_init__()
    t0 = time.perf_counter()
    with open(args.out, "a", encoding="utf-8") as out:

        def emit(result: object) -> None:
            row = {**dataclasses.asdict(result), "users": args.users, "types": args.types}
            row["type_noise"] = cfg.population.type_noise
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(
                f"{result.method:24s} acc={result.accuracy:.3f} attr={result.attribution_accuracy:.3f} "
                f"floor={result.attribution_floor} link50={result.uploads_for_half} "
                f"t={result.seconds:.0f}s total={time.perf_counter() - t0:.0f}s",
                flush=True,
            )

        run = ExperimentRun(cfg, NullProgress())
        start = time.perf_counter()
        run.stage1()
        print(f"stage 1: {time.perf_counter() - start:.0f}s", flush=True)
        for name in wanted:
            start = time.perf_counter()
            if name == "none":
                emit(run.score("none", None, None, None, None, start))
            elif name == "static":
                dists, cold = run.personalised(name, "gaussian", cfg.static_std)
                emit(run.score(name, None, None, dists, cold, start))
            elif name == "oracle-type":
                dists, cold = run.oracle_type(name)
                emit(run.score(name, None, None, dists, cold, start))
            elif name == "codebook":
                book = run.codebook()
                emit(run.score(name, None, None, dict(book.distributions), run.cold_accuracy(), start))
                print("codebook history:", book.history, flush=True)
            elif name == "codebook-mixing":
                book = run.codebook()
                correct = run.mixing_correct()
                emit(run.score(name, None, None, dict(book.distributions), None, start, correct=correct))
            elif name.startswith("idfree-"):
                family = name.removeprefix("idfree-")
                spread = cfg.default_spread[family]
                dists, cold = run.personalised(name, family, spread)
                emit(run.score(name, family, spread, dists, cold, start))
            else:
                raise SystemExit(f"this driver does not run {name!r}")


if __name__ == "__main__":
    main()
