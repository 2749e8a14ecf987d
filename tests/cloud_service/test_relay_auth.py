"""Relay-to-gateway authentication: the HMAC header, its refusals, and who must configure a secret."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from veil.client_sdk.ohttp import REQUEST_MEDIA_TYPE, RESPONSE_MEDIA_TYPE
from veil.cloud_service.config import ServiceConfig
from veil.cloud_service.relay import RelayConfig, create_relay_app
from veil.cloud_service.relay_auth import (
    RELAY_AUTH_HEADER,
    RelayAuthError,
    relay_auth_header,
    relay_secret_bytes,
    verify_relay_auth,
)

SECRET = b"s" * 32
NOW = 1_800_000_000.0


def test_a_signed_body_verifies_and_the_mac_is_hmac_sha256() -> None:
    value = relay_auth_header(SECRET, b"sealed body", now=NOW)
    verify_relay_auth(SECRET, value, b"sealed body", now=NOW + 59)
    # The naive formula: HMAC-SHA256(secret, label || t || "\n" || body), base64url without padding.
    expected = hmac.new(SECRET, b"veil-relay-auth/v1\n1800000000\nsealed body", hashlib.sha256).digest()
    assert value == f"t=1800000000, mac={base64.urlsafe_b64encode(expected).rstrip(b'=').decode()}"


@pytest.mark.parametrize(
    ("secret", "value", "body", "now", "fragment"),
    [
        (SECRET, None, b"x", NOW, "missing"),
        (b"t" * 32, relay_auth_header(SECRET, b"x", now=NOW), b"x", NOW, "does not match"),
        (SECRET, relay_auth_header(SECRET, b"x", now=NOW), b"y", NOW, "does not match"),
        (SECRET, relay_auth_header(SECRET, b"x", now=NOW), b"x", NOW + 61, "timestamp"),
        (SECRET, relay_auth_header(SECRET, b"x", now=NOW), b"x", NOW - 61, "timestamp"),
        (SECRET, "Bearer abc", b"x", NOW, "must be"),
        (SECRET, "t=1, t=2, mac=AA", b"x", NOW, "must be"),
        (SECRET, "t=-5, mac=AA", b"x", NOW, "must be"),
        (SECRET, "t=1800000000, mac=!!!!", b"x", NOW, "base64url"),
        (SECRET, "t=1800000000, mac=" + "A" * 300, b"x", NOW, "longer"),
    ],
)
def test_bad_relay_auth_is_refused(
    secret: bytes, value: str | None, body: bytes, now: float, fragment: str
) -> None:
    with pytest.raises(RelayAuthError, match=fragment):
        verify_relay_auth(secret, value, body, now=now)


def test_short_secrets_are_refused_everywhere() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        relay_secret_bytes("too short")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        RelayConfig(relay_secret="too short")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        ServiceConfig(data_dir=".", relay_secret=b"too short")
    assert relay_secret_bytes("é" * 16) == ("é" * 16).encode()  # 32 bytes of UTF-8


def test_production_refuses_to_start_without_a_relay_secret(tmp_path) -> None:
    keys = {"gateway_kek": os.urandom(32), "gateway_signing_key": os.urandom(32)}
    with pytest.raises(ValueError, match="VEIL_RELAY_SECRET"):
        ServiceConfig(data_dir=tmp_path, environment="production", **keys)
    config = ServiceConfig(data_dir=tmp_path, environment="production", relay_secret=SECRET, **keys)
    assert "sss" not in repr(config)  # the secret stays out of logs and tracebacks
    assert ServiceConfig(data_dir=tmp_path).relay_secret is None  # development: accepted, with a warning


def test_the_relay_signs_what_it_forwards_and_nothing_else() -> None:
    seen: list[tuple[dict[str, str], bytes]] = []

    async def ohttp(request: Request) -> Response:
        seen.append((dict(request.headers), await request.body()))
        return Response(b"sealed answer", media_type=RESPONSE_MEDIA_TYPE)

    gateway = Starlette(routes=[Route("/ohttp", ohttp, methods=["POST"])])

    async def main(config: RelayConfig) -> None:
        relay = create_relay_app(config, transport=httpx.ASGITransport(app=gateway))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=relay), base_url="http://r") as c:
            r = await c.post("/ohttp", content=b"encapsulated", headers={"content-type": REQUEST_MEDIA_TYPE})
            assert r.status_code == 200 and r.content == b"sealed answer"

    asyncio.run(main(RelayConfig("http://gateway.internal", relay_secret=SECRET.decode())))
    asyncio.run(main(RelayConfig("http://gateway.internal")))
    (signed, body), (unsigned, _) = seen
    assert body == b"encapsulated"
    verify_relay_auth(SECRET, signed[RELAY_AUTH_HEADER], body)
    assert set(signed) == {"host", "content-length", "content-type", RELAY_AUTH_HEADER}
    assert RELAY_AUTH_HEADER not in unsigned
