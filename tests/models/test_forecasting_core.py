"""Extralonger's data contract, masked metrics, model shapes and baselines (arXiv:2411.00844)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from veil.models.forecasting import (
    ForecastingDataError,
    adjacency_mask,
    batch_metrics,
    horizon_metrics,
    load_traffic,
    masked_metrics,
    split_windows,
    synthesize,
)
from veil.models.forecasting.baselines import (
    STID,
    GridAttention,
    GridAttentionConfig,
    HistoricalAverage,
    STIDConfig,
)
from veil.models.forecasting.memory import PeakMemory, release_free_heap
from veil.models.forecasting.model import Extralonger, ExtralongerConfig, GlobalLocalAttention
from veil.models.forecasting.train import TrainConfig, evaluate, predict, train_forecaster


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = tmp_path_factory.mktemp("traffic")
    return path, synthesize(path, steps=288 * 21, nodes=12, seed=3)


def test_synthetic_files_follow_the_pems_contract_and_load_back(small) -> None:
    path, data = small
    loaded = load_traffic(path)
    assert loaded.series.shape == (288 * 21, 12, 3) and loaded.series.dtype == np.float32
    np.testing.assert_array_equal(loaded.series, data.series)
    assert loaded.steps_per_day == 288 and (path / "adj.csv").read_text().startswith("from,to,cost")
    flow, tod, dow = loaded.series[..., 0], loaded.series[:, 0, 1], loaded.series[:, 0, 2]
    assert flow.min() == 0.0 and (flow == 0).mean() < 0.01  # dropouts, few
    assert tod[1] == pytest.approx(1 / 288) and set(np.unique(dow)) == set(range(7))
    # weekday rush hours above the night, and weekends below weekdays
    hour = ((tod * 24).astype(int))[:, None].repeat(12, axis=1)
    assert flow[hour == 8].mean() > 2 * flow[hour == 3].mean()
    assert flow[np.isin(dow, (5, 6))].mean() < flow[~np.isin(dow, (5, 6))].mean()


def test_the_adjacency_mask_is_symmetric_with_self_loops(small) -> None:
    _, data = small
    mask = data.mask()
    assert mask.shape == (12, 12) and (mask == mask.T).all() and mask.diagonal().all()
    assert mask.sum() == 12 + 2 * len(data.edges)  # each undirected edge twice, no duplicates
    with pytest.raises(ForecastingDataError, match="outside 0..2"):
        adjacency_mask(np.array([[0, 3]]), 3)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("channels", r"must be \(T, N, 3\)"),
        ("shape", r"must be \(T, N, 3\)"),
        ("tod", r"time of day \(channel 1\) must lie in \[0, 1\)"),
        ("unknown_node", "names a node outside 0..11"),
        ("header", "header must start with from,to"),
        ("missing", "does not exist"),
    ],
)
def test_malformed_files_are_refused_with_a_typed_one_line_error(small, tmp_path, damage, message) -> None:
    _, data = small
    series, adj = data.series.copy(), "from,to,cost\n0,1,1.0\n"
    if damage == "channels":
        series = series[..., :2]
    elif damage == "shape":
        series = series[..., 0]
    elif damage == "tod":
        series[5, 0, 1] = 1.5
    elif damage == "unknown_node":
        adj += "3,12,1.0\n"
    elif damage == "header":
        adj = "a,b\n0,1\n"
    np.savez(tmp_path / "data.npz", data=series)
    if damage != "missing":
        (tmp_path / "adj.csv").write_text(adj)
    with pytest.raises(ForecastingDataError, match=message) as err:
        load_traffic(tmp_path)
    assert "\n" not in str(err.value)


def test_windows_split_the_series_by_time_and_scale_with_training_statistics(small) -> None:
    _, data = small
    windows, scaler = split_windows(data, 12, 24)
    train_steps = round(0.6 * data.steps)
    assert scaler.mean == pytest.approx(float(data.series[:train_steps, :, 0].mean()), rel=1e-5)
    x, y = windows["val"].batch(np.array([0, 5]))
    assert x.shape == (2, 12, 12, 3) and y.shape == (2, 24, 12)
    np.testing.assert_allclose(y[1, 0], data.series[train_steps + 5 + 12, :, 0])
    np.testing.assert_allclose(
        scaler.inverse(x[0, :, :, 0]), data.series[train_steps : train_steps + 12, :, 0], rtol=1e-4, atol=1e-3
    )
    assert len(windows["train"]) == train_steps - 36 + 1
    with pytest.raises(ForecastingDataError, match="fewer than a window's"):
        split_windows(data, 288 * 7, 2016)


def test_masked_metrics_are_zero_when_perfect_and_ignore_zero_targets() -> None:
    rng = np.random.default_rng(0)
    true = rng.uniform(10, 100, size=(4, 6, 5))
    true[0, 0, 0] = 0.0
    assert batch_metrics(true, true) == (0.0, 0.0, 0.0)
    pred = true + 2.0
    pred[0, 0, 0] = 1e6  # a dropout's prediction does not count
    mae, mse, mape = batch_metrics(pred, true)
    valid = true != 0
    assert mae == pytest.approx(2.0) and mse == pytest.approx(4.0)
    assert mape == pytest.approx(100 * np.mean(2.0 / true[valid]))
    # the released RMSE: root of the mean of per-batch MSEs
    other = (true * 1.1, true)
    got = masked_metrics([(pred, true), other])
    assert got["rmse"] == pytest.approx(np.sqrt((4.0 + batch_metrics(*other)[1]) / 2))
    per = horizon_metrics([(pred, true)], {"first": 1, "last": 6})
    assert per["last"]["mae"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="outside the forecast's 1..6"):
        horizon_metrics([(pred, true)], {"week": 2016})


def test_global_local_attention_averages_a_global_and_a_neighbour_softmax() -> None:
    torch.manual_seed(0)
    attn = GlobalLocalAttention(8, heads=1)
    x = torch.randn(1, 4, 8)
    mask = torch.eye(4, dtype=torch.bool)  # each sensor its own only neighbour
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    weights = 0.5 * ((q @ k.transpose(-1, -2) / np.sqrt(8)).softmax(-1) + torch.eye(4))
    torch.testing.assert_close(attn(x, mask), attn.out(weights @ v))


@pytest.mark.parametrize("steps", [24, 288, 2016])
def test_every_model_maps_a_window_to_its_horizon(steps: int) -> None:
    n, adj = 5, torch.eye(5, dtype=torch.bool) | torch.roll(torch.eye(5, dtype=torch.bool), 1, 0)
    x = torch.zeros(2, steps, n, 3)
    x[..., 1] = torch.arange(steps)[None, :, None] % 288 / 288
    cfg = ExtralongerConfig(
        nodes=n, in_steps=steps, out_steps=steps, d_in=8, d_tod=4, d_dow=4, d_sp=4, feed_forward=16, heads=2
    )
    assert Extralonger(cfg, adj)(x).shape == (2, steps, n)
    if steps <= 288:
        assert STID(STIDConfig(nodes=n, in_steps=steps, out_steps=steps, width=8))(x).shape == (2, steps, n)
        grid = GridAttention(
            GridAttentionConfig(
                nodes=n,
                in_steps=steps,
                out_steps=steps,
                d_in=4,
                d_tod=4,
                d_dow=4,
                d_adaptive=4,
                heads=2,
                feed_forward=16,
            )
        )
        assert grid(x).shape == (2, steps, n)
    with pytest.raises(ValueError, match="mixed_heads"):
        ExtralongerConfig(nodes=n, in_steps=steps + 1, mixed_heads=2)


def test_the_historical_average_is_the_training_mean_of_the_same_slot(small) -> None:
    _, data = small
    windows, _ = split_windows(data, 12, 12)
    ha = HistoricalAverage(windows["train"], data.steps_per_day)
    pred = ha.predict(windows["test"], np.array([0]))  # (1, 12, N)
    start = round(0.8 * data.steps) + 12  # the first test target step
    tod, dow = data.series[start, 0, 1], data.series[start, 0, 2]
    train = data.series[: round(0.6 * data.steps)]
    same = (np.isclose(train[:, 0, 1], tod)) & (train[:, 0, 2] == dow)
    flows = train[same, 3, 0]
    np.testing.assert_allclose(pred[0, 0, 3], flows[flows != 0].mean(), rtol=1e-5)


@pytest.mark.slow  # about 2 minutes of CPU
def test_a_short_training_run_beats_the_historical_average(small) -> None:
    _, data = small
    torch.set_num_threads(1)
    windows, scaler = split_windows(data, 24, 24, stride=4)
    model = Extralonger(
        ExtralongerConfig(
            nodes=12, in_steps=24, out_steps=24, d_in=32, d_tod=16, d_dow=16, d_sp=16, feed_forward=64
        ),
        torch.tensor(data.mask()),
    )
    # weight decay as the quick preset: without it 12 epochs tied the average at 2 h (24.06 vs 23.97)
    train = TrainConfig(lr=1e-3, weight_decay=2.0, epochs=20, patience=4, max_batches=60, milestones=(16,))
    result = train_forecaster(model, windows, scaler, train)
    horizons = {"5min": 1, "1h": 12, "2h": 24}
    ours = evaluate(lambda w, i: predict(model, w, i, scaler), windows["test"], horizons, max_windows=150)
    ha = evaluate(
        HistoricalAverage(windows["train"], 288).predict, windows["test"], horizons, max_windows=150
    )
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    for name in horizons:
        assert ours["horizons"][name]["mae"] < ha["horizons"][name]["mae"], name


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weight_decay": -0.1}, "weight_decay must be >= 0, got -0.1"),
        ({"ema": 1.0}, r"ema must be in \(0, 1\)"),
    ],
)
def test_regularisation_settings_outside_their_range_are_refused(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def _tiny(data) -> Extralonger:
    torch.manual_seed(0)
    cfg = ExtralongerConfig(
        nodes=12, in_steps=12, out_steps=12, d_in=8, d_tod=8, d_dow=8, d_sp=8, feed_forward=16, heads=2
    )
    return Extralonger(cfg, torch.tensor(data.mask()))


def _norm(model: torch.nn.Module) -> float:
    return float(sum(p.detach().pow(2).sum() for p in model.parameters()))


def test_weight_decay_shrinks_the_weights_and_ema_keeps_the_average_it_validated(small) -> None:
    from veil.models.forecasting.train import _batches, _loss

    _, data = small
    torch.set_num_threads(1)
    windows, scaler = split_windows(data, 12, 12, stride=8)
    short = TrainConfig(lr=1e-3, epochs=3, patience=3, max_batches=4)
    plain, decayed, averaged = _tiny(data), _tiny(data), _tiny(data)
    train_forecaster(plain, windows, scaler, short)
    train_forecaster(decayed, windows, scaler, TrainConfig(**{**short.__dict__, "weight_decay": 50.0}))
    assert _norm(decayed) < 0.9 * _norm(plain)

    result = train_forecaster(averaged, windows, scaler, TrainConfig(**{**short.__dict__, "ema": 0.5}))
    assert any(not torch.equal(a, b) for a, b in zip(averaged.parameters(), plain.parameters(), strict=True))
    with torch.no_grad():  # the kept weights are those whose validation loss the history records
        batches = _batches(len(windows["val"]), 16, None, 2)
        kept = float(np.mean([float(_loss(averaged, windows["val"], i, scaler)) for i in batches]))
    assert kept == pytest.approx(result.history[result.best_epoch - 1]["val_loss"], rel=1e-5)


def _options_pair(**options) -> tuple[Extralonger, Extralonger, torch.Tensor]:
    """A released model and one with ``options``, with the released weights copied into it."""
    n, steps = 5, 12
    adj = torch.eye(n, dtype=torch.bool) | torch.roll(torch.eye(n, dtype=torch.bool), 1, 0)
    base = ExtralongerConfig(
        nodes=n, in_steps=steps, out_steps=steps, d_in=8, d_tod=4, d_dow=4, d_sp=4, feed_forward=16, heads=2
    )
    torch.manual_seed(0)
    released = Extralonger(base, adj).eval()
    variant = Extralonger(ExtralongerConfig(**{**base.__dict__, **options}), adj).eval()
    variant.load_state_dict(released.state_dict(), strict=False)
    x = torch.randn(3, steps, n, 3)
    x[..., 1], x[..., 2] = torch.rand(3, steps, n), 2.0
    return released, variant, x


def test_the_learned_fusion_and_the_linear_skip_start_as_the_released_model() -> None:
    released, variant, x = _options_pair(fusion="learned", linear_skip=True)
    torch.testing.assert_close(variant(x), released(x))
    with torch.no_grad():  # a skip that copies the last step adds the last reading to every step
        variant.skip.weight[:, -1] = 1.0
    torch.testing.assert_close(variant(x), released(x) + x[:, -1:, :, 0])


def test_a_learned_fusion_weighs_the_routes_by_its_softmax() -> None:
    released, variant, x = _options_pair(fusion="learned")
    with torch.no_grad():  # all weight on the mixed route at every step
        variant.fusion_logits.copy_(torch.tensor([50.0, 0.0, 0.0]))
    mixed_only = variant(x)
    with torch.no_grad():
        variant.fusion_logits.copy_(torch.log(torch.tensor([2.0, 1.0, 1.0])))
    torch.testing.assert_close(variant(x), released(x))
    assert not torch.allclose(mixed_only, released(x))
    with pytest.raises(ValueError, match="fusion must be one of"):
        ExtralongerConfig(nodes=5, fusion="mean")


def test_peak_memory_on_cpu_counts_memory_that_freed_tensors_left_behind() -> None:
    # 64 KB tensors sit below glibc's mmap threshold: freed, malloc keeps them resident and serves the next
    # ones from them, so sampled RSS did not grow (38 of 125 MB seen before release_free_heap)
    if not release_free_heap():
        pytest.skip("needs glibc's malloc_trim (not on macOS or musl): freed heap cannot be given back there")
    keep, freed = [], []
    for _ in range(2000):
        freed.append(torch.ones(2**14))
        keep.append(torch.ones(4))  # pins the heap between the freed blocks
    del freed
    with PeakMemory(torch.device("cpu")) as mem:
        again = [torch.ones(2**14) for _ in range(2000)]  # 125 MB
    assert mem.peak_mb > 100, mem.peak_mb
    del again, keep
