"""The Oblivious HTTP relay (RFC 9458 section 6.2): a separate process that sees senders, never content.

It forwards only the encapsulated body of ``POST /ohttp`` to ``{gateway_url}/ohttp`` with the single
header ``content-type: message/ohttp-req``, and relays the gateway's key configuration from
``GET /.well-known/ohttp-gateway``. No client header reaches the gateway (no ``X-Forwarded-For``,
``Via``, ``Forwarded``, user agent or cookie), nothing is added, and nothing about clients is logged
(:func:`run_relay` turns uvicorn's access log off). With ``hold_window_s > 0`` requests are held for a
random time up to that window and each batch is forwarded in shuffled order, so arrival order and
timing say less about who sent what.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from veil.client_sdk.ohttp.keysig import SIGNING_KEY_HEADER
from veil.client_sdk.ohttp.ohttp import KEYS_MEDIA_TYPE, REQUEST_MEDIA_TYPE, RESPONSE_MEDIA_TYPE

__all__ = ["RelayConfig", "create_relay_app", "run_relay"]

# Batches are shuffled with the OS's randomness: a seeded PRNG could be predicted by an observer.
_rng = random.SystemRandom()
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
        0 forwards at once; otherwise requests wait a random time up to this window and each batch is
        forwarded in shuffled order.
    timeout_s : float
        Timeout for each exchange with the gateway (504 when exceeded).
    """

    gateway_url: str = "http://127.0.0.1:8000"
    max_body_bytes: int = 1 << 20
    hold_window_s: float = 0.0
    timeout_s: float = 30.0

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

    def client(self) -> httpx.AsyncClient:
        # Made lazily so it belongs to the event loop that serves requests.
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self._transport, timeout=self.config.timeout_s, trust_env=False
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def exchange(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        """Send one request to the gateway; returns its response or a JSON error response."""
        # httpx.Request directly: the client adds no user-agent, accept or accept-encoding defaults.
        request = httpx.Request(method, self.config.gateway_url + path, headers=headers, content=body)
        try:
            return await self.client().send(request, follow_redirects=False)
        except httpx.TimeoutException:
            return _error(504, "gateway_timeout", "the gateway did not answer in time")
        except httpx.TransportError:
            return _error(502, "bad_gateway", "the gateway could not be reached")

    async def forward(self, body: bytes) -> Response:
        upstream = await self.exchange("POST", "/ohttp", {"content-type": REQUEST_MEDIA_TYPE}, body)
        if isinstance(upstream, Response):
            return upstream
        media = upstream.headers.get("content-type", "").split(";")[0].strip().lower()
        if upstream.status_code == 200 and media == RESPONSE_MEDIA_TYPE:
            return Response(upstream.content, 200, media_type=RESPONSE_MEDIA_TYPE)
        if 400 <= upstream.status_code < 500 and media in _PASSED_ERROR_TYPES:
            # Unencapsulated gateway errors (unknown key, replay...) let the client refresh its keys.
            return Response(upstream.content, upstream.status_code, media_type=media)
        return _error(502, "bad_gateway", f"the gateway answered {upstream.status_code}")


class _HoldQueue:
    """Holds requests for a random time up to ``window_s``, then forwards the batch in shuffled order."""

    def __init__(self, window_s: float, upstream: _Upstream) -> None:
        self.window_s = window_s
        self.upstream = upstream
        self._pending: list[tuple[bytes, asyncio.Future[Response]]] = []
        self._flush: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, body: bytes) -> Response:
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending.append((body, future))
        if self._flush is None:
            self._flush = asyncio.create_task(self._flush_after(_rng.uniform(0, self.window_s)))
        return await future

    async def _flush_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        batch, self._pending, self._flush = self._pending, [], None
        _rng.shuffle(batch)
        for body, future in batch:  # started in shuffled order
            task = asyncio.create_task(self._deliver(body, future))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, body: bytes, future: asyncio.Future[Response]) -> None:
        try:
            response = await self.upstream.forward(body)
        except Exception:  # a relay bug must not leave the client hanging
            response = _error(502, "bad_gateway", "the relay could not forward the request")
        if not future.done():  # the client may have gone away
            future.set_result(response)


def create_relay_app(config: RelayConfig, *, transport: httpx.AsyncBaseTransport | None = None) -> Starlette:
    """The relay as an ASGI app; ``transport`` (optional) routes the gateway calls, e.g. in tests."""
    upstream = _Upstream(config, transport)
    queue = _HoldQueue(config.hold_window_s, upstream) if config.hold_window_s > 0 else None

    async def ohttp(request: Request) -> Response:
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
        return await (queue.submit(body) if queue is not None else upstream.forward(body))

    async def keys(request: Request) -> Response:
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
    config: RelayConfig, host: str = "127.0.0.1", port: int = 8080, *, log_level: str = "warning"
) -> None:
    """Serve the relay with uvicorn: no access log, no ``server`` header, forwarded headers ignored."""
    import uvicorn

    uvicorn.run(
        create_relay_app(config),
        host=host,
        port=port,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        log_level=log_level,
    )
