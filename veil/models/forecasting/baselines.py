"""Baselines for Extralonger (arXiv:2411.00844): the historical average, STID (arXiv:2208.05233) and grid
attention in the manner of STAEformer (arXiv:2308.10425).

* :class:`HistoricalAverage`: per sensor, the mean training flow at the same time-of-day slot and day of
  week (zeros, the dropouts, left out); no parameters trained.
* :class:`STID`: an MLP over each sensor's input series with node, time-of-day and day-of-week identity
  embeddings (of the last input step), residual layers, a linear map to T_out. Our widths: 32 per part,
  3 layers (the STID paper's defaults).
* :class:`GridAttention`: every (step, sensor) pair a token (flow projection, time embeddings and an
  adaptive (T_in, N) embedding), attention along time for each sensor and along sensors for each step,
  then one linear map from each sensor's T_in x D features to T_out. Its attention maps are N x T x T and
  T x N x N, which is the O(N T^2) growth Extralonger avoids.

Every model maps ``x`` ``(B, T_in, N, 3)`` (scaled flow, time of day, day of week) to ``(B, T_out, N)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from veil.models.forecasting.data import Windows

__all__ = ["STID", "GridAttention", "GridAttentionConfig", "HistoricalAverage", "STIDConfig"]


class HistoricalAverage:
    """The mean training flow of each (sensor, day of week, time-of-day slot)."""

    def __init__(self, train: Windows, steps_per_day: int) -> None:
        self.steps_per_day = steps_per_day
        flow = train.raw_flow  # (T, N)
        slot = self._slots(train.series[:, 0, 1:])  # (T,)
        n_slots = 7 * steps_per_day
        valid = (flow != 0).astype(np.float64)
        sums = np.zeros((n_slots, flow.shape[1]))
        counts = np.zeros((n_slots, flow.shape[1]))
        np.add.at(sums, slot, flow * valid)
        np.add.at(counts, slot, valid)
        overall = (flow * valid).sum(axis=0) / np.maximum(valid.sum(axis=0), 1)  # (N,) for unseen slots
        self.table = np.where(counts > 0, sums / np.maximum(counts, 1), overall[None, :])  # (7 * spd, N)

    def _slots(self, time: np.ndarray) -> np.ndarray:
        """``time``: ``(..., 2)`` time of day and day of week to slot indices."""
        tod = np.clip((time[..., 0] * self.steps_per_day).astype(np.int64), 0, self.steps_per_day - 1)
        return time[..., 1].astype(np.int64) * self.steps_per_day + tod

    def predict(self, windows: Windows, index: np.ndarray) -> np.ndarray:
        """``(B, T_out, N)`` raw flow for the windows ``index``."""
        starts = windows.starts[index]
        y_idx = starts[:, None] + windows.in_steps + np.arange(windows.out_steps)[None, :]  # (B, T_out)
        return self.table[self._slots(windows.series[y_idx, 0, 1:])]  # (B, T_out, N)


@dataclass(frozen=True)
class STIDConfig:
    nodes: int
    in_steps: int = 12
    out_steps: int = 12
    steps_per_day: int = 288
    width: int = 32
    layers: int = 3
    dropout: float = 0.15


class STID(nn.Module):
    def __init__(self, config: STIDConfig) -> None:
        super().__init__()
        c = self.config = config
        self.series = nn.Linear(c.in_steps, c.width)
        self.node = nn.Parameter(torch.empty(c.nodes, c.width))
        nn.init.xavier_uniform_(self.node)
        self.tod, self.dow = nn.Embedding(c.steps_per_day, c.width), nn.Embedding(7, c.width)
        hidden = 4 * c.width
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(c.dropout), nn.Linear(hidden, hidden)
            )
            for _ in range(c.layers)
        )
        self.out = nn.Linear(hidden, c.out_steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        b = x.shape[0]
        tod = (x[:, -1, :, 1] * c.steps_per_day).long().clamp(0, c.steps_per_day - 1)  # (B, N)
        dow = x[:, -1, :, 2].long().clamp(0, 6)  # (B, N)
        h = torch.cat(
            [
                self.series(x[..., 0].transpose(1, 2)),
                self.node.expand(b, -1, -1),
                self.tod(tod),
                self.dow(dow),
            ],
            dim=-1,
        )  # (B, N, 4 width)
        for layer in self.layers:
            h = h + layer(h)
        return self.out(h).transpose(1, 2)  # (B, T_out, N)


@dataclass(frozen=True)
class GridAttentionConfig:
    nodes: int
    in_steps: int = 12
    out_steps: int = 12
    steps_per_day: int = 288
    d_in: int = 24
    d_tod: int = 24
    d_dow: int = 24
    d_adaptive: int = 24
    heads: int = 4
    feed_forward: int = 256
    layers: int = 1
    dropout: float = 0.1

    @property
    def model_dim(self) -> int:
        return self.d_in + self.d_tod + self.d_dow + self.d_adaptive


class GridAttention(nn.Module):
    def __init__(self, config: GridAttentionConfig) -> None:
        super().__init__()
        c = self.config = config
        d = c.model_dim
        self.flow_in = nn.Linear(1, c.d_in)
        self.tod, self.dow = nn.Embedding(c.steps_per_day, c.d_tod), nn.Embedding(7, c.d_dow)
        self.adaptive = nn.Parameter(torch.empty(c.in_steps, c.nodes, c.d_adaptive))
        nn.init.xavier_uniform_(self.adaptive)

        def encoder() -> nn.ModuleList:
            return nn.ModuleList(
                nn.TransformerEncoderLayer(d, c.heads, c.feed_forward, c.dropout, batch_first=True)
                for _ in range(c.layers)
            )

        self.along_time, self.along_nodes = encoder(), encoder()
        self.out = nn.Linear(c.in_steps * d, c.out_steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        b, t, n, _ = x.shape
        tod = (x[..., 1] * c.steps_per_day).long().clamp(0, c.steps_per_day - 1)  # (B, T, N)
        dow = x[..., 2].long().clamp(0, 6)
        h = torch.cat(
            [self.flow_in(x[..., :1]), self.tod(tod), self.dow(dow), self.adaptive.expand(b, -1, -1, -1)],
            dim=-1,
        )  # (B, T, N, D)
        d = h.shape[-1]
        h = h.transpose(1, 2).reshape(b * n, t, d)  # each sensor's steps
        for layer in self.along_time:
            h = layer(h)
        h = h.reshape(b, n, t, d).transpose(1, 2).reshape(b * t, n, d)  # each step's sensors
        for layer in self.along_nodes:
            h = layer(h)
        h = h.reshape(b, t, n, d).permute(0, 2, 1, 3).reshape(b, n, t * d)  # (B, N, T D)
        return self.out(h).transpose(1, 2)  # (B, T_out, N)
