"""The centralised forecasting experiment end to end on a tiny synthetic set (it runs and reports what
the CLI's JSON promises; numbers this small mean nothing)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from veil.models.forecasting import ForecastingDataError, synthesize
from veil.models.forecasting.experiment import (
    METHODS,
    ForecastExperimentConfig,
    horizon_steps,
    run_forecast_experiment,
)
from veil.models.forecasting.model import ExtralongerConfig
from veil.models.forecasting.train import TrainConfig

TINY = ForecastExperimentConfig(
    nodes=6, days=24, steps_per_day=24, in_steps=24, out_steps=24,
    horizons={"1h": 60, "12h": 720, "1d": 1440},
    model=ExtralongerConfig(nodes=1, in_steps=24, out_steps=24, d_in=8, d_tod=4, d_dow=4, d_sp=4, feed_forward=16, heads=2),
    train=TrainConfig(lr=1e-3, epochs=2, patience=2, max_batches=3), eval_windows=20, grid_max_nodes=8,
)  # fmt: skip


def test_every_method_reports_each_horizon_with_time_and_memory(tmp_path) -> None:
    out = run_forecast_experiment(TINY, tmp_path)
    assert set(out["methods"]) == set(METHODS)
    assert out["horizon_steps"] == {"1h": 1, "12h": 12, "1d": 24}
    for name, r in out["methods"].items():
        assert set(r["horizons"]) == {"1h", "12h", "1d"}, name
        for metrics in r["horizons"].values():
            assert all(np.isfinite(v) and v >= 0 for v in metrics.values()) and metrics["mae"] > 0, name
        assert r["train_seconds"] >= 0 and r["peak_memory_mb"] >= 0
    assert (
        out["methods"]["extralonger"]["epochs"] == 2 and out["methods"]["historical-average"]["epochs"] == 0
    )
    assert out["data"] == {
        "nodes": 6,
        "steps": 24 * 24,
        "steps_per_day": 24,
        "edges": out["data"]["edges"],
        "synthetic": True,
    }


def test_grid_attention_is_skipped_above_its_node_limit_and_real_files_drop_in(tmp_path) -> None:
    synthesize(tmp_path / "real", steps=24 * 24, nodes=10, steps_per_day=24, seed=5)
    cfg = replace(TINY, data=tmp_path / "real", methods=("historical-average", "grid-attention"))
    out = run_forecast_experiment(cfg, tmp_path / "work")
    assert out["data"]["nodes"] == 10 and out["data"]["synthetic"] is False
    assert "grid_max_nodes 8" in out["methods"]["grid-attention"]["skipped"]


def test_a_horizon_beyond_the_forecast_is_a_typed_error() -> None:
    assert horizon_steps({"1w": 10080}, 288, 2016) == {"1w": 2016}
    with pytest.raises(ForecastingDataError, match="beyond the forecast's 24 steps of 60 min"):
        horizon_steps({"1w": 10080}, 24, 24)
    with pytest.raises(ValueError, match="unknown method"):
        replace(TINY, methods=("arima",))
