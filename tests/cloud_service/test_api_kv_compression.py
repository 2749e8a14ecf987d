"""``kv_compression`` on ``/v1/chat/completions`` on a real server: the answer with a lossless setting equals
the uncompressed one, ``usage`` reports the kept fractions per request (also for rows of one batch that use
different methods, and in the streamed usage chunk), every bad value is a 400 naming the field, and a
compressor that fails on the model thread costs only its own request (a 500 ``kv_compression_failed``, or
an error event when streamed), its batch companions answering as they would alone."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import httpx
import openai
import pytest

from veil.cloud_service.app import create_app, load_served_model
from veil.cloud_service.background import BackgroundServer
from veil.cloud_service.config import ServiceConfig
from veil.cloud_service.engine import EngineConfig
from veil.cloud_service.store import create_api_key, make_engine, migrate, session_factory
from veil.models.compression import H2O, KVCompressor, Prefill

pytestmark = pytest.mark.integration

MODEL = "tiny-llama"
PROMPT = "Tell me a short story about a lighthouse keeper and the sea."


def _chat(**extra) -> dict:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 6,
        "temperature": 0,
        **extra,
    }


def _serve(root: Path, served, window_s: float):
    engine = make_engine(None, root)
    migrate(engine)
    key = create_api_key(session_factory(engine)(), "tests")
    config = ServiceConfig(data_dir=root, model=MODEL, engine=EngineConfig(batch_window_s=window_s))
    app = create_app(config, preloaded=served)
    return BackgroundServer(app), key, app


def _batches(app) -> tuple[float, float]:
    """(model batches, requests in them) so far, from the app's metrics."""
    samples = {s.name: s.value for m in app.state.metrics.batch_size.collect() for s in m.samples}
    return samples["veil_model_batch_size_count"], samples["veil_model_batch_size_sum"]


def _compression_failures(app, method: str) -> float:
    """``veil_kv_compression_failures{method=...}`` so far."""
    value = app.state.metrics.registry.get_sample_value(
        "veil_kv_compression_failures_total", {"method": method}
    )
    return value or 0.0


@pytest.fixture(scope="module")
def stack(data_dir: str, tmp_path_factory: pytest.TempPathFactory):
    # a long batch window: requests sent together share one batch
    served = load_served_model(ServiceConfig(data_dir=Path(data_dir), model=MODEL))
    server, key, app = _serve(tmp_path_factory.mktemp("kv-api"), served, window_s=0.3)
    with server as api:
        yield api.url, key, app


@pytest.fixture()
def client(stack):
    url, key, _ = stack
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        yield c


def _post(client: httpx.Client, body: dict) -> dict:
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_lossless_threshold_answers_as_the_full_cache_and_keeps_everything(client) -> None:
    plain = _post(client, _chat())
    spec = {"method": "dbudgetkv", "threshold": 1e-9, "skip_layers": []}
    pruned = _post(client, _chat(kv_compression=spec))
    assert pruned["choices"][0]["message"] == plain["choices"][0]["message"]
    assert "kv_kept_fraction" not in plain["usage"]  # OpenAI clients see nothing new
    usage = pruned["usage"]
    assert usage["kv_kept_fraction"] == pytest.approx(1.0, abs=0.05)
    assert len(usage["kv_kept_fraction_per_layer"]) == 2  # tiny-llama's layers
    assert usage["kv_kept_fraction"] == pytest.approx(sum(usage["kv_kept_fraction_per_layer"]) / 2)


def test_a_half_budget_keeps_half_of_every_layer(client) -> None:
    usage = _post(client, _chat(kv_compression={"method": "snapkv", "budget": 0.5}))["usage"]
    n = usage["prompt_tokens"]
    assert usage["kv_kept_fraction_per_layer"] == [pytest.approx(round(n * 0.5) / n)] * 2


def test_a_personalised_rows_soft_token_counts_in_the_prompt_and_is_kept(client, stack) -> None:
    n_tokens, hidden = stack[2].state.veil.engine.embedding_shape
    emb = [[0.01] * hidden] * n_tokens
    n = _post(client, _chat())["usage"]["prompt_tokens"] + n_tokens
    whole = _post(client, _chat(user_embedding=emb, kv_compression={"method": "snapkv", "budget": n}))
    assert whole["usage"]["kv_kept_fraction"] == pytest.approx(1.0)
    one = _post(client, _chat(user_embedding=emb, kv_compression={"method": "snapkv", "budget": 1}))
    # the last prompt token kept, and the (prefix) soft token besides it: it is never pruned
    assert one["usage"]["kv_kept_fraction_per_layer"] == [pytest.approx((1 + n_tokens) / n)] * 2
    r = client.post("/v1/chat/completions", json=_chat(kv_compression={"method": "snapkv", "budget": n}))
    assert (r.status_code, r.json()["error"]["param"]) == (400, "kv_compression.budget")  # no soft token


