"""The phone routes the OHTTP gateway serves itself answer as the FastAPI routes do, on a real server.

Every inner request is sent three ways: through the gateway's direct path (``GATEWAY_ROUTES``), through
the gateway with that table emptied (the in-process ASGI pass, ``call_app``), and to the plain route
with an API key. The three statuses and JSON bodies must be equal, for successes and for every error:
validation (with its ``param``, for bodies FastAPI and pydantic's JSON parser word differently), model,
codebook, idempotency, and an unexpected exception (the app's JSON 500, the gateway still serving).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from veil.client_sdk.api import embedding_field, new_idempotency_key
from veil.client_sdk.ohttp import OHTTPClient
from veil.cloud_service.api.routes import ohttp
from veil.cloud_service.background import BackgroundServer
from veil.cloud_service.codebooks import CodebookStore, init_codebook, retire_by_counts
from veil.cloud_service.inner_allowlist import PHONE_ROUTES

pytestmark = pytest.mark.integration

MODEL = "tiny-llama"
JSON = {"content-type": "application/json"}
EXAMPLE = {"task": "next_word", "text": "the cat sat on the"}
EMBEDDING = np.random.default_rng(0).normal(0.0, 0.5, (1, 64)).astype(np.float32)
LOSSES = {**EXAMPLE, "labels": ["mat", "hat", "dog"], "embedding": EMBEDDING.tolist()}
GRADIENT = {**EXAMPLE, "label": "mat", "embedding": EMBEDDING.tolist()}
UPLOAD = {**EXAMPLE, "label": "mat", "embedding": EMBEDDING.tolist()}
COMPACT = {**EXAMPLE, "labels": ["mat", "hat"], "model": MODEL, **embedding_field("embedding", EMBEDDING)}
STALE = "0123456789abcdef"


@pytest.fixture(scope="module")
def stack(keyed_app, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("direct-routes")
    app, key = keyed_app(root, MODEL)
    # No relay: phones reach the gateway on loopback (no relay secret is configured).
    with (
        BackgroundServer(app) as api,
        OHTTPClient(api.url + "/ohttp", key_config_url=api.url + "/.well-known/ohttp-gateway") as phone,
    ):
        yield api, phone, key, CodebookStore(root)


Answer = tuple[int, Any]


def _three_ways(stack, monkeypatch: pytest.MonkeyPatch, method: str, path: str, **kw: Any) -> list[Answer]:
    """``(status, JSON)`` of the gateway's direct path, the gateway's ASGI pass and the plain route."""
    api, phone, key, _ = stack
    content, headers = _content(**kw)
    with _gateway(monkeypatch, direct=True):
        direct = phone.request(method, path, content=content, headers=headers)
    with _gateway(monkeypatch, direct=False):
        asgi = phone.request(method, path, content=content, headers=headers)
    plain = httpx.request(
        method,
        api.url + path,
        content=content,
        headers={**headers, "authorization": f"Bearer {key}"},
        timeout=60,
    )
    return [(direct.status, direct.json()), (asgi.status, asgi.json()), (plain.status_code, plain.json())]


@contextlib.contextmanager
def _gateway(monkeypatch: pytest.MonkeyPatch, *, direct: bool) -> Iterator[None]:
    """The gateway's direct path only (no ASGI app to fall back on), or its ASGI pass only."""
    with monkeypatch.context() as m:
        if direct:
            m.setattr(ohttp, "call_app", _not_called)
        else:
            m.setattr(ohttp, "GATEWAY_ROUTES", {})
        yield


async def _not_called(*args: Any) -> Any:
    raise AssertionError("a direct route went through the ASGI app")


def _content(
    json_body: Any = None, raw: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[bytes, dict[str, str]]:
    if raw is not None:
        return raw, dict(headers or {})
    if json_body is None:
        return b"", dict(headers or {})
    return json.dumps(json_body).encode(), {**JSON, **(headers or {})}


def _same(answers: list[Answer], status: int) -> Any:
    """The one answer all three paths gave, checked to have ``status``."""
    assert answers[0] == answers[1] == answers[2], answers
    assert answers[0][0] == status, answers[0]
    return answers[0][1]


@pytest.fixture()
def codebook(stack) -> Iterator[Any]:
    """A published codebook with one retired prototype (unpublished again after the test)."""
    store = stack[3]
    yield store.publish(retire_by_counts(init_codebook(4, 1, (1, 64), seed=7), [3, 0, 2, 1]))
    store.path.unlink(missing_ok=True)


def test_every_phone_route_but_the_streaming_ones_is_served_directly() -> None:
    streaming = {("POST", "/v1/chat/completions"), ("POST", "/v1/translations"), ("POST", "/v1/rag/answers")}
    assert set(ohttp.GATEWAY_ROUTES) == PHONE_ROUTES - streaming


# ------------------------------------------------------------------------------------------- successes
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/label-losses", LOSSES),
        ("/v1/label-losses", COMPACT),
        ("/v1/embedding-gradients", GRADIENT),
        ("/v1/embedding-gradients", {**GRADIENT, "encoding": "base64"}),
        ("/v1/embedding-gradients", {**GRADIENT, "encoding": "none"}),
    ],
)  # fmt: skip
def test_model_routes_answer_the_same_json(stack, monkeypatch, path: str, body: dict) -> None:
    answer = _same(_three_ways(stack, monkeypatch, "POST", path, json_body=body), 200)
    assert answer["model"] == MODEL
    if path == "/v1/embedding-gradients":  # exclude_none: the form asked for, and no null for the other
        forms = {"json": {"gradient"}, "base64": {"gradient_b64"}, "none": set()}
        assert set(answer) == {"object", "model", "loss"} | forms[body.get("encoding", "json")]


