"""``POST /ohttp`` straight to its endpoint, past FastAPI's router: the phones' only route, taken per request.

FastAPI resolves a route's dependencies per request (a sync dependency hops to a worker thread) and,
for routes of an included router, rebuilds the request handler each time; for the gateway, whose
endpoint does its own parsing (the body is an opaque ``message/ohttp-req``), that machinery is most of
its CPU per upload. This middleware calls the same endpoint function
(:func:`veil.cloud_service.api.routes.ohttp.gateway`) with the same arguments the router would pass, and
answers its :class:`~veil.cloud_service.errors.APIError` with the same JSON error body. It sits inside
the app's body-size limit. Every other request, and ``/ohttp`` with another method, goes through FastAPI.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from starlette.requests import Request

from veil.cloud_service.api.routes.ohttp import gateway
from veil.cloud_service.errors import APIError, error_body

__all__ = ["OHTTPFastPath"]


class OHTTPFastPath:
    """ASGI middleware: ``POST /ohttp`` to the gateway endpoint directly (see the module doc)."""

    def __init__(self, app: Any, path: str = "/ohttp") -> None:
        self.app = app
        self.path = path
        self._route = SimpleNamespace(path=path)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return

        service = scope["app"].state.veil
        # Metrics label a request by ``scope["route"].path``, as the router would set it (FastAPI's
        # included routers do not list their routes on ``app.routes``, so name the template directly).
        scope["route"] = self._route
        try:
            response = await gateway(Request(scope, receive), service)
        except APIError as exc:
            await _send_json(
                send, exc.status, error_body(exc.status, exc.message, exc.type, exc.param, exc.code)
            )
            return
        # Anything else propagates: the body-size limit outside answers 413, the app's handler of
        # last resort a JSON 500.
        await response(scope, receive, send)


async def _send_json(send: Any, status: int, body: dict[str, Any]) -> None:
    content = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})
