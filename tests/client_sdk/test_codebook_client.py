"""The reference client with a prototype codebook: private choice by codebook-loss requests, uploads of the
chosen prototype, the codebook version named in every use (the cloud refuses a stale one), and typed
family errors on load.

The client runs its real stack (VeilClient -> PhoneAPI -> AsyncOHTTPClient) against an in-process
relay + gateway whose inner answers play the API (a real gateway key opens every request)."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from veil.client_sdk import GaussianDistribution
from veil.client_sdk.client import (
    CodebookMismatchError,
    FamilyMismatchError,
    RetryPolicy,
    VeilClient,
    VeilClientError,
)
from veil.client_sdk.codebook_wire import codebook_to_json, float32_codebook
from veil.client_sdk.distributions import Codebook, PrototypeDistribution
from veil.client_sdk.ohttp import (
    RESPONSE_MEDIA_TYPE,
    AsyncOHTTPClient,
    BinaryRequest,
    BinaryResponse,
    GatewayKeyPair,
    decapsulate_request,
    encode_key_configs,
)
from veil.client_sdk.ohttp.keysig import sign_key_configs, signing_key_from_seed
from veil.client_sdk.param_store import ClientState, MemoryParamStore, ParamStore
from veil.client_sdk.private_head import PrivateHead

SHAPE = (1, 3)
MODEL = "tiny-test"
SIGNING_KEY = signing_key_from_seed(b"\x05" * 32)  # the cloud's gateway signing key
TARGET = np.array([[1.0, 0.0, -1.0]])
EXAMPLES = [("next_word", f"example {i}", "word") for i in range(3)]


def _book() -> Codebook:
    """Prototype 1 is the nearest to TARGET but retired; 3 is the nearest usable one."""
    protos = np.array([[[-2.0, 0, 0]], [[1.0, 0, -1]], [[0, 3.0, 0]], [[0.5, 0.0, -0.5]], [[4.0, 4, 4]]])
    return float32_codebook(Codebook(protos, [True, False, True, True, True], k_min=2))


def _embedding(body: dict) -> np.ndarray:
    raw = base64.b64decode(body["embedding_b64"])
    return np.frombuffer(raw, dtype="<f4").astype(np.float64).reshape(SHAPE)


def _loss(e: np.ndarray, text: str) -> float:
    """The fake cloud's loss: ``||e - TARGET||^2`` plus the number that ends the text."""
    return float(np.sum((e - TARGET) ** 2)) + float(text.split()[-1])


class Cloud:
    """Relay, gateway and API in one httpx handler; ``book`` is the published codebook (or None).

    Like the service, it refuses a ``codebook_version`` that is not the published one (409) before it
    stores or computes anything; ``stored`` holds the uploads it accepted."""

    def __init__(self, book: Codebook | None) -> None:
        self.key = GatewayKeyPair.generate(1)
        self.book = book
        self.seen: list[tuple[str, dict]] = []
        self.stored: list[dict] = []

    def answer(self, req: BinaryRequest) -> tuple[int, Any]:
        body = json.loads(req.content) if req.content else {}
        self.seen.append((req.path, body))
        sent = body.get("codebook_version")
        if sent is not None and (self.book is None or sent != self.book.version):
            published = self.book.version if self.book is not None else "none is published"
            return 409, {"error": {"type": "conflict_error", "param": "codebook_version",
                                   "message": f"codebook {sent} is not the published one ({published})",
                                   "code": "codebook_version_mismatch"}}  # fmt: skip
        if req.path == "/v1/codebook":
            if self.book is None:
                return 404, {"error": {"type": "not_found_error", "message": "none", "param": None,
                                       "code": "codebook_not_found"}}  # fmt: skip
            return 200, {**codebook_to_json(self.book), "model": MODEL}
        if req.path == "/v1/embedding-gradients":
            e = _embedding(body)
            return 200, {"object": "embedding_gradient", "model": MODEL, "loss": _loss(e, body["text"]),
                         "gradient": (2 * (e - TARGET)).tolist()}  # fmt: skip
        if req.path == "/v1/label-losses":  # the label's length breaks the tie between labels
            loss = _loss(_embedding(body), body["text"])
            return 200, {"object": "label_losses", "model": MODEL,
                         "losses": [loss + len(label) for label in body["labels"]]}  # fmt: skip
        if req.path == "/v1/codebook/losses":  # the same loss, under every usable prototype at once
            if body["version"] != self.book.version:
                return 409, {"error": {"type": "conflict_error", "message": "stale", "param": "version",
                                       "code": "codebook_version_mismatch"}}  # fmt: skip
            losses = [_loss(p, body["text"]) if a else None
                      for p, a in zip(self.book.prototypes, self.book.active, strict=True)]  # fmt: skip
            return 200, {"object": "codebook_losses", "model": MODEL, "version": self.book.version,
                         "losses": losses}  # fmt: skip
        if req.path == "/v1/uploads":
            self.stored.append(body)
            return 201, {"id": len(self.seen), "object": "upload", "status": "created"}
        if req.path == "/v1/chat/completions":
            return 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]}
        return 404, {"error": {"type": "not_found_error", "message": "no route", "param": None, "code": None}}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            body = encode_key_configs([self.key.config])
            return httpx.Response(200, content=body, headers=sign_key_configs(body, SIGNING_KEY))
        plaintext, ctx = decapsulate_request({self.key.key_id: self.key}, request.content)
        status, body = self.answer(BinaryRequest.decode(plaintext))
        response = BinaryResponse(status, [("content-type", "application/json")], json.dumps(body).encode())
        return httpx.Response(
            200,
            content=ctx.encapsulate_response(response.encode()),
            headers={"content-type": RESPONSE_MEDIA_TYPE},
        )


