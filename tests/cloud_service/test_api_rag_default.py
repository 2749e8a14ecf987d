"""The default collection over HTTP on a real server: a question that names no collection is answered
from ``wikipedia-sample`` with nothing built beforehand.

The fast tests swap in a store whose default build is two real Wikipedia-sample articles (BM25 only);
the slow one lets the service build the whole sample, as ``veil serve`` does.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from veil.cloud_service.background import BackgroundServer
from veil.cloud_service.rag_store import CollectionStore
from veil.models.rag import DEFAULT_COLLECTION, Collection, IndexConfig, RagError
from veil.models.rag.wikipedia import wikipedia_sample_documents

pytestmark = pytest.mark.integration

MODEL = "tiny-llama"
QUESTION = {"question": "What is anarchism?", "policy": "single", "max_steps": 1, "top_k": 2}


class TwoArticles:
    """The default build on the first two articles of the sample; counts builds, can be made to fail."""

    def __init__(self) -> None:
        self.calls, self.fail = 0, False

    def __call__(self) -> Collection:
        self.calls += 1
        if self.fail:
            raise RagError("the Wikipedia sample needs gensim: pip install 'veil[cloud]'")
        collection = Collection(DEFAULT_COLLECTION, IndexConfig(dense=False))
        collection.add(wikipedia_sample_documents(2))
        return collection


@pytest.fixture(scope="module")
def running(keyed_app, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Any]]:
    app, key = keyed_app(tmp_path_factory.mktemp("rag-default"), MODEL)
    with BackgroundServer(app) as api:
        client = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=120)
        yield client, app
        client.close()


@pytest.fixture
def server(running, tmp_path: Path) -> tuple[httpx.Client, TwoArticles]:
    """The running server with a fresh, empty collection store of its own for each test."""
    client, app = running
    build = TwoArticles()
    app.state.veil.rag = CollectionStore(tmp_path, build_default=build)  # replaces the start-up's store
    return client, build


def _listed(client: httpx.Client) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in client.get("/v1/rag/collections").json()["data"]}


def test_a_question_without_a_collection_is_answered_from_the_default_one_built_on_demand(server) -> None:
    client, build = server
    assert DEFAULT_COLLECTION not in _listed(client)
    r = client.post("/v1/rag/answers", json=QUESTION)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["collection"] == DEFAULT_COLLECTION and answer["retrievals"] == 1
    assert answer["question_passages"] and all(p.startswith("wiki-") for p in answer["question_passages"])
    listed = _listed(client)[DEFAULT_COLLECTION]
    assert listed["documents"] == 2 and listed["dense"] is False and build.calls == 1
    assert client.post("/v1/rag/answers", json=QUESTION).json() == answer and build.calls == 1


def test_concurrent_first_questions_wait_for_one_build(server) -> None:
    client, build = server
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: client.post("/v1/rag/answers", json=QUESTION), range(4)))
    assert [r.status_code for r in replies] == [200] * 4 and build.calls == 1
    assert len({tuple(r.json()["question_passages"]) for r in replies}) == 1


def test_documents_can_be_added_to_the_default_collection_before_any_question(server) -> None:
    client, build = server
    doc = {"id": "veil", "contents": "Veil\nVeil answers questions without knowing who asks them."}
    r = client.post(f"/v1/rag/collections/{DEFAULT_COLLECTION}/documents", json={"documents": [doc]})
    assert r.status_code == 200, r.text
    assert (r.json()["documents"], r.json()["added_documents"], build.calls) == (3, 1, 1)


def test_a_failed_build_is_a_503_json_error_and_the_next_question_builds_it(server) -> None:
    client, build = server
    build.fail = True
    r = client.post("/v1/rag/answers", json=QUESTION)
    assert r.status_code == 503 and r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        "collection_unavailable",
        "collection",
        "server_error",
    )
    assert "needs gensim" in error["message"] and "veil rag build-default" in error["message"]
    assert DEFAULT_COLLECTION not in _listed(client)
    build.fail = False
    assert client.post("/v1/rag/answers", json=QUESTION).status_code == 200 and build.calls == 2


@pytest.mark.slow  # the whole sample: about 10 s of gensim and BM25 on 2 cores, more under load
def test_the_service_builds_the_whole_sample_on_first_need(keyed_app, tmp_path: Path) -> None:
    app, key = keyed_app(tmp_path, MODEL)
    with BackgroundServer(app) as api:
        client = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=300)
        body = {"question": "Who wrote Atlas Shrugged?", "policy": "single", "max_steps": 1, "top_k": 1}
        r = client.post("/v1/rag/answers", json=body)
        assert r.status_code == 200, r.text
        listed = _listed(client)[DEFAULT_COLLECTION]
        assert listed["documents"] == 106 and listed["passages"] > 5000 and listed["dense"] is False
        client.close()
    assert (tmp_path / "rag" / DEFAULT_COLLECTION / "manifest.json").is_file()
