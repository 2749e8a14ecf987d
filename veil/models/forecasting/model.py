"""Extralonger (arXiv:2411.00844): traffic forecasting to a one-week horizon through three cheap routes
in place of attention over the N x T grid.

As the released code builds it (what the paper leaves out is marked *released*):

* a learned bias ``input_noise`` of shape ``(T_in, N)`` added to the scaled flow (*released*);
* **temporal route** (T tokens): ``Linear(N -> d_in)`` per step, concatenated with time-of-day and
  day-of-week embeddings (D = d_in + d_tod + d_dow), post-LN Transformer encoder blocks,
  ``Linear(D -> N)`` and ``Linear(T_in -> T_out)`` along time;
* **spatial route** (N tokens): ``Linear(T_in -> D - d_sp)`` of each sensor's series with a learned node
  embedding of width d_sp, blocks of *global-local* attention (one score matrix; the weights are the
  mean of a softmax over all sensors and one over the adjacency's neighbours, self-loops included),
  ``Linear(D -> T_out)``;
* **mixed route**: its own temporal blocks over the same T tokens, then the D channels as tokens of
  width T_in through attention blocks with 2 heads (*released*), ``Linear(D -> N)``,
  ``Linear(T_in -> T_out)``;
* fusion ``(2 mixed + spatial + temporal) / 4``, fixed (*released*).

Two options depart from the released model and are off by default: a fusion whose route weights are
learned per output step (``fusion="learned"``), and a linear skip from each sensor's input series to its
forecast (``linear_skip``). Both aim at the next hours, where a sensor's own last readings matter most;
at one-day windows each gained a little at 1 h and nothing at 1 d; at one-week windows the skip lowered
the validation MAE at 1 h by 2.9 (``benchmarks/README.md``).

The defaults are the released PEMS08 configuration (d_in = d_tod = d_dow = d_sp = 64, feed-forward 256,
4 heads, 1 layer); ``dropout`` 0.1 is our choice (the STAEformer code it forks from uses 0.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

__all__ = ["FUSIONS", "Extralonger", "ExtralongerConfig", "GlobalLocalAttention"]

Fusion = Literal["fixed", "learned"]
FUSIONS: tuple[str, ...] = get_args(Fusion)


@dataclass(frozen=True)
class ExtralongerConfig:
    """One model; ``nodes`` and ``steps_per_day`` come from the data, the rest from PEMS08's config.

    Attributes
    ----------
    nodes: sensors N.
    in_steps, out_steps: T_in and T_out (the released CLI's default: 36 each; one week at 5-minute
        steps is 2016).
    steps_per_day: time-of-day slots (288 for 5-minute data).
    d_in, d_tod, d_dow, d_sp: widths of the flow projection, the two time embeddings and the node
        embedding.
    feed_forward: the blocks' feed-forward width; heads: attention heads of the temporal and spatial
        blocks; mixed_heads: heads of the channel attention (2 as released; must divide ``in_steps``).
    layers: blocks per route.
    dropout: in every block.
    fusion: ``"fixed"``, the released ``(2 mixed + spatial + temporal) / 4``; or ``"learned"``, a softmax
        over three logits per output step, started at the released 2:1:1. Departs from the paper (whose
        weights are fixed): the spatial route is the only one that keeps the sensors apart (the others
        fold them into one token per step), and the fixed fusion gives it a quarter at every horizon.
    linear_skip: add ``Linear(T_in -> T_out)`` of each sensor's scaled input series (shared by the
        sensors, started at zero so the model starts as released) to the fused output. Departs from the
        paper (no such skip): the next hours follow a sensor's own last readings, and every released
        route passes them through post-LayerNorm blocks, which divide out each token's level.
    """

    nodes: int
    in_steps: int = 36
    out_steps: int = 36
    steps_per_day: int = 288
    d_in: int = 64
    d_tod: int = 64
    d_dow: int = 64
    d_sp: int = 64
    feed_forward: int = 256
    heads: int = 4
    mixed_heads: int = 2
    layers: int = 1
    dropout: float = 0.1
    fusion: Fusion = "fixed"
    linear_skip: bool = False

    def __post_init__(self) -> None:
        for name in ("nodes", "in_steps", "out_steps", "steps_per_day", "d_in", "d_tod", "d_dow", "d_sp",
                     "feed_forward", "heads", "mixed_heads", "layers"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.model_dim % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide d_in + d_tod + d_dow = {self.model_dim}")
        if self.d_sp >= self.model_dim or (self.model_dim - self.d_sp) < 1:
            raise ValueError(f"d_sp ({self.d_sp}) must be below the model width {self.model_dim}")
        if self.in_steps % self.mixed_heads:
            raise ValueError(f"mixed_heads ({self.mixed_heads}) must divide in_steps ({self.in_steps})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")

    @property
    def model_dim(self) -> int:
        return self.d_in + self.d_tod + self.d_dow


class GlobalLocalAttention(nn.Module):
    """Multi-head attention over sensors whose weights average a global and an adjacency-masked softmax
    of the same scores."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, N, D)``; ``mask``: ``(N, N)`` boolean, ``True`` for neighbours and self."""
        b, n, d = x.shape
        q, k, v = (
            self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        )  # (B, H, N, dh)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)  # (B, H, N, N)
        local = scores.masked_fill(~mask, float("-inf"))
        weights = 0.5 * (scores.softmax(dim=-1) + local.softmax(dim=-1))
        return self.out((weights @ v).transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class _SpatialBlock(nn.Module):
    """Post-LN block around :class:`GlobalLocalAttention`, as the encoder layers around plain attention."""

    def __init__(self, dim: int, heads: int, feed_forward: int, dropout: float) -> None:
        super().__init__()
        self.attn = GlobalLocalAttention(dim, heads)
        self.ff = nn.Sequential(nn.Linear(dim, feed_forward), nn.ReLU(), nn.Linear(feed_forward, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.attn(x, mask)))
        return self.norm2(x + self.drop(self.ff(x)))


def _encoder(dim: int, heads: int, feed_forward: int, dropout: float, layers: int) -> nn.ModuleList:
    return nn.ModuleList(
        nn.TransformerEncoderLayer(dim, heads, feed_forward, dropout, activation="relu", batch_first=True)
        for _ in range(layers)
    )


def _time_map(in_steps: int, out_steps: int) -> nn.Module:
    # the released code maps along time only when the lengths differ
    return nn.Identity() if in_steps == out_steps else nn.Linear(in_steps, out_steps)


class Extralonger(nn.Module):
    """``forward(x)``: ``x`` ``(B, T_in, N, 3)`` (scaled flow, time of day, day of week) to ``(B, T_out, N)``
    scaled flow."""

    def __init__(self, config: ExtralongerConfig, adjacency: torch.Tensor) -> None:
        super().__init__()
        c = config
        if adjacency.shape != (c.nodes, c.nodes):
            raise ValueError(f"adjacency must be ({c.nodes}, {c.nodes}), got {tuple(adjacency.shape)}")
        self.config = c
        d = c.model_dim
        self.register_buffer(
            "mask", adjacency.bool() | torch.eye(c.nodes, dtype=torch.bool), persistent=False
        )
        self.input_noise = nn.Parameter(torch.zeros(c.in_steps, c.nodes))
        self.flow_in = nn.Linear(c.nodes, c.d_in)
        self.tod = nn.Embedding(c.steps_per_day, c.d_tod)
        self.dow = nn.Embedding(7, c.d_dow)
        self.temporal = _encoder(d, c.heads, c.feed_forward, c.dropout, c.layers)
        self.temporal_out, self.temporal_time = nn.Linear(d, c.nodes), _time_map(c.in_steps, c.out_steps)
        self.series_in = nn.Linear(c.in_steps, d - c.d_sp)
        self.node = nn.Parameter(torch.empty(c.nodes, c.d_sp))
        nn.init.xavier_uniform_(self.node)
        self.spatial = nn.ModuleList(
            _SpatialBlock(d, c.heads, c.feed_forward, c.dropout) for _ in range(c.layers)
        )
        self.spatial_out = nn.Linear(d, c.out_steps)
        self.mixed_time = _encoder(d, c.heads, c.feed_forward, c.dropout, c.layers)
        self.mixed_channels = _encoder(c.in_steps, c.mixed_heads, c.feed_forward, c.dropout, c.layers)
        self.mixed_out, self.mixed_timemap = nn.Linear(d, c.nodes), _time_map(c.in_steps, c.out_steps)
        if c.fusion == "learned":  # logits of (mixed, spatial, temporal) per output step, from 2:1:1
            self.fusion_logits = nn.Parameter(torch.log(torch.tensor([2.0, 1.0, 1.0])).repeat(c.out_steps, 1))
        if c.linear_skip:
            self.skip = nn.Linear(c.in_steps, c.out_steps)
            nn.init.zeros_(self.skip.weight)
            nn.init.zeros_(self.skip.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if x.ndim != 4 or x.shape[1:] != (c.in_steps, c.nodes, 3):
            raise ValueError(f"x must be (B, {c.in_steps}, {c.nodes}, 3), got {tuple(x.shape)}")
        flow = x[..., 0] + self.input_noise  # (B, T_in, N)
        tod = (x[:, :, 0, 1] * c.steps_per_day).long().clamp(0, c.steps_per_day - 1)  # (B, T_in), node 0's
        dow = x[:, :, 0, 2].long().clamp(0, 6)  # (B, T_in)
        tokens = torch.cat([self.flow_in(flow), self.tod(tod), self.dow(dow)], dim=-1)  # (B, T_in, D)

        h = tokens
        for block in self.temporal:
            h = block(h)
        temporal = self.temporal_time(self.temporal_out(h).transpose(1, 2)).transpose(1, 2)  # (B, T_out, N)

        s = self.series_in(flow.transpose(1, 2))  # (B, N, D - d_sp)
        s = torch.cat([s, self.node.expand(s.shape[0], -1, -1)], dim=-1)  # (B, N, D)
        for block in self.spatial:
            s = block(s, self.mask)
        spatial = self.spatial_out(s).transpose(1, 2)  # (B, T_out, N)

        m = tokens
        for block in self.mixed_time:
            m = block(m)
        m = m.transpose(1, 2)  # (B, D, T_in): the channels are the tokens
        for block in self.mixed_channels:
            m = block(m)
        m = self.mixed_out(m.transpose(1, 2))  # (B, T_in, N)
        mixed = self.mixed_timemap(m.transpose(1, 2)).transpose(1, 2)  # (B, T_out, N)
        if c.fusion == "learned":
            w = self.fusion_logits.softmax(dim=-1)[:, None, :]  # (T_out, 1, 3)
            out = w[..., 0] * mixed + w[..., 1] * spatial + w[..., 2] * temporal
        else:
            out = (2 * mixed + spatial + temporal) / 4
        if c.linear_skip:
            out = out + self.skip(x[..., 0].transpose(1, 2)).transpose(1, 2)  # (B, N, T_in) -> (B, T_out, N)
        return out
