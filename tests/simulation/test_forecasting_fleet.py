"""Extralonger across regions on Flower: the split of the parameters, the regions, and real runs on
the simulation engine (Ray; one SuperNode per region)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from veil.models.forecasting.data import ForecastingDataError, TrafficData, synthesize
from veil.models.forecasting.model import ExtralongerConfig
from veil.models.forecasting.train import TrainConfig
from veil.simulation.forecasting_fleet import (
    FederatedDP,
    FederatedResult,
    partition_regions,
    run_federated,
    shared_parameter_names,
    weighted_metrics,
)
from veil.simulation.forecasting_fleet.regions import flatten_metrics, unflatten_metrics

ROOT = Path(__file__).resolve().parents[2]

TINY = {"in_steps": 12, "out_steps": 12, "d_in": 8, "d_tod": 8, "d_dow": 8, "d_sp": 8, "feed_forward": 32,
        "heads": 2}  # fmt: skip
HORIZONS = {"1h": 2, "6h": 12}  # 30-minute steps


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> TrafficData:
    # 12 sensors, two weeks at 30-minute steps
    return synthesize(tmp_path_factory.mktemp("traffic"), steps=14 * 48, nodes=12, steps_per_day=48, seed=0)


def _run(data: TrafficData, tmp: Path, dp: FederatedDP | None = None) -> FederatedResult:
    return run_federated(
        data, 2, TINY, TrainConfig(lr=1e-3, max_batches=8), rounds=2, local_epochs=1, dp=dp,
        horizons=HORIZONS, eval_windows=32, return_models=True, work_dir=tmp,
    )  # fmt: skip


def test_regions_are_contiguous_blocks_covering_every_sensor_once() -> None:
    blocks = partition_regions(7, 3)
    assert [b.tolist() for b in blocks] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [b.tolist() for b in partition_regions(5, 1)] == [[0, 1, 2, 3, 4]]
    assert np.array_equal(np.concatenate(partition_regions(170, 7)), np.arange(170))


@pytest.mark.parametrize("regions", [0, -1, 13])
def test_regions_outside_one_to_the_sensor_count_are_refused(data: TrafficData, regions: int) -> None:
    with pytest.raises(ValueError, match=r"regions must be in 1\.\.12 .* got " + str(regions)):
        run_federated(data, regions, TINY)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"model": {**TINY, "nodes": 4}}, "unknown model settings"),
        ({"model": {**TINY, "heads": 5}}, "heads"),
        ({"rounds": 0}, "rounds and local_epochs must be >= 1"),
        ({"concurrency": 0}, "concurrency must be >= 1, got 0"),
        ({"horizons": {"1d": 48}}, "outside the forecast's 1..12"),
        ({"model": {**TINY, "in_steps": 300, "mixed_heads": 1}}, "fewer than a window"),
    ],
)
def test_bad_settings_are_refused_before_any_simulation_starts(
    data: TrafficData, kwargs: dict, match: str
) -> None:
    kwargs = {"model": TINY, **kwargs}
    with pytest.raises(ValueError, match=match) as err:
        run_federated(data, 2, **kwargs)
    # the data's own limits (a horizon past the forecast, a window past the series) are the typed error
    typed = match.startswith(("outside the forecast", "fewer than a window"))
    assert isinstance(err.value, ForecastingDataError) == typed


def test_dp_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="noise_multiplier must be >= 0, got -1"):
        FederatedDP(-1.0, 1.0)
    with pytest.raises(ValueError, match="clipping_norm must be > 0, got 0"):
        FederatedDP(1.0, 0.0)


def test_only_the_parameters_whose_shape_ignores_the_sensor_count_are_shared() -> None:
    import torch

    from veil.models.forecasting.model import Extralonger

    cfg = ExtralongerConfig(nodes=5, **TINY)
    shared = set(shared_parameter_names(cfg))
    everything = {name for name, _ in Extralonger(cfg, torch.eye(5, dtype=torch.bool)).named_parameters()}
    local = everything - shared
    assert local == {"input_noise", "flow_in.weight", "node", "temporal_out.weight", "temporal_out.bias",
                     "mixed_out.weight", "mixed_out.bias"}  # fmt: skip
    assert {"tod.weight", "dow.weight", "series_in.weight", "spatial_out.weight"} <= shared
    assert any(n.startswith("temporal.0.") for n in shared) and any(
        n.startswith("spatial.0.") for n in shared
    )


def test_weighted_metrics_equal_the_pooled_ones_for_equal_regions_and_follow_the_weights() -> None:
    a = {
        "all": {"mae": 1.0, "rmse": 3.0, "mape": 10.0},
        "horizons": {"1h": {"mae": 2.0, "rmse": 2.0, "mape": 5.0}},
    }
    b = {
        "all": {"mae": 3.0, "rmse": 4.0, "mape": 30.0},
        "horizons": {"1h": {"mae": 4.0, "rmse": 2.0, "mape": 7.0}},
    }
    even = weighted_metrics([a, b], [6, 6])
    assert even["all"]["mae"] == pytest.approx(2.0)
    assert even["all"]["rmse"] == pytest.approx(np.sqrt((9.0 + 16.0) / 2))  # root of the pooled MSE
    assert even["horizons"]["1h"] == pytest.approx({"mae": 3.0, "rmse": 2.0, "mape": 6.0})
    skewed = weighted_metrics([a, b], [3, 1])
    assert skewed["all"]["mae"] == pytest.approx(0.75 * 1.0 + 0.25 * 3.0)
    assert skewed["all"]["mape"] == pytest.approx(15.0)


def test_metrics_survive_the_flat_keys_of_a_metric_record() -> None:
    nested = {
        "all": {"mae": 1.0, "rmse": 2.0, "mape": 3.0},
        "horizons": {
            "1h": {"mae": 4.0, "rmse": 5.0, "mape": 6.0},
            "1.5d": {"mae": 7.0, "rmse": 8.0, "mape": 9.0},
        },
    }
    flat = flatten_metrics(nested)
    assert flat["h.1.5d.rmse"] == 8.0 and len(flat) == 9
    assert unflatten_metrics(flat, ["1h", "1.5d"]) == nested


def test_importing_the_package_does_not_import_flower() -> None:
    import subprocess
    import sys

    code = "import sys, veil.simulation.forecasting_fleet; print('flwr' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_the_flower_app_folder_validates_and_its_run_config_becomes_a_plan(tmp_path: Path) -> None:
    import tomllib

    from flwr.common.config import validate_config
    from flwr.serverapp import ServerApp

    from veil.simulation.forecasting_fleet import apps

    folder = ROOT / "deploy" / "flwr" / "forecasting"
    config = tomllib.loads((folder / "pyproject.toml").read_text())
    ok, errors, _ = validate_config(config, check_module=True, project_dir=folder)
    assert ok, errors
    assert isinstance(apps.server_app, ServerApp)
    run_config = {**config["tool"]["flwr"]["app"]["config"], "nodes": 6, "days": 84, "regions": 2,
                  "rounds": 2, "clipping-norm": 1.0, "work-dir": str(tmp_path)}  # fmt: skip
    plan = apps.plan_from_run_config(run_config)
    assert plan.regions == 2 and plan.rounds == 2 and plan.dp == FederatedDP(0.0, 1.0)
    assert plan.horizons == {"1h": 1, "1d": 24, "1w": 168} and plan.eval_windows == 200
    assert sorted(p.name for p in (tmp_path / "regions").iterdir()) == ["region-0.npz", "region-1.npz"]
    with pytest.raises(ValueError, match="preset must be quick or full, got 'huge'"):
        apps.plan_from_run_config({**run_config, "preset": "huge"})


@pytest.fixture(scope="module")
def federated(data: TrafficData, tmp_path_factory: pytest.TempPathFactory) -> FederatedResult:
    return _run(data, tmp_path_factory.mktemp("work"))


def _check_split(result: FederatedResult) -> None:
    a, b = (r.state for r in result.regions)
    assert a is not None and b is not None
    assert set(result.shared) < set(a) and set(a) == set(b)
    for name in result.shared:  # FedAvg's one broadcast: every region holds the same values
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    for name in set(a) - set(result.shared):  # each region's own sensors: trained apart
        assert not np.array_equal(a[name], b[name]), name


@pytest.mark.slow
@pytest.mark.integration
def test_after_fedavg_the_shared_parameters_agree_and_the_regions_own_ones_differ(
    federated: FederatedResult,
) -> None:
    _check_split(federated)
    assert [r.region for r in federated.regions] == [0, 1]
    assert [r.nodes.tolist() for r in federated.regions] == [list(range(6)), list(range(6, 12))]


@pytest.mark.slow
@pytest.mark.integration
def test_every_region_is_scored_at_every_horizon_and_the_rounds_are_recorded(
    federated: FederatedResult,
) -> None:
    for r in federated.regions:
        assert set(r.metrics["horizons"]) == set(HORIZONS)
        values = [r.metrics["all"][k] for k in ("mae", "rmse", "mape")]
        assert all(np.isfinite(v) and v > 0 for v in values)
        assert r.train_seconds > 0
    assert federated.mean == weighted_metrics([r.metrics for r in federated.regions], [6, 6])
    assert [h["round"] for h in federated.history] == [1, 2]
    assert all(len(h["regions"]) == 2 and np.isfinite(h["val_loss"]) for h in federated.history)
    assert federated.train_seconds > 0 and federated.privacy is None


@pytest.mark.slow
@pytest.mark.integration
def test_the_clients_measure_their_peak_memory_and_the_run_reports_the_largest(
    federated: FederatedResult,
) -> None:
    peaks = [r.peak_memory_mb for r in federated.regions]
    assert all(p >= 0 for p in peaks) and federated.peak_memory_mb == max(peaks) > 0
    # a worker's whole resident set (Python, torch, Ray) is far above what one local training adds
    assert federated.peak_rss_mb > max(100.0, federated.peak_memory_mb)


@pytest.mark.slow
@pytest.mark.integration
def test_under_server_side_dp_the_regions_still_share_one_model_and_the_spend_is_reported(
    data: TrafficData, tmp_path: Path
) -> None:
    result = _run(data, tmp_path, FederatedDP(noise_multiplier=0.5, clipping_norm=1.0))
    _check_split(result)
    assert result.privacy is not None
    assert np.isfinite(result.privacy["epsilon"]) and result.privacy["epsilon"] > 0
    assert all(np.isfinite(r.metrics["all"]["mae"]) for r in result.regions)
