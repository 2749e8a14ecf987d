"""Run a training job against the store: record the run, feed it the uploads, keep the outcome.

The run's row moves queued -> running -> succeeded | failed; a failed run keeps its one-line error.
In codebook mode the job reads the codebook published in the data dir and, once the run succeeded,
publishes the trained one (a new version) in its place.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

from veil.client_sdk.distributions import Codebook
from veil.cloud_service.codebooks import CodebookStore
from veil.cloud_service.jobs.codebook import CHECKPOINT_CODEBOOK
from veil.cloud_service.jobs.personalized import train_personalized
from veil.cloud_service.store.repository import (
    create_training_run,
    iter_uploads,
    update_training_run,
)
from veil.progress import NullProgress, RichProgress

__all__ = ["run_training_job"]


def run_training_job(
    sessions: Any,
    base: str,
    out: Path | None,
    cfg: Any,
    data_dir: Path,
    show_progress: bool = True,
) -> Any:
    """IDfree-PL stage 3 on every stored upload of ``cfg.task``; returns the training report.

    Parameters
    ----------
    sessions: SQLAlchemy ``sessionmaker`` of the store.
    base: model name, model directory or personalised checkpoint to start from.
    out: checkpoint folder; ``None`` is ``<data_dir>/checkpoints/personalized-<run id>``.
    cfg: :class:`veil.cloud_service.jobs.personalized.PersonalizedTrainingConfig`.
    """
    config = {k: (asdict(v) if hasattr(v, "__dataclass_fields__") else v) for k, v in vars(cfg).items()}
    config["base"] = str(base)
    with sessions() as session:
        run_id = create_training_run(session, "personalized", config)
        update_training_run(session, run_id, status="running")
    target = Path(out) if out is not None else Path(data_dir) / "checkpoints" / f"personalized-{run_id}"
    progress = RichProgress() if show_progress else NullProgress()
    codebooks = CodebookStore(data_dir)
    try:
        codebook = codebooks.current() if getattr(cfg, "codebook", False) else None
        with sessions() as session:
            uploads = list(iter_uploads(session, task=cfg.task))
        with contextlib.ExitStack() as stack:
            bars: list[Any] = []

            def on_step(step: int, total: int, loss: float) -> None:
                if not bars:  # the bar appears once training starts, not before a refusal
                    bars.append(stack.enter_context(progress.stage("stage 3: fine-tune on uploads", total)))
                bars[0].update(step, total)

            report = train_personalized(
                uploads, base, target, cfg, data_dir=data_dir, progress=on_step, codebook=codebook
            )
    except Exception as exc:
        with sessions() as session:
            update_training_run(session, run_id, status="failed", error=str(exc).splitlines()[0][:500])
        raise
    if report.codebook_version is not None:
        codebooks.publish(Codebook.load(str(Path(report.checkpoint) / CHECKPOINT_CODEBOOK)))
    with sessions() as session:
        update_training_run(
            session, run_id, status="succeeded", metrics=report.to_json(), checkpoint=str(report.checkpoint)
        )
    return report
