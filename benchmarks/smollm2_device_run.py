"""The IDfree-PL comparison with the default model (SmolLM2-135M-Instruct), method by method.

This is the driver behind the SmolLM2 figures in the README (`results/smollm2_next_word_h200.jsonl`, run
on one NVIDIA H200 through the device tool). It runs the `ExperimentConfig.full()` settings but only the
main rows (no full spread sweep) and appends each method's result to a JSON-lines file as soon as it is
done, so a run cut off by a time limit still leaves what it finished.

    python benchmarks/smollm2_device_run.py --task next_word --out results.jsonl
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
    parser.add_argument("--out", default="smollm2_results.jsonl")
    args = parser.parse_args()

    from transformers.utils import logging

    from veil.simulation.experiments.personalization import ExperimentConfig, _Run
    from veil.simulation.progress import NullProgress

    logging.disable_progress_bar()
    logging.set_verbosity_error()
    cfg = ExperimentConfig.full(args.task)
    with open(args.out, "a", encoding="utf-8") as out:

        def emit(result: object) -> None:
            out.write(json.dumps(dataclasses.asdict(result)) + "\n")
            out.flush()
            print(
                f"{result.method:24s} {result.family} {result.spread} acc={result.accuracy:.3f} "
                f"attr={result.attribution_accuracy:.3f} link={result.linkage_accuracy:.3f} "
                f"t={result.seconds:.0f}s",
                flush=True,
            )

        run = _Run(cfg, NullProgress())
        start = time.perf_counter()
        run.stage1()
        emit(run.score("none", None, None, None, None, start))
        rows = [
            ("static", "gaussian", cfg.static_std),
            ("idfree-gaussian", "gaussian", 0.2),
            ("idfree-basis_mixture", "basis_mixture", 0.25),
            ("idfree-beta", "beta", 7.0),
            ("idfree-gaussian", "gaussian", 1.0),
        ]
        for name, family, spread in rows:
            start = time.perf_counter()
            dists, cold = run.personalised(name, family, spread)
            static = name == "static"
            emit(run.score(name, None if static else family, None if static else spread, dists, cold, start))


if __name__ == "__main__":
    main()
