"""``/health``: needs no key, names no caller. ``/metrics`` is not here: it has its own operator port
(:func:`veil.cloud_service.metrics.create_metrics_app`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import text

from veil.cloud_service.api.deps import State

router = APIRouter(tags=["operations"])


@router.get("/health")
def health(state: State) -> dict[str, Any]:
    with state.sessions() as session:
        session.execute(text("SELECT 1"))
    return {"status": "ok", "model": state.engine.name}
