"""Masked MAE, RMSE and MAPE as Extralonger's released code computes them (arXiv:2411.00844; its
``lib/metrics.py``), plus a per-horizon breakdown the released code does not report.

The mask is ``y != 0`` (a zero is a sensor dropout), normalised to mean 1 over the batch so that every
metric is a mean over the valid entries; NaNs from an all-zero batch are set to 0. Each metric is
computed per batch and the batch values are averaged (:func:`masked_metrics` over a list of batches):
RMSE is therefore the square root of the mean of per-batch mean squared errors, as released.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

__all__ = ["batch_metrics", "horizon_metrics", "masked_metrics"]


def batch_metrics(pred: np.ndarray, true: np.ndarray) -> tuple[float, float, float]:
    """One batch's masked ``(MAE, MSE, MAPE %)``; ``pred`` and ``true`` share a shape."""
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if pred.shape != true.shape:
        raise ValueError(f"pred and true must share a shape, got {pred.shape} and {true.shape}")
    mask = (true != 0).astype(np.float64)
    mean = mask.mean()
    if mean == 0:
        return 0.0, 0.0, 0.0
    mask /= mean
    err = pred - true
    with np.errstate(divide="ignore", invalid="ignore"):
        ape = np.nan_to_num(np.abs(err) / np.abs(true) * mask)
    return (
        float(np.nan_to_num(np.abs(err) * mask).mean()),
        float(np.nan_to_num(err**2 * mask).mean()),
        float(100.0 * ape.mean()),
    )


def masked_metrics(batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """``{"mae", "rmse", "mape"}`` averaged over ``(pred, true)`` batches."""
    rows = np.array([batch_metrics(p, t) for p, t in batches], dtype=np.float64).reshape(-1, 3)
    if len(rows) == 0:
        raise ValueError("masked_metrics needs at least one batch")
    mae, mse, mape = rows.mean(axis=0)
    return {"mae": float(mae), "rmse": float(np.sqrt(mse)), "mape": float(mape)}


def horizon_metrics(
    batches: Iterable[tuple[np.ndarray, np.ndarray]], horizons: Mapping[str, int]
) -> dict[str, dict[str, float]]:
    """Metrics at each named horizon: ``horizons`` maps a name (``"1h"``) to a 1-based step ahead, and
    the step's slice ``[:, step - 1]`` of every ``(B, T_out, N)`` batch is scored."""
    batches = list(batches)
    out_steps = batches[0][1].shape[1] if batches else 0
    for name, step in horizons.items():
        if not 1 <= step <= out_steps:
            raise ValueError(f"horizon {name!r} is step {step}, outside the forecast's 1..{out_steps}")
    return {
        name: masked_metrics((p[:, step - 1], t[:, step - 1]) for p, t in batches)
        for name, step in horizons.items()
    }
