"""Prometheus metrics of one API process, served on a separate operator port.

A relay that forwards one request alone and reads the metrics before and after must learn nothing the
encapsulated response did not already show it. So nothing here is labelled by an inner request's route,
status or outcome:

* ``veil_http_requests`` / ``veil_http_request_seconds``: outer requests only, by route template and
  status (for phones that is ``/ohttp`` and the status the relay saw itself);
* ``veil_ohttp_requests``: outer ``/ohttp`` outcomes (``ok`` or the unencapsulated error type the relay
  already received);
* ``veil_model_batch_size``: requests per model batch, all model work together (chat and gradients are
  not told apart);
* ``veil_generated_tokens``: completion tokens for API-key callers only;
* ``veil_kv_compression_failures``: chat requests of API-key callers whose KV-cache compression failed
  (a 500 ``kv_compression_failed``), by method.

The metrics are not on the API's port: :func:`create_metrics_app` is a second small app that
``veil serve --metrics-port`` runs in the same process, by default on loopback only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["CONTENT_TYPE", "Metrics", "create_metrics_app"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Metrics:
    """Counters and histograms; labels never carry anything about a caller or an inner request."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "veil_http_requests",
            "Outer HTTP requests by route and status (inner OHTTP requests are not counted)",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "veil_http_request_seconds", "Outer request latency by route", ["route"], registry=r
        )
        self.ohttp = Counter(
            "veil_ohttp_requests",
            "Encapsulated requests by outer outcome (what the relay sees)",
            ["outcome"],
            registry=r,
        )
        self.batch_size = Histogram(
            "veil_model_batch_size",
            "Requests per model batch (all kinds together)",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.tokens = Counter(
            "veil_generated_tokens", "Completion tokens generated for API-key callers", registry=r
        )
        self.kv_compression_failures = Counter(
            "veil_kv_compression_failures",
            "Chat requests of API-key callers whose KV-cache compression failed, by method",
            ["method"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def create_metrics_app(metrics: Metrics) -> Starlette:
    """The operator's app: ``GET /metrics`` (Prometheus text) and ``GET /health``; nothing else."""

    async def render(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[Route("/metrics", render, methods=["GET"]), Route("/health", health, methods=["GET"])]
    )
