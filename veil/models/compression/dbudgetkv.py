"""DBudgetKV / ReFreeKV: prune the KV cache as far as a norm criterion allows (arXiv:2502.16886).

Once after prefill, for every layer outside ``skip_layers`` (0 and 1: pruning them breaks the model,
App. B), with ``a[h, :]`` the attention row of the last prompt token's query (post-RoPE, fp32, computed
against the un-repeated keys; never an ``n x n`` matrix):

1. rank the prompt: ``n_sink`` = 4 sink tokens first (always kept), then the others most recent first
   (``ranking="position"``, the paper's), or by an attention score (the released code's options);
2. keep the shortest ranked prefix whose relative norm loss ``1 - ||a_kept|| / ||a||`` is ``<= T``
   (Eq. 1; ``T = 0.01``). All cuts are scored at once from a cumulative sum of ``a**2`` in rank order.

With position ranking every head keeps the same set, sinks plus the last ``L*`` tokens, so the cache is
sliced to ``(B, H_kv, 4 + L*, d)``. For the score rankings (``"snapkv"``, ``"h2o"``) the paper's code
ranks each head separately; here one ranking from the head-summed scores is shared by all heads, so the
cache still shrinks by slicing (per-head sets would need padding the cache back to the largest head's
set, saving nothing until a variable-length kernel exists); the norm criterion itself stays per head.

The norm loss is computed from the *dropped* squared mass ``D`` as ``D / (sqrt(F) + sqrt(F - D))``
(``F`` the full squared mass), which equals ``sqrt(F) - sqrt(F - D)`` but is exactly 0 only when nothing
with non-zero attention is dropped: ``T = 0`` therefore keeps the full cache (a check value).
"""

from __future__ import annotations

import torch
from torch import Tensor

from veil.client_sdk.runtime.compression.dbudgetkv import DBudgetKVConfig, HeadAgg
from veil.kernels import last_query_attention
from veil.models.compression.base import KVCompressor, Prefill
from veil.models.compression.scoring import (
    accumulated_attention,
    first_valid,
    pool_scores,
    query_attention,
    ranking,
)

__all__ = ["GROUP_ELEMENTS", "DBudgetKV", "DBudgetKVConfig", "norm_loss_curve"]

GROUP_ELEMENTS = 1 << 25
"""Attention values (layers x rows x heads x keys) scored together; a group's temporaries take about
ten times this in fp32 (1.3 GB); Llama-3-8B's 30 pruned layers at 32k keys for one row are one group."""


def norm_loss_curve(ranked_sq: Tensor, full_sq: Tensor, head_agg: HeadAgg) -> Tensor:
    """Relative norm loss of every cut: entry ``k`` keeps the first ``k`` ranked candidates.

    Parameters
    ----------
    ranked_sq: ``(B, H, n)`` squared attention of the candidates in rank order (0 for non-candidates).
    full_sq: ``(B, H)`` squared norm the loss is relative to.

    Returns
    -------
    ``(B, n + 1)``, non-increasing in ``k``, 0 once every candidate with attention is kept.

    >>> a2 = torch.tensor([[[0.25, 0.0, 0.01]]])  # one head, three candidates
    >>> norm_loss_curve(a2, torch.tensor([[1.0]]), "joint_frobenius")  # 1 - sqrt(1 - D)
    tensor([[0.1398, 0.0050, 0.0050, 0.0000]])
    """
    dropped = ranked_sq.flip(-1).cumsum(-1).flip(-1)  # (B, H, n): mass from rank k on
    dropped = torch.cat([dropped, dropped.new_zeros(*dropped.shape[:-1], 1)], dim=-1)  # (B, H, n + 1)
    full = full_sq.unsqueeze(-1)  # (B, H, 1)
    if head_agg == "joint_frobenius":
        dropped, full = dropped.sum(1), full.sum(1)  # (B, n + 1), (B, 1)
    dropped = torch.minimum(dropped, full)  # rounding can push the cumulative sum past the total
    loss = dropped / (full.sqrt() + (full - dropped).sqrt()).clamp(min=1e-30)  # = sqrt(F) - sqrt(F - D)
    if head_agg == "joint_frobenius":
        return loss / full.sqrt().clamp(min=1e-30)
    return loss.sum(1) / full.sqrt().sum(1).clamp(min=1e-30)


