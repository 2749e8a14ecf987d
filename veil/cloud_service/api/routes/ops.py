"""``/health`` and ``/metrics`` (Prometheus text format); neither needs a key, neither names a caller."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from veil.cloud_service.api.deps import State
from veil.cloud_service.metrics import CONTENT_TYPE

router = APIRouter(tags=["operations"])


@router.get("/health")
def health(state: State) -> dict[str, Any]:
    from sqlalchemy import text

    with state.sessions() as session:
        session.execute(text("SELECT 1"))
    return {"status": "ok", "model": state.engine.name}


@router.get("/metrics")
def metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
