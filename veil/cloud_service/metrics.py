"""Prometheus metrics of one API process (a registry per app, so tests and workers do not share)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Metrics:
    """Counters and histograms; labels never carry anything about a caller."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "veil_http_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "veil_http_request_seconds", "Request latency by route", ["route"], registry=r
        )
        self.ohttp = Counter(
            "veil_ohttp_requests", "Encapsulated requests by outcome", ["outcome"], registry=r
        )
        self.batch_size = Histogram(
            "veil_model_batch_size",
            "Requests per model batch",
            ["kind"],
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.uploads = Counter("veil_uploads", "Uploads by outcome", ["outcome"], registry=r)
        self.tokens = Counter("veil_generated_tokens", "Completion tokens generated", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