def test_rows_of_one_batch_get_their_own_method_and_figures(stack) -> None:
    url, key, app = stack
    before = _batches(app)
    specs = [{"method": "streaming_llm", "budget": 0.25}, None, {"method": "h2o", "budget": 0.75}]

    async def run() -> list[dict]:
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as c:
            rs = await asyncio.gather(
                *(c.post("/v1/chat/completions", json=_chat(kv_compression=s)) for s in specs)
            )
        assert [r.status_code for r in rs] == [200] * 3, [r.text for r in rs]
        return [r.json()["usage"] for r in rs]

    quarter, full, three_quarters = asyncio.run(run())
    assert tuple(b - a for a, b in zip(before, _batches(app), strict=True)) == (1, 3)  # one batch of 3
    assert "kv_kept_fraction" not in full
    assert quarter["kv_kept_fraction"] == pytest.approx(0.25, abs=0.06)
    assert three_quarters["kv_kept_fraction"] == pytest.approx(0.75, abs=0.06)


def test_streaming_with_compression_equals_the_plain_answer_and_reports_usage(client) -> None:
    body = _chat(kv_compression={"method": "pyramidkv", "budget": 0.5, "beta": 2.0}, max_tokens=8)
    plain = _post(client, body)
    chunks = []
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"] == plain["usage"]
    assert plain["usage"]["kv_kept_fraction_per_layer"][0] > plain["usage"]["kv_kept_fraction_per_layer"][1]


@pytest.mark.parametrize(
    ("spec", "param"),
    [
        ({"method": "quantum"}, "kv_compression"),
        ({}, "kv_compression"),
        ("dbudgetkv", "kv_compression"),
        ({"method": "dbudgetkv", "bogus": 1}, "kv_compression.dbudgetkv.bogus"),
        ({"method": "dbudgetkv", "threshold": 0}, "kv_compression.threshold"),
        ({"method": "dbudgetkv", "threshold": 1}, "kv_compression.threshold"),
        ({"method": "dbudgetkv", "threshold": -0.5}, "kv_compression.threshold"),
        ({"method": "dbudgetkv", "norm_scope": "rows"}, "kv_compression.dbudgetkv.norm_scope"),
        ({"method": "snapkv", "budget": 100_000}, "kv_compression.budget"),
        ({"method": "snapkv", "budget": 1.5}, "kv_compression.budget"),
        ({"method": "snapkv", "window_size": 2**40}, "kv_compression.snapkv.window_size"),
        ({"method": "snapkv", "kernel_size": 4}, "kv_compression.kernel_size"),
        ({"method": "pyramidkv", "beta": 0.5}, "kv_compression.beta"),
    ],
)
def test_bad_kv_compression_is_a_400_naming_the_field(client, spec, param) -> None:
    r = client.post("/v1/chat/completions", json=_chat(kv_compression=spec))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_a_model_that_cannot_be_hooked_refuses_compression_with_a_400(data_dir, tmp_path) -> None:
    model, tokenizer, name, classes = load_served_model(ServiceConfig(data_dir=Path(data_dir), model=MODEL))
    model.base.set_attn_implementation("eager")
    server, key, _ = _serve(tmp_path, (model, tokenizer, name, classes), window_s=0.0)
    with server as api:
        headers = {"Authorization": f"Bearer {key}"}
        r = httpx.post(
            api.url + "/v1/chat/completions",
            json=_chat(kv_compression={"method": "snapkv", "budget": 0.5}),
            headers=headers,
            timeout=60,
        )
        assert r.status_code == 400
        error = r.json()["error"]
        assert (error["param"], error["code"]) == ("kv_compression", "kv_compression_unsupported")
        assert "sdpa" in error["message"]
        plain = httpx.post(api.url + "/v1/chat/completions", json=_chat(), headers=headers, timeout=60)
        assert plain.status_code == 200


def test_the_openapi_schema_describes_every_method(stack) -> None:
    schema = httpx.get(stack[0] + "/openapi.json").json()
    field = schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]["kv_compression"]
    text = json.dumps(field)
    for method in ("dbudgetkv", "streaming_llm", "snapkv", "h2o", "pyramidkv"):
        assert f"KVCompression_{method}" in text


BROKEN = {"method": "h2o", "budget": 0.33}
"""The request whose compressor fails (see :func:`_break_h2o`)."""


