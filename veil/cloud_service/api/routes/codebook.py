"""``/v1/codebook``: the public prototype codebook phones choose from (``PROTOCOL.md`` 5.5).

The codebook is public by design: every phone downloads the same one, and its choice of a prototype
never leaves the phone. The cloud publishes it in its data dir (``veil codebook init``, the stage-3
job with ``--codebook``, ``veil codebook retire``); this route serves whatever is published now.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from veil.client_sdk.codebook_wire import codebook_to_json
from veil.cloud_service.api.checks import (
    check_label,
    check_model,
    published_codebook,
    refuse_stale_version,
)
from veil.cloud_service.api.deps import Caller, ServiceState, State
from veil.cloud_service.schemas import CodebookLossRequest, CodebookLossResponse

__all__ = ["compute_codebook_losses", "published_codebook_body", "router"]

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


@router.get("/v1/codebook")
async def get_codebook(state: State, _: Caller) -> dict[str, Any]:
    return await published_codebook_body(state)


@router.post("/v1/codebook/losses", response_model=CodebookLossResponse)
async def codebook_losses(body: CodebookLossRequest, state: State, _: Caller) -> CodebookLossResponse:
    """The example's loss under every usable prototype, in one request (``PROTOCOL.md`` 5.5, choosing).

    Every phone asks for all usable prototypes, so a request says nothing about its choice; the rows
    go through the engine's batching as forward passes alone (no gradient). The cloud keeps nothing.
    """
    return await compute_codebook_losses(state, body)
