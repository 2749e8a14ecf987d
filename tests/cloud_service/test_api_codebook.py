"""``GET /v1/codebook`` on a real server: 404 until published, the published codebook byte for byte
(directly with an API key and through a real relay and the OHTTP gateway), and new versions without a
restart; ``PUT /v1/codebook`` with an operator key, refused to other keys, to phones and to bodies that
do not fit the served model; ``codebook_version`` on the phone routes, refused with a 409 when stale,
and a phone that learns of a new codebook from that refusal alone."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from veil.client_sdk.api import new_idempotency_key
from veil.client_sdk.client import CodebookMismatchError, VeilClient
from veil.client_sdk.codebook_wire import codebook_from_json, codebook_to_json
from veil.client_sdk.ohttp import AsyncOHTTPClient, OHTTPClient
from veil.client_sdk.param_store import MemoryParamStore
from veil.cloud_service.api.deps import CallerInfo, require_operator
from veil.cloud_service.background import BackgroundServer
from veil.cloud_service.codebooks import CodebookStore, init_codebook, retire_by_counts
from veil.cloud_service.errors import APIError
from veil.cloud_service.relay import RelayConfig, create_relay_app
from veil.cloud_service.store import count_uploads, create_api_key, make_engine, session_factory

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(keyed_app, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("codebook-api")
    app, key = keyed_app(root, "tiny-llama")
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


# ------------------------------------------------------------------ PUT /v1/codebook (operator keys)
@pytest.fixture(scope="module")
def operator_key(stack) -> str:
    with session_factory(make_engine(None, stack[3].path.parent))() as s:
        return create_api_key(s, "flower server", operator=True)


def _put(api, key: str | None, body: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.put(api.url + "/v1/codebook", json=body, headers=headers, timeout=30)


def _refusal(r: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert (err["param"], err["code"]) == (param, code), err
    return err["message"]


def test_an_operator_key_publishes_a_codebook_that_get_then_serves(stack, operator_key: str) -> None:
    api, relay, key, store = stack
    store.publish(init_codebook(4, 1, (1, 64), seed=20))
    book = init_codebook(6, 2, (1, 64), seed=21)
    r = _put(api, operator_key, {**codebook_to_json(book), "model": "tiny-llama"})
    assert r.status_code == 200, r.text
    served = _direct(api, key).json()
    assert r.json() == served and served["version"] == book.version  # the answer is the new GET body
    assert store.current().version == book.version  # in the data dir, as `veil codebook init` leaves it
    assert codebook_from_json(_through_relay(relay).json()).version == book.version  # phones see it
    np.testing.assert_array_equal(codebook_from_json(served).prototypes, book.prototypes)

    # "model" may be left out; GET's body (with it) can be sent back as it is
    retired = retire_by_counts(book, [3, 0, 2, 2, 1, 2])
    assert _put(api, operator_key, codebook_to_json(retired)).json()["version"] == retired.version
    assert _put(api, operator_key, _direct(api, key).json()).status_code == 200
    assert store.current().version == retired.version


def test_publishing_takes_an_operator_key(stack) -> None:
    api, _, key, store = stack
    before = store.publish(init_codebook(4, 1, (1, 64), seed=22))
    body = codebook_to_json(init_codebook(5, 1, (1, 64), seed=23))
    message = _refusal(_put(api, key, body), 403, code="operator_key_required")
    assert "--operator" in message
    assert _put(api, key, body).json()["error"]["type"] == "permission_error"
    _refusal(_put(api, None, body), 401, code="missing_api_key")
    # the key is checked first: a plain key learns nothing about the body
    _refusal(_put(api, key, {"nonsense": True}), 403, code="operator_key_required")
    assert store.current().version == before.version


def test_a_phone_cannot_publish_through_the_gateway(stack) -> None:
    _, relay, _, store = stack
    before = store.publish(init_codebook(4, 1, (1, 64), seed=24))
    body = codebook_to_json(init_codebook(5, 1, (1, 64), seed=25))
    with OHTTPClient(relay.url + "/ohttp", key_config_url=relay.url + "/.well-known/ohttp-gateway") as c:
        inner = c.request("PUT", "/v1/codebook", json=body)
    assert inner.status == 403 and inner.json()["error"]["code"] == "route_not_allowed"
    assert store.current().version == before.version
    # and were the route ever let through, a gateway caller holds no operator key: refused before anything
    with pytest.raises(APIError) as refused:
        require_operator(CallerInfo(via_gateway=True))
    assert (refused.value.status, refused.value.code) == (403, "operator_key_required")


def test_a_codebook_of_another_shape_or_model_is_refused(stack, operator_key: str) -> None:
    api, _, _, store = stack
    before = store.publish(init_codebook(4, 1, (1, 64), seed=26))
    wide = codebook_to_json(init_codebook(3, 1, (2, 64), seed=27))
    message = _refusal(_put(api, operator_key, wide), 400, param="prototypes")
    assert "[2, 64]" in message and "[1, 64]" in message and "tiny-llama" in message
    narrow = codebook_to_json(init_codebook(3, 1, (1, 32), seed=27))
    _refusal(_put(api, operator_key, narrow), 400, param="prototypes")
    fits = codebook_to_json(init_codebook(3, 1, (1, 64), seed=28))
    message = _refusal(_put(api, operator_key, {**fits, "model": "another-model"}), 400, param="model")
    assert "another-model" in message and "tiny-llama" in message
    assert store.current().version == before.version


GOOD = codebook_to_json(init_codebook(3, 2, (1, 64), seed=29))
MALFORMED = {  # body -> the param the 400 names
    "version does not match the contents": ({**GOOD, "version": "0" * 16}, "version"),
    "k_min changed: another version": ({**GOOD, "k_min": 1}, "version"),
    "prototypes of the wrong length": (
        {**GOOD, "prototypes_b64": GOOD["prototypes_b64"][:-8]},
        "prototypes_b64",
    ),
    "prototypes not base64": ({**GOOD, "prototypes_b64": "not base64!"}, "prototypes_b64"),
    "active of the wrong length": ({**GOOD, "active": [True, True]}, "active"),
    "active not booleans": ({**GOOD, "active": [1, 1, 1]}, "active.0"),
    "no usable prototype": ({**GOOD, "active": [False] * 3}, None),
    "k_min as a string": ({**GOOD, "k_min": "2"}, "k_min"),
    "size zero": ({**GOOD, "size": 0}, "size"),
    "version not hex": ({**GOOD, "version": "not-a-version"}, "version"),
    "unknown field": ({**GOOD, "extra": 1}, "extra"),
    "another object": ({**GOOD, "object": "model"}, "object"),
    "field missing": ({k: v for k, v in GOOD.items() if k != "prototypes_b64"}, "prototypes_b64"),
    "not an object": ([GOOD], None),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_codebook_is_a_400_and_publishes_nothing(stack, operator_key: str, case: str) -> None:
    api, _, _, store = stack
    before = store.publish(init_codebook(4, 1, (1, 64), seed=30))
    body, param = MALFORMED[case]
    r = _put(api, operator_key, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.text
    assert store.current().version == before.version


def test_a_body_that_is_not_json_is_a_400(stack, operator_key: str) -> None:
    api, _, _, _ = stack
    headers = {"Authorization": f"Bearer {operator_key}", "content-type": "application/json"}
    r = httpx.put(api.url + "/v1/codebook", content=b"{", headers=headers, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["message"] == "request body is not valid JSON"


# ------------------------------------------------------------------ codebook_version on the phone routes
STALE = "0123456789abcdef"
EXAMPLE = {"task": "next_word", "text": "the cat sat on the"}
EMBEDDING = [[0.1] * 64]
VERSIONED = {  # every route whose body may name the codebook of the phone's choice, with a valid body
    "/v1/uploads": {**EXAMPLE, "label": "mat", "embedding": EMBEDDING},
    "/v1/embedding-gradients": {**EXAMPLE, "label": "mat", "embedding": EMBEDDING, "encoding": "none"},
    "/v1/label-losses": {**EXAMPLE, "labels": ["mat", "hat"], "embedding": EMBEDDING},
    "/v1/chat/completions": {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1,
        "user_embedding": EMBEDDING,
    },
}


@pytest.fixture(scope="module")
def sessions(stack):
    return session_factory(make_engine(None, stack[3].path.parent))


def _stored(sessions) -> int:
    with sessions() as s:
        return count_uploads(s)


def _send(api, key: str, path: str, version: str, **change) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": new_idempotency_key()}
    body = {**VERSIONED[path], "codebook_version": version, **change}
    return httpx.post(api.url + path, json=body, headers=headers, timeout=60)


def _refused(r: httpx.Response, sent: str, published: str) -> None:
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert (err["type"], err["code"], err["param"]) == (
        "conflict_error", "codebook_version_mismatch", "codebook_version",
    )  # fmt: skip
    assert sent in err["message"] and published in err["message"]


@pytest.mark.parametrize("path", list(VERSIONED))
def test_a_stale_codebook_version_is_refused_before_anything_runs(stack, sessions, path: str) -> None:
    api, _, key, store = stack
    book = store.publish(init_codebook(4, 1, (1, 64), seed=6))
    before = _stored(sessions)
    _refused(_send(api, key, path, STALE), STALE, book.version)
    # checked first: a body that would fail every later check is still answered 409
    _refused(_send(api, key, path, STALE, model="another-model"), STALE, book.version)
    store.path.unlink()
    _refused(_send(api, key, path, book.version), book.version, "none is published")
    store.publish(init_codebook(3, 1, (2, 64)))  # one the served model cannot use: as good as none
    _refused(_send(api, key, path, book.version), book.version, "none is published")
    assert _stored(sessions) == before  # nothing stored
    store.publish(book)
    accepted = _send(api, key, path, book.version)
    assert accepted.status_code == (201 if path == "/v1/uploads" else 200), accepted.text
    assert _stored(sessions) == before + (path == "/v1/uploads")
    assert _send(api, key, path, "0123456789ABCDEF").status_code == 400  # 16 lower-case hex digits


def test_a_stale_upload_through_the_gateway_is_refused_and_not_stored(stack, sessions) -> None:
    """The gateway serves inner uploads itself (its fast path): the same check, the same answer."""
    _, relay, _, store = stack
    book = store.publish(init_codebook(4, 1, (1, 64), seed=7))
    before = _stored(sessions)
    body = {**VERSIONED["/v1/uploads"], "codebook_version": STALE}
    with OHTTPClient(relay.url + "/ohttp", key_config_url=relay.url + "/.well-known/ohttp-gateway") as c:
        stale = c.request(
            "POST", "/v1/uploads", json=body, headers={"idempotency-key": new_idempotency_key()}
        )
        body["codebook_version"] = book.version
        fresh = c.request(
            "POST", "/v1/uploads", json=body, headers={"idempotency-key": new_idempotency_key()}
        )
    assert stale.status == 409 and stale.json()["error"]["code"] == "codebook_version_mismatch"
    assert STALE in stale.json()["error"]["message"] and book.version in stale.json()["error"]["message"]
    assert fresh.status == 201
    assert _stored(sessions) == before + 1


class _Counting:
    """A transport that records every inner request a phone makes, then sends it."""

    def __init__(self, transport: AsyncOHTTPClient) -> None:
        self.transport = transport
        self.sent: list[str] = []

    async def request(self, method: str, path: str, **kwargs):  # -> the inner response
        self.sent.append(f"{method} {path}")
        return await self.transport.request(method, path, **kwargs)


def test_a_phone_learns_of_a_new_codebook_from_the_refusal_itself(stack, sessions) -> None:
    _, relay, _, store = stack
    store.publish(init_codebook(4, 1, (1, 64), seed=8))
    examples = [("next_word", "the cat sat on the", "mat"), ("next_word", "a cup of", "tea")]
    uses = {
        "POST /v1/uploads": lambda phone: phone.upload("next_word", "a cup of", "tea"),
        "POST /v1/label-losses": lambda phone: phone.predict("next_word", "a cup of", ["tea", "milk", "dog"]),
        "POST /v1/chat/completions": lambda phone: phone.chat(
            [{"role": "user", "content": "hi"}], max_tokens=1
        ),
    }

    async def go() -> tuple[list[str], list[str], str, str]:
        url = relay.url
        async with AsyncOHTTPClient(url + "/ohttp", key_config_url=url + "/.well-known/ohttp-gateway") as t:
            counting = _Counting(t)
            phone = VeilClient(counting, MemoryParamStore(), model="tiny-llama", family="prototype")
            old = (await phone.choose_prototype(examples)).version
            counting.sent.clear()
            for use in uses.values():  # one request each: no GET /v1/codebook before it
                await use(phone)
            served = list(counting.sent)
            new = store.publish(retire_by_counts(store.current(), [1, 1, 1, 0])).version
            counting.sent.clear()
            for use in uses.values():
                with pytest.raises(CodebookMismatchError) as err:
                    await use(phone)
                assert old in str(err.value) and new in str(err.value)
            return served, list(counting.sent), old, new

    before = _stored(sessions)
    served, refused, old, new = asyncio.run(go())
    assert served == refused == list(uses)  # the refusal costs no extra round trip, and is not retried
    assert old != new and _stored(sessions) == before + 1  # the stale upload stored nothing


def test_a_configured_operator_key_must_be_long_and_stays_out_of_logs(tmp_path) -> None:
    from veil.cloud_service.config import ServiceConfig

    with pytest.raises(ValueError, match="VEIL_FLEET_API_KEY must be at least 32 characters"):
        ServiceConfig(data_dir=tmp_path, operator_key="veil_sk_short")
    config = ServiceConfig(data_dir=tmp_path, operator_key="veil_sk_" + "k" * 40)
    assert "kkkk" not in repr(config)  # accepted end to end in tests/deploy/test_flower_deployment.py
