"""The ID-free personalised LM: soft tokens built from a user embedding (IDfree-PL, arXiv:2501.06062).

A user embedding ``e`` of shape ``(n_tokens, hidden)`` enters the model as ``n_tokens`` soft tokens at
the input-embedding layer, as in the paper's released code:

- ``placement="suffix"`` (classification): appended after the text, so the soft token sits at the
  pooling position (the last one), where the classification head reads.
- ``placement="prefix"`` (generation): prepended to the text, as a soft prompt.

Rows without an embedding get the *population embedding* (zeros, the paper's cold-start choice), so a
batch may mix personalised and unpersonalised rows. Every sequence is re-packed left-padded, so the last
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

    ``inputs_embeds`` is ``(B, L, hidden)``; ``attention_mask`` and ``position_ids`` are ``(B, L)``.
    """

    inputs_embeds: Tensor
    attention_mask: Tensor
    position_ids: Tensor


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
        n = self.config.n_tokens
        dtype = base.get_input_embeddings().weight.dtype
        self.register_buffer("population_embedding", torch.zeros(n, self.hidden_size, dtype=dtype))
        self.head = nn.Linear(self.hidden_size, self.config.num_labels) if self.config.num_labels else None

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
            ``(B,)`` bool; rows where it is False use the population embedding. Defaults to all True
            when ``user_embedding`` is given.
        """
        batch, length = input_ids.shape
        n = self.config.n_tokens
        text = self.base.get_input_embeddings()(input_ids)  # (B, T, H)
        mask = attention_mask.to(torch.bool)
        lengths = mask.sum(dim=1)  # (B,)
        if n == 0:
            soft = text.new_zeros(batch, 0, self.hidden_size)
        else:
            pop = self.population_embedding.to(text.dtype).expand(batch, n, self.hidden_size)
            if user_embedding is None:
                soft = pop
            else:
                self._check_embedding(user_embedding, batch)
                soft = user_embedding.to(text.dtype)
                if has_embedding is not None:
                    soft = torch.where(has_embedding.view(batch, 1, 1).to(torch.bool), soft, pop)
        out_len = length + n
        # Source index of each real text token, in order, per row: first real position + offset.
        first = torch.argmax(mask.to(torch.int64), dim=1)  # (B,)
        pos = torch.arange(out_len, device=input_ids.device).unsqueeze(0)  # (1, L)
        start = (out_len - lengths - n).unsqueeze(1)  # (B, 1): where each row's content begins
        rel = pos - start  # (B, L): index into [content] for each output position
        valid = rel >= 0
        if self.config.placement == "prefix":
            is_soft = valid & (rel < n)
            text_rel = rel - n
        else:
            is_soft = valid & (rel >= lengths.unsqueeze(1))
            text_rel = rel
        text_src = (first.unsqueeze(1) + text_rel).clamp(0, length - 1)  # (B, L)
        gathered_text = torch.gather(text, 1, text_src.unsqueeze(-1).expand(-1, -1, self.hidden_size))
        soft_rel = (rel if self.config.placement == "prefix" else rel - lengths.unsqueeze(1)).clamp(
            0, max(n - 1, 0)
        )
        if n > 0:
            gathered_soft = torch.gather(soft, 1, soft_rel.unsqueeze(-1).expand(-1, -1, self.hidden_size))
            embeds = torch.where(is_soft.unsqueeze(-1), gathered_soft, gathered_text)
        else:
            embeds = gathered_text
        embeds = embeds * valid.unsqueeze(-1).to(embeds.dtype)  # (B, L, H), zeros on padding
        out_mask = valid.to(attention_mask.dtype)
        position_ids = (out_mask.cumsum(dim=1) - 1).clamp(min=0)
        return PackedInputs(embeds, out_mask, position_ids)

    def last_hidden(self, packed: PackedInputs) -> Tensor:
        """Final hidden state at the last position, ``(B, hidden)``."""
        out = self.base.base_model(
            inputs_embeds=packed.inputs_embeds,
            attention_mask=packed.attention_mask,
            position_ids=packed.position_ids,
        )
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
        out = self.base(
            inputs_embeds=packed.inputs_embeds,
            attention_mask=packed.attention_mask,
            position_ids=packed.position_ids,
            logits_to_keep=1,
        )
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
        return self.base(
            inputs_embeds=packed.inputs_embeds,
            attention_mask=packed.attention_mask,
            position_ids=packed.position_ids,
        ).logits

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
