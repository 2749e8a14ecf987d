"""Checks shared by the model routes: the requested model is the served one; embeddings fit it."""

from __future__ import annotations

import numpy as np

from veil.cloud_service.engine import ServingEngine
from veil.cloud_service.errors import APIError
from veil.cloud_service.schemas import Embedding, embedding_array

__all__ = ["check_model", "served_embedding"]


def check_model(engine: ServingEngine, name: str | None) -> None:
    """404 unless ``name`` is ``None`` or the served model's id."""
    if name is not None and name != engine.name:
        raise APIError(404, f"model {name!r} does not exist", param="model", code="model_not_found")


def served_embedding(engine: ServingEngine, values: Embedding, param: str) -> np.ndarray:
    """The JSON embedding as float32 ``(n_tokens, hidden)`` of the served model, or a 400 naming ``param``."""
    try:
        return embedding_array(values, engine.embedding_shape)
    except ValueError as exc:
        raise APIError(400, f"{param} {exc}", param=param) from exc
