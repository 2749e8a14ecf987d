"""``strategy: "sc-coq"`` with a ``chain`` on ``/v1/chat/completions`` of a real server (SC-CoQ,
arXiv:2412.11906): the answer is the one the same model gives when the chain and its *own* earlier
answers are sent as plain turns, the chain comes back with those answers, usage counts every call, the
official client carries it, and bad requests are 400s naming the field."""

from __future__ import annotations

import httpx
import openai
import pytest

from veil.cloud_service.background import BackgroundServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # a real server on the shared 2 cores

MODEL = "tiny-llama"
SYSTEM = {"role": "system", "content": "You judge captions."}
CHAIN = ["Is it raining in the picture?", "Which caption is ironic, A or B?"]
TARGET = "Why is 'What a perfect beach day!' funny here?"


@pytest.fixture(scope="module")
def stack(keyed_app, tmp_path_factory: pytest.TempPathFactory):
    app, key = keyed_app(tmp_path_factory.mktemp("sc-coq-api"), MODEL)
    with (
        BackgroundServer(app) as api,
        httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c,
    ):
        yield c, app, api.url, key


def _body(**extra) -> dict:
    return {"model": MODEL, "messages": [SYSTEM, {"role": "user", "content": TARGET}], "temperature": 0,
            "max_tokens": 8, **extra}  # fmt: skip


def _sc_coq(**extra) -> dict:
    return _body(strategy="sc-coq", chain=[{"question": q} for q in CHAIN], **extra)


def _plain(c: httpx.Client, messages: list[dict]) -> dict:
    r = c.post("/v1/chat/completions", json=_body(messages=messages))
    assert r.status_code == 200, r.text
    return r.json()


def test_each_call_sees_the_earlier_questions_with_the_models_own_answers(stack) -> None:
    c, *_ = stack
    r = c.post("/v1/chat/completions", json=_sc_coq())
    assert r.status_code == 200, r.text
    out = r.json()
    assert [t["question"] for t in out["chain"]] == CHAIN
    # replay the chain as plain greedy requests: the same model gives the same answers only if each
    # chained call saw exactly the system prompt, the earlier questions and the model's own answers
    history, plain = [SYSTEM], []
    for question, turn in zip([*CHAIN, TARGET], [*out["chain"], None], strict=True):
        history.append({"role": "user", "content": question})
        plain.append(_plain(c, history))
        choice = plain[-1]["choices"][0]
        answer = choice["message"]["content"]
        if turn is not None:
            assert (turn["answer"], turn["finish_reason"]) == (answer, choice["finish_reason"])
        history.append({"role": "assistant", "content": answer})
    assert out["choices"][0]["message"] == plain[-1]["choices"][0]["message"]
    assert out["choices"][0]["finish_reason"] == plain[-1]["choices"][0]["finish_reason"]
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):  # every call is paid for
        assert out["usage"][key] == sum(p["usage"][key] for p in plain)


def test_a_plain_request_has_no_chain(stack) -> None:
    c, *_ = stack
    r = c.post("/v1/chat/completions", json=_body())
    assert r.status_code == 200, r.text
    assert "chain" not in r.json()


def test_the_official_client_sends_the_chain_and_reads_it_back(stack) -> None:
    c, _, url, key = stack
    expected = c.post("/v1/chat/completions", json=_sc_coq()).json()
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, timeout=120, max_retries=0)
    out = client.chat.completions.create(
        model=MODEL,
        messages=_body()["messages"],
        temperature=0,
        max_tokens=8,
        extra_body={"strategy": "sc-coq", "chain": [{"question": q} for q in CHAIN]},
    )
    assert out.choices[0].message.content == expected["choices"][0]["message"]["content"]
    assert out.model_extra["chain"] == expected["chain"]


def test_a_chain_whose_answers_outgrow_the_context_is_a_400_before_the_target(stack) -> None:
    c, app, *_ = stack
    first = _plain(c, [SYSTEM, {"role": "user", "content": CHAIN[0]}])["usage"]["prompt_tokens"]
    room = app.state.veil.engine.context_length - first
    # the first question fits with max_tokens = its room; the second comes after it and cannot
    r = c.post("/v1/chat/completions", json=_body(strategy="sc-coq", chain=[{"question": q} for q in CHAIN],
                                                   max_tokens=room))  # fmt: skip
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and "chain" in err["message"]


@pytest.mark.parametrize(
    ("change", "param"),
    [({"strategy": "cot"}, "strategy"), ({"strategy": 3}, "strategy"), ({"chain": []}, "chain"),
     ({"chain": None}, "chain"), ({"strategy": None}, "chain"), ({"stream": True}, "stream"),
     ({"chain": [{"question": "  "}]}, "chain.0.question"), ({"chain": [{"q": "Is it raining?"}]}, "chain.0"),
     ({"chain": ["Is it raining?"]}, "chain.0"), ({"chain": [{"question": "Why?"}] * 9}, "chain"),
     ({"messages": [{"role": "user", "content": TARGET}, {"role": "assistant", "content": "Because."}]},
      "messages")],
)  # fmt: skip
def test_bad_strategy_requests_are_400s_naming_the_field(stack, change, param) -> None:
    c, *_ = stack
    body = {k: v for k, v in {**_sc_coq(), **change}.items() if v is not None}
    r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"].startswith(param), err
    assert err["message"]


def test_the_openapi_schema_describes_strategy_and_chain(stack) -> None:
    c, *_ = stack
    schema = c.get("/openapi.json").json()["components"]["schemas"]
    request = schema["ChatCompletionRequest"]["properties"]
    assert {"strategy", "chain"} <= request.keys()
    assert schema["ChainQuestion"]["required"] == ["question"]
