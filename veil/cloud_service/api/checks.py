"""Checks shared by the model routes: the requested model is the served one; embeddings fit it."""

from __future__ import annotations

import numpy as np

from veil.client_sdk.wire import WireFormatError, decode_f32, f32_from_values
from veil.cloud_service.engine import ServingEngine
from veil.cloud_service.errors import APIError
from veil.cloud_service.schemas import Embedding

__all__ = ["check_label", "check_model", "served_embedding"]


def check_model(engine: ServingEngine, name: str | None) -> None:
    """404 unless ``name`` is ``None`` or the served model's id."""
    if name is not None and name != engine.name:
        raise APIError(404, f"model {name!r} does not exist", param="model", code="model_not_found")


def served_embedding(
    engine: ServingEngine, values: Embedding | None, param: str, b64: str | None = None
) -> np.ndarray | None:
    """The embedding (JSON list ``param``, or ``b64`` in the compact form ``{param}_b64``) as float32
    ``(n_tokens, hidden)`` of the served model, decoded once; ``None`` when neither form was sent; a
    400 naming the field otherwise."""
    try:
        if b64 is not None:
            return decode_f32(b64, engine.embedding_shape, f"{param}_b64")
        if values is not None:
            return f32_from_values(values, engine.embedding_shape, param)
    except WireFormatError as exc:
        raise APIError(400, str(exc), param=exc.field) from exc
    return None


def check_label(engine: ServingEngine, task: str, label: str) -> str:
    """The label of a loss request, checked against the task (``400`` naming ``task`` or ``label``)."""
    if task == "classification":
        if not engine.classes:
            raise APIError(400, f"model {engine.name!r} has no classification head", param="task")
        if label not in engine.classes:
            raise APIError(400, f"label {label!r} is not one of {engine.classes}", param="label")
        return label
    if not label.strip() or " " in label.strip():
        raise APIError(400, "a next_word label is one word without spaces", param="label")
    return label.strip()
