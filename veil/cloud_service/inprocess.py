"""Serve a decapsulated inner request with the same ASGI app, in process, without a socket.

The gateway hands an inner request it does not serve itself (chat) to the app through this call. The
scope carries the ``veil.ohttp`` extension, which no outer HTTP request can set, so routes know the
request came through the gateway; the client address in the scope is ``None`` (the gateway never knows
it). An unhandled exception gets the answer the app gives over HTTP, its JSON 500.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from veil.cloud_service.api.deps import OHTTP_SCOPE_KEY

__all__ = ["InnerResponse", "call_app"]


@dataclass
class InnerResponse:
    status: int
    headers: list[tuple[str, str]]
    content: bytes


async def call_app(
    app: Any, method: str, target: str, headers: list[tuple[str, str]], content: bytes
) -> InnerResponse:
    """Run one HTTP request through ``app`` and collect the whole response (streams are buffered)."""
    split = urlsplit(target if target.startswith("/") else "/" + target)
    raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    if not any(k == b"content-length" for k, _ in raw_headers) and content:
        raw_headers.append((b"content-length", str(len(content)).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method.upper(),
        "scheme": "https",
        "path": split.path,
        "raw_path": split.path.encode(),
        "query_string": split.query.encode(),
        "root_path": "",
        "headers": raw_headers,
        "client": None,
        "server": None,
        "extensions": {OHTTP_SCOPE_KEY: {}},
    }
    sent = False
    finished = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            # the "client" stays connected until the response is complete (streams would stop early)
            await finished.wait()
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": content, "more_body": False}

    status = 500
    out_headers: list[tuple[str, str]] = []
    chunks: list[bytes] = []
    complete = False

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, out_headers, complete
        if message["type"] == "http.response.start":
            status = int(message["status"])
            out_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            complete = not message.get("more_body", False)

    try:
        await app(scope, receive, send)
    except Exception:
        # Starlette's outermost middleware answers an unhandled exception with the app's JSON 500,
        # then re-raises it for a server to log (the app's handler logged it already): that answer is
        # the response. An exception before the response was complete is the caller's to handle.
        if not complete:
            raise
    finally:
        finished.set()
    return InnerResponse(status, out_headers, b"".join(chunks))
