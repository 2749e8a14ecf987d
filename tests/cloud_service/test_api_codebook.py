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


def _post(api, key: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(api.url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def test_codebook_losses_are_the_per_prototype_losses_in_one_request(stack) -> None:
    api, relay, key, store = stack
    book = store.publish(retire_by_counts(init_codebook(5, 1, (1, 64), seed=4), [3, 0, 2, 1, 1]))
    example = {"task": "next_word", "text": "the cat sat on the", "label": "mat"}
    r = _post(api, key, "/v1/codebook/losses", {**example, "version": book.version})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "codebook_losses" and body["version"] == book.version
    assert [v is None for v in body["losses"]] == [not a for a in book.active]
    for k in np.flatnonzero(book.active):  # each equals the loss request with the prototype itself
        one = _post(
            api, key, "/v1/embedding-gradients", {**example, "embedding": book.prototypes[k].tolist()}
        )
        assert body["losses"][k] == pytest.approx(one.json()["loss"], rel=1e-5)
    with OHTTPClient(relay.url + "/ohttp", key_config_url=relay.url + "/.well-known/ohttp-gateway") as c:
        inner = c.request("POST", "/v1/codebook/losses", json={**example, "version": book.version})
    through = inner.json()["losses"]
    assert inner.status == 200 and [v is None for v in through] == [v is None for v in body["losses"]]
    assert [v for v in through if v is not None] == pytest.approx(
        [v for v in body["losses"] if v is not None]
    )


@pytest.mark.parametrize(
    ("change", "status", "where"),
    [
        ({"version": "0" * 16}, 409, "version"),
        ({"version": "not-hex"}, 400, "version"),
        ({"label": "two words"}, 400, "label"),
        ({"task": "classification", "label": "like"}, 400, "task"),  # tiny-llama has no classes
        ({"embedding": [[0.0] * 64]}, 400, "embedding"),  # unknown field: nothing is sent but the example
    ],
)
def test_codebook_losses_refuse_bad_requests(stack, change: dict, status: int, where: str) -> None:
    api, _, key, store = stack
    book = store.publish(init_codebook(3, 1, (1, 64), seed=5))
    body = {"task": "next_word", "text": "a b c", "label": "d", "version": book.version, **change}
    r = _post(api, key, "/v1/codebook/losses", body)
    assert r.status_code == status, r.text
    assert where in r.text


def test_a_loss_request_without_a_gradient_answers_the_same_loss(stack) -> None:
    api, _, key, _ = stack
    body = {"task": "next_word", "text": "the cat sat on the", "label": "mat", "embedding": [[0.1] * 64]}
    full = _post(api, key, "/v1/embedding-gradients", body).json()
    alone = _post(api, key, "/v1/embedding-gradients", {**body, "encoding": "none"})
    assert alone.status_code == 200
    assert set(alone.json()) == {"object", "model", "loss"}  # no gradient computed or sent
    assert alone.json()["loss"] == pytest.approx(full["loss"], rel=1e-5)
    assert _post(api, key, "/v1/embedding-gradients", {**body, "encoding": "hex"}).status_code == 400