def test_codebook_routes_answer_the_same_json(stack, monkeypatch, codebook) -> None:
    body = _same(_three_ways(stack, monkeypatch, "GET", "/v1/codebook"), 200)
    assert (body["version"], body["model"]) == (codebook.version, MODEL)
    asked = {**EXAMPLE, "label": "mat", "version": codebook.version}
    losses = _same(_three_ways(stack, monkeypatch, "POST", "/v1/codebook/losses", json_body=asked), 200)
    assert [v is None for v in losses["losses"]] == [not a for a in codebook.active]
    # a codebook_version that is the published one is served
    versioned = {**LOSSES, "codebook_version": codebook.version}
    _same(_three_ways(stack, monkeypatch, "POST", "/v1/label-losses", json_body=versioned), 200)


def test_models_answer_the_same_json(stack, monkeypatch) -> None:
    body = _same(_three_ways(stack, monkeypatch, "GET", "/v1/models"), 200)
    assert body["data"][0]["id"] == MODEL


def test_uploads_answer_the_same_json_created_duplicate_and_conflict(stack, monkeypatch) -> None:
    def sequence(send) -> list[Answer]:  # one key per path: create, repeat, reuse for other content
        key = {"idempotency-key": new_idempotency_key()}
        answers = [send(UPLOAD, key), send(UPLOAD, key), send({**UPLOAD, "text": "other"}, key)]
        ids = {a[1].get("id") for a in answers[:2]}
        assert len(ids) == 1  # the duplicate names the stored upload
        return [(s, {**b, "id": "<id>"} if "id" in b else b) for s, b in answers]

    api, phone, key, _ = stack

    def gateway(direct: bool):  # -> send
        def send(body: dict, headers: dict) -> Answer:
            with _gateway(monkeypatch, direct=direct):
                r = phone.request("POST", "/v1/uploads", json=body, headers=headers)
            return r.status, r.json()

        return send

    def plain(body: dict, headers: dict) -> Answer:
        r = httpx.post(
            api.url + "/v1/uploads", json=body, headers={**headers, "authorization": f"Bearer {key}"}
        )
        return r.status_code, r.json()

    answers = [sequence(gateway(direct=True)), sequence(gateway(direct=False)), sequence(plain)]
    assert answers[0] == answers[1] == answers[2], answers
    assert [s for s, _ in answers[0]] == [201, 200, 409]
    assert answers[0][2][1]["error"]["code"] == "idempotency_conflict"


# --------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/label-losses", {**LOSSES, "model": "another-model"}, 404, "model"),
        ("/v1/label-losses", {**LOSSES, "codebook_version": STALE}, 409, "codebook_version"),
        ("/v1/label-losses", {**LOSSES, "labels": ["mat", "two words"]}, 400, "labels.1"),
        ("/v1/label-losses", {**LOSSES, "labels": ["mat", "mat"]}, 400, "labels"),
        ("/v1/label-losses", {**LOSSES, "labels": ["mat", ""]}, 400, "labels.1"),
        ("/v1/label-losses", {**LOSSES, "embedding": [[0.1] * 63]}, 400, "embedding"),
        ("/v1/label-losses", {**LOSSES, "embedding": [float("nan")] * 64}, 400, "embedding"),
        ("/v1/label-losses", {**LOSSES, "embedding": [True] * 64}, 200, None),  # a number to both
        ("/v1/label-losses", {**LOSSES, "embedding": ["x"] * 64}, 400, "embedding.list[float].0"),
        ("/v1/label-losses", {**LOSSES, "embedding_b64": "AAAA"}, 400, None),  # both forms
        ("/v1/label-losses", {**LOSSES, "task": "classification"}, 400, "task"),
        ("/v1/label-losses", {**LOSSES, "task": "poetry"}, 400, "task"),
        ("/v1/label-losses", {**LOSSES, "text": 7}, 400, "text"),
        ("/v1/label-losses", {**LOSSES, "user": "alice"}, 400, "user"),  # extra fields are refused
        ("/v1/label-losses", {k: v for k, v in LOSSES.items() if k != "text"}, 400, "text"),
        ("/v1/embedding-gradients", {**GRADIENT, "model": "another-model"}, 404, "model"),
        ("/v1/embedding-gradients", {**GRADIENT, "codebook_version": STALE}, 409, "codebook_version"),
        ("/v1/embedding-gradients", {**GRADIENT, "encoding": "hex"}, 400, "encoding"),
        ("/v1/embedding-gradients", {**GRADIENT, "embedding": [[0.1] * 64] * 2}, 400, "embedding"),
        ("/v1/embedding-gradients", {**EXAMPLE, "label": "mat"}, 400, None),  # no embedding at all
        ("/v1/codebook/losses", {**EXAMPLE, "label": "mat", "version": STALE}, 404, None),  # none published
        ("/v1/codebook/losses", {**EXAMPLE, "label": "mat", "version": "not-hex"}, 400, "version"),
        ("/v1/uploads", UPLOAD, 400, "Idempotency-Key"),  # no key
        ("/v1/uploads", {**UPLOAD, "codebook_version": STALE}, 409, "codebook_version"),
        ("/v1/uploads", {**UPLOAD, "label": "x" * 300}, 400, "label"),
    ],
)  # fmt: skip
def test_bad_requests_get_the_same_error(stack, monkeypatch, path, body, status, param) -> None:
    answer = _same(_three_ways(stack, monkeypatch, "POST", path, raw=_dumps(body), headers=JSON), status)
    if status != 200:
        assert answer["error"]["param"] == param, answer


