"""``/v1/translations`` on a real server with an API key.

The served model is the tiny random Llama, so its translations are noise; the tests pin the answer's
shape per mode, which documents the relevance judge keeps, streaming against the plain answer, and every
bad input as a 4xx JSON error naming its field.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from veil.client_sdk.ohttp import OHTTPClient
from veil.cloud_service.background import BackgroundServer

pytestmark = pytest.mark.integration

MODEL = "tiny-llama"
TEXT = "The Tavreno River floods every spring."
CLEAN = "Tavreno River (Chinese: 索卡河) is a river in the eastern plains."
NAMESAKE = "【索卡公司】索卡公司（Tavreno Company）是一家公司。"
OTHER = "Bralo Company (Chinese: 布拉公司) is a company based on the southern coast."


@pytest.fixture(scope="module")
def server(keyed_app, tmp_path_factory: pytest.TempPathFactory):
    app, key = keyed_app(tmp_path_factory.mktemp("translations-api"), MODEL)
    with BackgroundServer(app) as api:
        c = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=120)
        yield api, c
        c.close()


@pytest.fixture(scope="module")
def client(server):
    return server[1]


def _translate(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post(
        "/v1/translations", json={"text": TEXT, "source_language": "en", "target_language": "zh", **body}
    )


def _ok(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    answer = r.json()
    assert set(answer) == {"translation", "mode", "thought", "documents_used"}
    assert isinstance(answer["translation"], str)
    return answer


def test_direct_translation_has_no_thought_and_no_documents(client) -> None:
    answer = _ok(_translate(client))
    assert answer["mode"] == "direct" and answer["thought"] is None and answer["documents_used"] is None


def test_only_the_document_naming_the_texts_entity_is_used(client) -> None:
    answer = _ok(_translate(client, mode="document", documents=[OTHER, NAMESAKE, CLEAN]))
    assert answer["mode"] == "document" and answer["documents_used"] == [2] and answer["thought"] is None
    none = _ok(_translate(client, mode="document", documents=[OTHER, NAMESAKE]))
    assert none["documents_used"] == []
    # every document dropped: the prompt, so the greedy translation, is the direct one
    assert none["translation"] == _ok(_translate(client))["translation"]


def test_long_thought_returns_the_rounds_as_one_thought(client) -> None:
    answer = _ok(_translate(client, mode="long_thought", target_language="zh-Hans"))
    assert answer["mode"] == "long_thought" and answer["documents_used"] is None
    assert "My first draft:" in answer["thought"] and "Finally, I settle on:" in answer["thought"]


def _events(r: httpx.Response) -> list[Any]:
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    lines = [line for line in r.text.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def test_a_streamed_long_thought_sends_each_round_then_the_plain_answer(client) -> None:
    plain = _ok(_translate(client, mode="long_thought"))
    events = _events(_translate(client, mode="long_thought", stream=True))
    rounds, answer = events[:-1], events[-1]
    assert answer == plain
    # the draft, then one round per revision the thought tells of
    assert [e["round"] for e in rounds] == list(range(1 + plain["thought"].count("So I revise it:")))
    assert all(e["object"] == "translation.round" and isinstance(e["score"], float) for e in rounds)
    assert rounds[0]["feedback"] is None and rounds[0]["accepted"] is True
    assert all(isinstance(e["feedback"], str) for e in rounds[1:])
    assert [e for e in rounds if e["accepted"]][-1]["translation"] == plain["translation"]


def test_a_streamed_request_that_outgrows_the_context_is_a_json_400(client) -> None:
    long = " ".join(["The Tavreno River floods every spring."] * 300)
    for mode in ("long_thought", "direct"):
        r = _translate(client, mode=mode, text=long, stream=True)
        assert r.status_code == 400 and r.headers["content-type"].startswith("application/json"), r.text
        assert r.json()["error"]["code"] == "context_length_exceeded"


def test_a_streamed_answer_is_the_plain_one_then_done(client) -> None:
    plain = _ok(_translate(client, mode="document", documents=[CLEAN]))
    r = _translate(client, mode="document", documents=[CLEAN], stream=True)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in r.text.split("\n\n") if line]
    assert lines[-1] == "data: [DONE]" and len(lines) == 2
    assert json.loads(lines[0].removeprefix("data: ")) == plain


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"source_language": "xx"}, 400, "source_language"),
        ({"target_language": "ja"}, 400, "target_language"),
        ({"target_language": "en-GB"}, 400, "target_language"),
        ({"text": "   "}, 400, "text"),
        ({"text": ""}, 400, "text"),
        ({"mode": "poetic"}, 400, "mode"),
        ({"mode": "document"}, 400, "documents"),
        ({"documents": [CLEAN]}, 400, "documents"),
        ({"mode": "long_thought", "documents": [CLEAN]}, 400, "documents"),
        ({"mode": "document", "documents": ["x" * 4001]}, 400, "documents.0"),
        ({"mode": "document", "documents": [CLEAN] * 9}, 400, "documents"),
        ({"mode": "document", "documents": [CLEAN, " "]}, 400, "documents"),
        ({"mode": "document", "documents": []}, 400, "documents"),
        ({"model": "gpt-4"}, 404, "model"),
        ({"user_embedding": [0.0, 1.0]}, 400, "user_embedding"),
        ({"temperature": 0.5}, 400, "temperature"),
    ],
)
def test_bad_input_is_a_clear_4xx(client, body, status, param) -> None:
    r = _translate(client, **body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"type", "message", "param", "code"} and error["message"]
    assert error["param"] == param


def test_the_ohttp_gateway_forwards_translations_and_rag_answers(server) -> None:
    api, client = server
    body = {"text": TEXT, "source_language": "en", "target_language": "zh", "mode": "document",
            "documents": [OTHER, CLEAN]}  # fmt: skip
    content, headers = json.dumps(body).encode(), {"content-type": "application/json"}
    with OHTTPClient(api.url + "/ohttp", key_config_url=api.url + "/.well-known/ohttp-gateway") as phone:
        through = phone.request("POST", "/v1/translations", content=content, headers=headers)
        assert through.status == 200 and through.json() == _ok(client.post("/v1/translations", json=body))
        streamed = phone.request("POST", "/v1/translations", content=json.dumps(body | {"stream": True}).encode(),
                                 headers=headers)  # fmt: skip
        assert streamed.status == 200 and streamed.content.decode().endswith("data: [DONE]\n\n")
        rag = phone.request("POST", "/v1/rag/answers", content=b'{"question": ""}', headers=headers)
        assert rag.status == 400 and rag.json()["error"]["param"] == "question"  # the route's own check
        other = phone.request("GET", "/v1/rag/collections")
        assert other.status == 403 and other.json()["error"]["code"] == "route_not_allowed"
