"""``/v1/rag/collections``: the retrieval collections ``POST /v1/rag/answers`` searches.

Any valid API key may create, fill, list and delete collections: a consumer adds *their own* documents
to retrieve from, and an operator key is no more needed for that than for a chat completion. (Operator
keys guard what changes every caller's answers without asking them: ``PUT /v1/codebook``.) Collections
are shared by every key of the service, as the model is; deploy one service per tenant when documents
must stay apart. Not reachable through the OHTTP gateway: a phone has no collection of its own.

Ingestion chunks, embeds (MiniLM, for a ``dense`` collection) and saves off the event loop, in a worker
thread apart from the model thread, so chat completions go on meanwhile. A failed ingestion (a duplicate
or malformed id, a document without words) is a ``400`` and leaves the collection as it was.

The default collection, ``wikipedia-sample``, needs no creating: the first question (or ingestion) that
names it while it is missing builds it, BM25 only, from gensim's Wikipedia sample, and waits for the
build (about 10 s on 2 busy cores); it is listed from then on. An operator who wants it dense (BM25 and
MiniLM fused) builds that ahead with ``veil rag build-default --dense``, which replaces the BM25 copy
atomically (:mod:`veil.cloud_service.rag_store`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict

from fastapi import APIRouter, Response

from veil.cloud_service.api.deps import Caller, ServiceState, State
from veil.cloud_service.errors import APIError
from veil.cloud_service.rag_schemas import (
    CollectionCreate,
    CollectionInfoBody,
    CollectionList,
    DocumentRecord,
    DocumentsAdded,
    DocumentsBody,
)
from veil.cloud_service.rag_store import describe
from veil.models.rag import (
    DEFAULT_COLLECTION,
    Collection,
    CollectionNameError,
    Document,
    IndexConfig,
    RagError,
    validate_collection_name,
)
from veil.models.rag.corpus import _jsonl_record  # the one reader of FlashRAG records (title split)

__all__ = ["checked_name", "collection_not_found", "router", "served_collection"]

log = logging.getLogger(__name__)

router = APIRouter(tags=["rag"])


def collection_not_found(name: str, param: str | None = None) -> APIError:
    how = (
        "it is built on first use, or ahead by the operator with 'veil rag build-default'"
        if name == DEFAULT_COLLECTION
        else "create it with POST /v1/rag/collections"
    )
    return APIError(
        404, f"collection {name!r} does not exist ({how})", param=param, code="collection_not_found"
    )


async def served_collection(state: ServiceState, name: str, param: str | None = None) -> Collection:
    """The collection to search or fill; the default one is built first when missing (a ``503`` if that
    fails here, e.g. without gensim), any other missing one a ``404``."""
    try:
        collection = await state.rag.get_or_build(name)
    except (RagError, OSError) as exc:
        log.warning("building the default collection failed: %s", exc)
        raise APIError(
            503,
            f"collection {name!r} is not built yet and building it failed ({exc}); the operator can "
            "build it with 'veil rag build-default'",
            param=param,
            code="collection_unavailable",
        ) from None
    if collection is None:
        raise collection_not_found(name, param=param)
    return collection


def checked_name(name: str, param: str = "name") -> str:
    """``name`` if it can name a collection; a ``400`` naming ``param`` otherwise."""
    try:
        return validate_collection_name(name)
    except CollectionNameError as exc:
        raise APIError(400, str(exc), param=param) from exc


def _documents(records: list[DocumentRecord]) -> list[Document]:
    docs = []
    for i, record in enumerate(records):
        raw = json.dumps({"id": record.id, "contents": record.contents}).encode()
        docs += _jsonl_record(raw, "documents", i)  # source "documents:<i>" names it in duplicate errors
    return docs


@router.post("/v1/rag/collections", status_code=201, response_model=CollectionInfoBody)
async def create_collection(body: CollectionCreate, state: State, _: Caller) -> dict[str, object]:
    """A new, empty collection (``409 collection_exists`` when the name is taken)."""
    if not await asyncio.to_thread(state.rag.create, body.name, IndexConfig(dense=body.dense)):
        raise APIError(
            409, f"collection {body.name!r} already exists", param="name", code="collection_exists"
        )
    return {"name": body.name, "passages": 0, "documents": 0, "dense": body.dense}


@router.get("/v1/rag/collections", response_model=CollectionList)
async def list_collections(state: State, _: Caller) -> dict[str, object]:
    """Every collection with its passage and document counts."""
    return {"data": [asdict(info) for info in await asyncio.to_thread(state.rag.info)]}


@router.post("/v1/rag/collections/{name}/documents", response_model=DocumentsAdded)
async def add_documents(name: str, body: DocumentsBody, state: State, _: Caller) -> dict[str, object]:
    """Chunk, index and save the documents (``404`` for an unknown collection, but the default one is
    built first when missing; ``400`` for a duplicate id, within the request or with a document already
    indexed, or a document without words)."""
    checked_name(name)
    docs = _documents(body.documents)
    if name == DEFAULT_COLLECTION:
        await served_collection(state, name)  # built first if missing: it exists out of the box
    try:
        added = await asyncio.to_thread(state.rag.add, name, docs)
    except RagError as exc:
        raise APIError(400, str(exc), param="documents") from exc
    if added is None:
        raise collection_not_found(name)
    collection, passages = added
    return {**asdict(describe(collection)), "added_documents": len(docs), "added_passages": len(passages)}


@router.delete("/v1/rag/collections/{name}", status_code=204)
async def delete_collection(name: str, state: State, _: Caller) -> Response:
    """Remove the collection and its files (``404`` when there is none)."""
    checked_name(name)
    if not await asyncio.to_thread(state.rag.delete, name):
        raise collection_not_found(name)
    return Response(status_code=204)
