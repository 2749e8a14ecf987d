"""``/v1/codebook``: the public prototype codebook phones choose from (``PROTOCOL.md`` 5.5).

The codebook is public by design: every phone downloads the same one, and its choice of a prototype
never leaves the phone. The cloud publishes it in its data dir (``veil codebook init``, the stage-3
job with ``--codebook``, ``veil codebook retire``), or over HTTP with an operator key (``PUT``, e.g.
from a federated server on another machine); ``GET`` serves whatever is published now.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from veil.client_sdk.codebook_wire import CodebookFormatError, codebook_from_json, codebook_to_json
from veil.cloud_service.api.checks import (
    check_label,
    check_model,
    published_codebook,
    refuse_stale_version,
)
from veil.cloud_service.api.deps import Caller, Operator, ServiceState, State
from veil.cloud_service.errors import APIError
from veil.cloud_service.schemas import CodebookBody, CodebookLossRequest, CodebookLossResponse

__all__ = ["compute_codebook_losses", "publish_codebook", "published_codebook_body", "router"]

router = APIRouter(tags=["personalisation"])


async def published_codebook_body(state: ServiceState, body: None = None) -> dict[str, Any]:
    """The answer of ``GET /v1/codebook``, to the route and to the gateway alike."""
    return {**codebook_to_json(published_codebook(state)), "model": state.engine.name}


async def compute_codebook_losses(state: ServiceState, body: CodebookLossRequest) -> CodebookLossResponse:
    """The answer of ``POST /v1/codebook/losses``, to the route and to the gateway alike."""
    engine = state.engine
    check_model(engine, body.model)
    book = published_codebook(state)
    refuse_stale_version(book, body.version, param="version")
    label = check_label(engine, body.task, body.label)
    usable = [int(k) for k in book.active.nonzero()[0]]
    results = await asyncio.gather(
        *[engine.loss(body.task, body.text, label, book.prototypes[k].astype("float32")) for k in usable]
    )
    losses: list[float | None] = [None] * book.size
    for k, loss in zip(usable, results, strict=True):
        losses[k] = loss
    return CodebookLossResponse(model=engine.name, version=book.version, losses=losses)


def publish_codebook(state: ServiceState, body: CodebookBody) -> dict[str, Any]:
    """Publish the codebook of ``body`` (an operator's ``PUT /v1/codebook``); the new ``GET`` body.

    Refused with a ``400``, nothing published: ``model`` names another model, the shape
    ``[n_tokens, dim]`` is not the served model's (``param: "prototypes"``), or the body does not decode
    or its contents do not hash to its ``version`` (``param``: the field at fault).
    """
    engine = state.engine
    if body.model is not None and body.model != engine.name:
        raise APIError(400, f"this server serves {engine.name!r}, not {body.model!r}", param="model")
    shape = [int(n) for n in engine.embedding_shape]
    if [body.n_tokens, body.dim] != shape:
        raise APIError(
            400,
            f"prototypes have shape [n_tokens, dim] = [{body.n_tokens}, {body.dim}]; the served model "
            f"{engine.name!r} takes {shape}",
            param="prototypes",
        )
    try:
        book = codebook_from_json(body.model_dump(exclude={"model"}))
    except CodebookFormatError as exc:
        raise APIError(400, str(exc), param=exc.field) from exc
    published = state.codebooks.publish(book)
    return {**codebook_to_json(published), "model": engine.name}


@router.get("/v1/codebook", response_model=CodebookBody)
async def get_codebook(state: State, _: Caller) -> dict[str, Any]:
    return await published_codebook_body(state)


@router.put("/v1/codebook", response_model=CodebookBody)
def put_codebook(body: CodebookBody, state: State, _: Operator) -> dict[str, Any]:
    """Publish a new codebook: operator keys only (``403 operator_key_required`` for any other, before
    the body is read); not a phone route, so never through the gateway.

    The body is what ``GET /v1/codebook`` answers; the answer is the ``GET`` body of the codebook now
    published, served to phones from their next request on.
    """
    return publish_codebook(state, body)


@router.post("/v1/codebook/losses", response_model=CodebookLossResponse)
async def codebook_losses(body: CodebookLossRequest, state: State, _: Caller) -> CodebookLossResponse:
    """The example's loss under every usable prototype, in one request (``PROTOCOL.md`` 5.5, choosing).

    Every phone asks for all usable prototypes, so a request says nothing about its choice; the rows
    go through the engine's batching as forward passes alone (no gradient). The cloud keeps nothing.
    """
    return await compute_codebook_losses(state, body)
