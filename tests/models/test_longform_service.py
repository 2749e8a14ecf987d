"""``longform: {"target_words": N}`` on ``/v1/chat/completions`` of a real server: usage reports the
answer's words and its length score (streamed too), the prompt carries the requirement, and bad targets
are 400s naming the field."""

from __future__ import annotations

import json

import httpx
import pytest

from veil.cloud_service.background import BackgroundServer
from veil.models.longform.length import count_words, length_score

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # a real server: about 90 s on the shared 2 cores

MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def client(keyed_app, tmp_path_factory: pytest.TempPathFactory):
    app, key = keyed_app(tmp_path_factory.mktemp("longform-api"), MODEL)
    with (
        BackgroundServer(app) as api,
        httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c,
    ):
        yield c, app


def _body(**extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Write about the sea."}], "temperature": 0,
            "max_tokens": 12, **extra}  # fmt: skip


def test_usage_reports_words_and_the_length_score_of_the_answer(client) -> None:
    c, _ = client
    r = c.post("/v1/chat/completions", json=_body(longform={"target_words": 5}))
    assert r.status_code == 200, r.text
    text, usage = r.json()["choices"][0]["message"]["content"], r.json()["usage"]
    assert usage["longform_words"] == count_words(text)
    assert usage["longform_length_score"] == pytest.approx(length_score(count_words(text), 5))
    plain = c.post("/v1/chat/completions", json=_body()).json()
    assert "longform_words" not in plain["usage"]
    # the requirement reaches the model: the prompt is longer by the appended sentence
    assert usage["prompt_tokens"] > plain["usage"]["prompt_tokens"]


def test_the_streamed_usage_chunk_has_the_same_longform_fields(client) -> None:
    c, _ = client
    body = _body(longform={"target_words": 5}, stream=True, stream_options={"include_usage": True})
    with c.stream("POST", "/v1/chat/completions", json=body) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks if ch["choices"])
    usage = chunks[-1]["usage"]
    assert usage["longform_words"] == count_words(text)
    assert usage["longform_length_score"] == pytest.approx(length_score(count_words(text), 5))


@pytest.mark.parametrize(
    ("longform", "param"),
    [({"target_words": 0}, "longform"), ({"target_words": -3}, "longform"), ({"target_words": "many"}, "longform"),
     ({"words": 10}, "longform"), ({"target_words": 99_999}, "longform.target_words")],
)  # fmt: skip
def test_bad_targets_are_400s_naming_the_field(client, longform, param) -> None:
    c, _ = client
    body = _body(longform=longform)
    body.pop("max_tokens")
    r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"].startswith(param) and err["message"]


def test_longform_without_a_user_message_is_a_400_naming_messages(client) -> None:
    c, _ = client
    body = _body(longform={"target_words": 20})
    body["messages"] = [{"role": "system", "content": "Be brief."}]
    r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "messages" and "user message" in r.json()["error"]["message"]
