"""Training runs: create, update, read back, latest by kind and status."""

from __future__ import annotations

import math

import pytest
from sqlalchemy.orm import Session

from veil.cloud_service.store import (
    create_training_run,
    get_training_run,
    latest_training_run,
    update_training_run,
    utc_day,
)


def test_run_life_cycle(store_session: Session) -> None:
    config = {"epochs": 2, "lr": 1e-3, "dp": {"noise_multiplier": 1.1}, "tasks": ["next_word"]}
    run_id = create_training_run(store_session, "personalized", config)
    run = get_training_run(store_session, run_id)
    assert run is not None
    assert (run.kind, run.status, run.config, run.metrics, run.checkpoint, run.error) == (
        "personalized", "queued", config, None, None, None,
    )  # fmt: skip
    assert run.created_day == utc_day()

    assert update_training_run(store_session, run_id, status="running")
    metrics = {"loss": 0.5, "epsilon": 3.2, "delta": 1e-5, "curve": [1.0, float("nan")]}
    assert update_training_run(
        store_session, run_id, status="succeeded", metrics=metrics, checkpoint="/data/runs/1/ckpt"
    )
    run = get_training_run(store_session, run_id)
    assert run is not None and run.status == "succeeded" and run.checkpoint == "/data/runs/1/ckpt"
    assert run.metrics == {"loss": 0.5, "epsilon": 3.2, "delta": 1e-5, "curve": [1.0, None]}  # NaN -> null
    assert run.config == config  # untouched by updates
    assert update_training_run(store_session, run_id)  # nothing to change, run exists
    assert not update_training_run(store_session, run_id + 100, status="failed")
    assert get_training_run(store_session, run_id + 100) is None


def test_failed_run_keeps_its_error(store_session: Session) -> None:
    run_id = create_training_run(store_session, "personalized", {})
    assert update_training_run(store_session, run_id, status="failed", error="CUDA out of memory\x00 \ud800")
    run = get_training_run(store_session, run_id)
    assert run is not None and run.status == "failed" and run.error is not None
    assert run.error.startswith("CUDA out of memory") and "\x00" not in run.error


def test_latest_run(store_session: Session) -> None:
    assert latest_training_run(store_session, "personalized") is None
    ids = [create_training_run(store_session, "personalized", {"i": i}) for i in range(3)]
    other = create_training_run(store_session, "distill", {})
    update_training_run(store_session, ids[0], status="succeeded")
    update_training_run(store_session, ids[1], status="succeeded")
    update_training_run(store_session, ids[2], status="failed")
    update_training_run(store_session, other, status="succeeded")
    assert latest_training_run(store_session, "personalized").id == ids[1]  # type: ignore[union-attr]
    assert latest_training_run(store_session, "personalized", status="failed").id == ids[2]  # type: ignore[union-attr]
    assert latest_training_run(store_session, "personalized", status=None).id == ids[2]  # type: ignore[union-attr]
    assert latest_training_run(store_session, "personalized", status="running") is None
    assert latest_training_run(store_session, "distill").id == other  # type: ignore[union-attr]


def test_run_validation(store_session: Session) -> None:
    with pytest.raises(ValueError, match="config"):
        create_training_run(store_session, "personalized", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="JSON"):
        create_training_run(store_session, "personalized", {"f": object()})
    with pytest.raises(ValueError, match="kind"):
        create_training_run(store_session, "", {})
    run_id = create_training_run(store_session, "personalized", {"x": math.pi})
    with pytest.raises(ValueError, match="status"):
        update_training_run(store_session, run_id, status="done")
    assert get_training_run(store_session, run_id).status == "queued"  # type: ignore[union-attr]
