"""The OHTTP relay: validation in-process, then real uvicorn relay -> gateway runs on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from servers import asgi_dispatch, make_echo_app, make_gateway_app, serve
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from veil.client_sdk.ohttp import (
    KEYS_MEDIA_TYPE,
    REQUEST_MEDIA_TYPE,
    RESPONSE_MEDIA_TYPE,
    AsyncOHTTPClient,
    BinaryRequest,
    BinaryResponse,
    OHTTPClient,
    decode_key_configs,
    encapsulate_request,
)
from veil.cloud_service.gateway import Gateway, Keyring, MemoryKeyStorage
from veil.cloud_service.relay import RelayConfig, create_relay_app

IDENTIFYING = {
    "x-real-ip": "203.0.113.9",
    "x-forwarded-for": "203.0.113.9",
    "forwarded": "for=203.0.113.9",
    "via": "1.1 phone-proxy",
    "cookie": "sid=secret-session",
    "user-agent": "phone-123",
    "authorization": "Bearer device-token",
}
MARKERS = ("203.0.113.9", "phone", "sid=", "device-token")


def _gateway() -> tuple[Gateway, list]:
    received: list = []
    return Gateway(Keyring(MemoryKeyStorage(), os.urandom(32))), received


def _in_process(config: RelayConfig, gateway_app) -> httpx.AsyncClient:
    relay = create_relay_app(config, transport=httpx.ASGITransport(app=gateway_app))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=relay), base_url="http://relay")


def test_relay_validation_and_passthrough() -> None:
    gateway, received = _gateway()
    gateway_app = make_gateway_app(gateway, asgi_dispatch(make_echo_app()), received)
    config = RelayConfig("http://gateway.internal", max_body_bytes=2048)

    async def main() -> None:
        async with _in_process(config, gateway_app) as relay:
            wrong = await relay.post("/ohttp", content=b"x", headers={"content-type": "application/json"})
            assert wrong.status_code == 415 and wrong.json()["error"]["param"] == "content-type"
            missing = await relay.post("/ohttp", content=b"x")
            assert missing.status_code == 415
            big = await relay.post(
                "/ohttp", content=bytes(4096), headers={"content-type": REQUEST_MEDIA_TYPE}
            )
            assert big.status_code == 413 and big.json()["error"]["type"] == "request_too_large"
            empty = await relay.post("/ohttp", content=b"", headers={"content-type": REQUEST_MEDIA_TYPE})
            assert empty.status_code == 400
            assert (await relay.get("/health")).json() == {"status": "ok"}
            nowhere = await relay.get("/nowhere")
            assert nowhere.status_code == 404 and nowhere.json()["error"]["type"] == "not_found"
            assert (await relay.get("/ohttp")).status_code == 405

            keys = await relay.get("/.well-known/ohttp-gateway")
            assert (
                keys.headers["content-type"] == KEYS_MEDIA_TYPE
                and keys.headers["cache-control"] == "max-age=60"
            )
            config_ = decode_key_configs(keys.content)[0]
            assert config_ == gateway.keyring.current.config

            body, ctx = encapsulate_request(config_, BinaryRequest("GET", path="/v1/models").encode())
            ok = await relay.post("/ohttp", content=body, headers={"content-type": REQUEST_MEDIA_TYPE})
            assert ok.status_code == 200 and ok.headers["content-type"] == RESPONSE_MEDIA_TYPE
            assert json.loads(BinaryResponse.decode(ctx.decapsulate_response(ok.content)).content)[
                "path"
            ] == ("/v1/models")
            # Unencapsulated gateway errors reach the client (it may refresh its keys).
            replay = await relay.post("/ohttp", content=body, headers={"content-type": REQUEST_MEDIA_TYPE})
            assert replay.status_code == 400 and replay.json()["error"]["type"] == "replayed_ohttp_request"
            unknown = bytes([(body[0] + 1) % 256]) + body[1:]
            stale = await relay.post("/ohttp", content=unknown, headers={"content-type": REQUEST_MEDIA_TYPE})
            assert stale.status_code == 400 and stale.json()["error"]["type"] == "unknown_key_id"

    asyncio.run(main())


def test_gateway_server_errors_become_502() -> None:
    async def broken(request) -> Response:
        return Response("oops", status_code=500)

    app = Starlette(
        routes=[Route("/ohttp", broken, methods=["POST"]), Route("/.well-known/ohttp-gateway", broken)]
    )

    async def main() -> None:
        async with _in_process(RelayConfig("http://gateway.internal"), app) as relay:
            r = await relay.post("/ohttp", content=b"abc", headers={"content-type": REQUEST_MEDIA_TYPE})
            assert r.status_code == 502 and r.json()["error"]["type"] == "bad_gateway"
            assert (await relay.get("/.well-known/ohttp-gateway")).status_code == 502

    asyncio.run(main())


def test_relay_config_validation() -> None:
    with pytest.raises(ValueError, match="gateway_url"):
        RelayConfig("ftp://x")
    with pytest.raises(ValueError, match="hold_window_s"):
        RelayConfig(hold_window_s=-1)
    with pytest.raises(ValueError, match="max_body_bytes"):
        RelayConfig(max_body_bytes=0)
    with pytest.raises(ValueError, match="timeout_s"):
        RelayConfig(timeout_s=0)
    assert RelayConfig("http://gw:8000/").gateway_url == "http://gw:8000"


def _no_markers(headers) -> bool:
    text = json.dumps(headers).lower()
    return not any(marker in text for marker in MARKERS)


@pytest.mark.integration
def test_relay_strips_every_client_header(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    gateway, received = _gateway()
    gateway_app = make_gateway_app(gateway, asgi_dispatch(make_echo_app()), received)
    with serve(gateway_app) as gateway_url, serve(create_relay_app(RelayConfig(gateway_url))) as relay_url:
        keys = httpx.get(relay_url + "/.well-known/ohttp-gateway", headers=IDENTIFYING)
        config = decode_key_configs(keys.content)[0]
        inner = BinaryRequest(
            "POST",
            "https",
            "api.veil",
            "/v1/uploads",
            [("content-type", "application/json")],
            b'{"text": "hello"}',
        )
        body, ctx = encapsulate_request(config, inner.encode())
        outer = httpx.post(
            relay_url + "/ohttp", content=body, headers={**IDENTIFYING, "content-type": REQUEST_MEDIA_TYPE}
        )
        assert outer.status_code == 200 and outer.headers["content-type"] == RESPONSE_MEDIA_TYPE
        assert "server" not in outer.headers
        echo = json.loads(BinaryResponse.decode(ctx.decapsulate_response(outer.content)).content)

        with OHTTPClient(
            relay_url + "/ohttp",
            key_config_url=relay_url + "/.well-known/ohttp-gateway",
            target_authority="api.veil",
        ) as client:
            via_client = client.request("POST", "/v1/uploads", json={"text": "again"})
        assert via_client.status == 201 and json.loads(via_client.json()["body"]) == {"text": "again"}

    # What reached the gateway: exactly host, content-length and content-type, nothing from the client.
    key_request, ohttp_request = received[0], received[1]
    assert {k for k, _ in ohttp_request} == {"host", "content-length", "content-type"}
    assert dict(ohttp_request)["content-type"] == REQUEST_MEDIA_TYPE
    assert {k for k, _ in key_request} == {"host"}
    assert all(_no_markers(r) for r in received)
    # What reached the inner app: only the inner request's own headers, and no client address.
    assert echo["body"] == '{"text": "hello"}' and echo["client"] == "0.0.0.0"
    assert {k for k, _ in echo["headers"]} == {"host", "content-type", "content-length"} and _no_markers(echo)
    # The servers logged nothing about clients (httpx's own records name only the gateway's URL).
    server_records = [r for r in caplog.records if r.name.startswith(("uvicorn", "veil", "starlette"))]
    assert not any(m in r.getMessage() for r in server_records for m in MARKERS + ("127.0.0.1",))


@pytest.mark.integration
def test_hold_window_batches_concurrent_requests() -> None:
    gateway, received = _gateway()
    gateway_app = make_gateway_app(gateway, asgi_dispatch(make_echo_app()), received)
    relay_config = lambda url: RelayConfig(url, hold_window_s=0.3)  # noqa: E731
    with serve(gateway_app) as gateway_url, serve(create_relay_app(relay_config(gateway_url))) as relay_url:

        async def main() -> list[str]:
            async with AsyncOHTTPClient(
                relay_url + "/ohttp",
                key_config_url=relay_url + "/.well-known/ohttp-gateway",
                target_authority="api.veil",
            ) as client:
                responses = await asyncio.gather(*(client.request("GET", f"/item/{i}") for i in range(8)))
            assert all(r.status == 200 for r in responses)
            return [r.json()["path"] for r in responses]

        start = time.monotonic()
        assert asyncio.run(main()) == [f"/item/{i}" for i in range(8)]
        assert time.monotonic() - start < 5
    assert len(received) == 9  # one key fetch, then each request exactly once


@pytest.mark.integration
def test_unreachable_and_slow_gateways() -> None:
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with serve(create_relay_app(RelayConfig(dead))) as relay_url:
        r = httpx.post(relay_url + "/ohttp", content=b"abc", headers={"content-type": REQUEST_MEDIA_TYPE})
        assert r.status_code == 502 and set(r.json()["error"]) == {"type", "message", "param", "code"}
        assert httpx.get(relay_url + "/.well-known/ohttp-gateway").status_code == 502

    async def slow(request) -> Response:
        await asyncio.sleep(1.0)
        return Response(b"late", media_type=RESPONSE_MEDIA_TYPE)

    slow_app = Starlette(routes=[Route("/ohttp", slow, methods=["POST"])])
    with (
        serve(slow_app) as slow_url,
        serve(create_relay_app(RelayConfig(slow_url, timeout_s=0.2))) as relay_url,
    ):
        r = httpx.post(relay_url + "/ohttp", content=b"abc", headers={"content-type": REQUEST_MEDIA_TYPE})
        assert r.status_code == 504 and r.json()["error"]["type"] == "gateway_timeout"


@pytest.mark.integration
def test_run_relay_logs_nothing_about_clients() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = (
        "from veil.cloud_service.relay import RelayConfig, run_relay;"
        f"run_relay(RelayConfig('http://127.0.0.1:9'), '127.0.0.1', {port}, log_level='debug')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the relay did not start")
            time.sleep(0.1)
        with httpx.Client(headers=IDENTIFYING) as client:
            r = client.post(url + "/ohttp", content=b"abc", headers={"content-type": REQUEST_MEDIA_TYPE})
            assert r.status_code == 502 and "server" not in r.headers
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=20)
    assert "Uvicorn running" in output  # the log was captured at all
    assert '"POST /ohttp' not in output and "GET /health" not in output  # no access log
    assert not any(marker in output for marker in MARKERS)
