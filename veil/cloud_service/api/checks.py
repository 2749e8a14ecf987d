"""Checks shared by the model routes: the requested model is the served one; embeddings fit it; a
phone's codebook version is the published one; a requested KV-cache compression fits the model and the
prompt."""

from __future__ import annotations

import numpy as np

from veil.client_sdk.distributions import Codebook
from veil.client_sdk.wire import WireFormatError, decode_f32, f32_from_values
from veil.cloud_service.api.deps import ServiceState
from veil.cloud_service.engine import ServingEngine
from veil.cloud_service.errors import APIError
from veil.cloud_service.schemas import Embedding, KVCompression
from veil.models.compression import KVCompressor, from_spec

__all__ = [
    "check_codebook_version",
    "check_label",
    "check_model",
    "kv_compressor",
    "published_codebook",
    "refuse_stale_version",
    "served_embedding",
]


def check_model(engine: ServingEngine, name: str | None) -> None:
    """404 unless ``name`` is ``None`` or the served model's id."""
    if name is not None and name != engine.name:
        raise APIError(404, f"model {name!r} does not exist", param="model", code="model_not_found")


def kv_compressor(
    engine: ServingEngine, spec: KVCompression | None, prompt_tokens: int
) -> KVCompressor | None:
    """A fresh compressor for one request's ``kv_compression`` (``None`` when absent), or a 400: a bad
    value (param ``kv_compression`` or the field's sub-path), a token budget larger than the prompt of
    ``prompt_tokens`` (soft tokens included) or a served model that cannot be compressed.

    Checked here so that nothing a request sends can fail a whole batch on the model thread.
    """
    if spec is None:
        return None
    refusal = engine.compression_refusal()
    if refusal is not None:
        raise APIError(400, refusal, param="kv_compression", code="kv_compression_unsupported")
    values = spec.model_dump(exclude_unset=True)
    try:
        compressor = from_spec(values)
    except ValueError as exc:
        bad = [f for f in values if f != "method" and f in str(exc)]
        param = f"kv_compression.{bad[0]}" if len(bad) == 1 else "kv_compression"
        raise APIError(400, f"kv_compression: {exc}", param=param) from exc
    budget = getattr(getattr(compressor, "config", None), "budget", None)
    # an int budget counts tokens; a fraction always fits (at least 1 token is kept)
    if isinstance(budget, int) and budget > prompt_tokens:
        raise APIError(
            400,
            f"kv_compression: a budget of {budget} tokens exceeds the prompt of {prompt_tokens} tokens",
            param="kv_compression.budget",
        )
    return compressor


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


def check_label(engine: ServingEngine, task: str, label: str, param: str = "label") -> str:
    """The label of a loss request, checked against the task (``400`` naming ``task`` or ``param``)."""
    if task == "classification":
        if not engine.classes:
            raise APIError(400, f"model {engine.name!r} has no classification head", param="task")
        if label not in engine.classes:
            raise APIError(400, f"label {label!r} is not one of {engine.classes}", param=param)
        return label
    if not label.strip() or " " in label.strip():
        raise APIError(400, f"a next_word label is one word without spaces, got {label!r}", param=param)
    return label.strip()


def published_codebook(state: ServiceState) -> Codebook:
    """The codebook published now; ``404`` (``codebook_not_found``) when there is none, or when it does
    not fit the served model's embedding shape."""
    book = state.codebooks.current()
    if book is None:
        raise APIError(404, "no codebook is published (veil codebook init)", code="codebook_not_found")
    shape = tuple(state.engine.embedding_shape)
    if book.shape != shape:
        # A codebook for another model is of no use to a phone; say so rather than serve it.
        raise APIError(
            404,
            f"the published codebook has shape {list(book.shape)}, the served model takes {list(shape)}",
            code="codebook_not_found",
        )
    return book


def check_codebook_version(state: ServiceState, sent: str | None, param: str = "codebook_version") -> None:
    """Nothing when ``sent`` is ``None`` or the published codebook's version; ``409`` otherwise, also
    when none is published (:func:`refuse_stale_version`).

    One check on the service instead of a ``GET /v1/codebook`` before each phone request: the phone
    learns that its choice is stale from the refusal itself, and nothing was stored or computed with it.
    """
    if sent is None:
        return
    try:
        book: Codebook | None = published_codebook(state)
    except APIError:  # none published, or one the phone cannot have chosen from: stale either way
        book = None
    refuse_stale_version(book, sent, param)


def refuse_stale_version(book: Codebook | None, sent: str, param: str) -> None:
    """``409`` (``codebook_version_mismatch``, naming both versions) unless ``book`` has version ``sent``."""
    if book is None or book.version != sent:
        published = book.version if book is not None else "none is published"
        raise APIError(
            409,
            f"codebook {sent} is not the published one ({published}): fetch it and choose again",
            param=param,
            code="codebook_version_mismatch",
        )
