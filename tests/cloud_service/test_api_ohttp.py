"""Phones through a real relay to the API's gateway: no API key, no origin, replays refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest

from veil.client_sdk.api import PhoneAPI, VeilAPIError
from veil.client_sdk.ohttp import AsyncOHTTPClient, OHTTPClient, decode_key_configs, encapsulate_request
from veil.client_sdk.ohttp.bhttp import BinaryRequest
from veil.cloud_service.app import create_app, load_served_model
from veil.cloud_service.background import BackgroundServer
from veil.cloud_service.config import ServiceConfig
from veil.cloud_service.relay import RelayConfig, create_relay_app
from veil.cloud_service.store import count_uploads, make_engine, session_factory

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(data_dir: str, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("ohttp-api")
    config = ServiceConfig(data_dir=root, model="tiny-llama")
    served = load_served_model(ServiceConfig(data_dir=Path(data_dir), model="tiny-llama"))
    with BackgroundServer(create_app(config, preloaded=served)) as api:
        relay_app = create_relay_app(RelayConfig(gateway_url=api.url, hold_window_s=0.02))
        with BackgroundServer(relay_app) as relay:
            yield api, relay, session_factory(make_engine(None, root))


def _client(api, relay) -> OHTTPClient:
    return OHTTPClient(relay.url + "/ohttp", key_config_url=relay.url + "/.well-known/ohttp-gateway")


def test_phone_routes_work_through_the_relay_without_a_key(stack) -> None:
    api, relay, sessions = stack
    with sessions() as s:
        before = count_uploads(s)

    async def phone() -> tuple[list, float, dict]:
        async with AsyncOHTTPClient(
            relay.url + "/ohttp", key_config_url=relay.url + "/.well-known/ohttp-gateway"
        ) as transport:
            api_ = PhoneAPI(transport, "tiny-llama")
            models = await api_.models()
            emb = np.full((1, 64), 0.1)
            loss, grad = await api_.embedding_gradient("next_word", "a cup of", "tea", emb)
            ups = await asyncio.gather(
                *[api_.upload("next_word", f"text number {i}", "word", emb) for i in range(5)]
            )
            return models, loss, {"grad": grad, "ups": ups}

    models, loss, out = asyncio.run(phone())
    assert models[0]["embedding_shape"] == [1, 64]
    assert np.isfinite(loss) and out["grad"].shape == (1, 64)
    assert [u["status"] for u in out["ups"]] == ["created"] * 5
    with sessions() as s:
        assert count_uploads(s) == before + 5
    # the same routes without the gateway and without a key are refused
    assert httpx.get(api.url + "/v1/models").status_code == 401


def test_inner_errors_come_back_encapsulated_as_json(stack) -> None:
    api, relay, _ = stack
    with _client(api, relay) as client:
        r = client.request("POST", "/v1/uploads", json={"task": "next_word", "text": "x"})
        assert r.status == 400 and r.json()["error"]["param"] == "Idempotency-Key"
        r = client.request(
            "POST",
            "/v1/embedding-gradients",
            json={"task": "next_word", "text": "x", "label": "y", "embedding": [[float("nan")] * 64]},
        )
        assert r.status == 400
        r = client.request("POST", "/ohttp", content=b"x", headers={"content-type": "message/ohttp-req"})
        assert r.status == 403 and r.json()["error"]["code"] == "route_not_allowed"  # no nesting


def test_replayed_unknown_key_and_garbage_are_refused(stack) -> None:
    api, relay, _ = stack
    config = decode_key_configs(httpx.get(api.url + "/.well-known/ohttp-gateway").content)[0]
    inner = BinaryRequest("GET", "https", "veil.invalid", "/v1/models", [], b"").encode()
    sealed, _ = encapsulate_request(config, inner)
    headers = {"content-type": "message/ohttp-req"}
    assert httpx.post(relay.url + "/ohttp", content=sealed, headers=headers).status_code == 200
    replay = httpx.post(relay.url + "/ohttp", content=sealed, headers=headers)
    assert replay.status_code == 400 and replay.json()["error"]["type"]
    unknown = bytes([(sealed[0] + 1) % 256]) + sealed[1:]
    r = httpx.post(api.url + "/ohttp", content=unknown, headers=headers)
    assert r.status_code == 400 and "key" in r.json()["error"]["message"].lower()
    assert httpx.post(api.url + "/ohttp", content=b"\x00" * 40, headers=headers).status_code == 400
    assert (
        httpx.post(api.url + "/ohttp", content=sealed, headers={"content-type": "text/plain"}).status_code
        == 415
    )


def test_phone_api_raises_typed_errors(stack) -> None:
    api, relay, _ = stack

    async def bad() -> None:
        async with AsyncOHTTPClient(
            relay.url + "/ohttp", key_config_url=relay.url + "/.well-known/ohttp-gateway"
        ) as t:
            await PhoneAPI(t, "tiny-llama").embedding_gradient("next_word", "x", "y", np.zeros((2, 64)))

    with pytest.raises(VeilAPIError) as err:
        asyncio.run(bad())
    assert err.value.status == 400 and err.value.param == "embedding_b64"


def test_rotated_keys_are_picked_up_and_old_keys_keep_working(stack) -> None:
    from veil.cloud_service.gateway_setup import build_gateway

    api, _, sessions = stack
    headers = {"content-type": "message/ohttp-req"}
    old = decode_key_configs(httpx.get(api.url + "/.well-known/ohttp-gateway").content)[0]
    # another process (``veil gateway rotate``) rotates the keys in the shared store
    config = ServiceConfig(
        data_dir=Path(api.server.config.app.state.veil.config.data_dir), model="tiny-llama"
    )
    new = build_gateway(config, sessions).keyring.rotate()
    assert new.key_id != old.key_id
    inner = BinaryRequest("GET", "https", "veil.invalid", "/v1/models", [], b"").encode()
    for key_config in (new, old):
        sealed, context = encapsulate_request(key_config, inner)
        r = httpx.post(api.url + "/ohttp", content=sealed, headers=headers)
        assert r.status_code == 200, r.text
        assert b"tiny-llama" in context.decapsulate_response(r.content)