def _break_h2o(monkeypatch: pytest.MonkeyPatch) -> None:
    """H2O with a budget of 0.33 raises inside ``compress``, on the model thread, in the engine's real
    batch; every other compressor (H2O with another budget too) works as usual."""
    real = KVCompressor.compress

    def compress(self: H2O, prefill: Prefill) -> list:
        if self.config.budget == BROKEN["budget"]:
            raise RuntimeError("injected compressor failure")
        return real(self, prefill)

    monkeypatch.setattr(H2O, "compress", compress)


async def _together(url: str, key: str, bodies: list[dict]) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as c:
        return await asyncio.gather(*(c.post("/v1/chat/completions", json=b) for b in bodies))


def _is_the_compression_error(error: dict) -> None:
    expected = ("server_error", "kv_compression_failed", "kv_compression")
    assert (error["type"], error["code"], error["param"]) == expected
    assert "'h2o'" in error["message"]
    assert "injected" not in error["message"] and "Traceback" not in error["message"]  # logged, never sent


def test_a_failing_compressor_costs_only_its_own_row_of_the_batch(stack, client, monkeypatch, caplog) -> None:
    url, key, app = stack
    _break_h2o(monkeypatch)
    # another prompt length: the batch pads, a batch of one does not
    other = [{"role": "user", "content": "Name three colours of the sea at night."}]
    good = [
        _chat(kv_compression={"method": "snapkv", "budget": 0.5}),
        _chat(messages=other),
        _chat(messages=other, kv_compression={"method": "h2o", "budget": 0.5}),
    ]
    before, failures = _batches(app), _compression_failures(app, "h2o")
    with caplog.at_level(logging.WARNING, logger="veil.cloud_service.engine"):
        rs = asyncio.run(_together(url, key, [good[0], _chat(kv_compression=BROKEN), *good[1:]]))
    assert tuple(b - a for a, b in zip(before, _batches(app), strict=True)) == (1, 4)  # one batch of 4
    assert [r.status_code for r in rs] == [200, 500, 200, 200], [r.text for r in rs]
    _is_the_compression_error(rs[1].json()["error"])
    assert _compression_failures(app, "h2o") == failures + 1
    logged = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info is not None]
    assert [r.getMessage() for r in logged] == ["KV compression H2O failed for one chat row"]
    assert "injected compressor failure" in caplog.text  # with the traceback, on the server only
    # the rows that worked answer exactly as they do in a batch of their own (greedy decoding)
    for body, r in zip(good, [rs[0], *rs[2:]], strict=True):
        alone = _post(client, body)
        assert (r.json()["choices"], r.json()["usage"]) == (alone["choices"], alone["usage"])
    # the server serves on; alone, the failing request is the same 500 (the batch-of-one path)
    r = client.post("/v1/chat/completions", json=_chat(kv_compression=BROKEN))
    assert r.status_code == 500
    _is_the_compression_error(r.json()["error"])


def test_a_streamed_request_whose_compression_fails_ends_with_an_error_event(
    stack, client, monkeypatch
) -> None:
    url, key, app = stack
    _break_h2o(monkeypatch)
    good = _chat(kv_compression={"method": "pyramidkv", "budget": 0.5}, max_tokens=8)
    plain = _post(client, good)

    async def stream(c: httpx.AsyncClient, body: dict) -> tuple[int, list[str]]:
        async with c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            return r.status_code, [line async for line in r.aiter_lines() if line.startswith("data: ")]

    async def run() -> list[tuple[int, list[str]]]:
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as c:
            return await asyncio.gather(stream(c, _chat(kv_compression=BROKEN)), stream(c, good))

    before = _batches(app)
    (bad_status, bad), (good_status, ok) = asyncio.run(run())
    assert tuple(b - a for a, b in zip(before, _batches(app), strict=True)) == (1, 2)  # one batch of 2
    # the 200 was sent before generation: the role chunk, then the error object, and no [DONE]
    assert bad_status == 200 and len(bad) == 2
    assert json.loads(bad[0][6:])["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    _is_the_compression_error(json.loads(bad[1][6:])["error"])
    assert good_status == 200 and ok[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in ok[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"] == plain["usage"]
    # an OpenAI client raises on the error event instead of returning a truncated answer
    sdk = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    body = _chat(kv_compression=BROKEN)
    with pytest.raises(openai.APIError, match="'h2o' compression failed"):
        for _ in sdk.chat.completions.create(
            model=MODEL, messages=body["messages"], max_tokens=6, temperature=0, stream=True,
            extra_body={"kv_compression": BROKEN},
        ):  # fmt: skip
            pass
