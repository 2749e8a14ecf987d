"""Data access for training runs (same conventions as :mod:`.repository`)."""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from veil.cloud_service.store.tables import RUN_STATUSES, TrainingRun
from veil.cloud_service.store.util import check_text, db_errors, utc_day

__all__ = [
    "TrainingRunInfo",
    "create_training_run",
    "get_training_run",
    "latest_training_run",
    "update_training_run",
]


@dataclass(frozen=True)
class TrainingRunInfo:
    """A training run as stored."""

    id: int
    kind: str
    status: Literal["queued", "running", "succeeded", "failed"]
    created_day: dt.date
    config: dict[str, Any]
    metrics: dict[str, Any] | None
    checkpoint: str | None
    error: str | None


def _json_safe(value: Any) -> Any:
    # JSON has no NaN/Inf; a diverged loss is recorded as null rather than failing the update.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def _dumps(name: str, value: object) -> str:
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a dict, got {type(value).__name__}")
    try:
        return json.dumps(_json_safe(value), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} is not JSON-serialisable: {exc}") from None


def _run_info(row: TrainingRun) -> TrainingRunInfo:
    return TrainingRunInfo(
        id=row.id,
        kind=row.kind,
        status=row.status,  # type: ignore[arg-type]
        created_day=row.created_day,
        config=json.loads(row.config),
        metrics=None if row.metrics is None else json.loads(row.metrics),
        checkpoint=row.checkpoint,
        error=row.error,
    )


@db_errors
def create_training_run(session: Session, kind: str, config: dict[str, Any]) -> int:
    """Record a new run with status "queued"; returns its id."""
    check_text("kind", kind, 64)
    row = TrainingRun(kind=kind, status="queued", created_day=utc_day(), config=_dumps("config", config))
    session.add(row)
    session.commit()
    return row.id


@db_errors
def update_training_run(
    session: Session,
    run_id: int,
    *,
    status: str | None = None,
    metrics: dict[str, Any] | None = None,
    checkpoint: str | None = None,
    error: str | None = None,
) -> bool:
    """Set the given fields of a run (``None`` leaves a field unchanged); False when there is no such run."""
    values: dict[str, Any] = {}
    if status is not None:
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {RUN_STATUSES}, got {status!r}")
        values["status"] = status
    if metrics is not None:
        values["metrics"] = _dumps("metrics", metrics)
    if checkpoint is not None:
        values["checkpoint"] = check_text("checkpoint", str(checkpoint), 4096)
    if error is not None:
        # Errors are free text from exceptions: keep them storable rather than refuse them.
        values["error"] = str(error).replace("\x00", "")[:8192].encode("utf-8", "replace").decode("utf-8")
    if not values:
        return get_training_run(session, run_id) is not None
    result = session.execute(update(TrainingRun).where(TrainingRun.id == run_id).values(**values))
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


@db_errors
def get_training_run(session: Session, run_id: int) -> TrainingRunInfo | None:
    """The run with this id, or None."""
    row = session.get(TrainingRun, run_id, populate_existing=True)
    return None if row is None else _run_info(row)


@db_errors
def latest_training_run(
    session: Session, kind: str, status: str | None = "succeeded"
) -> TrainingRunInfo | None:
    """The newest run of ``kind`` with ``status`` (any status when ``None``), or None."""
    stmt = select(TrainingRun).where(TrainingRun.kind == kind)
    if status is not None:
        stmt = stmt.where(TrainingRun.status == status)
    row = session.scalars(stmt.order_by(TrainingRun.id.desc()).limit(1)).first()
    return None if row is None else _run_info(row)
