"""Checks shared by the model routes: the requested model is the served one; embeddings fit it."""

from __future__ import annotations

import numpy as np

from veil.cloud_service.engine import ServingEngine
from veil.cloud_service.errors import APIError
from veil.cloud_service.schemas import Embedding, decode_embedding_b64, embedding_array

__all__ = ["check_model", "served_embedding"]


def check_model(engine: ServingEngine, name: str | None) -> None:
    """404 unless ``name`` is ``None`` or the served model's id."""
    if name is not None and name != engine.name:
        raise APIError(404, f"model {name!r} does not exist", param="model", code="model_not_found")


def served_embedding(
    engine: ServingEngine, values: Embedding | None, param: str, b64: str | None = None
) -> np.ndarray | None:
    """The embedding (JSON list, or ``b64`` in the compact form) as float32 ``(n_tokens, hidden)`` of
    the served model; ``None`` when neither form was sent; a 400 naming the field otherwise."""
    if values is None and b64 is None:
        return None
    name = param if b64 is None else f"{param}_b64"
    try:
        if b64 is not None:
            flat = decode_embedding_b64(b64)
            n, h = engine.embedding_shape
            if flat.size != n * h:
                raise ValueError(f"must hold {n} x {h} = {n * h} float32 values, got {flat.size}")
            values = flat.reshape(n, h).tolist()
        return embedding_array(values, engine.embedding_shape)
    except ValueError as exc:
        raise APIError(400, f"{name} {exc}", param=name) from exc
