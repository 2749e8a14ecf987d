"""Several API worker processes on one port: ``veil serve --workers N``.

uvicorn's supervisor binds the socket once and starts ``N`` processes that accept on it; a worker that
dies (``SIGKILL``, out of memory) is replaced within about half a second while the others keep serving.
Workers share nothing but the database: each has its own model, gateway keyring (read from the store)
and group commit (:mod:`veil.cloud_service.store.group_commit`), so what one acknowledged is durable
whatever happens to it next. SQLite in WAL mode serialises their commits with its busy timeout;
PostgreSQL runs them side by side.

A worker process is started afresh (``spawn``), so the options of ``veil serve`` travel to it in one
environment variable, :data:`OPTIONS_ENV`, next to the ``VEIL_*`` settings.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import uvicorn

__all__ = ["OPTIONS_ENV", "create_worker_app", "serve_workers"]

OPTIONS_ENV = "VEIL_SERVE_WORKER_OPTIONS"
"""JSON object of the ``veil serve`` options a worker applies: ``model``, ``max_batch``, ``torch_threads``."""


def create_worker_app() -> Any:
    """The app of one worker (uvicorn's factory): settings from ``VEIL_*``, options from :data:`OPTIONS_ENV`."""
    # lazy: uvicorn's supervisor process imports this module too, and never needs the app or torch
    import torch

    from veil.cloud_service.app import create_app
    from veil.cloud_service.config import ServiceConfig
    from veil.cloud_service.engine import EngineConfig
    from veil.models.loading import quiet_transformers

    options = json.loads(os.environ.get(OPTIONS_ENV) or "{}")
    if options.get("torch_threads"):
        torch.set_num_threads(int(options["torch_threads"]))
    quiet_transformers()
    config = ServiceConfig.from_settings()
    config = dataclasses.replace(
        config,
        model=options.get("model") or config.model,
        engine=EngineConfig(max_batch=int(options.get("max_batch", 8))),
    )
    return create_app(config)


def serve_workers(
    workers: int,
    host: str,
    port: int,
    *,
    model: str | None = None,
    max_batch: int = 8,
    torch_threads: int | None = None,
) -> None:
    """Run ``workers`` API processes on ``host:port`` until SIGINT/SIGTERM (dead ones are restarted)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    options = {"model": model, "max_batch": max_batch, "torch_threads": torch_threads}
    os.environ[OPTIONS_ENV] = json.dumps(options)
    uvicorn.run(
        "veil.cloud_service.workers:create_worker_app",
        factory=True,
        workers=workers,
        host=host,
        port=port,
        access_log=False,
        log_level="warning",
    )
