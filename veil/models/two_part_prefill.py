"""Splitting packed prompts into a context and a question, for a prefill in two parts.

With KV-cache compression the question may come after it: the context is prefilled and compressed
(the compressor's query is the context's last token, the question-agnostic regime of kvpress and of
SCBench, arXiv:2412.10319), then the question is prefilled on top of the compressed cache. Each part is
left-padded on its own, and every token keeps the position it has in the whole prompt, so RoPE sees the
same positions as in one prefill.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

import torch
from torch import Tensor

from veil.models.personalization import PackedInputs

__all__ = ["question_tails", "split_packed"]


def question_tails(
    question_lengths: Sequence[int], prompt_lengths: Sequence[int], packed: PackedInputs, placement: str
) -> Tensor:
    """Per row, how many of the packed row's last positions are prefilled second ``(B,)``.

    ``question_lengths[r]`` text tokens end row ``r``'s prompt; soft tokens placed after the text
    (``placement="suffix"``) go with them. Raises ``ValueError`` unless every row keeps at least one
    context token: ``0 <= question_lengths[r] < prompt_lengths[r]``.
    """
    if len(question_lengths) != len(prompt_lengths):
        raise ValueError(
            f"need one question length per prompt: {len(prompt_lengths)} prompts, got {len(question_lengths)}"
        )
    for r, (q, n) in enumerate(zip(question_lengths, prompt_lengths, strict=True)):
        if isinstance(q, bool) or not isinstance(q, Integral) or not 0 <= q < n:
            raise ValueError(
                f"question length of row {r} must be an int in [0, {n}) (its prompt has {n} tokens), got {q!r}"
            )
    tail = torch.tensor(
        [int(q) for q in question_lengths], dtype=torch.long, device=packed.attention_mask.device
    )
    if placement == "suffix" and packed.soft_mask is not None:
        tail = tail + packed.soft_mask.sum(dim=1)
    return tail


def _take(x: Tensor, src: Tensor, keep: Tensor) -> Tensor:
    """``x[b, src[b, k]]`` where ``keep``, zeros elsewhere; ``x`` is ``(B, L, ...)``, ``src`` ``(B, K)``."""
    index = src.reshape(*src.shape, *([1] * (x.dim() - 2))).expand(*src.shape, *x.shape[2:])
    out = torch.gather(x, 1, index)
    return out * keep.reshape(*keep.shape, *([1] * (x.dim() - 2))).to(out.dtype)


def split_packed(packed: PackedInputs, tail: Tensor) -> tuple[PackedInputs, PackedInputs]:
    """The context (all but each row's last ``tail[r]`` positions) and the question, each left-padded.

    Rows ``[pad c1 c2 q1]`` and ``[d1 r1 r2 r3]`` with ``tail = [1, 3]``: the context is ``[c1 c2]`` and
    ``[pad d1]``, the question ``[pad pad q1]`` and ``[r1 r2 r3]``. Position ids are the whole prompt's,
    padding is zero in the embeddings and the masks; every row must keep a context token.
    """
    mask = packed.attention_mask
    width = mask.shape[1]
    lengths = mask.to(torch.long).sum(dim=1)  # (B,)
    head = lengths - tail  # (B,) context positions
    w1, w2 = int(head.max()), int(tail.max())
    k1 = torch.arange(w1, device=mask.device)[None, :]  # (1, W1)
    src1 = ((width - tail)[:, None] - w1 + k1).clamp(min=0)  # (B, W1): the context ends before the tail
    keep1 = k1 >= (w1 - head)[:, None]  # (B, W1)
    k2 = torch.arange(w2, device=mask.device)[None, :]  # (1, W2)
    src2 = (width - w2 + k2).expand(mask.shape[0], -1)  # (B, W2): the last W2 columns
    keep2 = k2 >= (w2 - tail)[:, None]  # (B, W2); the rest of them is the row's context
    parts = []
    for src, keep in ((src1, keep1), (src2, keep2)):
        parts.append(
            PackedInputs(
                _take(packed.inputs_embeds, src, keep),
                keep.to(mask.dtype),
                _take(packed.position_ids, src, keep),
                None if packed.soft_mask is None else _take(packed.soft_mask, src, keep),
            )
        )
    return parts[0], parts[1]
