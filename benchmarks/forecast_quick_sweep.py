"""One point of the regularisation sweep behind ``veil experiment forecasting --quick``'s settings:
centralised Extralonger (arXiv:2411.00844) on the quick preset with some fields replaced, scored against
the historical average on the validation and the test windows.

Selection should read the validation columns; the test columns are what the experiment reports. One
process, one torch thread. Each run appends one JSON line to ``--out``.

Usage::

    .venv/bin/python benchmarks/forecast_quick_sweep.py --name wd4 --train '{"weight_decay": 4.0}' \\
        --model '{"dropout": 0.3}' --preset '{"days": 336}' --out /tmp/sweep.jsonl
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from veil.models.forecasting.baselines import HistoricalAverage
from veil.models.forecasting.data import split_windows
from veil.models.forecasting.experiment import (
    ForecastExperimentConfig,
    horizon_steps,
    load_or_synthesize,
)
from veil.models.forecasting.model import Extralonger
from veil.models.forecasting.train import evaluate, predict, train_forecaster


def _mae(scores: dict) -> dict[str, float]:
    return {k: round(v["mae"], 3) for k, v in scores["horizons"].items()} | {
        "all": round(scores["all"]["mae"], 3)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--model", default="{}", help="ExtralongerConfig fields to replace (JSON)")
    parser.add_argument("--train", default="{}", help="TrainConfig fields to replace (JSON)")
    parser.add_argument("--preset", default="{}", help="ForecastExperimentConfig fields to replace (JSON)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)

    base = ForecastExperimentConfig.quick()
    over = {k: json.loads(getattr(args, k)) for k in ("model", "train", "preset")}
    cfg = replace(
        base,
        **over["preset"],
        model=replace(base.model, **over["model"]),
        train=replace(base.train, **over["train"]),
    )
    data = load_or_synthesize(cfg, Path(tempfile.mkdtemp(prefix="veil-sweep-")))
    windows, scaler = split_windows(data, cfg.in_steps, cfg.out_steps)
    fit, _ = split_windows(data, cfg.in_steps, cfg.out_steps, stride=cfg.stride)
    steps = horizon_steps(cfg.horizons, data.steps_per_day, cfg.out_steps)
    torch.manual_seed(cfg.seed)
    shape = {"nodes": data.nodes, "in_steps": cfg.in_steps, "out_steps": cfg.out_steps,
             "steps_per_day": data.steps_per_day}  # fmt: skip
    model = Extralonger(replace(cfg.model, **shape), torch.as_tensor(data.mask()))
    wall, cpu = time.perf_counter(), time.process_time()
    result = train_forecaster(
        model, {"train": fit["train"], "val": fit["val"]}, scaler, cfg.train,
        progress=lambda e, t, v: print(f"{args.name} epoch {e}: train {t:.3f} val {v:.3f}", flush=True),
    )  # fmt: skip
    row = {"name": args.name, **over, "best_epoch": result.best_epoch, "epochs": len(result.history),
           "best_val_loss": min(h["val_loss"] for h in result.history),
           "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}  # fmt: skip
    ha = HistoricalAverage(windows["train"], data.steps_per_day)
    for split in ("val", "test"):
        ours = evaluate(
            lambda w, i: predict(model, w, i, scaler), windows[split], steps, max_windows=cfg.eval_windows
        )
        row[split] = _mae(ours)
        row[f"{split}_ha"] = _mae(evaluate(ha.predict, windows[split], steps, max_windows=cfg.eval_windows))
    print(json.dumps(row))
    with args.out.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
