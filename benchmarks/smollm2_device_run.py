"""The personalisation comparison with the default model (SmolLM2-135M-Instruct), method by method.

The driver behind the SmolLM2 figures in the README (`results/*_h200.jsonl`, run on one NVIDIA H200
through the device tool). It runs the `ExperimentConfig.full()` settings for the chosen population and
methods and appends each method's result to a JSON-lines file as soon as it is done, so a run cut off by
a time limit still leaves what it finished.

With ``--state DIR`` the stage-1 weights and the learned codebook (with the weights its stage 3 left)
are kept in DIR, and a method already in ``--out`` for the same population is skipped, so a run split
over several commands resumes where the last one stopped. A resumed run draws from a fresh random
stream, so its samples differ from those of an uninterrupted run.

    python benchmarks/smollm2_device_run.py --users 1000 --types 10 \\
        --methods none,static,oracle-type,codebook,codebook-mixing --out results.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

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
    parser.add_argument(
        "--max-rows", type=int, default=1024, help="rows per forward pass of stage 2 (GPU memory)"
    )
    parser.add_argument("--state", type=Path, help="keep stage 1 and the codebook here; resume from them")
    args = parser.parse_args()

    from transformers.utils import logging

    from veil.progress import NullProgress
    from veil.simulation.experiments.personalization import ExperimentConfig
    from veil.simulation.experiments.runner import ExperimentRun

    logging.disable_progress_bar()
    logging.set_verbosity_error()
    preset = ExperimentConfig.quick if args.quick else ExperimentConfig.full
    cfg = preset(args.task, 0, args.users, args.types)
    if args.type_noise is not None:
        cfg.population = dataclasses.replace(cfg.population, type_noise=args.type_noise)
    wanted = [m.strip() for m in args.methods.split(",")]
    cfg.methods = tuple(wanted)
    cfg.stage2 = dataclasses.replace(cfg.stage2, max_rows=args.max_rows)
    cfg.__post_init__()
    population = {"users": args.users, "types": args.types, "type_noise": cfg.population.type_noise}
    done = _finished(Path(args.out), population) if args.state is not None else set()
    t0 = time.perf_counter()
    with open(args.out, "a", encoding="utf-8") as out:

        def emit(result: object) -> None:
            row = {**dataclasses.asdict(result), **population}
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
        if not _restore_stage1(run, args.state):
            run.stage1()
            _save(args.state, "stage1", run.stage1_state)
        print(f"stage 1: {time.perf_counter() - start:.0f}s", flush=True)
        for name in wanted:
            if name in done:
                print(f"{name}: already in {args.out}", flush=True)
                continue
            start = time.perf_counter()
            if name.startswith("codebook"):
                _restore_codebook(run, args.state)
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
                _save(args.state, "codebook", {"result": book, "model": run.model.state_dict()})
                emit(run.score(name, None, None, dict(book.distributions), run.cold_accuracy(), start))
                print("codebook history:", book.history, flush=True)
            elif name == "codebook-mixing":
                book = run.codebook()
                _save(args.state, "codebook", {"result": book, "model": run.model.state_dict()})
                correct = run.mixing_correct()
                emit(run.score(name, None, None, dict(book.distributions), None, start, correct=correct))
            elif name.startswith("idfree-"):
                family = name.removeprefix("idfree-")
                spread = cfg.default_spread[family]
                dists, cold = run.personalised(name, family, spread)
                emit(run.score(name, family, spread, dists, cold, start))
            else:
                raise SystemExit(f"this driver does not run {name!r}")


def _finished(out: Path, population: dict) -> set[str]:
    """Methods already in ``out`` for this population."""
    if not out.is_file():
        return set()
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["method"] for r in rows if all(r.get(k) == v for k, v in population.items())}


def _save(state: Path | None, name: str, obj: object) -> None:
    import torch

    if state is None:
        return
    state.mkdir(parents=True, exist_ok=True)
    path = state / f"{name}.pt"
    if name == "codebook" and path.is_file():
        return
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)  # a command killed half-way leaves nothing behind


def _load(state: Path | None, name: str) -> object | None:
    import torch

    path = None if state is None else state / f"{name}.pt"
    if path is None or not path.is_file():
        return None
    print(f"{name}: loaded from {path}", flush=True)
    return torch.load(path, map_location="cpu", weights_only=False)


def _restore_stage1(run: object, state: Path | None) -> bool:
    saved = _load(state, "stage1")
    if saved is None:
        return False
    run.stage1_state = saved
    run.reset()
    return True


def _restore_codebook(run: object, state: Path | None) -> None:
    """The kept codebook and the weights its stage 3 left (both codebook rows score with them)."""
    if run.codebook_result is not None:
        return
    saved = _load(state, "codebook")
    if saved is not None:
        run.codebook_result = saved["result"]
        run.model.load_state_dict(saved["model"])


if __name__ == "__main__":
    main()