def _dumps(body: Any) -> bytes:
    return json.dumps(body).encode()  # NaN as the bare token NaN, which both parsers accept


def test_codebook_errors_are_the_same(stack, monkeypatch, codebook) -> None:
    asked = {**EXAMPLE, "label": "mat", "version": STALE}
    err = _same(_three_ways(stack, monkeypatch, "POST", "/v1/codebook/losses", json_body=asked), 409)
    assert err["error"]["code"] == "codebook_version_mismatch"
    asked = {**asked, "version": codebook.version, "task": "classification"}  # tiny-llama has no classes
    _same(_three_ways(stack, monkeypatch, "POST", "/v1/codebook/losses", json_body=asked), 400)
    stack[3].path.unlink()
    err = _same(_three_ways(stack, monkeypatch, "GET", "/v1/codebook"), 404)
    assert err["error"]["code"] == "codebook_not_found"


BODY = json.dumps(LOSSES).encode()


@pytest.mark.parametrize(
    ("raw", "headers", "status"),
    [
        (b"", JSON, 400),  # no body: "Field required"
        (b"null", JSON, 400),
        (b"[]", JSON, 400),
        (b'"text"', JSON, 400),
        (b"{", JSON, 400),  # not JSON
        (b'{"text": "\xff"}', JSON, 400),  # not UTF-8
        (b"\xff\xfe{}", JSON, 400),  # a UTF-16 byte order mark: json.loads decodes, then fails
        (b"[" * 300 + b"]" * 300, JSON, 400),  # nested past pydantic's JSON parser, not json.loads
        (b"[" * 5000 + b"]" * 5000, JSON, 400),  # past json.loads too
        (BODY.replace(b'"the cat', b'"\\ud800the cat'), JSON, 400),  # a lone surrogate: param text
        (b"\xef\xbb\xbf" + BODY, JSON, 200),  # a UTF-8 byte order mark: json.loads skips it
        (BODY, {}, 400),  # no content-type: FastAPI does not read the body as JSON
        (BODY, {"content-type": "text/plain"}, 400),
        (BODY, {"content-type": "application/vnd.veil+json"}, 200),
        (BODY, {"content-type": "Application/JSON; charset=utf-8"}, 200),
    ],
)  # fmt: skip
def test_bodies_are_read_as_fastapi_reads_them(stack, monkeypatch, raw, headers, status) -> None:
    _same(_three_ways(stack, monkeypatch, "POST", "/v1/label-losses", raw=raw, headers=headers), status)


def test_an_unexpected_exception_is_the_apps_json_500_and_the_gateway_serves_on(
    stack, monkeypatch, caplog
) -> None:
    api = stack[0]
    engine = api.server.config.app.state.veil.engine

    async def broken(*args: Any, **kwargs: Any) -> float:
        raise RuntimeError("the model is on fire")

    monkeypatch.setattr(engine, "loss", broken)
    with caplog.at_level(logging.ERROR):
        err = _same(_three_ways(stack, monkeypatch, "POST", "/v1/label-losses", json_body=LOSSES), 500)
    assert err == {
        "error": {"type": "server_error", "message": "internal error", "param": None, "code": None}
    }
    assert "the model is on fire" in caplog.text  # logged, never sent
    monkeypatch.undo()
    _same(_three_ways(stack, monkeypatch, "POST", "/v1/label-losses", json_body=LOSSES), 200)
