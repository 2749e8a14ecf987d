"""Traffic data in the STAEformer/PEMS file contract that Extralonger (arXiv:2411.00844) reads, a synthetic
generator that writes it, and the windows a forecaster trains on.

**Files.** A directory holding ``data.npz``, whose key ``"data"`` is a float32 ``(T, N, 3)`` array (flow,
time of day in ``[0, 1)``, day of week in ``{0, ..., 6}``), and ``adj.csv``, an edge list with the header
``from,to,cost`` (or ``from,to,distance``). Only the connectivity of the edges is used; the mask built
from it is symmetric and has self-loops. Real PEMS04/PEMS08 files drop in by path.

**Synthetic data** (:func:`synthesize`): a ring road with random shortcuts (about 1.7 edges per node, as
PEMS08's 295 edges for 170 sensors), flow = per-node scale x (a two-peak daily profile, damped on
weekends) x a daily level that drifts (AR(1) over days, persistence 0.9, our choice: without it the
historical average is the best forecast beyond a few hours and no model can beat it) diffused a few
steps over the graph, plus AR(1) noise, clipped at zero, with sensor dropouts
written as zeros (the masked metrics ignore them). Real sizes (PEMS08: 17,856 x 170) for timing, small
ones for tests.

**Windows** (:func:`split_windows`). Every start with stride 1, ``x = [s, s + T_in)`` and ``y = [s + T_in,
s + T_in + T_out)``. Departure from the released code, which splits the *window list* 60/20/20 so that
the last training targets overlap the first validation inputs: the *series* is split 60/20/20 by time
first and windows are cut inside each part, so no target is ever seen in training. The scaler is the
mean and standard deviation of the training part's flow (the released code averages per-batch
statistics over overlapping windows, which weights the middle of the series more).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "ForecastingDataError",
    "Scaler",
    "TrafficData",
    "Windows",
    "adjacency_mask",
    "load_traffic",
    "split_windows",
    "synthesize",
]


class ForecastingDataError(ValueError):
    """The traffic files or a request on them are malformed; the message is one line, fit for a CLI."""


@dataclass(frozen=True)
class TrafficData:
    """``series``: float32 ``(T, N, 3)`` (flow, time of day, day of week); ``edges``: ``(E, 2)`` node
    pairs; ``steps_per_day``: inferred from the time-of-day channel (288 for 5-minute data)."""

    series: np.ndarray
    edges: np.ndarray
    steps_per_day: int

    @property
    def nodes(self) -> int:
        return int(self.series.shape[1])

    @property
    def steps(self) -> int:
        return int(self.series.shape[0])

    def mask(self) -> np.ndarray:
        """The symmetric, self-looped ``(N, N)`` boolean adjacency."""
        return adjacency_mask(self.edges, self.nodes)

    def nodes_subset(self, nodes: np.ndarray) -> TrafficData:
        """The sensors ``nodes`` alone (renumbered 0..k-1), with the edges among them: a region."""
        nodes = np.asarray(nodes, dtype=np.int64)
        index = -np.ones(self.nodes, dtype=np.int64)
        index[nodes] = np.arange(len(nodes))
        keep = (index[self.edges[:, 0]] >= 0) & (index[self.edges[:, 1]] >= 0)
        return TrafficData(self.series[:, nodes], index[self.edges[keep]], self.steps_per_day)


def adjacency_mask(edges: np.ndarray, nodes: int) -> np.ndarray:
    """``(N, N)`` boolean: ``True`` where two sensors are joined (either direction) or are the same."""
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    if len(edges) and (edges.min() < 0 or edges.max() >= nodes):
        raise ForecastingDataError(f"edges name nodes outside 0..{nodes - 1}")
    mask = np.eye(nodes, dtype=bool)
    mask[edges[:, 0], edges[:, 1]] = True
    mask[edges[:, 1], edges[:, 0]] = True
    return mask


def load_traffic(directory: str | Path) -> TrafficData:
    """Read ``data.npz`` and ``adj.csv`` from ``directory``, checking the contract above."""
    directory = Path(directory)
    data_path, adj_path = directory / "data.npz", directory / "adj.csv"
    for path in (data_path, adj_path):
        if not path.is_file():
            raise ForecastingDataError(f"{path} does not exist (need data.npz and adj.csv)")
    try:
        with np.load(data_path) as npz:
            if "data" not in npz:
                raise ForecastingDataError(f"{data_path} has no 'data' array (keys: {sorted(npz.files)})")
            series = np.asarray(npz["data"], dtype=np.float32)
    except (OSError, ValueError) as err:
        if isinstance(err, ForecastingDataError):
            raise
        raise ForecastingDataError(f"{data_path} is not a readable .npz file: {err}") from None
    if series.ndim != 3 or series.shape[2] != 3:
        raise ForecastingDataError(
            f"{data_path}: 'data' must be (T, N, 3) = flow, time of day, day of week; got {series.shape}"
        )
    if not np.isfinite(series).all():
        raise ForecastingDataError(f"{data_path}: 'data' holds NaN or infinite values")
    tod, dow = series[:, 0, 1], series[:, 0, 2]
    if tod.min() < 0 or tod.max() >= 1:
        raise ForecastingDataError(f"{data_path}: time of day (channel 1) must lie in [0, 1)")
    if dow.min() < 0 or dow.max() > 6 or not np.array_equal(dow, np.round(dow)):
        raise ForecastingDataError(f"{data_path}: day of week (channel 2) must be an integer 0..6")
    edges = _read_edges(adj_path, series.shape[1])
    return TrafficData(series, edges, _steps_per_day(tod, data_path))


def _read_edges(path: Path, nodes: int) -> np.ndarray:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["from", "to"]:
            raise ForecastingDataError(f"{path}: the header must start with from,to (got {header})")
        edges = []
        for line, row in enumerate(reader, start=2):
            try:
                a, b = int(float(row[0])), int(float(row[1]))
            except (IndexError, ValueError):
                raise ForecastingDataError(f"{path}:{line}: not a from,to pair of node ids: {row}") from None
            if not (0 <= a < nodes and 0 <= b < nodes):
                raise ForecastingDataError(
                    f"{path}:{line}: edge {a}-{b} names a node outside 0..{nodes - 1} (data.npz has {nodes})"
                )
            edges.append((a, b))
    return np.asarray(edges, dtype=np.int64).reshape(-1, 2)


def _steps_per_day(tod: np.ndarray, path: Path) -> int:
    step = np.diff(tod)
    step = step[step > 0]
    if len(step) == 0:
        raise ForecastingDataError(f"{path}: the time of day never advances, so steps per day are unknown")
    return int(round(1.0 / float(np.median(step))))


def synthesize(
    directory: str | Path,
    steps: int = 17_856,
    nodes: int = 170,
    steps_per_day: int = 288,
    dropout: float = 0.002,
    seed: int = 0,
) -> TrafficData:
    """Write a synthetic ``data.npz`` and ``adj.csv`` into ``directory`` (made if missing) and return
    them; the defaults are PEMS08's sizes."""
    if steps < 2 or nodes < 2 or steps_per_day < 2:
        raise ForecastingDataError(
            f"need steps, nodes, steps_per_day >= 2, got {steps}, {nodes}, {steps_per_day}"
        )
    if not 0.0 <= dropout < 1.0:
        raise ForecastingDataError(f"dropout must be in [0, 1), got {dropout}")
    rng = np.random.default_rng(seed)
    ring = np.stack([np.arange(nodes), (np.arange(nodes) + 1) % nodes], axis=1)
    shortcuts = rng.integers(0, nodes, size=(int(0.7 * nodes), 2))
    edges = np.unique(
        np.sort(np.concatenate([ring, shortcuts[shortcuts[:, 0] != shortcuts[:, 1]]]), axis=1), axis=0
    )
    t = np.arange(steps)
    tod = (t % steps_per_day) / steps_per_day  # (T,)
    dow = (t // steps_per_day) % 7  # (T,)
    # two rush hours (8:00, 17:30) over a night floor; weekends (days 5, 6) flatter and lower
    day = 0.25 + np.exp(-(((tod - 8 / 24) / 0.06) ** 2)) + 0.9 * np.exp(-(((tod - 17.5 / 24) / 0.08) ** 2))
    weekend = np.isin(dow, (5, 6))
    profile = np.where(weekend, 0.6 * (0.25 + 0.5 * np.exp(-(((tod - 14 / 24) / 0.15) ** 2))), day)
    scale = rng.uniform(100.0, 400.0, size=nodes)  # (N,)
    phase = rng.integers(-steps_per_day // 48, steps_per_day // 48 + 1, size=nodes)  # per-sensor shift
    flow = scale[None, :] * profile[(t[:, None] + phase[None, :]) % steps]  # (T, N)
    # each sensor's daily level drifts (AR(1) over days, persistence 0.9): recent days say more about
    # the next week than the training mean does, as with roadworks, school holidays and weather
    level = np.zeros((steps // steps_per_day + 1, nodes))
    shocks = rng.normal(0.0, 0.08, size=level.shape)
    for d in range(1, len(level)):
        level[d] = 0.9 * level[d - 1] + shocks[d]
    flow *= 1.0 + level[t // steps_per_day]
    # diffusion over the road graph: neighbours' traffic spills over
    mask = adjacency_mask(edges, nodes).astype(np.float64)
    walk = mask / mask.sum(axis=1, keepdims=True)
    for _ in range(3):
        flow = 0.6 * flow + 0.4 * flow @ walk.T
    noise = np.zeros_like(flow)
    eps = rng.normal(0.0, 0.05, size=flow.shape) * scale[None, :]
    for i in range(1, steps):  # AR(1)
        noise[i] = 0.8 * noise[i - 1] + eps[i]
    flow = np.clip(flow + noise, 0.0, None)
    flow[rng.random(flow.shape) < dropout] = 0.0
    series = np.stack(
        [flow, np.broadcast_to(tod[:, None], flow.shape), np.broadcast_to(dow[:, None], flow.shape)], axis=-1
    ).astype(np.float32)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(directory / "data.npz", data=series)
    with (directory / "adj.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["from", "to", "cost"])
        for a, b in edges:
            writer.writerow([int(a), int(b), 1.0])
    return TrafficData(series, edges.astype(np.int64), steps_per_day)


@dataclass(frozen=True)
class Scaler:
    """z-scoring of flow with the training part's statistics."""

    mean: float
    std: float

    def transform(self, flow: np.ndarray) -> np.ndarray:
        return (flow - self.mean) / self.std

    def inverse(self, flow: np.ndarray) -> np.ndarray:
        return flow * self.std + self.mean


@dataclass(frozen=True)
class Windows:
    """One part of the series and the window starts inside it; ``x`` is scaled flow with the raw time
    channels, ``y`` raw flow."""

    series: np.ndarray  # (T_part, N, 3), flow already z-scored
    raw_flow: np.ndarray  # (T_part, N)
    starts: np.ndarray  # (W,)
    in_steps: int
    out_steps: int

    def __len__(self) -> int:
        return len(self.starts)

    def batch(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``x``: ``(B, T_in, N, 3)``; ``y``: ``(B, T_out, N)`` raw flow."""
        s = self.starts[index]
        x_idx = s[:, None] + np.arange(self.in_steps)[None, :]  # (B, T_in)
        y_idx = s[:, None] + self.in_steps + np.arange(self.out_steps)[None, :]  # (B, T_out)
        return self.series[x_idx], self.raw_flow[y_idx]


def split_windows(
    data: TrafficData,
    in_steps: int,
    out_steps: int,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    stride: int = 1,
) -> tuple[dict[str, Windows], Scaler]:
    """``{"train", "val", "test"}`` windows of the series split by time, and the training scaler."""
    if in_steps < 1 or out_steps < 1 or stride < 1:
        raise ForecastingDataError(
            f"in_steps, out_steps and stride must be >= 1, got {in_steps}, {out_steps}, {stride}"
        )
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ForecastingDataError(f"fractions must be three positive shares summing to 1, got {fractions}")
    bounds = np.cumsum([0, *fractions])
    cuts = [int(round(b * data.steps)) for b in bounds]
    parts = {name: (cuts[i], cuts[i + 1]) for i, name in enumerate(("train", "val", "test"))}
    need = in_steps + out_steps
    for name, (a, b) in parts.items():
        if b - a < need:
            raise ForecastingDataError(
                f"the {name} part holds {b - a} steps, fewer than a window's {need} (in {in_steps} + out "
                f"{out_steps}); the series has {data.steps}: use a shorter horizon or a longer series"
            )
    train_flow = data.series[parts["train"][0] : parts["train"][1], :, 0]
    scaler = Scaler(float(train_flow.mean()), float(train_flow.std()) or 1.0)
    out = {}
    for name, (a, b) in parts.items():
        part = data.series[a:b].copy()
        raw = part[:, :, 0].copy()
        part[:, :, 0] = scaler.transform(raw)
        out[name] = Windows(part, raw, np.arange(0, b - a - need + 1, stride), in_steps, out_steps)
    return out, scaler
