"""The Oblivious HTTP relay (RFC 9458 section 6.2): a separate process that sees senders, never content.

It forwards only the encapsulated body of ``POST /ohttp`` to ``{gateway_url}/ohttp`` with the single
header ``content-type: message/ohttp-req``, and relays the gateway's key configuration from
``GET /.well-known/ohttp-gateway``. No client header reaches the gateway (no ``X-Forwarded-For``,
``Via``, ``Forwarded``, user agent or cookie), nothing is added, and nothing about clients is logged
(:func:`run_relay` turns uvicorn's access log off).

With a ``relay_secret`` each forwarded request carries the relay's HMAC over the body
(:mod:`~veil.cloud_service.relay_auth`), so the gateway answers only this relay. Each client address
gets a token bucket (:mod:`~veil.cloud_service.relay_limits`; 429 with ``Retry-After`` when empty);
at most ``max_pending`` requests wait in the relay (503 beyond) and at most ``max_concurrency`` are
in flight to the gateway. Requests are released at once, in shuffled batches (``hold_window_s``,
``min_batch``) or at a constant rate (``constant_rate_per_s``): :mod:`~veil.cloud_service.relay_mix`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from veil.client_sdk.ohttp.keysig import SIGNING_KEY_HEADER
from veil.client_sdk.ohttp.ohttp import KEYS_MEDIA_TYPE, REQUEST_MEDIA_TYPE, RESPONSE_MEDIA_TYPE
from veil.cloud_service.relay_auth import RELAY_AUTH_HEADER, relay_auth_header, relay_secret_bytes
from veil.cloud_service.relay_limits import RateLimiter
from veil.cloud_service.relay_mix import ConstantRateMix, Direct, Mixer, ThresholdMix
from veil.cloud_service.upstream import UpstreamError, UpstreamPool, UpstreamTimeoutError

__all__ = ["RelayConfig", "create_relay_app", "run_relay"]

_PASSED_ERROR_TYPES = ("application/json", "application/problem+json")
_PASSED_KEY_HEADERS = ("cache-control", "content-digest", "signature-input", "signature", SIGNING_KEY_HEADER)


@dataclass(frozen=True)
class RelayConfig:
    """Relay settings.

    Parameters
    ----------
    gateway_url : str
        Base URL of the gateway (``/ohttp`` and ``/.well-known/ohttp-gateway`` are appended).
    max_body_bytes : int
        Largest encapsulated request accepted (413 beyond).
    hold_window_s : float
        0 forwards at once (unless ``constant_rate_per_s``); otherwise requests are held and each batch
        is forwarded in shuffled order: after a random time up to this window (``min_batch = 1``), or
        once ``min_batch`` requests are held, at the latest this long after the batch's first.
    timeout_s : float
        Timeout for each exchange with the gateway (504 when exceeded).
    relay_secret : str or bytes, optional
        Shared with the gateway (``VEIL_RELAY_SECRET``, >= 32 bytes): each forwarded request carries
        the relay's HMAC over its body. ``None`` sends none (a gateway with a secret refuses them).
    rate_per_s, rate_burst : float, int
        Token bucket per client address: ``rate_burst`` requests at once, ``rate_per_s`` per second
        after that (429 beyond); ``rate_per_s = 0`` turns the limit off.
    max_clients : int
        Most client addresses the rate limit remembers at once (in memory, keyed by a MAC).
    max_pending : int
        Most requests held, queued or in flight in the relay at once (503 beyond).
    max_concurrency : int
        Most requests in flight to the gateway at once.
    min_batch : int
        With ``hold_window_s > 0``: the batch size that releases a batch before the window ends.
    constant_rate_per_s : float
        > 0 sends requests at this constant rate on a fixed grid of ticks, chosen at random among those
        held (instead of batches); excess requests wait, up to ``max_pending``.
    """

    gateway_url: str = "http://127.0.0.1:8000"
    max_body_bytes: int = 1 << 20
    hold_window_s: float = 0.0
    timeout_s: float = 30.0
    relay_secret: str | bytes | None = field(default=None, repr=False)
    rate_per_s: float = 20.0
    rate_burst: int = 100
    max_clients: int = 100_000
    max_pending: int = 4096
    max_concurrency: int = 128
    min_batch: int = 1
    constant_rate_per_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.gateway_url.startswith(("http://", "https://")):
            raise ValueError(f"gateway_url must be an http(s) URL, got {self.gateway_url!r}")
        object.__setattr__(self, "gateway_url", self.gateway_url.rstrip("/"))
        if self.max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes must be > 0, got {self.max_body_bytes}")
        if not 0 <= self.hold_window_s <= 60:
            raise ValueError(f"hold_window_s must be in [0, 60], got {self.hold_window_s}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.relay_secret is not None:
            object.__setattr__(self, "relay_secret", relay_secret_bytes(self.relay_secret))
        if self.rate_per_s < 0 or self.rate_burst < 1 or self.max_clients < 1:
            raise ValueError(
                "need rate_per_s >= 0, rate_burst >= 1 and max_clients >= 1, got "
                f"{self.rate_per_s}, {self.rate_burst}, {self.max_clients}"
            )
        if self.max_pending < 1 or self.max_concurrency < 1:
            raise ValueError(
                f"need max_pending >= 1 and max_concurrency >= 1, got {self.max_pending}, {self.max_concurrency}"
            )
        if not 1 <= self.min_batch <= self.max_pending:
            raise ValueError(
                f"min_batch must be in [1, max_pending={self.max_pending}], got {self.min_batch}"
            )
        if self.min_batch > 1 and self.hold_window_s == 0:
            raise ValueError("min_batch > 1 needs hold_window_s > 0 (the longest a batch waits)")
        if self.constant_rate_per_s < 0:
            raise ValueError(f"constant_rate_per_s must be >= 0, got {self.constant_rate_per_s}")
        if self.constant_rate_per_s > 0 and (self.hold_window_s > 0 or self.min_batch > 1):
            raise ValueError("choose one mix: constant_rate_per_s, or hold_window_s with min_batch")


def _error(status: int, error_type: str, message: str, param: str | None = None) -> JSONResponse:
    error = {"type": error_type, "message": message, "param": param, "code": None}
    return JSONResponse({"error": error}, status)


class _BodyTooLargeError(Exception):
    """The request body exceeds ``max_body_bytes``."""


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BodyTooLargeError
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLargeError
        chunks.append(chunk)
    return b"".join(chunks)


class _Upstream:
    """The relay's only client of the gateway; requests are built with nothing but a content type."""

    def __init__(self, config: RelayConfig, transport: httpx.AsyncBaseTransport | None) -> None:
        self.config = config
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        # Keep-alive connections of our own (veil.cloud_service.upstream); httpx only for an injected transport.
        self._pool = (
            None
            if transport is not None
            else UpstreamPool(config.gateway_url, config.max_concurrency, config.timeout_s)
        )

    def client(self) -> httpx.AsyncClient:
        # Made lazily so it belongs to the event loop that serves requests.
        if self._client is None:
            limits = httpx.Limits(max_connections=self.config.max_concurrency)
            self._client = httpx.AsyncClient(
                transport=self._transport, timeout=self.config.timeout_s, trust_env=False, limits=limits
            )
        return self._client

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def exchange(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        """Send one request to the gateway; returns its response or a JSON error response."""
        if self._pool is not None:
            try:
                return await self._pool.request(method, path, headers, body)
            except UpstreamTimeoutError:
                return _error(504, "gateway_timeout", "the gateway did not answer in time")
            except UpstreamError:
                return _error(502, "bad_gateway", "the gateway could not be reached")
        # httpx.Request directly: the client adds no user-agent, accept or accept-encoding defaults.
        request = httpx.Request(method, self.config.gateway_url + path, headers=headers, content=body)
        try:
            return await self.client().send(request, follow_redirects=False)
        except httpx.TimeoutException:
            return _error(504, "gateway_timeout", "the gateway did not answer in time")
        except httpx.TransportError:
            return _error(502, "bad_gateway", "the gateway could not be reached")

    async def forward(self, body: bytes) -> Response:
        headers = {"content-type": REQUEST_MEDIA_TYPE}
        if self.config.relay_secret is not None:
            headers[RELAY_AUTH_HEADER] = relay_auth_header(self.config.relay_secret, body)
        upstream = await self.exchange("POST", "/ohttp", headers, body)
        if isinstance(upstream, Response):
            return upstream
        media = upstream.headers.get("content-type", "").split(";")[0].strip().lower()
        if upstream.status_code == 200 and media == RESPONSE_MEDIA_TYPE:
            return Response(upstream.content, 200, media_type=RESPONSE_MEDIA_TYPE)
        if 400 <= upstream.status_code < 500 and media in _PASSED_ERROR_TYPES:
            # Unencapsulated gateway errors (unknown key, replay...) let the client refresh its keys.
            return Response(upstream.content, upstream.status_code, media_type=media)
        return _error(502, "bad_gateway", f"the gateway answered {upstream.status_code}")


def _mixer(config: RelayConfig, upstream: _Upstream) -> Mixer:
    in_flight: asyncio.Semaphore | None = None

    async def forward(body: bytes) -> Response:
        nonlocal in_flight
        if in_flight is None:  # made here so it belongs to the running loop
            in_flight = asyncio.Semaphore(config.max_concurrency)
        async with in_flight:
            return await upstream.forward(body)

    if config.constant_rate_per_s > 0:
        return ConstantRateMix(forward, rate_per_s=config.constant_rate_per_s)
    if config.hold_window_s > 0:
        return ThresholdMix(forward, min_batch=config.min_batch, hold_window_s=config.hold_window_s)
    return Direct(forward)


def _retry_after(status: int, error_type: str, message: str, seconds: float) -> Response:
    response = _error(status, error_type, message)
    response.headers["retry-after"] = str(max(1, math.ceil(seconds)))
    return response


def create_relay_app(config: RelayConfig, *, transport: httpx.AsyncBaseTransport | None = None) -> Starlette:
    """The relay as an ASGI app; ``transport`` (optional) routes the gateway calls, e.g. in tests."""
    upstream = _Upstream(config, transport)
    mixer = _mixer(config, upstream)
    limiter = (
        RateLimiter(config.rate_per_s, config.rate_burst, config.max_clients) if config.rate_per_s else None
    )
    pending = 0

    def limited(request: Request) -> Response | None:
        """A 429 when this address has no token left (both routes share one bucket per address)."""
        if limiter is None:
            return None
        # The address is only a key into the limiter (a MAC of it); it is never logged or forwarded.
        wait = limiter.take(request.client.host if request.client else "")
        if wait > 0:
            return _retry_after(429, "rate_limit_exceeded", "too many requests from this address", wait)
        return None

    async def ohttp(request: Request) -> Response:
        nonlocal pending
        if (refused := limited(request)) is not None:
            return refused
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != REQUEST_MEDIA_TYPE:
            return _error(
                415, "unsupported_media_type", f"content-type must be {REQUEST_MEDIA_TYPE}", "content-type"
            )
        try:
            body = await _read_body(request, config.max_body_bytes)
        except _BodyTooLargeError:
            return _error(413, "request_too_large", f"body exceeds {config.max_body_bytes} bytes")
        if not body:
            return _error(400, "invalid_request", "empty encapsulated request")
        if pending >= config.max_pending:
            return _retry_after(503, "relay_overloaded", "the relay's queue is full; try again shortly", 1)
        pending += 1
        try:
            return await mixer.submit(body)
        finally:
            pending -= 1

    async def keys(request: Request) -> Response:
        if (refused := limited(request)) is not None:
            return refused
        upstream_response = await upstream.exchange("GET", "/.well-known/ohttp-gateway", {}, b"")
        if isinstance(upstream_response, Response):
            return upstream_response
        if upstream_response.status_code != 200:
            return _error(502, "bad_gateway", f"the gateway answered {upstream_response.status_code}")
        # The gateway's signature (RFC 9421) and digest (RFC 9530) travel unchanged, so phones can
        # check that the list is the gateway's; nothing else of the gateway's answer is passed on.
        headers = {
            name: upstream_response.headers[name]
            for name in _PASSED_KEY_HEADERS
            if name in upstream_response.headers
        }
        return Response(upstream_response.content, 200, headers=headers, media_type=KEYS_MEDIA_TYPE)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        kind = {404: "not_found", 405: "method_not_allowed"}.get(status, "invalid_request")
        return _error(status, kind, str(getattr(exc, "detail", "error")))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await upstream.aclose()

    return Starlette(
        routes=[
            Route("/ohttp", ohttp, methods=["POST"]),
            Route("/.well-known/ohttp-gateway", keys, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )


def run_relay(
    config: RelayConfig,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    log_level: str = "warning",
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
) -> None:
    """Serve the relay with uvicorn: no access log, no ``server`` header, forwarded headers ignored;
    HTTPS with ``ssl_certfile`` and ``ssl_keyfile`` (PEM)."""
    uvicorn.run(
        create_relay_app(config),
        host=host,
        port=port,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        log_level=log_level,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )
