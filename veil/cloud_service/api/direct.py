"""Phone routes served straight from the OHTTP gateway, without a second pass through the ASGI app.

A phone route's logic is one plain async function that its FastAPI route and the gateway both call.
:func:`direct_route` wraps that function for the gateway: it reads the inner request's body as the
route's FastAPI body parameter would, and answers as the route would (status, JSON body, and the JSON
error shape of :mod:`veil.cloud_service.errors`, the app's 500 included), so a phone cannot tell which
path served it. What the ASGI pass would add does not apply to inner requests: the API-key dependency
lets them through, the metrics middleware does not count them, and the body-size limit already held for
the outer request, which contains the inner one.
"""

from __future__ import annotations

import email.message
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pydantic_core
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from veil.client_sdk.ohttp.bhttp import BinaryResponse
from veil.cloud_service.api.deps import ServiceState
from veil.cloud_service.errors import APIError, error_body, internal_error, validation_message

__all__ = ["GatewayRoute", "Headers", "Serve", "direct_route", "header", "ok", "read_body"]

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, str]]
"""An inner request's header fields, names lower-cased, as the gateway's allow-list passed them."""

Serve = Callable[[ServiceState, Any, Headers], Awaitable[tuple[int, Any]]]
"""``serve(state, body, headers) -> (status, answer)``: a route's logic; ``body`` is ``None`` for a GET."""

GatewayRoute = Callable[[ServiceState, Headers, bytes], Awaitable[BinaryResponse]]
"""What the gateway calls for an inner request: ``(state, headers, content) -> response``."""

_JSON = [("content-type", "application/json")]


def header(headers: Headers, name: str) -> str | None:
    """The first value of header ``name`` (lower case), as Starlette's ``request.headers.get`` gives it."""
    return next((v for n, v in headers if n.lower() == name), None)


def ok(compute: Callable[[ServiceState, Any], Awaitable[Any]]) -> Serve:
    """The ``serve`` of a route that answers ``200`` and reads no header: ``compute(state, body)``."""

    async def serve(state: ServiceState, body: Any, headers: Headers) -> tuple[int, Any]:
        return 200, await compute(state, body)

    return serve


def direct_route(
    request_model: type[BaseModel] | None, serve: Serve, *, exclude_none: bool = False
) -> GatewayRoute:
    """A route the gateway serves itself: same status and JSON body as the FastAPI route.

    Parameters
    ----------
    request_model : type of BaseModel or None
        The route's body parameter; ``None`` for a route without a body (its content is ignored, as
        FastAPI ignores it).
    serve : Serve
        The route's logic: ``APIError`` becomes its JSON error; any other exception the app's JSON 500.
    exclude_none : bool
        The route's ``response_model_exclude_none``.
    """

    async def route(state: ServiceState, headers: Headers, content: bytes) -> BinaryResponse:
        try:
            body = None if request_model is None else read_body(request_model, headers, content)
            status, answer = await serve(state, body, headers)
            encoded = pydantic_core.to_json(answer, by_alias=True, exclude_none=exclude_none)
        except APIError as exc:
            return _error(exc)
        except Exception:
            log.exception("unexpected error")  # as the app's handler of last resort logs it
            return _error(internal_error())
        return BinaryResponse(status, _JSON, encoded)

    return route


def read_body(model: type[BaseModel], headers: Headers, content: bytes) -> Any:
    """``content`` as FastAPI reads a route's single body parameter; ``APIError(400)`` as the route's.

    A well-formed JSON body (every phone's) takes one pass through pydantic's JSON parser. Any other
    body is read FastAPI's way (:func:`_read_as_fastapi`), so that a bad body gets the route's error
    message and ``param`` even where the JSON parser words the error otherwise (``null``, a bare list,
    a lone surrogate) or disagrees with ``json.loads`` (a UTF-8 byte order mark).
    """
    declared_json = _declares_json(header(headers, "content-type"))
    if declared_json and content:
        try:
            return model.model_validate_json(content)
        except ValidationError:
            pass  # rare, and only for a bad body: answered below with the route's error
    return _read_as_fastapi(model, declared_json, content)


def _read_as_fastapi(model: type[BaseModel], declared_json: bool, content: bytes) -> Any:
    # FastAPI's request handler (strict_content_type): an empty body is a missing one; a body not
    # declared JSON is validated as bytes; a JSON body is decoded by json.loads, ``null`` is missing.
    value: Any = content or None
    if content and declared_json:
        try:
            value = json.loads(content)
        except json.JSONDecodeError:
            raise _invalid([{"type": "json_invalid", "loc": ("body",), "msg": "JSON decode error"}]) from None
        except Exception:  # undecodable bytes, nesting too deep: FastAPI's HTTPException
            raise APIError(400, "There was an error parsing the body") from None
    if value is None:
        raise _invalid([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    try:
        return model.model_validate(value, from_attributes=True)  # as FastAPI validates a body
    except ValidationError as exc:
        raise _invalid(exc.errors(include_url=False)) from None


def _invalid(errors: Sequence[Any]) -> APIError:
    message, param = validation_message(RequestValidationError(errors))
    return APIError(400, message, param=param)


@functools.lru_cache(maxsize=64)
def _declares_json(content_type: str | None) -> bool:
    """Whether FastAPI reads a body with this ``content-type`` as JSON (``application/json`` or
    ``application/*+json``, parsed as FastAPI parses it)."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


def _error(exc: APIError) -> BinaryResponse:
    body = error_body(exc.status, exc.message, exc.type, exc.param, exc.code)
    return BinaryResponse(exc.status, _JSON, json.dumps(body).encode())
