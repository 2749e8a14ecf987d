"""DBudgetKV / ReFreeKV on the phone: prune the KV cache as far as a norm criterion allows
(arXiv:2502.16886), the numpy twin of ``veil.models.compression.dbudgetkv``.

Once after prefill, for every layer outside ``skip_layers`` (0 and 1: pruning them breaks the model,
App. B), with ``a[h, :]`` the attention row of the last prompt token's query (post-RoPE, float32, against
the un-repeated keys):

1. rank the prompt: ``n_sink`` = 4 sink tokens first (always kept), then the others most recent first
   (``ranking="position"``, the paper's), or by an attention score shared by all heads (the released
   code's ``"snapkv"`` / ``"h2o"`` options, which rank per head there; one shared ranking keeps the cache
   a slice per row);
2. keep the shortest ranked prefix whose relative norm loss ``1 - ||a_kept|| / ||a||`` is ``<= T`` (Eq. 1,
   ``T = 0.01``), all cuts scored at once from a cumulative sum of ``a**2`` in rank order.

``T = 0`` keeps every token with non-zero attention, i.e. the whole cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from veil.client_sdk.runtime.compression.base import Prefill
from veil.client_sdk.runtime.compression.scoring import (
    accumulated_attention,
    first_valid,
    norm_loss_curve,
    pool_scores,
    query_attention,
    ranking,
)

__all__ = ["DBudgetKVConfig", "select_dbudgetkv"]

NormScope = Literal["full_row", "non_sink"]
HeadAgg = Literal["joint_frobenius", "mean_of_head_norms"]
Ranking = Literal["position", "snapkv", "h2o"]


@dataclass(frozen=True)
class DBudgetKVConfig:
    """DBudgetKV's settings; the defaults are the paper's (arXiv:2502.16886 v3, Sec. 2).

    Attributes
    ----------
    threshold: T, the largest relative norm loss allowed, in ``[0, 1)``; 0 keeps everything.
    n_sink: sink tokens ranked first and always kept (the paper's m = 4).
    k_rows: last prompt queries whose attention rows are averaged (the paper's k = 1).
    skip_layers: layers never pruned (the paper freezes 0 and 1; the released code's default is none).
    norm_scope: ``"full_row"`` (Alg. 1: the norm of the whole row) or ``"non_sink"`` (the released
        code: sinks excluded from the norm, a much stricter rule since sinks carry most of the mass).
    head_agg: ``"joint_frobenius"`` (Eq. 1: one Frobenius norm over all heads) or
        ``"mean_of_head_norms"`` (the released code: the mean of per-head L2 norms).
    ranking: ``"position"`` (the paper), ``"snapkv"`` (votes of the last ``score_window`` queries,
        average-pooled over 5 positions) or ``"h2o"`` (their summed attention), over heads jointly.
    score_window: queries voting in the score rankings (the released code's 8; unused for position).
    min_recent: most recent tokens always kept besides the sinks (not in the paper, which may keep
        sinks alone; 1 keeps the last prompt token, which the next query attends to).
    """

    threshold: float = 0.01
    n_sink: int = 4
    k_rows: int = 1
    skip_layers: tuple[int, ...] = (0, 1)
    norm_scope: NormScope = "full_row"
    head_agg: HeadAgg = "joint_frobenius"
    ranking: Ranking = "position"
    score_window: int = 8
    min_recent: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {self.threshold}")
        for name in ("n_sink", "min_recent"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("k_rows", "score_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.norm_scope not in ("full_row", "non_sink"):
            raise ValueError(f"norm_scope must be 'full_row' or 'non_sink', got {self.norm_scope!r}")
        if self.head_agg not in ("joint_frobenius", "mean_of_head_norms"):
            raise ValueError(
                f"head_agg must be 'joint_frobenius' or 'mean_of_head_norms', got {self.head_agg!r}"
            )
        if self.ranking not in ("position", "snapkv", "h2o"):
            raise ValueError(f"ranking must be 'position', 'snapkv' or 'h2o', got {self.ranking!r}")

    @property
    def query_window(self) -> int:
        """The last prompt queries the method scores with."""
        return self.k_rows if self.ranking == "position" else max(self.k_rows, self.score_window)


def _rank_scores(c: DBudgetKVConfig, prefill: Prefill, layer: int) -> np.ndarray:
    n = prefill.valid.shape[1]
    if c.ranking == "position":
        return np.broadcast_to(np.arange(n, dtype=np.float32), prefill.valid.shape)
    q = prefill.queries[layer][:, :, -c.score_window :]
    if c.ranking == "h2o":
        return accumulated_attention(q, prefill.keys[layer], prefill.valid, prefill.scaling)
    votes = query_attention(q, prefill.keys[layer], prefill.valid, prefill.scaling).sum(axis=(1, 2))  # (B, n)
    return pool_scores(votes, 5, "avgpool")


def select_dbudgetkv(config: DBudgetKVConfig, prefill: Prefill) -> list[np.ndarray]:
    """Per layer, the ``(B, n)`` bool mask of prompt positions to keep."""
    c, valid = config, prefill.valid
    sinks = first_valid(valid, c.n_sink)  # (B, n)
    fixed = sinks | prefill.protected
    candidates = valid & ~fixed
    n_cand = candidates.sum(axis=1)  # (B,)
    keep: list[np.ndarray] = []
    for layer in range(prefill.n_layers):
        if layer in c.skip_layers:
            keep.append(valid.copy())
            continue
        q = prefill.queries[layer][:, :, -c.k_rows :]  # (B, H, k, d)
        rows = query_attention(q, prefill.keys[layer], valid, prefill.scaling)  # (B, H, k, n)
        seen = np.maximum((rows > 0).sum(axis=2), 1)  # average over the rows that can see each key
        sq = (rows.sum(axis=2) / seen).astype(np.float32) ** 2  # (B, H, n)
        scope = valid if c.norm_scope == "full_row" else valid & ~sinks
        full = (sq * scope[:, None]).sum(axis=-1)  # (B, H)
        order, rank = ranking(_rank_scores(c, prefill, layer), candidates)  # (B, n) candidates first
        ranked = np.take_along_axis(sq * candidates[:, None], order[:, None].repeat(sq.shape[1], 1), axis=2)
        loss = norm_loss_curve(ranked, full, c.head_agg)  # (B, n + 1)
        k = (loss > c.threshold).sum(axis=1)  # the loss is non-increasing: count = first k under T
        k = np.maximum(k, np.minimum(n_cand, c.min_recent))
        keep.append(fixed | (candidates & (rank < k[:, None])))
    return keep
