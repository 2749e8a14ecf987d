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
from veil.client_sdk.distributions import Codebook
from veil.cloud_service.api.checks import check_label, check_model
from veil.cloud_service.api.deps import Caller, Codebooks, State
from veil.cloud_service.errors import APIError
from veil.cloud_service.schemas import CodebookLossRequest, CodebookLossResponse

router = APIRouter(tags=["personalisation"])


def _published(codebooks: Any, state: Any) -> Codebook:
    book = codebooks.current()
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


@router.get("/v1/codebook")
def get_codebook(codebooks: Codebooks, state: State, _: Caller) -> dict[str, Any]:
    return {**codebook_to_json(_published(codebooks, state)), "model": state.engine.name}


@router.post("/v1/codebook/losses", response_model=CodebookLossResponse)
async def codebook_losses(
    body: CodebookLossRequest, codebooks: Codebooks, state: State, _: Caller
) -> CodebookLossResponse:
    """The example's loss under every usable prototype, in one request (``PROTOCOL.md`` 5.5, choosing).

    Every phone asks for all usable prototypes, so a request says nothing about its choice; the rows
    go through the engine's batching as forward passes alone (no gradient). The cloud keeps nothing.
    """
    engine = state.engine
    check_model(engine, body.model)
    book = _published(codebooks, state)
    if body.version != book.version:
        raise APIError(
            409,
            f"codebook {body.version} is not the published one ({book.version}): fetch it and choose again",
            param="version",
            code="codebook_version_mismatch",
        )
    label = check_label(engine, body.task, body.label)
    usable = [int(k) for k in book.active.nonzero()[0]]
    results = await asyncio.gather(
        *[engine.loss(body.task, body.text, label, book.prototypes[k].astype("float32")) for k in usable]
    )
    losses: list[float | None] = [None] * book.size
    for k, loss in zip(usable, results, strict=True):
        losses[k] = loss
    return CodebookLossResponse(model=engine.name, version=book.version, losses=losses)