def _client(cloud: Cloud, store: ParamStore, **kwargs: Any) -> VeilClient:
    transport = AsyncOHTTPClient(
        "https://relay.invalid/ohttp",
        key_config_url="https://relay.invalid/.well-known/ohttp-gateway",
        transport=httpx.MockTransport(cloud),
        retries=0,
    )
    return VeilClient(transport, store, model=MODEL, retry=RetryPolicy(retries=0), **kwargs)


def test_the_phone_chooses_the_best_usable_prototype_and_uploads_it(tmp_path: Path) -> None:
    cloud = Cloud(_book())
    store = ParamStore(tmp_path / "params.veil")
    client = _client(cloud, store, family="prototype", rng=lambda: np.random.default_rng(0))

    async def go() -> Any:
        choice = await client.choose_prototype(EXAMPLES, noise_std=1e-3)
        await client.upload("next_word", "see you", "soon")
        return choice

    choice = asyncio.run(go())
    assert choice.index == 3 and choice.version == cloud.book.version and choice.requests == 3
    assert np.isnan(choice.mean_losses[1]) and np.argmin(np.nan_to_num(choice.mean_losses, nan=99)) == 3
    # one loss request per example, naming the codebook version and carrying no embedding at all
    scored = [b for p, b in cloud.seen if p == "/v1/codebook/losses"]
    assert len(scored) == 3 and {b["version"] for b in scored} == {cloud.book.version}
    assert all(set(b) == {"model", "task", "text", "label", "version"} for b in scored)
    # the choice fetches the codebook once; the upload is one request naming the chosen codebook's
    # version, and carries the prototype plus tiny noise
    paths = [p for p, _ in cloud.seen]
    assert paths == ["/v1/codebook", *["/v1/codebook/losses"] * 3, "/v1/uploads"]
    assert cloud.seen[-1][1]["codebook_version"] == cloud.book.version
    upload = _embedding(cloud.seen[-1][1])
    assert (
        cloud.book.decode(upload[None])[0] == 3 and 0 < np.abs(upload - cloud.book.prototypes[3]).max() < 0.01
    )
    state = ParamStore(tmp_path / "params.veil").load("prototype")  # a restarted app reads the same choice
    assert isinstance(state.distribution, PrototypeDistribution) and state.distribution.index == 3
    assert state.distribution.codebook.version == cloud.book.version


def test_a_new_codebook_version_stops_every_use_until_the_phone_chooses_again() -> None:
    cloud = Cloud(_book())
    client = _client(cloud, MemoryParamStore())
    asyncio.run(client.choose_prototype(EXAMPLES))
    old = cloud.book.version
    cloud.book = cloud.book.with_active([True, False, True, False, True])  # the cloud retired the choice
    chat = [{"role": "user", "content": "hi"}]
    uses = [
        ("/v1/uploads", lambda: client.upload("next_word", "x", "y")),
        ("/v1/label-losses", lambda: client.predict("next_word", "text 0", ["a", "b"])),
        ("/v1/embedding-gradients", lambda: client.mean_loss(EXAMPLES[:1])),
        ("/v1/chat/completions", lambda: client.chat(chat)),
        ("/v1/chat/completions", lambda: client.mixed_next_token(chat, PrivateHead(1), top_k=3)),
    ]
    for path, use in uses:
        before = len(cloud.seen)
        with pytest.raises(CodebookMismatchError) as err:
            asyncio.run(use())
        assert old in str(err.value) and cloud.book.version in str(err.value)
        # one request, naming the stale version, refused by the cloud: no GET /v1/codebook, no retry
        assert [(p, b["codebook_version"]) for p, b in cloud.seen[before:]] == [(path, old)]
    assert cloud.stored == []  # nothing stored
    assert client.state.distribution.index == 3  # nothing re-chosen behind the caller's back
    again = asyncio.run(client.choose_prototype(EXAMPLES))
    assert again.index == 0 and again.version == cloud.book.version  # 0 is now the nearest usable one
    assert asyncio.run(client.upload("next_word", "x", "y"))["status"] == "created"
    assert [b["codebook_version"] for b in cloud.stored] == [cloud.book.version]


