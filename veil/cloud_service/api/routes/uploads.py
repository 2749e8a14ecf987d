"""``/v1/uploads``: anonymous training examples, made safe to retry by a client-generated key."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Header, Response

from veil.cloud_service.api.checks import check_model, served_embedding
from veil.cloud_service.api.deps import Caller, DbSession, State
from veil.cloud_service.errors import APIError
from veil.cloud_service.schemas import UploadRequest, UploadResponse

router = APIRouter(tags=["uploads"])

_KEY = re.compile(r"^[A-Za-z0-9_-]{16,128}$")


@router.post("/v1/uploads", status_code=201, response_model=UploadResponse)
def create_upload(
    body: UploadRequest,
    state: State,
    session: DbSession,
    _: Caller,
    response: Response,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> UploadResponse:
    from veil.cloud_service.store.repository import IdempotencyConflict, UploadIn, add_upload

    if idempotency_key is None or not _KEY.match(idempotency_key):
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
        result = add_upload(session, upload)
    except IdempotencyConflict as exc:
        state.metrics.uploads.labels("conflict").inc()
        raise APIError(409, str(exc), param="Idempotency-Key", code="idempotency_conflict") from exc
    except ValueError as exc:
        raise APIError(400, str(exc)) from exc
    state.metrics.uploads.labels("created" if result.created else "duplicate").inc()
    if not result.created:
        response.status_code = 200
    return UploadResponse(id=result.id, status="created" if result.created else "duplicate")
