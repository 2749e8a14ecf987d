"""``veil experiment forecasting``: bad input is one line and exit code 2, before any training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def _files(path: Path, series: np.ndarray, adj: str = "from,to,cost\n0,1,1\n") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    np.savez(path / "data.npz", data=series)
    (path / "adj.csv").write_text(adj)
    return path


def _series(steps: int = 100, nodes: int = 4, channels: int = 3) -> np.ndarray:
    """Hourly flow with a valid time of day and day of week in channels 1 and 2 where they exist."""
    series = np.ones((steps, nodes, channels), np.float32)
    if channels >= 3:
        series[:, :, 1] = (np.arange(steps) % 24 / 24)[:, None]
        series[:, :, 2] = (np.arange(steps) // 24 % 7)[:, None]
    return series


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: _files(p, _series(channels=2)), r"must be (T, N, 3)"),
        (lambda p: _files(p, _series()[..., 0]), r"must be (T, N, 3)"),
        (lambda p: _files(p, _series(), "from,to,cost\n0,9,1\n"), "names a node outside 0..3"),
        (lambda p: p / "absent", "is not a directory"),
    ],
    ids=["channels", "shape", "unknown-node", "absent"],
)
def test_bad_data_is_one_line_and_exit_two(veil_here, tmp_path, make, message) -> None:
    bad = make(tmp_path / "files")
    proc = veil_here(tmp_path / "data", "experiment", "forecasting", "--quick", "--data", str(bad), "--json")
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr and proc.stdout == ""


def test_a_series_shorter_than_the_week_window_and_bad_options_are_refused(veil_here, tmp_path) -> None:
    from veil.models.forecasting import synthesize

    synthesize(tmp_path / "short", steps=24 * 30, nodes=4, steps_per_day=24)
    proc = veil_here(
        tmp_path / "data", "experiment", "forecasting", "--quick", "--data", str(tmp_path / "short"), "--json"
    )
    assert proc.returncode == 2 and "fewer than a window's 336" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ""
    for args, fragment in (
        (["--device", "tpu"], "--device"),
        (["--seed", "-1"], "--seed"),
        (["--concurrency", "0"], "--concurrency"),
        (["--regions", "0"], "--regions must be in 1..24"),
        (["--regions", "25"], "--regions must be in 1..24"),
        (["--data", str(tmp_path / "short"), "--regions", "5"], "--regions must be in 1..4"),
    ):
        proc = veil_here(tmp_path / "data", "experiment", "forecasting", "--quick", *args)
        assert proc.returncode == 2 and fragment in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
