"""``/v1/codebook``: the public prototype codebook phones choose from (``PROTOCOL.md`` 5.5).

The codebook is public by design: every phone downloads the same one, and its choice of a prototype
never leaves the phone. The cloud publishes it in its data dir (``veil codebook init``, the stage-3
job with ``--codebook``, ``veil codebook retire``); this route serves whatever is published now.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from veil.client_sdk.codebook_wire import codebook_to_json
from veil.cloud_service.api.deps import Caller, Codebooks, State
from veil.cloud_service.errors import APIError

router = APIRouter(tags=["personalisation"])


@router.get("/v1/codebook")
def get_codebook(codebooks: Codebooks, state: State, _: Caller) -> dict[str, Any]:
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
    return {**codebook_to_json(book), "model": state.engine.name}
