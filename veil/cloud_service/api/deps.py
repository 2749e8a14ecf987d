"""Dependencies of the routes, as ``Annotated`` aliases so route signatures stay plain."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from veil.cloud_service.codebooks import CodebookStore
from veil.cloud_service.config import ServiceConfig
from veil.cloud_service.engine import ServingEngine
from veil.cloud_service.errors import APIError
from veil.cloud_service.metrics import Metrics
from veil.cloud_service.store.repository import verify_api_key

__all__ = [
    "OHTTP_SCOPE_KEY",
    "Caller",
    "CallerInfo",
    "DbSession",
    "Operator",
    "ServiceState",
    "State",
    "get_state",
    "require_operator",
]

OHTTP_SCOPE_KEY = "veil.ohttp"
"""ASGI scope extension set by the gateway on requests it decapsulated (unforgeable from outside)."""


@dataclass
class ServiceState:
    """Everything one API process holds; built by :func:`veil.cloud_service.app.create_app`."""

    config: ServiceConfig
    engine: ServingEngine
    sessions: Any  # sqlalchemy sessionmaker
    gateway: Any  # veil.cloud_service.gateway.Gateway
    metrics: Metrics
    codebooks: CodebookStore
    key_signer: Any = None  # veil.cloud_service.gateway_signing.KeyConfigSigner
    uploads: Any = None  # veil.cloud_service.store.group_commit.UploadBatcher: one group commit per process
    rag: Any = None  # veil.cloud_service.rag_store.CollectionStore: the retrieval collections


def get_state(request: Request) -> ServiceState:
    return request.app.state.veil


def _session(state: Annotated[ServiceState, Depends(get_state)]) -> Iterator[Any]:
    with state.sessions() as session:
        yield session


@dataclass(frozen=True)
class CallerInfo:
    """How the request reached us: through the OHTTP gateway (a phone) or with an API key."""

    via_gateway: bool
    api_key_prefix: str | None = None
    operator: bool = False
    """Called with an operator key (``veil keys create --operator``, or the service's configured
    ``VEIL_FLEET_API_KEY``); never through the gateway."""


def _caller(request: Request, state: Annotated[ServiceState, Depends(get_state)]) -> CallerInfo:
    if OHTTP_SCOPE_KEY in request.scope.get("extensions", {}):
        return CallerInfo(via_gateway=True)
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(
            401,
            "missing API key: send 'Authorization: Bearer <key>' (create one with 'veil keys create'), "
            "or reach this route through the OHTTP gateway",
            code="missing_api_key",
        )

    configured = state.config.operator_key
    if configured is not None and hmac.compare_digest(token.strip().encode(), configured.encode()):
        return CallerInfo(via_gateway=False, api_key_prefix=None, operator=True)  # VEIL_FLEET_API_KEY
    with state.sessions() as session:
        info = verify_api_key(session, token.strip())
    if info is None:
        raise APIError(401, "invalid or revoked API key", code="invalid_api_key")
    return CallerInfo(via_gateway=False, api_key_prefix=info.prefix, operator=info.operator)


def require_operator(caller: Annotated[CallerInfo, Depends(_caller)]) -> CallerInfo:
    """The caller when it holds an operator key; ``403`` (``operator_key_required``) otherwise.

    A dependency, so it runs before the body is read: a plain key learns nothing about what an operator
    route would accept. A request through the gateway never holds one.
    """
    if not caller.operator:
        raise APIError(
            403,
            "this route takes an operator API key (create one with 'veil keys create --operator')",
            code="operator_key_required",
        )
    return caller


State = Annotated[ServiceState, Depends(get_state)]
DbSession = Annotated[Any, Depends(_session)]
Caller = Annotated[CallerInfo, Depends(_caller)]
Operator = Annotated[CallerInfo, Depends(require_operator)]
