"""Training and evaluation of a forecaster as Extralonger's released code does it (arXiv:2411.00844), with its
two known bugs fixed.

Released settings kept: Adam (eps 1e-8, no gradient clipping), Huber loss (delta 1) on the
inverse-scaled prediction against the raw target, batch 16, lr 1e-4 (PEMS08), early stopping on the
validation loss with the best state restored. Fixed: the seed is ``seed`` (released: random every run),
and the ``MultiStepLR`` schedule steps once per epoch (released: built, never stepped, so the rate stayed
at 1e-4). The milestones and decay are our choice, since the released ones never took effect.
``max_batches`` caps the batches per epoch (a random subset each epoch), for CPU runs.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from veil.models.forecasting.data import Scaler, Windows
from veil.models.forecasting.metrics import horizon_metrics, masked_metrics

__all__ = ["TrainConfig", "evaluate", "predict", "train_forecaster"]


@dataclass(frozen=True)
class TrainConfig:
    """The loop's settings; the defaults are the released PEMS08 ones.

    Attributes
    ----------
    lr: Adam's learning rate (released: 1e-4).
    batch_size: windows per step (released: 16).
    epochs, patience: at most ``epochs``, stopping after ``patience`` epochs without a better validation
        loss (released: 300 and 10).
    milestones, gamma: ``MultiStepLR`` (our choice: the released schedule never stepped).
    weight_decay: decoupled weight decay (AdamW's); released: none (0.0). Our addition, for small data
        sets where the released widths overfit within a few epochs.
    ema: when set, an exponential moving average of the weights with this decay per step (0.99: about
        the last hundred steps) is validated and kept instead of the raw weights; released: none. Our
        addition: on small data sets the validation loss of the raw weights jumps from epoch to epoch,
        and the average smooths out the last steps' noise.
    max_batches: batches per epoch, a random subset each epoch (``None``: all, as released).
    seed: torch's and the batch order's (released: random every run).
    """

    lr: float = 1e-4
    batch_size: int = 16
    epochs: int = 300
    patience: int = 10
    milestones: tuple[int, ...] = (20, 40)
    gamma: float = 0.1
    weight_decay: float = 0.0
    ema: float | None = None
    max_batches: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.batch_size < 1 or self.epochs < 1 or self.patience < 1:
            raise ValueError("lr > 0, batch_size >= 1, epochs >= 1 and patience >= 1 are required")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.ema is not None and not 0.0 < self.ema < 1.0:
            raise ValueError(f"ema must be in (0, 1) or None, got {self.ema}")
        if self.max_batches is not None and self.max_batches < 1:
            raise ValueError(f"max_batches must be >= 1 or None, got {self.max_batches}")


@dataclass
class TrainResult:
    model: nn.Module
    best_epoch: int
    train_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def predict(model: nn.Module, windows: Windows, index: np.ndarray, scaler: Scaler) -> np.ndarray:
    """``(B, T_out, N)`` raw-flow forecasts for the windows ``index``."""
    x, _ = windows.batch(index)
    with torch.no_grad():
        out = model(torch.as_tensor(x, device=_device(model)))
    return scaler.inverse(out.float().cpu().numpy())


def _loss(model: nn.Module, windows: Windows, index: np.ndarray, scaler: Scaler) -> torch.Tensor:
    x, y = windows.batch(index)
    dev = _device(model)
    pred = model(torch.as_tensor(x, device=dev)) * scaler.std + scaler.mean  # inverse-scaled
    return nn.functional.huber_loss(pred, torch.as_tensor(y, device=dev), delta=1.0)


def _batches(n: int, size: int, rng: np.random.Generator | None, cap: int | None) -> list[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    out = [order[i : i + size] for i in range(0, n - size + 1, size)]  # drop_last, as released
    return out[:cap] if cap is not None else out


def train_forecaster(
    model: nn.Module,
    windows: Mapping[str, Windows],
    scaler: Scaler,
    config: TrainConfig | None = None,
    progress: Callable[[int, float, float], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``windows["train"]``, stop early on ``windows["val"]``, restore the best
    state; ``progress(epoch, train_loss, val_loss)`` after each epoch."""
    cfg = config or TrainConfig()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.Adam(
        model.parameters(), lr=cfg.lr, eps=1e-8, weight_decay=cfg.weight_decay, decoupled_weight_decay=True
    )
    schedule = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.gamma)
    train, val = windows["train"], windows["val"]
    if len(train) < cfg.batch_size or len(val) < 1:
        raise ValueError(f"need at least {cfg.batch_size} training windows and one validation window")
    ema = None
    if cfg.ema is not None:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema)
        )
    scored = model if ema is None else ema.module  # what is validated and kept
    best, best_epoch, best_state, waited = float("inf"), 0, copy.deepcopy(model.state_dict()), 0
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        losses = []
        for index in _batches(len(train), cfg.batch_size, rng, cfg.max_batches):
            loss = _loss(model, train, index, scaler)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update_parameters(model)
            losses.append(float(loss.detach()))
        schedule.step()
        scored.eval()
        with torch.no_grad():
            val_cap = None if cfg.max_batches is None else max(1, cfg.max_batches // 2)
            val_batches = _batches(len(val), min(cfg.batch_size, len(val)), None, val_cap)
            val_loss = float(np.mean([float(_loss(scored, val, i, scaler)) for i in val_batches]))
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": val_loss})
        if progress is not None:
            progress(epoch, history[-1]["train_loss"], val_loss)
        if val_loss < best:
            best, best_epoch, best_state, waited = val_loss, epoch, copy.deepcopy(scored.state_dict()), 0
        else:
            waited += 1
            if waited >= cfg.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, best_epoch, time.perf_counter() - start, history)


def evaluate(
    forecast: Callable[[Windows, np.ndarray], np.ndarray],
    windows: Windows,
    horizons: Mapping[str, int],
    batch_size: int = 64,
    max_windows: int | None = None,
) -> dict[str, Any]:
    """Masked metrics over the whole forecast (``"all"``) and at each horizon, for any ``forecast(windows,
    index) -> (B, T_out, N)`` raw flow; ``max_windows`` evenly spaced windows when set."""
    n = len(windows)
    picks = (
        np.arange(n)
        if max_windows is None or max_windows >= n
        else np.linspace(0, n - 1, max_windows).astype(int)
    )
    batches = []
    for i in range(0, len(picks), batch_size):
        index = picks[i : i + batch_size]
        batches.append((forecast(windows, index), windows.batch(index)[1]))
    return {"all": masked_metrics(batches), "horizons": horizon_metrics(batches, horizons)}
