"""``/v1/models``: the served model, OpenAI-shaped, plus the embedding shape phones must sample."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from veil.cloud_service.api.checks import check_model
from veil.cloud_service.api.deps import Caller, ServiceState, State

__all__ = ["model_card", "model_list", "router"]

router = APIRouter(tags=["models"])


def model_card(state: ServiceState) -> dict[str, Any]:
    engine = state.engine
    return {
        "id": engine.name,
        "object": "model",
        "created": 0,
        "owned_by": "veil",
        "embedding_shape": list(engine.embedding_shape),
        "context_length": engine.context_length,
        "tasks": ["next_word"] + (["classification"] if engine.classes else []),
        "classes": engine.classes,
    }


async def model_list(state: ServiceState, body: None = None) -> dict[str, Any]:
    """The answer of ``GET /v1/models``, to the route and to the gateway alike."""
    return {"object": "list", "data": [model_card(state)]}


@router.get("/v1/models")
async def list_models(state: State, _: Caller) -> dict[str, Any]:
    return await model_list(state)


@router.get("/v1/models/{model_id}")
def get_model(model_id: str, state: State, _: Caller) -> dict[str, Any]:
    check_model(state.engine, model_id)
    return model_card(state)
