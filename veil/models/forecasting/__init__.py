"""Traffic forecasting to week-long horizons: Extralonger (arXiv:2411.00844), its data contract, masked
metrics and baselines."""

from __future__ import annotations

from veil.models.forecasting.data import (
    ForecastingDataError,
    Scaler,
    TrafficData,
    Windows,
    adjacency_mask,
    load_traffic,
    split_windows,
    synthesize,
)
from veil.models.forecasting.metrics import batch_metrics, horizon_metrics, masked_metrics

__all__ = [
    "ForecastingDataError",
    "Scaler",
    "TrafficData",
    "Windows",
    "adjacency_mask",
    "batch_metrics",
    "horizon_metrics",
    "load_traffic",
    "masked_metrics",
    "split_windows",
    "synthesize",
]
