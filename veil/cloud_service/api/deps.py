"""Dependencies of the routes, as ``Annotated`` aliases so route signatures stay plain."""

from __future__ import annotations

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

__all__ = ["OHTTP_SCOPE_KEY", "Caller", "DbSession", "ServiceState", "State", "get_state"]

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

    with state.sessions() as session:
        info = verify_api_key(session, token.strip())
    if info is None:
        raise APIError(401, "invalid or revoked API key", code="invalid_api_key")
    return CallerInfo(via_gateway=False, api_key_prefix=info.prefix)


State = Annotated[ServiceState, Depends(get_state)]
DbSession = Annotated[Any, Depends(_session)]
Caller = Annotated[CallerInfo, Depends(_caller)]