class DBudgetKV(KVCompressor):
    """DBudgetKV (arXiv:2502.16886) with its config's settings, or the paper's defaults.

    >>> DBudgetKV(threshold=0.05).config.threshold
    0.05
    """

    def __init__(self, config: DBudgetKVConfig | None = None, **fields: object) -> None:
        super().__init__()
        self.config = config if config is not None else DBudgetKVConfig(**fields)  # type: ignore[arg-type]
        self.query_window = self.config.query_window

    def _rank_scores(self, prefill: Prefill, layer: int) -> Tensor:
        c, n = self.config, prefill.valid.shape[1]
        if c.ranking == "position":
            return torch.arange(n, device=prefill.valid.device, dtype=torch.float32).expand(
                prefill.valid.shape
            )
        q = prefill.queries[layer][:, :, -c.score_window :]
        if c.ranking == "h2o":
            return accumulated_attention(q, prefill.keys[layer], prefill.valid, prefill.scaling)
        votes = query_attention(q, prefill.keys[layer], prefill.valid, prefill.scaling).sum(
            dim=(1, 2)
        )  # (B, n)
        return pool_scores(votes, 5, "avgpool")

    def _squared_row(self, prefill: Prefill, layer: int) -> Tensor:
        """``(B, H, n)``: the squared attention of the last ``k_rows`` queries, averaged per key."""
        q = prefill.queries[layer][:, :, -self.config.k_rows :]  # (B, H, k, d)
        valid = prefill.valid
        if self.config.k_rows == 1:  # the paper's setting: one fused pass over the keys on a GPU
            rows = last_query_attention(q[:, :, 0], prefill.keys[layer], valid, prefill.scaling)[:, :, None]
        else:
            rows = query_attention(q, prefill.keys[layer], valid, prefill.scaling)  # (B, H, k, n)
        seen = (rows > 0).sum(dim=2).clamp(min=1)  # average over the rows that can see each key
        return (rows.sum(dim=2) / seen) ** 2

    def select(self, prefill: Prefill) -> list[Tensor]:
        """Layers are scored in groups of up to :data:`GROUP_ELEMENTS` attention values, a handful of
        tensor operations per group rather than per layer (on a GPU the host's launches, not the
        arithmetic, set the cost of pruning)."""
        c, valid = self.config, prefill.valid
        sinks = first_valid(valid, c.n_sink)  # (B, n)
        fixed = sinks | prefill.protected
        candidates = valid & ~fixed
        floor = candidates.sum(dim=1).clamp(max=c.min_recent)[None]  # (1, B)
        scope = (valid if c.norm_scope == "full_row" else valid & ~sinks)[None, :, None]  # (1, B, 1, n)
        shared = ranking(self._rank_scores(prefill, 0), candidates) if c.ranking == "position" else None
        keep: dict[int, Tensor] = {i: valid.clone() for i in c.skip_layers if i < prefill.n_layers}
        scored = [i for i in range(prefill.n_layers) if i not in keep]
        b, n = valid.shape
        per_layer = b * prefill.queries[0].shape[1] * n
        step = max(1, GROUP_ELEMENTS // max(per_layer, 1))
        for start in range(0, len(scored), step):
            layers = scored[start : start + step]
            sq = torch.stack([self._squared_row(prefill, layer) for layer in layers])  # (G, B, H, n)
            if shared is not None:
                order, rank = (t[None].expand(len(layers), -1, -1) for t in shared)  # (G, B, n)
            else:
                pairs = [ranking(self._rank_scores(prefill, layer), candidates) for layer in layers]
                order, rank = torch.stack([o for o, _ in pairs]), torch.stack([r for _, r in pairs])
            full = (sq * scope).sum(-1)  # (G, B, H)
            ranked = (sq * candidates[None, :, None]).gather(3, order[:, :, None].expand_as(sq))
            loss = norm_loss_curve(ranked.flatten(0, 1), full.flatten(0, 1), c.head_agg)  # (G * B, n + 1)
            # the loss is non-increasing: the count of cuts over T is the first k under T
            k = torch.maximum((loss > c.threshold).sum(dim=1).view(len(layers), b), floor)  # (G, B)
            kept = fixed | (candidates & (rank < k[..., None]))  # (G, B, n)
            keep.update(zip(layers, kept.unbind(0), strict=True))
        return [keep[layer] for layer in range(prefill.n_layers)]
