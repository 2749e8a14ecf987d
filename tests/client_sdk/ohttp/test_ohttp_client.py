"""OHTTP clients: minimal outer headers, retries with fresh encapsulations, key fetching and refresh.

The relay here is an httpx transport that runs the real gateway crypto in-process (the end-to-end runs
over real uvicorn servers are in tests/cloud_service/test_relay.py).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import httpx
import pytest

from veil.client_sdk.ohttp import (
    USER_AGENT,
    AsyncOHTTPClient,
    BinaryRequest,
    BinaryResponse,
    GatewayKeyPair,
    OHTTPClient,
    OHTTPError,
    RelayError,
    UnsupportedSuiteError,
    decapsulate_request,
    encode_key_configs,
    sign_key_configs,
)
from veil.client_sdk.ohttp.keysig import signing_key_from_seed
from veil.client_sdk.ohttp.ohttp import REQUEST_MEDIA_TYPE, RESPONSE_MEDIA_TYPE

RELAY = "http://relay.test/ohttp"
KEYS_URL = "http://relay.test/.well-known/ohttp-gateway"
SIGNING_KEY = signing_key_from_seed(b"\x07" * 32)  # the gateway's; clients pin it on first use


class FakeRelay:
    """An httpx handler playing relay + gateway with real OHTTP crypto; records what it received."""

    def __init__(self, keys: list[GatewayKeyPair]) -> None:
        self.keys = {k.key_id: k for k in keys}
        self.published = list(keys)
        self.requests: list[httpx.Request] = []
        self.failures: list[int | type[Exception]] = []  # statuses or exceptions to produce first

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, int):
                return httpx.Response(
                    failure, json={"error": {"type": "x", "message": "down", "param": None}}
                )
            raise failure("boom", request=request)
        if request.method == "GET":
            body = encode_key_configs([k.config for k in self.published])
            return httpx.Response(200, content=body, headers=sign_key_configs(body, SIGNING_KEY))
        assert request.headers["content-type"] == REQUEST_MEDIA_TYPE
        try:
            plaintext, ctx = decapsulate_request(self.keys, request.content)
        except OHTTPError as exc:
            return httpx.Response(exc.status, json=exc.to_dict())
        inner = BinaryRequest.decode(plaintext)
        echo = {
            "method": inner.method,
            "path": inner.path,
            "authority": inner.authority,
            "headers": [list(f) for f in inner.headers],
            "body": inner.content.decode(),
        }
        response = BinaryResponse(
            201, [("content-type", "application/json"), ("set-cookie", "inner=1")], json.dumps(echo).encode()
        )
        return httpx.Response(
            200,
            content=ctx.encapsulate_response(response.encode()),
            headers={"content-type": RESPONSE_MEDIA_TYPE, "set-cookie": "tracker=abc"},
        )


def _client(relay: FakeRelay, **kwargs) -> OHTTPClient:
    kwargs.setdefault("key_config_url", KEYS_URL)
    return OHTTPClient(
        RELAY,
        target_authority="api.veil",
        transport=httpx.MockTransport(relay),
        retry_backoff_s=0.0,
        **kwargs,
    )


def test_request_round_trip_and_inner_request() -> None:
    relay = FakeRelay([GatewayKeyPair.generate(3)])
    with _client(relay) as client:
        response = client.request("post", "/v1/uploads", json={"text": "hi"}, headers={"X-Task": "qa"})
    assert response.status == 201 and response.header("Content-Type") == "application/json"
    echo = response.json()
    assert echo["method"] == "POST" and echo["path"] == "/v1/uploads" and echo["authority"] == "api.veil"
    assert echo["headers"] == [["content-type", "application/json"], ["x-task", "qa"]]
    assert json.loads(echo["body"]) == {"text": "hi"}


def test_outer_requests_carry_nothing_identifying() -> None:
    relay = FakeRelay([GatewayKeyPair.generate(3)])
    injected = httpx.Client(
        transport=httpx.MockTransport(relay),
        headers={"user-agent": "phone-123", "x-device-id": "d-42"},
        cookies={"session": "s"},
        auth=("user", "pw"),
    )
    client = OHTTPClient(RELAY, key_config_url=KEYS_URL, http_client=injected, retry_backoff_s=0.0)
    client.request("GET", "/v1/models")
    client.request("GET", "/v1/models")  # after responses that set cookies
    posts = [r for r in relay.requests if r.method == "POST"]
    assert len(posts) == 2
    for request in relay.requests:
        expected = {"host", "user-agent", "accept"} | (
            {"content-type", "content-length"} if request.method == "POST" else set()
        )
        assert set(request.headers.keys()) == expected, request.headers
        assert request.headers["user-agent"] == USER_AGENT
    assert posts[0].content[7:] != posts[1].content[7:]  # a new HPKE context per request


def test_retries_use_a_fresh_encapsulation_each_time() -> None:
    relay = FakeRelay([GatewayKeyPair.generate(3)])
    relay.failures = [503, httpx.ConnectError, 502]
    client = _client(relay, key_config=relay.published[0].config, key_config_url=None, retries=3)
    assert client.request("GET", "/x").status == 201
    bodies = [r.content for r in relay.requests]
    assert len(bodies) == 4 and len(set(bodies)) == 4


def test_retries_are_bounded_and_only_for_relay_failures() -> None:
    relay = FakeRelay([GatewayKeyPair.generate(3)])
    relay.failures = [504, 504, 504]
    client = _client(relay, key_config=relay.published[0].config, key_config_url=None, retries=2)
    with pytest.raises(RelayError) as err:
        client.request("GET", "/x")
    assert err.value.status_code == 504 and len(relay.requests) == 3

    relay.requests.clear()
    relay.failures = [400]
    with pytest.raises(RelayError) as err:
        client.request("GET", "/x")
    assert err.value.status_code == 400 and len(relay.requests) == 1

    relay.failures = [httpx.ConnectError] * 3
    with pytest.raises(RelayError) as err:
        client.request("GET", "/x")
    assert err.value.status_code is None and err.value.error_type == "relay_unreachable"

    relay.failures = [httpx.ReadTimeout]  # not a connect error: the relay may have forwarded it
    relay.requests.clear()
    with pytest.raises(RelayError) as err:
        client.request("GET", "/x")
    assert err.value.error_type == "relay_error" and len(relay.requests) == 1


def test_key_config_choice_and_refresh_after_rotation() -> None:
    old, new = GatewayKeyPair.generate(1), GatewayKeyPair.generate(2)
    odd = GatewayKeyPair.generate(9, symmetric_algorithms=[(0x0002, 0x0001)])  # nothing we implement
    relay = FakeRelay([old])
    relay.published = [odd, old]
    client = _client(relay)
    assert client.key_config().key_id == 1
    assert client.request("GET", "/a").status == 201
    # The gateway rotates and retires the old key: the client refetches once and succeeds.
    relay.keys, relay.published = {2: new}, [new]
    assert client.request("GET", "/b").status == 201
    assert client.key_config().key_id == 2
    gets = [r for r in relay.requests if r.method == "GET"]
    assert len(gets) == 2
    relay.published = [odd]
    with pytest.raises(UnsupportedSuiteError):
        client.key_config(refresh=True)


def test_client_argument_validation() -> None:
    config = GatewayKeyPair.generate(1).config
    with pytest.raises(ValueError, match="exactly one"):
        OHTTPClient(RELAY)
    with pytest.raises(ValueError, match="exactly one"):
        OHTTPClient(RELAY, key_config=config, key_config_url=KEYS_URL)
    with pytest.raises(ValueError, match="retries"):
        OHTTPClient(RELAY, key_config=config, retries=-1)
    client = OHTTPClient(RELAY, key_config=config)
    with pytest.raises(ValueError, match="Cookie"):
        client.request("GET", "/", headers={"Cookie": "a=b"})
    with pytest.raises(ValueError, match="not both"):
        client.request("POST", "/", json={}, content=b"x")


def test_async_client() -> None:
    relay = FakeRelay([GatewayKeyPair.generate(5)])
    relay.failures = [503]

    async def main() -> list[int]:
        async with AsyncOHTTPClient(
            RELAY, key_config_url=KEYS_URL, transport=httpx.MockTransport(relay), retry_backoff_s=0.0
        ) as client:
            responses = await asyncio.gather(*(client.request("GET", f"/{i}") for i in range(4)))
        return [r.json()["path"] for r in responses]

    assert sorted(asyncio.run(main())) == ["/0", "/1", "/2", "/3"]
    assert all(r.headers["user-agent"] == USER_AGENT and "cookie" not in r.headers for r in relay.requests)


def test_importing_the_client_pulls_in_no_heavy_packages() -> None:
    code = (
        "import sys, veil.client_sdk.ohttp, veil.client_sdk.ohttp.client;"
        "print(sorted(m for m in ('torch', 'transformers', 'fastapi', 'sqlalchemy', 'starlette', 'scipy')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
