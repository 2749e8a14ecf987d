"""The API process: FastAPI app factory (routes, OHTTP gateway, storage, model engine, metrics)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from veil.cloud_service.api.deps import OHTTP_SCOPE_KEY, ServiceState
from veil.cloud_service.api.fast_path import OHTTPFastPath
from veil.cloud_service.api.routes import (
    chat,
    codebook,
    gradients,
    label_losses,
    models,
    ohttp,
    ops,
    rag,
    rag_collections,
    translations,
    uploads,
)
from veil.cloud_service.codebooks import CodebookStore
from veil.cloud_service.config import ServiceConfig
from veil.cloud_service.engine import ServingEngine
from veil.cloud_service.errors import error_body, install_error_handlers
from veil.cloud_service.gateway_setup import build_gateway
from veil.cloud_service.gateway_signing import KeyConfigSigner
from veil.cloud_service.key_lifecycle import KeyLifecycle
from veil.cloud_service.metrics import Metrics
from veil.cloud_service.rag_store import CollectionStore
from veil.cloud_service.store.db import make_engine, migrate, session_factory
from veil.cloud_service.store.group_commit import UploadBatcher
from veil.models.checkpoint import is_personalized_checkpoint, load_personalized
from veil.models.loading import load_model
from veil.models.personalization import PersonalizationConfig, PersonalizedLM

__all__ = ["LoadedService", "create_app", "load_served_model"]

log = logging.getLogger(__name__)

LoadedService = tuple[Any, Any, str, list[str] | None]
"""``(PersonalizedLM, tokenizer, model id, classes)``."""


def load_served_model(config: ServiceConfig) -> LoadedService:
    """Load ``config.model``: a personalised checkpoint, or a plain model wrapped for one soft token."""
    path = Path(config.model).expanduser()
    if path.is_dir() and is_personalized_checkpoint(path):
        model, tokenizer, meta = load_personalized(path)
        return model, tokenizer, str(meta.get("name") or path.name), meta.get("classes")
    loaded = load_model(config.model, config.data_dir)
    model = PersonalizedLM(loaded.model, PersonalizationConfig(n_tokens=1, placement="prefix"))
    return model.eval(), loaded.tokenizer, loaded.name, None


class _LimitsAndMetrics:
    """ASGI middleware: refuse bodies over the limit (413) and count outer requests per route template.

    Inner requests (served through the gateway, marked with the ``veil.ohttp`` scope extension) are
    never counted by route or status: whoever reads the metrics must not learn what one phone did.
    """

    def __init__(self, app: Any, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await self._too_large(send)
            status = 413
            self._record(scope, status, started)
            return
        seen = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _BodyTooLargeError
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLargeError:
            status = 413
            await self._too_large(send)
        finally:
            self._record(scope, status, started)

    async def _too_large(self, send: Any) -> None:
        body = json.dumps(error_body(413, f"request body exceeds {self.max_body} bytes")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _record(scope: dict[str, Any], status: int, started: float) -> None:
        if OHTTP_SCOPE_KEY in scope.get("extensions", {}):
            return
        state = getattr(scope.get("app"), "state", None)
        service = getattr(state, "veil", None) if state is not None else None
        if service is None:
            return
        route = getattr(scope.get("route"), "path", "unmatched")
        service.metrics.requests.labels(route, str(status)).inc()
        service.metrics.latency.labels(route).observe(time.perf_counter() - started)


class _BodyTooLargeError(Exception):
    pass


def create_app(config: ServiceConfig, preloaded: LoadedService | None = None) -> FastAPI:
    """Build the API app. The model, database and gateway keys open when the app starts.

    ``preloaded`` skips loading ``config.model`` (tests and the demo reuse a model in memory).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = make_engine(config.database_url, config.data_dir)
        migrate(db)
        sessions = session_factory(db)
        model, tokenizer, name, classes = preloaded or load_served_model(config)
        if config.relay_secret is None:
            log.warning(
                "VEIL_RELAY_SECRET is unset: /ohttp accepts encapsulated requests from anyone, not only "
                "the relay (development only; production refuses to start)"
            )
        engine = ServingEngine(
            model,
            tokenizer,
            name,
            classes,
            config.engine,
            on_batch=lambda kind, size: metrics.batch_size.observe(size),  # not by kind: see Metrics
        )
        await engine.start()
        gateway = build_gateway(config, sessions)

        # Rotation and retirement on schedule (every worker runs it; the store lets one rotate).
        lifecycle = KeyLifecycle(gateway.keyring, gateway.replays, config.key_rotation_s)
        lifecycle_task = asyncio.get_running_loop().create_task(lifecycle.run())
        codebooks = CodebookStore(config.data_dir)

        signer = KeyConfigSigner.from_config(config)
        app.state.veil = ServiceState(
            config, engine, sessions, gateway, metrics, codebooks, key_signer=signer
        )

        app.state.veil.uploads = uploads = UploadBatcher(db, config.group_commit)
        app.state.veil.rag = CollectionStore(config.data_dir)
        try:
            yield
        finally:
            lifecycle_task.cancel()
            await uploads.aclose()  # after uvicorn drained the requests: every queued upload is answered
            await engine.stop()
            db.dispose()

    metrics = Metrics()
    app = FastAPI(
        title="Veil API",
        version="0.1.0",
        summary="ID-free personalised LLM service behind an Oblivious HTTP gateway.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    modules = (chat, models, uploads, gradients, label_losses, codebook, rag, rag_collections, ohttp, ops)
    modules += (translations,)
    for module in modules:
        app.include_router(module.router)
    # Added first, so it runs inside the body-size limit: POST /ohttp past the router to its endpoint.
    app.add_middleware(OHTTPFastPath)
    app.add_middleware(_LimitsAndMetrics, max_body=config.max_body_bytes)
    app.state.metrics = metrics  # served by create_metrics_app on the operator's port
    return app
