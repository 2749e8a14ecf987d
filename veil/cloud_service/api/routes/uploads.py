"""``/v1/uploads``: anonymous training examples, made safe to retry by a client-generated key.

Served two ways with one function, :func:`store_upload`: as a FastAPI route (callers with an API key),
and straight from the OHTTP gateway (:func:`upload_with_headers`: the phones' path, without a second
pass through the ASGI app, :mod:`veil.cloud_service.api.direct`). Either way the embedding is decoded
once (:mod:`veil.client_sdk.wire`) and the upload joins the process's group commit
(:class:`~veil.cloud_service.store.group_commit.UploadBatcher`); the answer goes out only after its
transaction committed.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response

from veil.client_sdk.constants import IDEMPOTENCY_KEY_PATTERN
from veil.cloud_service.api.checks import check_codebook_version, check_model, served_embedding
from veil.cloud_service.api.deps import Caller, ServiceState, State
from veil.cloud_service.api.direct import Headers, header
from veil.cloud_service.errors import APIError
from veil.cloud_service.schemas import UploadRequest, UploadResponse
from veil.cloud_service.store.errors import IdempotencyConflict, StoreError
from veil.cloud_service.store.repository import UploadIn

__all__ = ["router", "store_upload", "upload_with_headers"]

router = APIRouter(tags=["uploads"])


async def store_upload(
    state: ServiceState, body: UploadRequest, idempotency_key: str | None
) -> tuple[int, UploadResponse]:
    """Validate and store one upload; returns (201 created | 200 duplicate, the answer).

    Raises
    ------
    APIError
        409 for a codebook version that is not the published one (checked first: nothing is stored);
        400 for a bad key, model, embedding or label; 409 when the key was used for other content;
        503 when the database failed (a retry with the same key is safe).
    """
    check_codebook_version(state, body.codebook_version)
    if idempotency_key is None or not IDEMPOTENCY_KEY_PATTERN.fullmatch(idempotency_key):
        raise APIError(
            400,
            "header Idempotency-Key is required: 16-128 characters of [A-Za-z0-9_-], random per upload",
            param="Idempotency-Key",
        )
    engine = state.engine
    check_model(engine, body.model)
    embedding = served_embedding(engine, body.embedding, "embedding", body.embedding_b64)
    known = engine.classes or []
    if body.task == "classification" and body.label is not None and known and body.label not in known:
        raise APIError(400, f"label {body.label!r} is not one of {engine.classes}", param="label")
    try:
        upload = UploadIn(
            idempotency_key=idempotency_key,
            task=body.task,
            text=body.text,
            label=body.label,
            embedding=embedding,
            model=engine.name,
        )
        result = await state.uploads.add(upload)
    except IdempotencyConflict as exc:
        raise APIError(409, str(exc), param="Idempotency-Key", code="idempotency_conflict") from exc
    except StoreError as exc:
        raise APIError(503, "the upload could not be stored; retry with the same Idempotency-Key") from exc
    except ValueError as exc:
        raise APIError(400, str(exc)) from exc
    status = "created" if result.created else "duplicate"
    return (201 if result.created else 200), UploadResponse(id=result.id, status=status)


@router.post("/v1/uploads", status_code=201, response_model=UploadResponse)
async def create_upload(
    body: UploadRequest,
    state: State,
    _: Caller,
    response: Response,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> UploadResponse:
    response.status_code, answer = await store_upload(state, body, idempotency_key)
    return answer


async def upload_with_headers(
    state: ServiceState, body: UploadRequest, headers: Headers
) -> tuple[int, UploadResponse]:
    """:func:`store_upload` for a request the gateway decapsulated (its ``Idempotency-Key`` header)."""
    return await store_upload(state, body, header(headers, "idempotency-key"))
