"""The OHTTP gateway's two routes (RFC 9458): ``/.well-known/ohttp-gateway`` and ``/ohttp``.

Inner requests are served by this same app in process (:func:`veil.cloud_service.inprocess.call_app`),
marked with the ``veil.ohttp`` scope extension, so phone routes need no API key there.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from veil.client_sdk.ohttp.bhttp import BinaryRequest, BinaryResponse
from veil.client_sdk.ohttp.errors import OHTTPError
from veil.cloud_service.api.deps import OHTTP_SCOPE_KEY, State
from veil.cloud_service.errors import APIError
from veil.cloud_service.inprocess import call_app

router = APIRouter(tags=["oblivious http"])

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "te"})


@router.get("/.well-known/ohttp-gateway")
def key_configuration(state: State) -> Response:
    """The gateway's key configurations (``application/ohttp-keys``), newest first."""
    return Response(
        state.gateway.key_config_bytes(),
        media_type="application/ohttp-keys",
        headers={"Cache-Control": "max-age=3600"},
    )


@router.post("/ohttp")
async def gateway(request: Request, state: State) -> Response:
    """Decapsulate a ``message/ohttp-req``, serve the inner request, encapsulate the answer."""
    if OHTTP_SCOPE_KEY in request.scope.get("extensions", {}):
        raise APIError(400, "an OHTTP request cannot be nested inside another")
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "message/ohttp-req":
        raise APIError(415, f"content-type must be message/ohttp-req, got {media or 'none'!r}")
    app = request.app

    async def dispatch(inner: BinaryRequest) -> BinaryResponse:
        headers = [(n, v) for n, v in inner.headers if n.lower() not in _HOP_BY_HOP]
        answer = await call_app(app, inner.method, inner.path, headers, inner.content)
        kept = [(n.lower(), v) for n, v in answer.headers if n.lower() not in _HOP_BY_HOP]
        return BinaryResponse(answer.status, kept, answer.content)

    body = await request.body()
    try:
        sealed = await state.gateway.handle(body, dispatch)
    except OHTTPError as exc:
        state.metrics.ohttp.labels(exc.error_type).inc()
        return JSONResponse(exc.to_dict(), status_code=exc.status)
    state.metrics.ohttp.labels("ok").inc()
    return Response(sealed, media_type="message/ohttp-res", headers={"Cache-Control": "no-store"})