def test_a_prediction_is_one_request_under_one_sample() -> None:
    cloud = Cloud(_book())
    client = _client(cloud, MemoryParamStore())
    asyncio.run(client.choose_prototype(EXAMPLES))
    before = len(cloud.seen)
    assert asyncio.run(client.predict("next_word", "text 0", ["ccc", "a", "bb", "z"])) == "a"  # ties: first
    assert [p for p, _ in cloud.seen[before:]] == ["/v1/label-losses"]
    body = cloud.seen[-1][1]
    assert body["labels"] == ["ccc", "a", "bb", "z"] and body["codebook_version"] == cloud.book.version
    assert cloud.book.decode(_embedding(body)[None])[0] == 3  # a sample of the stored choice
    for labels in ([], ["a", "a"], [f"w{i}" for i in range(33)]):
        with pytest.raises(ValueError, match="1 to 32 distinct"):
            asyncio.run(client.predict("next_word", "text 0", labels))
    assert len(cloud.seen) == before + 1  # refused on the phone, nothing sent
    # check_codebook stays for an app that wants to know ahead of time: one GET, nothing else
    cloud.book = cloud.book.with_active([True, False, True, False, True])
    with pytest.raises(CodebookMismatchError):
        asyncio.run(client.check_codebook())
    assert [p for p, _ in cloud.seen[before + 1 :]] == ["/v1/codebook"]


def test_loading_another_family_is_a_typed_error_naming_both(tmp_path: Path) -> None:
    path = tmp_path / "params.veil"
    ParamStore(path).save(ClientState(GaussianDistribution(np.zeros(SHAPE), np.ones(SHAPE)), {}, MODEL))
    client = _client(Cloud(_book()), ParamStore(path), family="prototype")
    with pytest.raises(FamilyMismatchError, match="'gaussian'.*'prototype'"):
        _ = client.state
    with pytest.raises(FamilyMismatchError, match="'gaussian'.*'prototype'"):
        asyncio.run(client.upload("next_word", "x", "y"))
    chosen = MemoryParamStore()
    chosen.save(ClientState(PrototypeDistribution(_book(), 2), {}, MODEL))
    # a prototype file is not a Gaussian one, although the class derives from it: no reinterpretation
    with pytest.raises(FamilyMismatchError, match="'prototype'.*'gaussian'"):
        chosen.load("gaussian")
    with pytest.raises(FamilyMismatchError, match="'gaussian' family, not 'prototype'"):
        asyncio.run(_client(Cloud(_book()), MemoryParamStore(), family="gaussian").choose_prototype(EXAMPLES))


def test_no_codebook_and_no_gradient_steps() -> None:
    from veil.client_sdk.api import VeilAPIError

    client = _client(Cloud(None), MemoryParamStore())
    with pytest.raises(VeilAPIError) as err:
        asyncio.run(client.choose_prototype(EXAMPLES))
    assert err.value.status == 404 and err.value.code == "codebook_not_found"
    assert not client.store.exists()
    client = _client(Cloud(_book()), MemoryParamStore())
    asyncio.run(client.choose_prototype(EXAMPLES))
    with pytest.raises(VeilClientError, match="choose_prototype"):
        asyncio.run(client.learn("next_word", "x", "y"))


def test_a_codebook_published_between_fetch_and_losses_is_a_mismatch() -> None:
    cloud = Cloud(_book())
    client = _client(cloud, MemoryParamStore())
    answer = cloud.answer

    def moving(req: BinaryRequest) -> tuple[int, Any]:  # the cloud publishes anew after the fetch
        if req.path == "/v1/codebook/losses":
            cloud.book = cloud.book.with_active([True, False, True, False, True])
        return answer(req)

    cloud.answer = moving  # type: ignore[method-assign]
    with pytest.raises(CodebookMismatchError, match="stale"):
        asyncio.run(client.choose_prototype(EXAMPLES))
    assert not client.store.exists()  # nothing chosen against a codebook that is gone


def test_a_retirement_that_spares_the_choice_keeps_it_without_a_request() -> None:
    cloud = Cloud(_book())
    client = _client(cloud, MemoryParamStore())
    first = asyncio.run(client.choose_prototype(EXAMPLES))
    assert first.index == 3 and first.requests == 3
    cloud.book = cloud.book.with_active([True, False, False, True, True])  # prototype 2 retired
    before = len(cloud.seen)
    kept = asyncio.run(client.choose_prototype(EXAMPLES))
    assert kept.index == 3 and kept.requests == 0 and kept.version == cloud.book.version
    assert [p for p, _ in cloud.seen[before:]] == ["/v1/codebook"]  # no loss request at all
    assert asyncio.run(client.upload("next_word", "x", "y"))["status"] == "created"  # the new version
    assert cloud.stored[-1]["codebook_version"] == cloud.book.version
    # retiring the choice itself, or new prototype values, makes the phone score again
    cloud.book = cloud.book.with_active([True, False, False, False, True])
    assert asyncio.run(client.choose_prototype(EXAMPLES)).requests == 3
    cloud.book = float32_codebook(cloud.book.with_prototypes(cloud.book.prototypes + 0.5))
    assert asyncio.run(client.choose_prototype(EXAMPLES)).requests == 3
