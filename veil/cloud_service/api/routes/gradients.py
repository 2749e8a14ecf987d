"""``/v1/embedding-gradients``: dL/de for one anonymous example (gradient-return on-device learning).

The phone sends a text, its label and a fresh sample e; the cloud answers the loss and its gradient
with respect to e under the frozen model, and the phone turns that into a step on its own distribution
(reparameterisation, ``veil.client_sdk.learning``). The cloud keeps nothing.
"""

from __future__ import annotations

from fastapi import APIRouter

from veil.client_sdk.wire import encode_f32
from veil.cloud_service.api.checks import (
    check_codebook_version,
    check_label,
    check_model,
    served_embedding,
)
from veil.cloud_service.api.deps import Caller, ServiceState, State
from veil.cloud_service.schemas import GradientRequest, GradientResponse

__all__ = ["compute_embedding_gradient", "router"]

router = APIRouter(tags=["personalisation"])


async def compute_embedding_gradient(state: ServiceState, body: GradientRequest) -> GradientResponse:
    """The answer of ``POST /v1/embedding-gradients``, to the route and to the gateway alike (sent
    without its ``None`` fields)."""
    check_codebook_version(state, body.codebook_version)
    engine = state.engine
    check_model(engine, body.model)
    embedding = served_embedding(engine, body.embedding, "embedding", body.embedding_b64)
    label = check_label(engine, body.task, body.label)
    if body.encoding == "none":
        return GradientResponse(
            model=engine.name, loss=await engine.loss(body.task, body.text, label, embedding)
        )
    result = await engine.gradient(body.task, body.text, label, embedding)
    if body.encoding == "base64":
        return GradientResponse(model=engine.name, loss=result.loss, gradient_b64=encode_f32(result.gradient))
    return GradientResponse(model=engine.name, loss=result.loss, gradient=result.gradient.tolist())


@router.post("/v1/embedding-gradients", response_model=GradientResponse, response_model_exclude_none=True)
async def embedding_gradient(body: GradientRequest, state: State, _: Caller) -> GradientResponse:
    return await compute_embedding_gradient(state, body)
