"""``/v1/label-losses``: the loss of each candidate label for one anonymous example, under one sample.

A phone's prediction in one request: it sends the text, its candidate labels and one fresh sample e,
and takes the label with the lowest loss. Each loss is what ``/v1/embedding-gradients`` answers with
``encoding: "none"`` for that label and the same e: a forward pass alone, no gradient. The cloud keeps
nothing.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from veil.cloud_service.api.checks import (
    check_codebook_version,
    check_label,
    check_model,
    served_embedding,
)
from veil.cloud_service.api.deps import Caller, ServiceState, State
from veil.cloud_service.schemas import LabelLossRequest, LabelLossResponse

__all__ = ["compute_label_losses", "router"]

router = APIRouter(tags=["personalisation"])


async def compute_label_losses(state: ServiceState, body: LabelLossRequest) -> LabelLossResponse:
    """The answer of ``POST /v1/label-losses``, to the route and to the gateway alike."""
    check_codebook_version(state, body.codebook_version)
    engine = state.engine
    check_model(engine, body.model)
    embedding = served_embedding(engine, body.embedding, "embedding", body.embedding_b64)
    labels = [check_label(engine, body.task, label, f"labels.{i}") for i, label in enumerate(body.labels)]
    losses = await asyncio.gather(*[engine.loss(body.task, body.text, label, embedding) for label in labels])
    return LabelLossResponse(model=engine.name, losses=list(losses))


@router.post("/v1/label-losses", response_model=LabelLossResponse)
async def label_losses(body: LabelLossRequest, state: State, _: Caller) -> LabelLossResponse:
    """Every label is checked before any forward pass runs; the passes are gathered, so the engine
    batches them with each other and with concurrent requests."""
    return await compute_label_losses(state, body)
