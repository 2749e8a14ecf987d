"""The anonymous channel around the real API: relay authentication, the inner allow-list, metrics that
cannot tell inner requests apart, and padding to size buckets, with a ``veil relay`` process."""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

import httpx
import numpy as np
import pytest

from veil.client_sdk.api import embedding_field, new_idempotency_key
from veil.client_sdk.ohttp import BinaryRequest, OHTTPClient, decode_key_configs, encapsulate_request
from veil.client_sdk.ohttp.padding import DEFAULT_PADDING_BUCKETS
from veil.cloud_service.app import create_app, load_served_model
from veil.cloud_service.background import BackgroundServer, RelayProcess
from veil.cloud_service.config import ServiceConfig
from veil.cloud_service.inner_allowlist import InnerRequestRefusedError, screen
from veil.cloud_service.metrics import create_metrics_app
from veil.cloud_service.relay_auth import RELAY_AUTH_HEADER, relay_auth_header
from veil.cloud_service.store import count_uploads, create_api_key, make_engine, session_factory

pytestmark = pytest.mark.integration

SECRET = secrets.token_urlsafe(32)
OHTTP_REQ = {"content-type": "message/ohttp-req"}


@pytest.fixture(scope="module")
def stack(data_dir: str, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("ohttp-channel")
    config = ServiceConfig(data_dir=root, model="tiny-llama", relay_secret=SECRET.encode())
    served = load_served_model(ServiceConfig(data_dir=Path(data_dir), model="tiny-llama"))
    app = create_app(config, preloaded=served)
    with (
        BackgroundServer(app) as api,
        BackgroundServer(create_metrics_app(app.state.metrics)) as ops,
        RelayProcess(api.url, relay_secret=SECRET) as relay,
    ):
        yield api, ops, relay, session_factory(make_engine(None, root))


class Recording(httpx.HTTPTransport):
    """Records the sizes of every encapsulated request and response, as the relay sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[tuple[int, int]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path == "/ohttp":
            self.sizes.append((len(request.content), len(response.read())))
        return response


def _phone(relay, transport: httpx.BaseTransport | None = None) -> OHTTPClient:
    url = relay.url
    return OHTTPClient(url + "/ohttp", key_config_url=url + "/.well-known/ohttp-gateway", transport=transport)


def _upload(client: OHTTPClient, key: str, text: str = "a cup of", headers: dict | None = None):
    body = {"model": "tiny-llama", "task": "next_word", "text": text, "label": "tea"}
    body.update(embedding_field("embedding", np.full((1, 64), 0.25)))
    return client.request(
        "POST", "/v1/uploads", json=body, headers={"idempotency-key": key, **(headers or {})}
    )


def _uploads(sessions) -> int:
    with sessions() as s:
        return count_uploads(s)


def test_ohttp_answers_only_its_relay_and_refusals_store_nothing(stack) -> None:
    api, _, relay, sessions = stack
    config = decode_key_configs(httpx.get(api.url + "/.well-known/ohttp-gateway").content)[0]
    content = json.dumps(
        {"model": "tiny-llama", "task": "next_word", "text": "direct", "label": "tea"}
        | embedding_field("embedding", np.zeros((1, 64)))
    ).encode()
    fields = [("content-type", "application/json"), ("idempotency-key", new_idempotency_key())]
    inner = BinaryRequest("POST", "https", "veil.invalid", "/v1/uploads", fields, content)
    sealed, context = encapsulate_request(config, inner.encode())
    before = _uploads(sessions)
    forged = {"t=1, mac=AAAA", relay_auth_header(b"w" * 32, sealed), relay_auth_header(SECRET.encode(), b"x")}
    for value in [None, *forged]:
        headers = OHTTP_REQ if value is None else {**OHTTP_REQ, RELAY_AUTH_HEADER: value}
        r = httpx.post(api.url + "/ohttp", content=sealed, headers=headers)
        assert r.status_code == 401, r.text
        assert (
            r.json()["error"]["type"] == "authentication_error" and r.json()["error"]["code"] == "relay_auth"
        )
    assert _uploads(sessions) == before
    # The same bytes signed as the relay signs them are served: nothing above had even been opened
    # (a decapsulated request would now be refused as a replay).
    signed = {**OHTTP_REQ, RELAY_AUTH_HEADER: relay_auth_header(SECRET.encode(), sealed)}
    r = httpx.post(api.url + "/ohttp", content=sealed, headers=signed)
    assert r.status_code == 200 and b'"created"' in context.decapsulate_response(r.content)
    assert _uploads(sessions) == before + 1
    with _phone(relay) as phone:  # and the relay process signs with the secret from its environment
        assert _upload(phone, new_idempotency_key()).status == 201
    assert _uploads(sessions) == before + 2


def test_only_phone_routes_and_their_headers_pass_inside(stack) -> None:
    api, _, relay, sessions = stack
    with sessions() as s:
        api_key = create_api_key(s, "channel-test")
    before = _uploads(sessions)
    with _phone(relay) as phone:
        assert phone.request("GET", "/v1/models").status == 200
        for method, path in [
            ("GET", "/health"),
            ("GET", "/metrics"),
            ("GET", "/docs"),
            ("GET", "/v1/uploads"),
            ("DELETE", "/v1/models"),
            ("GET", "/v1/models?limit=1"),
            ("POST", "/v1/uploads/../uploads"),
            ("POST", "/ohttp"),
        ]:
            r = phone.request(method, path, content=b"{}")
            assert r.status == 403 and r.json()["error"]["code"] == "route_not_allowed", (method, path)
        denied = phone.request("GET", "/v1/models", headers={"authorization": f"Bearer {api_key}"})
        assert denied.status == 400 and denied.json()["error"]["param"] == "authorization"
        spoof = _upload(phone, new_idempotency_key(), headers={"x-forwarded-for": "203.0.113.9"})
        assert spoof.status == 400 and spoof.json()["error"]["code"] == "header_not_allowed"
    assert _uploads(sessions) == before


def test_screen_keeps_three_headers_and_drops_the_rest() -> None:
    headers = [
        ("host", "evil.example"),
        ("user-agent", "phone-123"),
        ("accept-language", "fr-CH"),
        ("content-length", "2"),
        ("content-type", "application/json"),
        ("accept", "application/json"),
        ("idempotency-key", "k" * 20),
    ]
    assert screen("POST", "/v1/uploads", headers) == headers[4:]
    with pytest.raises(InnerRequestRefusedError, match="cookie"):
        screen("GET", "/v1/models", [("cookie", "sid=1")])
    with pytest.raises(InnerRequestRefusedError) as refused:
        screen("get", "/v1/models/", [])
    assert refused.value.status == 403


def _scrape(ops) -> dict[str, float]:
    """Every sample but timings (the relay times its own requests anyway) and creation timestamps."""
    text = httpx.get(ops.url + "/metrics").text
    samples = {}
    for line in text.splitlines():
        name = re.split(r"[{ ]", line, maxsplit=1)[0]
        if line.startswith("#") or name.endswith("_created") or name.startswith("veil_http_request_seconds"):
            continue
        samples[line.rsplit(" ", 1)[0]] = float(line.rsplit(" ", 1)[1])
    return samples


def test_metrics_live_on_the_operator_port_and_cannot_tell_inner_requests_apart(stack) -> None:
    api, ops, relay, _ = stack
    assert httpx.get(api.url + "/metrics").status_code == 404
    assert httpx.get(ops.url + "/health").json() == {"status": "ok"}
    key = new_idempotency_key()
    chat = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    gradient = {"model": "tiny-llama", "task": "next_word", "text": "a cup of", "label": "tea"}
    gradient.update(embedding_field("embedding", np.zeros((1, 64))))
    with _phone(relay) as phone:
        phone.request("GET", "/v1/models")  # keys fetched and pinned before the first scrape

        def delta(call) -> dict[str, float]:
            before = _scrape(ops)
            call()
            after = _scrape(ops)
            return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}

        created = delta(lambda: _upload(phone, key))
        duplicate = delta(lambda: _upload(phone, key))
        models = delta(lambda: phone.request("GET", "/v1/models"))
        refused = delta(lambda: phone.request("GET", "/health"))
        talk = delta(lambda: phone.request("POST", "/v1/chat/completions", json=chat))
        grad = delta(lambda: phone.request("POST", "/v1/embedding-gradients", json=gradient))
    assert created == duplicate == models == refused  # one more ok /ohttp, nothing else
    assert created == {
        'veil_http_requests_total{route="/ohttp",status="200"}': 1.0,
        'veil_ohttp_requests_total{outcome="ok"}': 1.0,
    }
    assert talk == grad  # model work is counted, but not by kind
    text = httpx.get(ops.url + "/metrics").text
    assert "/v1/" not in text and "created" not in text.replace("_created", "") and "chat" not in text


def test_encapsulated_sizes_land_on_buckets(stack) -> None:
    _, _, relay, _ = stack
    recording = Recording()
    chat = {"model": "tiny-llama", "max_tokens": 2, "temperature": 0}
    key = new_idempotency_key()
    with _phone(relay, recording) as phone:
        phone.request(
            "POST", "/v1/chat/completions", json=chat | {"messages": [{"role": "user", "content": "hi"}]}
        )
        long_prompt = [{"role": "user", "content": "tell me about tea " * 150}]
        phone.request("POST", "/v1/chat/completions", json=chat | {"messages": long_prompt})
        assert _upload(phone, key).status == 201
        assert _upload(phone, key).status == 200  # duplicate
    (short_req, short_res), (long_req, long_res), (up_req, up_res), (dup_req, dup_res) = recording.sizes
    for size in (short_req, short_res, long_req, long_res, up_req, up_res, dup_req, dup_res):
        assert size in DEFAULT_PADDING_BUCKETS
    assert short_req == up_req == dup_req == 1024 and long_req == 4096
    assert short_res == long_res and up_res == dup_res  # created and duplicate look alike
