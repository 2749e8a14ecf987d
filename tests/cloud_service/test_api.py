"""The API on a real uvicorn server on loopback: OpenAI compatibility, phone routes, errors, metrics."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from veil.cloud_service.app import create_app, load_served_model
from veil.cloud_service.background import BackgroundServer
from veil.cloud_service.config import ServiceConfig
from veil.cloud_service.engine import EngineConfig
from veil.cloud_service.store import create_api_key, make_engine, migrate, session_factory
from veil.models.personalization import PersonalizationConfig, PersonalizedLM

pytestmark = pytest.mark.integration

MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def served(data_dir: str):
    """tiny-llama with the soft token as a suffix: at the last position it steers the random model."""
    model, tokenizer, name, classes = load_served_model(ServiceConfig(data_dir=Path(data_dir), model=MODEL))
    model = PersonalizedLM(model.base, PersonalizationConfig(n_tokens=1, placement="suffix")).eval()
    return model, tokenizer, name, classes


@pytest.fixture(scope="module")
def service(served, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("api")
    config = ServiceConfig(
        data_dir=root,
        model=MODEL,
        max_body_bytes=64 * 1024,
        engine=EngineConfig(max_batch=8, batch_window_s=0.05),
    )
    engine = make_engine(None, root)
    migrate(engine)
    key = create_api_key(session_factory(engine)(), "tests")
    with BackgroundServer(create_app(config, preloaded=served)) as server:
        yield server, key, session_factory(engine)


@pytest.fixture()
def client(service):
    server, key, _ = service
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        yield c


def _chat(**extra):
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say something."}],
        "max_tokens": 6,
        **extra,
    }


def test_openai_client_plain_and_streaming(service) -> None:
    from openai import OpenAI

    server, key, _ = service
    oai = OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
    assert [m.id for m in oai.models.list()] == [MODEL]
    plain = oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0, seed=3
    )
    assert plain.choices[0].finish_reason in ("length", "stop")
    assert plain.usage.completion_tokens <= 5 and plain.usage.prompt_tokens > 0
    chunks = list(
        oai.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=5,
            temperature=0,
            seed=3,
            stream=True,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content  # greedy: streamed equals non-streamed
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason


def test_greedy_personalised_answer_equals_in_process_generation(client, served) -> None:
    model, tokenizer, _, _ = served
    weight = model.base.get_input_embeddings().weight.detach().numpy()
    emb = 10 * weight[500][None].astype(np.float64)  # pulls the first answer token towards token 500
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say something."}], add_generation_prompt=True
    )["input_ids"]
    ids = torch.tensor([prompt])

    def reference(e: np.ndarray | None) -> str:
        e_t = None if e is None else torch.tensor(e[None], dtype=torch.float32)
        out = model.generate(
            ids,
            torch.ones_like(ids),
            e_t,
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        return tokenizer.decode(out[0], skip_special_tokens=True)

    mine = client.post("/v1/chat/completions", json=_chat(temperature=0, user_embedding=emb.tolist())).json()
    plain = client.post("/v1/chat/completions", json=_chat(temperature=0)).json()
    assert reference(emb) != reference(None)  # the embedding matters for this prompt
    assert mine["choices"][0]["message"]["content"] == reference(emb)
    assert plain["choices"][0]["message"]["content"] == reference(None)


def test_seed_reproduces_sampling_and_stop_cuts_the_text(client) -> None:
    a = client.post("/v1/chat/completions", json=_chat(temperature=1.5, seed=11, max_tokens=12)).json()
    b = client.post("/v1/chat/completions", json=_chat(temperature=1.5, seed=11, max_tokens=12)).json()
    text = a["choices"][0]["message"]["content"]
    assert text == b["choices"][0]["message"]["content"] and len(text) > 4
    stop = text[2:4]
    cut = client.post(
        "/v1/chat/completions", json=_chat(temperature=1.5, seed=11, max_tokens=12, stop=[stop])
    ).json()
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert cut["choices"][0]["message"]["content"] == text[: text.index(stop)]


def test_top_k_and_repetition_penalty_reach_the_sampler(client) -> None:
    def answer(**kw: object) -> str:
        r = client.post("/v1/chat/completions", json=_chat(max_tokens=12, **kw))
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    greedy = answer(temperature=0)
    # top-k 1 samples the greedy answer at any temperature; -1 and 0 keep every token (vLLM's "off")
    assert answer(temperature=2.0, top_k=1, seed=3) == greedy
    assert answer(temperature=2.0, top_k=-1, seed=3) == answer(temperature=2.0, top_k=0, seed=3)
    assert answer(temperature=0, repetition_penalty=2.0) != greedy
    for bad in ({"top_k": -2}, {"repetition_penalty": 0}, {"repetition_penalty": 2.5}):
        r = client.post("/v1/chat/completions", json=_chat(**bad))
        assert r.status_code == 400 and next(iter(bad)) in r.text


def test_concurrent_requests_are_batched(service) -> None:
    server, key, _ = service

    async def many() -> list[int]:
        async with httpx.AsyncClient(
            base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        ) as c:
            rs = await asyncio.gather(
                *[c.post("/v1/chat/completions", json=_chat(max_tokens=3)) for _ in range(6)]
            )
        return [r.status_code for r in rs]

    assert asyncio.run(many()) == [200] * 6
    metrics = server.server.config.app.state.metrics.render().decode()
    counts = {
        line.split(" ")[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(("veil_model_batch_size_sum ", "veil_model_batch_size_count "))
    }
    assert counts["veil_model_batch_size_sum"] > counts["veil_model_batch_size_count"]  # some batch had > 1


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (_chat(model="nope"), 404, "model"),
        (_chat(user_embedding=[0.0] * 3), 400, "user_embedding"),
        (_chat(user_embedding=[1e39] + [0.0] * 63), 400, "user_embedding"),
        (_chat(max_tokens=100_000), 400, "max_tokens"),
        (_chat(temperature=5), 400, "temperature"),
        ({"model": MODEL, "messages": []}, 400, "messages"),
        (_chat(messages=[{"role": "user", "content": "word " * 700}]), 400, "messages"),
        (_chat(n=2), 400, "n"),
    ],
)
def test_bad_chat_requests_get_4xx_json(client, body, status, param) -> None:
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] and err["message"]


def test_nan_invalid_json_oversized_and_auth(client, service) -> None:
    server, _, _ = service
    nan = '{"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], "user_embedding": [NaN'
    r = client.post(
        "/v1/chat/completions", content=nan + ", 0]}", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "NaN" in r.json()["error"]["message"]
    r = client.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["message"] == "request body is not valid JSON"
    r = client.post("/v1/uploads", content=b"x" * (65 * 1024), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"
    assert httpx.post(server.url + "/v1/chat/completions", json=_chat()).status_code == 401
    bad = httpx.post(
        server.url + "/v1/chat/completions", json=_chat(), headers={"Authorization": "Bearer veil_sk_x"}
    )
    assert bad.status_code == 401 and bad.json()["error"]["type"] == "authentication_error"
    # the schema is built on first request: allow for a loaded machine (httpx waits 5 s by default)
    assert httpx.get(server.url + "/openapi.json", timeout=60).json()["info"]["title"] == "Veil API"


def test_uploads_are_idempotent_and_conflicts_refused(client, service) -> None:
    from veil.cloud_service.store import count_uploads

    _, _, sessions = service
    body = {"task": "next_word", "text": "the cat sat on the", "label": "mat", "embedding": [[0.5] * 64]}
    key = {"Idempotency-Key": "upload-key-0123456789"}
    with sessions() as s:
        before = count_uploads(s)
    first = client.post("/v1/uploads", json=body, headers=key)
    again = client.post("/v1/uploads", json=body, headers=key)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"] and again.json()["status"] == "duplicate"
    conflict = client.post("/v1/uploads", json={**body, "label": "hat"}, headers=key)
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "idempotency_conflict"
    assert client.post("/v1/uploads", json=body).status_code == 400  # no key
    wrong = client.post(
        "/v1/uploads", json={**body, "embedding": [[0.5] * 63]}, headers={"Idempotency-Key": "x" * 20}
    )
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "embedding"
    with sessions() as s:
        assert count_uploads(s) == before + 1


def test_embedding_gradient_matches_the_model(client, served) -> None:
    from veil.models.tasks import tokenize_task
    from veil.models.training import embedding_gradients

    model, tokenizer, _, _ = served
    emb = np.random.default_rng(1).normal(size=(1, model.hidden_size))
    body = {"task": "next_word", "text": "I would like a cup of", "label": "tea", "embedding": emb.tolist()}
    got = client.post("/v1/embedding-gradients", json=body).json()
    data = tokenize_task(tokenizer, "next_word", [body["text"]], ["tea"], [])
    loss, grad = embedding_gradients(model, data, np.arange(1), emb[None].astype(np.float32))
    assert got["loss"] == pytest.approx(float(loss[0]), rel=1e-5)
    np.testing.assert_allclose(np.asarray(got["gradient"]), grad[0], rtol=1e-4, atol=1e-6)
    r = client.post("/v1/embedding-gradients", json={**body, "label": "two words"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "label"


def test_metrics_are_prometheus_text_on_the_operator_port_only(client, service) -> None:
    from veil.cloud_service.metrics import create_metrics_app

    server, _, _ = service
    client.get("/v1/models")
    assert httpx.get(server.url + "/metrics").status_code == 404  # not on the API's port
    with BackgroundServer(create_metrics_app(server.server.config.app.state.metrics)) as ops:
        r = httpx.get(ops.url + "/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    assert 'veil_http_requests_total{route="/v1/models",status="200"}' in r.text
    assert json.loads(httpx.get(server.url + "/health").text)["status"] == "ok"


def test_compact_base64_embeddings_equal_json_ones(client) -> None:
    import base64

    emb = np.random.default_rng(2).normal(size=(1, 64)).astype(np.float32)
    b64 = base64.b64encode(emb.astype("<f4").tobytes()).decode()
    body = {"task": "next_word", "text": "I would like a cup of", "label": "tea"}
    as_json = client.post("/v1/embedding-gradients", json={**body, "embedding": emb.tolist()}).json()
    as_b64 = client.post("/v1/embedding-gradients", json={**body, "embedding_b64": b64}).json()
    assert as_b64 == as_json
    for bad, fragment in [
        ({"embedding_b64": "not base64!"}, "base64"),
        ({"embedding_b64": base64.b64encode(b"\0" * 12).decode()}, "64"),
        ({"embedding_b64": b64, "embedding": emb.tolist()}, "either"),
        ({}, "required"),
    ]:
        r = client.post("/v1/embedding-gradients", json={**body, **bad})
        assert r.status_code == 400 and fragment in r.json()["error"]["message"], r.text
    chat = client.post("/v1/chat/completions", json=_chat(temperature=0, user_embedding_b64=b64))
    assert chat.status_code == 200


def test_upload_embeddings_decode_once_and_bad_ones_name_their_field(client, service) -> None:
    from veil.client_sdk.wire import decode_f32, encode_f32
    from veil.cloud_service.store import iter_uploads

    _, _, sessions = service
    emb = np.random.default_rng(5).normal(size=(1, 64)).astype(np.float32)
    body = {"task": "next_word", "text": "wire codec check", "label": "word"}
    b64 = client.post(
        "/v1/uploads", json={**body, "embedding_b64": encode_f32(emb)}, headers={"Idempotency-Key": "w" * 24}
    )
    listed = client.post(
        "/v1/uploads", json={**body, "embedding": emb.tolist()}, headers={"Idempotency-Key": "v" * 24}
    )
    assert b64.status_code == listed.status_code == 201, (b64.text, listed.text)
    with sessions() as s:
        stored = {u.id: u.embedding for u in iter_uploads(s) if u.text == "wire codec check"}
    assert len(stored) == 2
    for kept in stored.values():  # both forms store the very bytes that travelled
        assert kept.tobytes() == emb.astype("<f4").tobytes()
    nan = encode_f32(emb).replace(encode_f32(emb)[:8], "AADAfwAA", 1)  # first value NaN (0x7fc00000)
    for bad, param in [
        ({"embedding_b64": nan}, "embedding_b64"),
        ({"embedding_b64": encode_f32(emb[:, :32])}, "embedding_b64"),
        ({"embedding": [[0.5] * 63]}, "embedding"),
        ({"embedding": [[1e39] + [0.0] * 63]}, "embedding"),
    ]:
        r = client.post("/v1/uploads", json={**body, **bad}, headers={"Idempotency-Key": "u" * 24})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    grad_body = {**body, "embedding_b64": encode_f32(emb)}
    as_json = client.post("/v1/embedding-gradients", json=grad_body).json()
    compact = client.post("/v1/embedding-gradients", json={**grad_body, "encoding": "base64"}).json()
    assert "gradient_b64" not in as_json and "gradient" not in compact
    np.testing.assert_array_equal(
        decode_f32(compact["gradient_b64"], (1, 64), "gradient_b64"), np.float32(as_json["gradient"])
    )
