"""How much can any forecaster beat the historical average by on the quick preset's synthetic data?

The synthetic series (``veil.models.forecasting.data.synthesize``) is a fixed weekly profile per sensor,
scaled by a daily level that drifts as an AR(1) over days (persistence 0.9), plus hourly AR(1) noise.
A week ahead, the hourly noise is forgotten and 0.9^7 = 0.48 of the level deviation is left, so the
only thing a model can add to the historical average (HA) there is that much of the recent level. This
script measures that headroom with a forecaster that knows the structure: HA scaled by the ratio of
the last ``days`` days of input to HA over them, shrunk towards 1 by ``phi`` per day ahead. ``days``
and ``phi`` are chosen on the validation windows (a grid), then scored on the test windows the
experiment scores (``veil experiment forecasting --quick --seed S``), with the experiment's metrics.

Prints one JSON line per seed on stdout, and a table on stderr.

Usage::

    PYTHONPATH=. .venv/bin/python benchmarks/forecast_headroom.py --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def level_scaled(ha, days: int, phi: float):  # noqa: ANN001, ANN201
    """HA's forecast times ``1 + phi^(days ahead) (r - 1)``, ``r`` the last ``days`` days' flow over
    HA's for them, per window and sensor."""
    spd = ha.steps_per_day

    def forecast(w, index: np.ndarray) -> np.ndarray:  # noqa: ANN001
        starts = w.starts[index]
        seen = starts[:, None] + np.arange(w.in_steps - days * spd, w.in_steps)[None, :]  # (B, days*spd)
        flow = w.raw_flow[seen]  # (B, S, N)
        expected = ha.table[ha._slots(w.series[seen, 0, 1:])]
        valid = flow != 0  # a dropout is no evidence of a low level
        r = (flow * valid).sum(1) / np.maximum((expected * valid).sum(1), 1e-6)  # (B, N)
        ahead = np.arange(1, w.out_steps + 1) / spd  # days
        return ha.predict(w, index) * (1 + phi ** ahead[None, :, None] * (r[:, None, :] - 1))

    return forecast


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = ap.parse_args()

    from veil.models.forecasting.baselines import HistoricalAverage
    from veil.models.forecasting.data import split_windows
    from veil.models.forecasting.experiment import ForecastExperimentConfig, horizon_steps, load_or_synthesize
    from veil.models.forecasting.train import evaluate

    rows = []
    for seed in args.seeds:
        cfg = dataclasses.replace(ForecastExperimentConfig.quick(), seed=seed)
        data = load_or_synthesize(cfg, Path(tempfile.mkdtemp()))
        windows, _ = split_windows(data, cfg.in_steps, cfg.out_steps)
        steps = horizon_steps(cfg.horizons, data.steps_per_day, cfg.out_steps)
        ha = HistoricalAverage(windows["train"], data.steps_per_day)

        def score(forecast, part: str, windows=windows, steps=steps, cfg=cfg) -> dict:  # noqa: ANN001
            return evaluate(forecast, windows[part], steps, max_windows=cfg.eval_windows)

        grid = list(itertools.product((1, 2, 3, 7), (0.7, 0.8, 0.9, 0.95)))
        val = {g: score(level_scaled(ha, *g), "val")["all"]["mae"] for g in grid}
        days, phi = min(val, key=val.get)
        plain, scaled = score(ha.predict, "test"), score(level_scaled(ha, days, phi), "test")
        row = {
            "seed": seed, "days": days, "phi": phi,
            "historical_average": {h: v["mae"] for h, v in plain["horizons"].items()},
            "level_scaled": {h: v["mae"] for h, v in scaled["horizons"].items()},
        }  # fmt: skip
        row["gain_percent"] = {
            h: round(100 * (1 - row["level_scaled"][h] / row["historical_average"][h]), 2) for h in steps
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("seed  days  phi   HA MAE (1h / 1d / 1w)    level-scaled HA        gain %", file=sys.stderr)
    for r in rows:
        ha_, ls = r["historical_average"], r["level_scaled"]
        print(
            f"{r['seed']:>4}  {r['days']:>4}  {r['phi']:.2f}  "
            + " / ".join(f"{ha_[h]:.2f}" for h in ha_) + "   " + " / ".join(f"{ls[h]:.2f}" for h in ls)
            + "   " + " / ".join(f"{r['gain_percent'][h]:.1f}" for h in ls),
            file=sys.stderr,
        )  # fmt: skip


if __name__ == "__main__":
    main()
