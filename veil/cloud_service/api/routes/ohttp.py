"""The OHTTP gateway's two routes (RFC 9458): ``/.well-known/ohttp-gateway`` and ``/ohttp``.

Only the phone routes and their few headers pass (:mod:`veil.cloud_service.inner_allowlist`). The gateway
serves those of :data:`GATEWAY_ROUTES` itself, with the routes' own functions
(:mod:`veil.cloud_service.api.direct`); chat, with its streaming, goes through this same app in process
(:func:`veil.cloud_service.inprocess.call_app`), marked with the ``veil.ohttp`` scope extension, so it
needs no API key there. With a relay secret configured, ``/ohttp`` answers only the relay
(:mod:`veil.cloud_service.relay_auth`): anything else is refused with 401 before anything is decrypted.
"""

from __future__ import annotations

import json
import logging
import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from veil.client_sdk.ohttp.bhttp import BinaryRequest, BinaryResponse
from veil.client_sdk.ohttp.errors import OHTTPError, UnknownKeyIdError
from veil.cloud_service.api.deps import OHTTP_SCOPE_KEY, State
from veil.cloud_service.api.direct import GatewayRoute, direct_route, ok
from veil.cloud_service.api.routes.codebook import compute_codebook_losses, published_codebook_body
from veil.cloud_service.api.routes.gradients import compute_embedding_gradient
from veil.cloud_service.api.routes.label_losses import compute_label_losses
from veil.cloud_service.api.routes.models import model_list
from veil.cloud_service.api.routes.uploads import upload_with_headers
from veil.cloud_service.errors import APIError, error_body
from veil.cloud_service.gateway import HOP_BY_HOP, KeyringError
from veil.cloud_service.inner_allowlist import InnerRequestRefusedError, screen
from veil.cloud_service.inprocess import call_app
from veil.cloud_service.relay_auth import RELAY_AUTH_HEADER, RelayAuthError, verify_relay_auth
from veil.cloud_service.schemas import CodebookLossRequest, GradientRequest, LabelLossRequest, UploadRequest
from veil.cloud_service.store.errors import StoreError

router = APIRouter(tags=["oblivious http"])
log = logging.getLogger(__name__)


GATEWAY_ROUTES: dict[tuple[str, str], GatewayRoute] = {
    ("GET", "/v1/models"): direct_route(None, ok(model_list)),
    ("GET", "/v1/codebook"): direct_route(None, ok(published_codebook_body)),
    ("POST", "/v1/codebook/losses"): direct_route(CodebookLossRequest, ok(compute_codebook_losses)),
    # exclude_none: the route's response_model_exclude_none (one gradient form, no null for the other)
    ("POST", "/v1/embedding-gradients"): direct_route(
        GradientRequest, ok(compute_embedding_gradient), exclude_none=True
    ),
    ("POST", "/v1/label-losses"): direct_route(LabelLossRequest, ok(compute_label_losses)),
    ("POST", "/v1/uploads"): direct_route(UploadRequest, upload_with_headers),
}
"""Inner routes the gateway serves itself: same status and JSON as the route, without a second pass
through the ASGI app (middleware, dependencies, routing: much of a phone request's CPU). Every other
inner request goes through the app."""

_RELOAD_EVERY_S = 30.0


def _fresh_keys(state: State, force: bool = False) -> None:
    """Pick up keys rotated by another process (``veil gateway rotate``, another worker)."""
    keyring = state.gateway.keyring
    now = time.monotonic()
    if force or now - getattr(keyring, "_veil_loaded_at", 0.0) > _RELOAD_EVERY_S:
        keyring._veil_loaded_at = now  # type: ignore[attr-defined]
        try:
            keyring.reload()
        except KeyringError as exc:  # e.g. a retired record restored: keep serving the keys we trust
            log.error("gateway keys not reloaded: %s", str(exc).splitlines()[0])


@router.get("/.well-known/ohttp-gateway")
def key_configuration(state: State) -> Response:
    """The gateway's key configurations (``application/ohttp-keys``), newest first, signed.

    ``Content-Digest`` (RFC 9530) and ``Signature-Input``/``Signature`` (RFC 9421, ed25519, tag
    ``veil-ohttp-keys``) let phones refuse a list a relay substituted (RFC 9458 section 6.1).
    """
    _fresh_keys(state)
    body = state.gateway.key_config_bytes()
    headers = state.key_signer.headers(body)
    headers["cache-control"] = "max-age=3600"
    return Response(body, headers=headers)


# The body is read raw, so FastAPI cannot infer it: declared here for the OpenAPI document (and its fuzzers).
_ENCAPSULATED_BODY = {
    "requestBody": {
        "required": True,
        "content": {"message/ohttp-req": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.post("/ohttp", openapi_extra=_ENCAPSULATED_BODY)
async def gateway(request: Request, state: State) -> Response:
    """Decapsulate a ``message/ohttp-req``, serve the inner request, encapsulate the answer."""
    if OHTTP_SCOPE_KEY in request.scope.get("extensions", {}):
        raise APIError(400, "an OHTTP request cannot be nested inside another")
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "message/ohttp-req":
        raise APIError(415, f"content-type must be message/ohttp-req, got {media or 'none'!r}")
    secret = state.config.relay_secret
    if secret is not None and RELAY_AUTH_HEADER not in request.headers:
        raise APIError(401, f"missing {RELAY_AUTH_HEADER}: /ohttp answers only its relay", code="relay_auth")
    app = request.app

    async def dispatch(inner: BinaryRequest) -> BinaryResponse:
        try:
            headers = screen(inner.method, inner.path, inner.headers)
        except InnerRequestRefusedError as exc:
            body = error_body(exc.status, exc.message, param=exc.param, code=exc.code)
            return BinaryResponse(
                exc.status, [("content-type", "application/json")], json.dumps(body).encode()
            )
        fast = GATEWAY_ROUTES.get((inner.method, inner.path))
        if fast is not None:  # served directly, without a second pass through the ASGI app
            return await fast(state, headers, inner.content)
        answer = await call_app(app, inner.method, inner.path, headers, inner.content)
        kept = [(n.lower(), v) for n, v in answer.headers if n.lower() not in HOP_BY_HOP]
        return BinaryResponse(answer.status, kept, answer.content)

    body = await request.body()
    if secret is not None:
        try:
            verify_relay_auth(secret, request.headers.get(RELAY_AUTH_HEADER), body)
        except RelayAuthError as exc:
            raise APIError(401, str(exc), code="relay_auth") from None
    try:
        try:
            sealed = await state.gateway.handle(body, dispatch)
        except UnknownKeyIdError:
            _fresh_keys(state, force=True)  # a key rotated in elsewhere: one retry with the stored keys
            sealed = await state.gateway.handle(body, dispatch)
    except OHTTPError as exc:
        state.metrics.ohttp.labels(exc.error_type).inc()
        return JSONResponse(exc.to_dict(), status_code=exc.status)
    except StoreError:  # the replay store could not say whether this request is new: refuse it
        raise APIError(503, "the gateway cannot check for replays right now; retry later") from None
    state.metrics.ohttp.labels("ok").inc()
    return Response(sealed, media_type="message/ohttp-res", headers={"Cache-Control": "no-store"})
