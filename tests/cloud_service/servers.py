"""Test helpers: real uvicorn servers on loopback ports in background threads, and tiny gateway apps."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from veil.client_sdk.ohttp import (
    RESPONSE_MEDIA_TYPE,
    BinaryRequest,
    BinaryResponse,
    OHTTPError,
    sign_key_configs,
)
from veil.client_sdk.ohttp.keysig import public_key_bytes, signing_key_from_seed
from veil.cloud_service.gateway import HOP_BY_HOP, Dispatch, Gateway

TEST_SIGNING_KEY = signing_key_from_seed(bytes(range(32)))
"""The gateway signing key of the tiny gateway apps (clients in tests pin :data:`TEST_PUBLIC_KEY`)."""
TEST_PUBLIC_KEY = public_key_bytes(TEST_SIGNING_KEY)


@contextlib.contextmanager
def serve(app: Any, *, timeout_s: float = 10.0) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free loopback port; yields its base URL, stops it on exit.

    Logging is left to the test's handlers (``log_config=None``) and the access log is off, as in
    ``run_relay``.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False, server_header=False, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
        sock.close()


def make_gateway_app(
    gateway: Gateway, dispatch: Dispatch, received: list[list[tuple[str, str]]], signing_key: Any = None
) -> Starlette:
    """A minimal gateway server: ``/ohttp`` and the key configuration (signed with ``signing_key``,
    default :data:`TEST_SIGNING_KEY`); records every request's headers."""
    signing_key = signing_key or TEST_SIGNING_KEY

    async def ohttp(request: Request) -> Response:
        received.append([(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw])
        try:
            body = await gateway.handle(await request.body(), dispatch)
        except OHTTPError as exc:
            return JSONResponse(exc.to_dict(), exc.status)
        return Response(body, media_type=RESPONSE_MEDIA_TYPE)

    async def keys(request: Request) -> Response:
        received.append([(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw])
        body = gateway.key_config_bytes()
        headers = sign_key_configs(body, signing_key)
        return Response(body, headers={**headers, "cache-control": "max-age=60"})

    return Starlette(
        routes=[Route("/ohttp", ohttp, methods=["POST"]), Route("/.well-known/ohttp-gateway", keys)]
    )


def make_echo_app() -> Starlette:
    """The inner target: echoes method, path, headers, body and the client address it was given."""

    async def echo(request: Request) -> Response:
        body = await request.body()
        return JSONResponse(
            {
                "method": request.method,
                "path": request.url.path,
                "headers": [[k, v] for k, v in request.headers.items()],
                "body": body.decode("utf-8", "replace"),
                "client": request.client.host if request.client else None,
            },
            status_code=201 if request.method == "POST" else 200,
        )

    return Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST", "PUT", "DELETE"])])


def asgi_dispatch(app: Any) -> Dispatch:
    """A ``dispatch`` that serves inner requests with the ASGI ``app`` in-process.

    The inner app sees the client address ``0.0.0.0:0``; responses are buffered (OHTTP cannot stream,
    RFC 9458 section 5.1).
    """
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=("0.0.0.0", 0))

    async def dispatch(request: BinaryRequest) -> BinaryResponse:
        url = f"{request.scheme or 'http'}://{request.authority or 'gateway.invalid'}{request.path}"
        headers = [(n, v) for n, v in request.headers if n not in HOP_BY_HOP]
        # Built directly, not via client.request, so httpx adds no default headers of its own.
        inner = httpx.Request(request.method, url, headers=headers, content=request.content)
        async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
            response = await client.send(inner)
        fields = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in response.headers.raw]
        kept = [(n, v) for n, v in fields if n not in HOP_BY_HOP]
        return BinaryResponse(response.status_code, kept, response.content)

    return dispatch
