"""``/v1/models``: the served model, OpenAI-shaped, plus the embedding shape phones must sample."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from veil.cloud_service.api.checks import check_model
from veil.cloud_service.api.deps import Caller, State

router = APIRouter(tags=["models"])


def model_card(state: State) -> dict[str, Any]:
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


@router.get("/v1/models")
def list_models(state: State, _: Caller) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(state)]}


@router.get("/v1/models/{model_id}")
def get_model(model_id: str, state: State, _: Caller) -> dict[str, Any]:
    check_model(state.engine, model_id)
    return model_card(state)
