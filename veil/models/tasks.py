"""Turning examples into model batches, losses and predictions for the two personalised tasks.

- ``classification``: the head on the last (pooling) position predicts the class index.
- ``next_word``: the LM predicts the first token of ``" " + word`` after the prompt; accuracy is top-1
  exact match over the whole vocabulary (the paper's Reddit metric, with greedy top-1 in place of
  beam 10: a single-token target makes them agree).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from veil.client_sdk.batching import left_pad
from veil.client_sdk.constants import TASKS, Task
from veil.models.personalization import PersonalizedLM

__all__ = ["Batch", "TokenizedTask", "tokenize_task", "row_losses", "predict"]


@dataclass
class TokenizedTask:
    """Token ids of every text of a task, and the integer target of every example.

    ``targets[i]`` is a class index (classification) or a vocabulary id (next_word).
    """

    task: Task
    token_ids: list[list[int]]
    targets: np.ndarray
    pad_id: int

    def __len__(self) -> int:
        return len(self.token_ids)

    def batch(
        self,
        indices: Sequence[int] | np.ndarray,
        embeddings: np.ndarray | Tensor | None = None,
        has_embedding: np.ndarray | Tensor | None = None,
    ) -> Batch:
        """Left-padded batch of the given examples, with optional user embeddings ``(B, n, d)``."""
        rows = [self.token_ids[int(i)] for i in indices]
        ids, mask = (torch.from_numpy(a) for a in left_pad(rows, self.pad_id))  # (B, W)
        targets = torch.as_tensor(self.targets[np.asarray(indices, dtype=np.int64)], dtype=torch.long)
        emb = None if embeddings is None else torch.as_tensor(embeddings, dtype=torch.float32)
        has = None if has_embedding is None else torch.as_tensor(has_embedding, dtype=torch.bool)
        return Batch(ids, mask, targets, emb, has)


@dataclass
class Batch:
    """Model inputs: ``input_ids``/``attention_mask`` ``(B, T)``, ``targets`` ``(B,)``, embeddings
    ``(B, n_tokens, hidden)`` or ``None``, ``has_embedding`` ``(B,)`` or ``None``."""

    input_ids: Tensor
    attention_mask: Tensor
    targets: Tensor
    embeddings: Tensor | None = None
    has_embedding: Tensor | None = None


def tokenize_task(
    tokenizer: Any,
    task: Task,
    texts: Sequence[str],
    labels: Sequence[str],
    classes: Sequence[str],
    max_tokens: int = 48,
) -> TokenizedTask:
    """Tokenise texts once; keep the *last* ``max_tokens`` tokens (the next-word cue is at the end)."""
    if task not in TASKS:
        raise ValueError(f"task must be 'classification' or 'next_word', got {task!r}")
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    token_ids = [ids[-max_tokens:] if ids else [tokenizer.eos_token_id] for ids in encoded]
    if task == "classification":
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted({lab for lab in labels if lab not in index})
        if unknown:
            raise ValueError(f"labels not among the classes {list(classes)}: {unknown[:5]}")
        targets = np.array([index[lab] for lab in labels], dtype=np.int64)
    else:
        first = {w: tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in set(labels)}
        targets = np.array([first[lab] for lab in labels], dtype=np.int64)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return TokenizedTask(task=task, token_ids=token_ids, targets=targets, pad_id=int(pad))


def logits_for(model: PersonalizedLM, batch: Batch, task: Task) -> Tensor:
    """Class logits ``(B, C)`` or next-token logits ``(B, V)``, on the model's device."""
    fn = model.classify if task == "classification" else model.next_token_logits
    dev = model.device
    emb = None if batch.embeddings is None else batch.embeddings.to(dev)
    has = None if batch.has_embedding is None else batch.has_embedding.to(dev)
    return fn(batch.input_ids.to(dev), batch.attention_mask.to(dev), emb, has)


def row_losses(model: PersonalizedLM, batch: Batch, task: Task) -> Tensor:
    """Cross-entropy per row, ``(B,)`` (on the model's device)."""
    logits = logits_for(model, batch, task)
    return F.cross_entropy(logits, batch.targets.to(logits.device), reduction="none")


@torch.no_grad()
def predict(model: PersonalizedLM, batch: Batch, task: Task) -> Tensor:
    """Top-1 predicted target per row, ``(B,)``, on the CPU."""
    return logits_for(model, batch, task).argmax(dim=-1).cpu()
