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

from veil.cloud_service.background import BackgroundServer

pytestmark = pytest.mark.integration

MODEL = "tiny-llama"
TEXT = "The Tavreno River floods every spring."
CLEAN = "Tavreno River (Chinese: 索卡河) is a river in the eastern plains."
NAMESAKE = "【索卡公司】索卡公司（Tavreno Company）是一家公司。"
OTHER = "Bralo Company (Chinese: 布拉公司) is a company based on the southern coast."


@pytest.fixture(scope="module")
def client(keyed_app, tmp_path_factory: pytest.TempPathFactory):
    app, key = keyed_app(tmp_path_factory.mktemp("translations-api"), MODEL)
    with BackgroundServer(app) as api:
        c = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=120)
        yield c
        c.close()


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
