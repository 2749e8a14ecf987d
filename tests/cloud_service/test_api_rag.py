"""``/v1/rag/answers`` and ``/v1/rag/collections`` on a real server with an API key.

The served model is the tiny random Llama: it does not follow DeepRAG's protocol, so its answers end
``malformed`` or ``step_cap``; the tests pin the answer's shape, the policies' retrieval counts (``single``
searches exactly once, ``never`` not at all), streaming against the plain answer, the collection's life
(create, fill, list, delete, a failed ingestion changing nothing, a restart keeping it), a default
collection already built being served as is, and every bad input as a 4xx JSON error (the default
collection's build on first need: ``test_api_rag_default.py``). Collections are BM25-only
(``dense: false``): MiniLM would cost seconds.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import pytest

from veil.cloud_service.background import BackgroundServer

pytestmark = pytest.mark.integration

MODEL = "tiny-llama"
DOCS = [
    {"id": "turing", "contents": "Alan Turing\nAlan Turing was an English mathematician born in London."},
    {"id": "lovelace", "contents": "Ada Lovelace\nAda Lovelace wrote the first computer program."},
    {"id": "hopper", "contents": "Grace Hopper\nGrace Hopper developed the first compiler for a language."},
    {"id": 7, "contents": "untitled text about the London underground, opened in 1863"},
]
QUESTION = "Where was Alan Turing born?"


@pytest.fixture(scope="module")
def stack(keyed_app, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("rag-api")
    app, key = keyed_app(root, MODEL)
    with BackgroundServer(app) as api:
        client = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        assert client.post("/v1/rag/collections", json={"name": "people", "dense": False}).status_code == 201
        r = client.post("/v1/rag/collections/people/documents", json={"documents": DOCS})
        assert r.status_code == 200, r.text
        yield client, root, keyed_app
        client.close()


def _error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert set(error) == {"type", "message", "param", "code"} and error["message"]
    return error


def _ask(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post("/v1/rag/answers", json={"question": QUESTION, "collection": "people", **body})


def _events(r: httpx.Response) -> list[Any]:
    lines = [line for line in r.text.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines), r.text
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def test_an_answer_carries_its_trace_and_the_single_policy_searches_once(stack) -> None:
    client, _, _ = stack
    r = _ask(client, policy="single", max_steps=2, top_k=2)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert set(answer) == {
        "object", "model", "collection", "policy", "answer", "trace", "question_passages", "retrievals", "ended"
    }  # fmt: skip
    assert (answer["object"], answer["model"], answer["collection"]) == ("rag.answer", MODEL, "people")
    assert answer["retrievals"] == 1 and answer["ended"] in ("final", "step_cap", "malformed")
    # top_k=2, but BM25 returns only passages sharing a word with the question: Turing's alone
    assert answer["question_passages"] == ["turing#0"]
    assert len(answer["trace"]) <= 2 and isinstance(answer["answer"], str)
    for step in answer["trace"]:
        assert set(step) == {"subquery", "retrieved", "passages", "intermediate_answer"}
        assert step["retrieved"] is False and step["passages"] == []  # single: no search after the first


def test_the_never_policy_does_not_search(stack) -> None:
    client, _, _ = stack
    answer = _ask(client, policy="never", max_steps=1).json()
    assert answer["retrievals"] == 0 and answer["question_passages"] == []
    assert all(not s["retrieved"] for s in answer["trace"])


def test_the_always_policy_searches_at_every_step_it_takes(stack) -> None:
    client, _, _ = stack
    answer = _ask(client, policy="always", max_steps=2, top_k=1).json()
    assert answer["retrievals"] == len(answer["trace"]) == sum(s["retrieved"] for s in answer["trace"])


def test_a_streamed_answer_is_its_steps_then_the_plain_answer(stack) -> None:
    client, _, _ = stack
    plain = _ask(client, policy="always", max_steps=2).json()
    streamed = _ask(client, policy="always", max_steps=2, stream=True)
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    *steps, final = _events(streamed)
    assert final == plain
    assert [s.pop("object") for s in steps] == ["rag.step"] * len(plain["trace"])
    assert [s.pop("index") for s in steps] == list(range(len(plain["trace"])))
    assert steps == plain["trace"]


def test_a_user_embedding_is_accepted_in_both_forms_and_checked(stack) -> None:
    client, _, _ = stack
    e = np.random.default_rng(0).normal(0.0, 0.5, (1, 64)).astype(np.float32)
    assert _ask(client, policy="single", max_steps=1, user_embedding=e.tolist()).status_code == 200
    error = _error(_ask(client, user_embedding=[0.1] * 63), 400)
    assert error["param"] == "user_embedding"
    error = _error(_ask(client, user_embedding_b64="AAAA"), 400)
    assert error["param"] == "user_embedding_b64"
    error = _error(_ask(client, user_embedding=e.tolist(), user_embedding_b64="AAAA"), 400)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"question": ""}, 400, "question"),
        ({"question": " \n\t"}, 400, "question"),
        ({"collection": "nowhere"}, 404, "collection"),
        ({"collection": "Not A Name"}, 400, "collection"),
        ({"policy": "sometimes"}, 400, "policy"),
        ({"max_steps": 0}, 400, "max_steps"),
        ({"max_steps": 17}, 400, "max_steps"),
        ({"top_k": 0}, 400, "top_k"),
        ({"model": "gpt-4"}, 404, "model"),
        ({"temperature": 0.5}, 400, "temperature"),
        ({"codebook_version": "0123456789abcdef"}, 409, "codebook_version"),
    ],
)
def test_bad_answer_requests_are_4xx_json(stack, body: dict[str, Any], status: int, param: str) -> None:
    client, _, _ = stack
    assert _error(_ask(client, **body), status)["param"] == param


def test_a_default_collection_already_in_the_data_dir_is_served_as_is(stack) -> None:
    from veil.models.rag import DEFAULT_COLLECTION, Collection, Document, IndexConfig, collection_dir

    client, root, _ = stack
    own = Collection(DEFAULT_COLLECTION, IndexConfig(dense=False))  # e.g. built by veil rag build-default
    own.add([Document("babbage", "Charles Babbage was born in London in 1791.", "Babbage")])
    own.save(collection_dir(DEFAULT_COLLECTION, root))
    answer = client.post("/v1/rag/answers", json={"question": QUESTION, "policy": "single", "max_steps": 1})
    assert answer.status_code == 200, answer.text
    assert answer.json()["question_passages"] == ["babbage#0"]  # not rebuilt from the Wikipedia sample
    assert client.delete(f"/v1/rag/collections/{DEFAULT_COLLECTION}").status_code == 204
    error = _error(client.delete(f"/v1/rag/collections/{DEFAULT_COLLECTION}"), 404)
    assert "built on first use" in error["message"] and "veil rag build-default" in error["message"]


def test_a_question_longer_than_the_context_is_a_400(stack) -> None:
    client, _, _ = stack
    error = _error(_ask(client, question="why " * 600), 400)  # 600 tokens; the tiny model's context is 512
    assert (error["param"], error["code"]) == ("question", "context_length_exceeded")


def test_passages_that_outgrow_the_context_are_a_400(stack) -> None:
    client, _, _ = stack
    long = {"id": "long", "contents": "Rivers\n" + " ".join(f"river{i} flows" for i in range(400))}
    assert client.post("/v1/rag/collections", json={"name": "rivers", "dense": False}).status_code == 201
    assert client.post("/v1/rag/collections/rivers/documents", json={"documents": [long]}).status_code == 200
    body = {"question": "Which river flows?", "collection": "rivers", "policy": "single", "top_k": 8}
    error = _error(client.post("/v1/rag/answers", json=body), 400)
    assert error["code"] == "context_length_exceeded" and "top_k" in error["message"]


def test_answers_need_an_api_key(stack) -> None:
    client, _, _ = stack
    bare = httpx.post(str(client.base_url) + "/v1/rag/answers", json={"question": QUESTION}, timeout=60)
    assert _error(bare, 401)["code"] == "missing_api_key"
    bare = httpx.get(str(client.base_url) + "/v1/rag/collections", timeout=60)
    assert _error(bare, 401)["code"] == "missing_api_key"


def _listed(client: httpx.Client) -> dict[str, dict[str, Any]]:
    r = client.get("/v1/rag/collections")
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "list"
    return {c["name"]: c for c in r.json()["data"]}


def test_a_collection_is_created_filled_listed_and_deleted(stack) -> None:
    client, _, _ = stack
    r = client.post("/v1/rag/collections", json={"name": "crud", "dense": False})
    assert r.status_code == 201, r.text
    assert r.json() == {
        "object": "rag.collection",
        "name": "crud",
        "passages": 0,
        "documents": 0,
        "dense": False,
    }
    assert _listed(client)["crud"]["passages"] == 0
    assert (
        _error(client.post("/v1/rag/collections", json={"name": "crud"}), 409)["code"] == "collection_exists"
    )

    r = client.post("/v1/rag/collections/crud/documents", json={"documents": DOCS[:2]})
    assert r.status_code == 200, r.text
    assert (r.json()["added_documents"], r.json()["added_passages"], r.json()["passages"]) == (2, 2, 2)
    r = client.post("/v1/rag/collections/crud/documents", json={"documents": DOCS[2:]})
    assert (r.json()["documents"], r.json()["passages"]) == (4, 4)
    assert _listed(client)["crud"] == {
        "object": "rag.collection", "name": "crud", "passages": 4, "documents": 4, "dense": False
    }  # fmt: skip
    single = {"question": "compiler", "collection": "crud", "policy": "single", "max_steps": 1, "top_k": 1}
    assert client.post("/v1/rag/answers", json=single).json()["question_passages"] == ["hopper#0"]

    assert client.delete("/v1/rag/collections/crud").status_code == 204
    assert "crud" not in _listed(client)
    assert _error(client.delete("/v1/rag/collections/crud"), 404)["code"] == "collection_not_found"
    assert _error(client.post("/v1/rag/answers", json=single), 404)["code"] == "collection_not_found"


def test_a_failed_ingestion_leaves_the_collection_as_it_was(stack) -> None:
    client, _, _ = stack
    before = _listed(client)["people"]
    for documents in (
        [
            {"id": "new", "contents": "New\nsome text"},
            {"id": "new", "contents": "again"},
        ],  # within the request
        [{"id": "new", "contents": "New\nsome text"}, {"id": "turing", "contents": "Alan\nagain"}],  # indexed
        [{"id": "blank", "contents": "   "}],  # no words: no passage
    ):
        error = _error(
            client.post("/v1/rag/collections/people/documents", json={"documents": documents}), 400
        )
        assert error["param"] == "documents"
    assert _listed(client)["people"] == before
    assert _ask(client, policy="single", max_steps=1, top_k=1).json()["question_passages"] == ["turing#0"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "param"),
    [
        ("POST", "/v1/rag/collections", {"name": "Bad Name"}, 400, "name"),
        ("POST", "/v1/rag/collections", {"name": ""}, 400, "name"),
        ("POST", "/v1/rag/collections", {}, 400, "name"),
        ("POST", "/v1/rag/collections/nowhere/documents", {"documents": DOCS[:1]}, 404, None),
        ("POST", "/v1/rag/collections/BAD/documents", {"documents": DOCS[:1]}, 400, "name"),
        ("POST", "/v1/rag/collections/people/documents", {"documents": []}, 400, "documents"),
        ("POST", "/v1/rag/collections/people/documents", {"documents": [{"id": "x"}]}, 400, "documents.0.contents"),
        ("POST", "/v1/rag/collections/people/documents", {"documents": [{"id": "", "contents": "a"}]}, 400, None),
        ("POST", "/v1/rag/collections/people/documents", {"documents": [{"id": None, "contents": "a"}]}, 400, None),
        ("DELETE", "/v1/rag/collections/nowhere", None, 404, None),
        ("DELETE", "/v1/rag/collections/UPPER", None, 400, "name"),
    ],
)  # fmt: skip
def test_bad_collection_requests_are_4xx_json(stack, method, path, body, status, param) -> None:
    client, _, _ = stack
    error = _error(client.request(method, path, json=body), status)
    if param is not None:
        assert error["param"] == param


def test_collections_outlive_a_restart(stack, tmp_path_factory: pytest.TempPathFactory) -> None:
    client, root, keyed_app = stack
    before = _ask(client, policy="single", max_steps=1).json()
    app, key = keyed_app(root, MODEL)  # a new process's app over the same data dir
    with BackgroundServer(app) as api:
        again = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        assert _listed(again)["people"] == _listed(client)["people"]
        assert _ask(again, policy="single", max_steps=1).json() == before
        again.close()
