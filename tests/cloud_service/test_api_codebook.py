"""``GET /v1/codebook`` on a real server: 404 until published, the published codebook byte for byte
(directly with an API key and through a real relay and the OHTTP gateway), and new versions without a
restart."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from veil.client_sdk.codebook_wire import codebook_from_json
from veil.client_sdk.ohttp import OHTTPClient
from veil.cloud_service.app import create_app, load_served_model
from veil.cloud_service.background import BackgroundServer
from veil.cloud_service.codebooks import CodebookStore, init_codebook, retire_by_counts
from veil.cloud_service.config import ServiceConfig
from veil.cloud_service.relay import RelayConfig, create_relay_app
from veil.cloud_service.store import create_api_key, make_engine, migrate, session_factory

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(data_dir: str, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("codebook-api")
    engine = make_engine(None, root)
    migrate(engine)
    key = create_api_key(session_factory(engine)(), "tests")
    served = load_served_model(ServiceConfig(data_dir=Path(data_dir), model="tiny-llama"))
    app = create_app(ServiceConfig(data_dir=root, model="tiny-llama"), preloaded=served)
    with (
        BackgroundServer(app) as api,
        BackgroundServer(create_relay_app(RelayConfig(gateway_url=api.url))) as relay,
    ):
        yield api, relay, key, CodebookStore(root)


def _direct(api, key: str) -> httpx.Response:
    return httpx.get(api.url + "/v1/codebook", headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _through_relay(relay):  # -> inner response
    with OHTTPClient(relay.url + "/ohttp", key_config_url=relay.url + "/.well-known/ohttp-gateway") as c:
        return c.request("GET", "/v1/codebook")


def test_codebook_route_serves_what_is_published(stack) -> None:
    api, relay, key, store = stack
    store.path.unlink(missing_ok=True)
    missing = _direct(api, key)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "codebook_not_found"
    inner = _through_relay(relay)
    assert inner.status == 404 and inner.json()["error"]["type"] == "not_found_error"

    book = store.publish(init_codebook(6, 2, (1, 64), seed=3))
    body = _direct(api, key).json()
    assert body["object"] == "codebook" and body["model"] == "tiny-llama"
    assert (body["version"], body["size"], body["k_min"], body["n_tokens"], body["dim"]) == (
        book.version, 6, 2, 1, 64,
    )  # fmt: skip
    inner = _through_relay(relay)
    assert inner.status == 200 and inner.json() == body  # the same bytes through the gateway
    back = codebook_from_json(inner.json())
    assert back.version == book.version
    np.testing.assert_array_equal(back.prototypes, book.prototypes)

    # a new version is served at once, without a restart
    smaller = store.publish(retire_by_counts(book, [5, 0, 3, 1, 4, 2]))
    assert smaller.version != book.version
    again = codebook_from_json(_through_relay(relay).json())
    assert again.version == smaller.version and again.active.tolist() == [1, 0, 1, 0, 1, 1]
    assert httpx.get(api.url + "/v1/codebook", timeout=30).status_code == 401  # no key, no gateway


def test_a_codebook_for_another_shape_is_not_served(stack) -> None:
    api, _, key, store = stack
    store.publish(init_codebook(3, 1, (2, 64)))
    r = _direct(api, key)
    assert r.status_code == 404 and "[2, 64]" in r.json()["error"]["message"]
