"""The ID-free personalised LM: soft tokens built from a user embedding (IDfree-PL, arXiv:2501.06062).

A user embedding ``e`` of shape ``(n_tokens, hidden)`` enters the model as ``n_tokens`` soft tokens at
the input-embedding layer, as in the paper's released code:

- ``placement="suffix"`` (classification): appended after the text, so the soft token sits at the
  pooling position (the last one), where the classification head reads.
- ``placement="prefix"`` (generation): prepended to the text, as a soft prompt.

Rows without an embedding are served by the *population model*: the same network with no soft token
(their text is packed exactly as the base model would see it), so a batch may mix personalised and
unpersonalised rows. The paper's released code feeds cold-start users a zero embedding instead; on
SmolLM2 an attended all-zero input vector made every gradient NaN (measured), so we do not. Every sequence is re-packed left-padded, so the last
position is the pooling/next-token position for all rows and ``generate`` works directly. With
``n_tokens == 0`` the wrapper is the base model, logit for logit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = ["PersonalizationConfig", "PersonalizedLM", "PackedInputs"]

Placement = Literal["prefix", "suffix"]


@dataclass
class PersonalizationConfig:
    """How user embeddings enter the model.

    Attributes
    ----------
    n_tokens:
        Soft tokens per user embedding (the paper: 1 for classification, 5 for generation).
    placement:
        ``"suffix"`` appends the soft tokens after the text (pooling position); ``"prefix"`` prepends.
    num_labels:
        Size of the classification head on the last position; ``None`` for language modelling only.
    """

    n_tokens: int = 1
    placement: Placement = "suffix"
    num_labels: int | None = None

    def __post_init__(self) -> None:
        if self.n_tokens < 0:
            raise ValueError(f"n_tokens must be >= 0, got {self.n_tokens}")
        if self.placement not in ("prefix", "suffix"):
            raise ValueError(f"placement must be 'prefix' or 'suffix', got {self.placement!r}")
        if self.num_labels is not None and self.num_labels < 2:
            raise ValueError(f"num_labels must be >= 2 or None, got {self.num_labels}")


@dataclass
class PackedInputs:
    """Left-padded model inputs with soft tokens in place.

    ``inputs_embeds`` is ``(B, L, hidden)``; ``attention_mask`` and ``position_ids`` are ``(B, L)``;
    ``soft_mask`` ``(B, L)`` bool marks the soft tokens (what KV-cache compression must never drop).
    """

    inputs_embeds: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    soft_mask: Tensor | None = None

    def as_kwargs(self) -> dict[str, Tensor]:
        """The three as keyword arguments of a transformers model call."""
        return {
            "inputs_embeds": self.inputs_embeds,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
        }


class PersonalizedLM(nn.Module):
    """Wrap a Hugging Face causal LM so that each row can carry a user embedding.

    Parameters
    ----------
    base:
        Any ``transformers`` causal LM (``get_input_embeddings()`` and ``inputs_embeds`` support).
    config:
        See :class:`PersonalizationConfig`.
    """

    def __init__(self, base: Any, config: PersonalizationConfig | None = None) -> None:
        super().__init__()
        self.base = base
        self.config = config or PersonalizationConfig()
        self.hidden_size = int(base.get_input_embeddings().weight.shape[1])
        self.head = nn.Linear(self.hidden_size, self.config.num_labels) if self.config.num_labels else None

    @property
    def device(self) -> torch.device:
        return self.base.get_input_embeddings().weight.device

    @property
    def embedding_shape(self) -> tuple[int, int]:
        return (self.config.n_tokens, self.hidden_size)

    def _check_embedding(self, user_embedding: Tensor, batch: int) -> None:
        want = (batch, *self.embedding_shape)
        if tuple(user_embedding.shape) != want:
            raise ValueError(f"user_embedding must have shape {want}, got {tuple(user_embedding.shape)}")
        if not torch.isfinite(user_embedding).all():
            raise ValueError("user_embedding contains NaN or Inf")

    def pack(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        user_embedding: Tensor | None = None,
        has_embedding: Tensor | None = None,
    ) -> PackedInputs:
        """Embed the text and place the soft tokens; output is left-padded.

        Parameters
        ----------
        input_ids, attention_mask:
            ``(B, T)``; padding may be on either side, real tokens must be contiguous.
        user_embedding:
            ``(B, n_tokens, hidden)`` or ``None`` (every row unpersonalised).
        has_embedding:
            ``(B,)`` bool; rows where it is False get no soft token (the population model). Defaults to
            all True when ``user_embedding`` is given.
        """
        batch, length = input_ids.shape
        n = self.config.n_tokens
        text = self.base.get_input_embeddings()(input_ids)  # (B, T, H)
        mask = attention_mask.to(torch.bool)
        lengths = mask.sum(dim=1)  # (B,)
        if user_embedding is None or n == 0:
            n_row = torch.zeros_like(lengths)
            soft = text.new_zeros(batch, max(n, 1), self.hidden_size)
        else:
            self._check_embedding(user_embedding, batch)
            soft = user_embedding.to(text.dtype)
            has = torch.ones_like(mask[:, 0]) if has_embedding is None else has_embedding.to(torch.bool)
            n_row = has.to(lengths.dtype) * n  # (B,): soft tokens of each row
        out_len = length + (n if user_embedding is not None else 0)
        first = torch.argmax(mask.to(torch.int64), dim=1)  # (B,): first real text position
        pos = torch.arange(out_len, device=input_ids.device).unsqueeze(0)  # (1, L)
        rel = pos - (out_len - lengths - n_row).unsqueeze(1)  # (B, L): index into the row's content
        valid = rel >= 0
        if self.config.placement == "prefix":
            is_soft = valid & (rel < n_row.unsqueeze(1))
            text_rel, soft_rel = rel - n_row.unsqueeze(1), rel
        else:
            is_soft = valid & (rel >= lengths.unsqueeze(1))
            text_rel, soft_rel = rel, rel - lengths.unsqueeze(1)
        text_src = (first.unsqueeze(1) + text_rel).clamp(0, length - 1)  # (B, L)
        index = text_src.unsqueeze(-1).expand(-1, -1, self.hidden_size)
        embeds = torch.gather(text, 1, index)  # (B, L, H)
        if n > 0 and user_embedding is not None:
            soft_index = soft_rel.clamp(0, n - 1).unsqueeze(-1).expand(-1, -1, self.hidden_size)
            embeds = torch.where(is_soft.unsqueeze(-1), torch.gather(soft, 1, soft_index), embeds)
        embeds = embeds * valid.unsqueeze(-1).to(embeds.dtype)  # zeros on padding
        out_mask = valid.to(attention_mask.dtype)
        position_ids = (out_mask.cumsum(dim=1) - 1).clamp(min=0)
        return PackedInputs(embeds, out_mask, position_ids, is_soft)

    def last_hidden(self, packed: PackedInputs) -> Tensor:
        """Final hidden state at the last position, ``(B, hidden)``."""
        out = self.base.base_model(**packed.as_kwargs())
        return out.last_hidden_state[:, -1, :]

    def classify(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        user_embedding: Tensor | None = None,
        has_embedding: Tensor | None = None,
    ) -> Tensor:
        """Class logits ``(B, num_labels)`` from the last (pooling) position."""
        if self.head is None:
            raise ValueError("this PersonalizedLM has no classification head (num_labels=None)")
        packed = self.pack(input_ids, attention_mask, user_embedding, has_embedding)
        return self.head(self.last_hidden(packed))

    def next_token_logits(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        user_embedding: Tensor | None = None,
        has_embedding: Tensor | None = None,
    ) -> Tensor:
        """Vocabulary logits for the next token, ``(B, vocab)``."""
        packed = self.pack(input_ids, attention_mask, user_embedding, has_embedding)
        out = self.base(**packed.as_kwargs(), logits_to_keep=1)
        return out.logits[:, -1, :]

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        user_embedding: Tensor | None = None,
        has_embedding: Tensor | None = None,
    ) -> Tensor:
        """Language-model logits ``(B, L, vocab)`` over the packed (left-padded) sequence."""
        packed = self.pack(input_ids, attention_mask, user_embedding, has_embedding)
        return self.base(**packed.as_kwargs()).logits

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        user_embedding: Tensor | None = None,
        has_embedding: Tensor | None = None,
        **generate_kwargs: Any,
    ) -> Tensor:
        """Generate continuations ``(B, new_tokens)`` (prompt tokens are not returned)."""
        packed = self.pack(input_ids, attention_mask, user_embedding, has_embedding)
        return self.base.generate(
            inputs_embeds=packed.inputs_embeds, attention_mask=packed.attention_mask, **generate_kwargs
        )
