"""The pure parts of federated Extralonger (arXiv:2411.00844): regions, the parameters they share, the
settings and results of a run, and the metrics' weighted mean. Nothing here imports Flower."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from veil.models.forecasting.model import ExtralongerConfig

__all__ = [
    "METRICS",
    "FederatedDP",
    "FederatedResult",
    "RegionResult",
    "flatten_metrics",
    "partition_regions",
    "shared_parameter_names",
    "unflatten_metrics",
    "weighted_metrics",
]

METRICS = ("mae", "rmse", "mape")


@dataclass(frozen=True)
class FederatedDP:
    """Server-side fixed clipping (Flower's ``DifferentialPrivacyServerSideFixedClipping``).

    Attributes
    ----------
    noise_multiplier: Gaussian noise standard deviation over ``clipping_norm``.
    clipping_norm: L2 bound on one region's update of the shared parameters per round.
    """

    noise_multiplier: float
    clipping_norm: float

    def __post_init__(self) -> None:
        if self.noise_multiplier < 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if self.clipping_norm <= 0:
            raise ValueError(f"clipping_norm must be > 0, got {self.clipping_norm}")


@dataclass
class RegionResult:
    """One region after the last round: its sensors (global ids), test metrics (``evaluate``'s
    ``{"all": ..., "horizons": {...}}``), the seconds its local training took over all rounds, the peak
    memory of its local training (MB of resident memory above the level before, the largest over the
    rounds), and its final ``state`` (name -> array) when ``run_federated(return_models=True)``."""

    region: int
    nodes: np.ndarray
    metrics: dict[str, Any]
    train_seconds: float
    state: dict[str, np.ndarray] | None = None
    peak_memory_mb: float = 0.0


@dataclass
class FederatedResult:
    """``regions`` by region id; ``mean``: their metrics weighted by sensor count; ``train_seconds``: wall
    time of the rounds; ``history``: per round, the regions' ``train_loss``/``val_loss`` and their
    sensor-weighted means; ``privacy``: the accountant's spend under ``dp``; ``peak_memory_mb``: the
    largest of the regions' peaks (each measured in the client around its local training, as the
    centralised methods are); ``peak_rss_mb``: the largest resident set any client process reached over
    its life (``getrusage``; includes the simulation worker's own footprint)."""

    regions: list[RegionResult]
    mean: dict[str, Any]
    train_seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    shared: tuple[str, ...] = ()
    privacy: dict[str, Any] | None = None
    peak_memory_mb: float = 0.0
    peak_rss_mb: float = 0.0


def partition_regions(nodes: int, regions: int) -> list[np.ndarray]:
    """``regions`` blocks of contiguous node ids covering ``0..nodes-1``, sizes differing by one at most.

    >>> [r.tolist() for r in partition_regions(7, 3)]
    [[0, 1, 2], [3, 4], [5, 6]]
    """
    if not 1 <= regions <= nodes:
        raise ValueError(f"regions must be in 1..{nodes} (the sensor count), got {regions}")
    return [np.asarray(block, dtype=np.int64) for block in np.array_split(np.arange(nodes), regions)]


def shared_parameter_names(config: ExtralongerConfig) -> tuple[str, ...]:
    """The parameters whose shapes do not depend on the sensor count: those that regions can average.

    Found by building the model at ``config.nodes`` and one more sensor on the meta device (no memory,
    no compute) and keeping the names whose shapes agree."""
    import torch

    from veil.models.forecasting.model import Extralonger

    def shapes(n: int) -> dict[str, tuple[int, ...]]:
        with torch.device("meta"):
            model = Extralonger(replace(config, nodes=n), torch.zeros(n, n, dtype=torch.bool))
        return {name: tuple(p.shape) for name, p in model.named_parameters()}

    a, b = shapes(config.nodes), shapes(config.nodes + 1)
    return tuple(name for name in a if a[name] == b[name])


def weighted_metrics(metrics: Sequence[Mapping[str, Any]], weights: Sequence[float]) -> dict[str, Any]:
    """The weighted mean of ``evaluate``-shaped metrics: MAE and MAPE averaged, RMSE as the root of the
    averaged squares (so equal regions give the pooled value)."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()

    def mean(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
        return {
            "mae": float(sum(wi * r["mae"] for wi, r in zip(w, rows, strict=True))),
            "rmse": float(np.sqrt(sum(wi * r["rmse"] ** 2 for wi, r in zip(w, rows, strict=True)))),
            "mape": float(sum(wi * r["mape"] for wi, r in zip(w, rows, strict=True))),
        }

    names = metrics[0]["horizons"].keys()
    return {
        "all": mean([m["all"] for m in metrics]),
        "horizons": {h: mean([m["horizons"][h] for m in metrics]) for h in names},
    }


def flatten_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``evaluate``'s nested metrics as the flat keys a ``MetricRecord`` holds.

    >>> flatten_metrics({"all": {"mae": 1.0}, "horizons": {"1h": {"mae": 2.0}}})
    {'all.mae': 1.0, 'h.1h.mae': 2.0}
    """
    flat = {f"all.{k}": v for k, v in metrics["all"].items()}
    for h, values in metrics["horizons"].items():
        flat.update({f"h.{h}.{k}": v for k, v in values.items()})
    return flat


def unflatten_metrics(flat: Mapping[str, Any], horizons: Sequence[str]) -> dict[str, Any]:
    """The inverse of :func:`flatten_metrics` for :data:`METRICS` at ``horizons``."""
    return {
        "all": {k: float(flat[f"all.{k}"]) for k in METRICS},
        "horizons": {h: {k: float(flat[f"h.{h}.{k}"]) for k in METRICS} for h in horizons},
    }
