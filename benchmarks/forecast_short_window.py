"""Accuracy against grid attention (STAEformer-like) where it still trains on 2 CPU cores: the quick
preset of ``veil experiment forecasting`` with one-day windows (``--steps`` in and out, hourly) instead of
one-week ones, so the horizons are 1 h and 1 d.

Extralonger (arXiv:2411.00844), grid attention and the historical average train and score on the same
synthetic data and test windows through :func:`run_forecast_experiment`; one torch thread. The result
(the experiment's JSON) is written to ``--out``. ``--model`` replaces Extralonger's fields (JSON), and
``--methods`` picks the methods, so an Extralonger variant can be scored without retraining grid
attention (whose settings ``--model`` does not touch).

Usage::

    .venv/bin/python benchmarks/forecast_short_window.py --out benchmarks/results/forecast_short_window_2core.json
    .venv/bin/python benchmarks/forecast_short_window.py --methods extralonger,historical-average \
        --model '{"d_in": 64, "d_tod": 64, "d_dow": 64, "d_sp": 64, "feed_forward": 256, "dropout": 0.1}' \
        --out /tmp/short_matched.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from veil.models.forecasting.experiment import ForecastExperimentConfig, run_forecast_experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24, help="window length in and out (hourly steps)")
    parser.add_argument("--epochs", type=int, default=None, help="default: the quick preset's")
    parser.add_argument("--model", default="{}", help="ExtralongerConfig fields to replace (JSON)")
    parser.add_argument(
        "--methods", default="extralonger,grid-attention,historical-average", help="comma-separated"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the synthetic data and the models")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)

    base = ForecastExperimentConfig.quick()
    train = base.train if args.epochs is None else replace(base.train, epochs=args.epochs)
    cfg = replace(
        base,
        in_steps=args.steps,
        out_steps=args.steps,
        horizons={"1h": 60, "1d": 1440},
        methods=tuple(args.methods.split(",")),
        model=replace(base.model, in_steps=args.steps, out_steps=args.steps, **json.loads(args.model)),
        train=train,
        seed=args.seed,
    )
    with tempfile.TemporaryDirectory(prefix="veil-short-") as work:
        result = run_forecast_experiment(cfg, Path(work), progress=lambda m: print(m, flush=True))
    result["machine"] = {"platform": platform.platform(), "torch": torch.__version__, "threads": 1}
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    for name, r in result["methods"].items():
        cells = ", ".join(f"{h} MAE {v['mae']:.2f}" for h, v in r["horizons"].items())
        print(f"{name}: {cells}, {r['train_seconds']:.0f} s, peak {r['peak_memory_mb']:.0f} MB")


if __name__ == "__main__":
    main()
