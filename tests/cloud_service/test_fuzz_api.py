"""Schemathesis over the served OpenAPI document, and fuzzed bodies into the real gateway: never a 5xx.

Short versions of ``benchmarks/fuzz_api.py`` (>= 10,000 requests) and the HTTP part of
``benchmarks/fuzz_ohttp.py``: a real uvicorn server with the tiny model, SQLite, and an API key.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from veil.client_sdk.ohttp import decode_key_configs
from veil.cloud_service.app import create_app, load_served_model
from veil.cloud_service.background import BackgroundServer
from veil.cloud_service.config import ServiceConfig
from veil.cloud_service.engine import EngineConfig
from veil.cloud_service.relay_auth import relay_auth_header
from veil.cloud_service.store import create_api_key, make_engine, migrate, session_factory
from veil.testing.api_fuzz import error_shape_problem, fuzz_api
from veil.testing.gateway_fuzz import AUTH_KIND, BODY_KINDS, fuzz_gateway

pytestmark = pytest.mark.integration

MODEL = "tiny-llama"
RELAY_SECRET = bytes(range(32))


@pytest.fixture(scope="module")
def service(data_dir: str, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("fuzz-api")
    served = load_served_model(ServiceConfig(data_dir=Path(data_dir), model=MODEL))
    # Short completions: fuzzed chat requests that leave max_tokens out must not take seconds each.
    config = ServiceConfig(
        data_dir=root,
        model=MODEL,
        environment="development",
        relay_secret=RELAY_SECRET,  # as deployed: /ohttp answers only the relay's HMAC
        default_max_tokens=4,
        max_body_bytes=256 * 1024,
        engine=EngineConfig(max_batch=8, batch_window_s=0.002),
    )
    engine = make_engine(None, root)
    migrate(engine)
    # An operator key: it calls every route a plain key does, and PUT /v1/codebook gets past the key
    # check to its body checks (a fuzzed body never hashes to its version, so nothing is published).
    key = create_api_key(session_factory(engine)(), "fuzz", operator=True)
    engine.dispose()
    with BackgroundServer(create_app(config, preloaded=served)) as server:
        yield server, key, served


def test_schemathesis_finds_no_server_error_in_any_operation(service) -> None:
    server, key, served = service
    report = fuzz_api(
        server.url, api_key=key, served_model=served[2], embedding_size=64, examples_per_operation=15, seed=1
    )
    assert report.findings == [], report.summary()
    assert report.server_errors == 0
    paths = set(httpx.get(server.url + "/openapi.json").json()["paths"])
    assert {label.split(" ", 1)[1] for label in report.by_operation} == paths
    assert report.requests >= 120
    # the steered cases get past validation: uploads stored, completions generated
    assert report.statuses[201] > 0 and report.statuses[200] > 0 and report.statuses[401] > 0


def test_fuzzed_bodies_to_the_gateway_never_get_a_5xx_outside_or_inside(service) -> None:
    server, _, _ = service
    config = decode_key_configs(httpx.get(server.url + "/.well-known/ohttp-gateway").content)[0]
    report = fuzz_gateway(server.url + "/ohttp", config, 250, seed=3, relay_secret=RELAY_SECRET)
    assert report.findings == [], report.summary()
    assert report.server_errors == 0
    assert set(report.kinds) == {*BODY_KINDS, AUTH_KIND}
    # every layer was reached: relay auth, refused before decryption, by the inner decoder or a route, served
    assert report.outer_errors["authentication_error"] > 0
    assert report.outer_errors["ohttp_decryption_failed"] > 0
    assert report.inner_statuses[400] > 0
    assert sum(n for status, n in report.inner_statuses.items() if status < 300) > 0


# Regression: the fuzzers' second finding. The gateway's refusals lacked error.code, unlike every
# other error of the API.
def test_gateway_refusals_have_the_full_error_shape(service) -> None:
    server, _, _ = service
    for body in (b"", b"\x01\x00\x20\x00\x01\x00\x01", b"\xff" * 64):
        headers = {"content-type": "message/ohttp-req"}
        unsigned = httpx.post(server.url + "/ohttp", content=body, headers=headers)
        headers["veil-relay-auth"] = relay_auth_header(RELAY_SECRET, body)
        signed = httpx.post(server.url + "/ohttp", content=body, headers=headers)
        assert (unsigned.status_code, signed.status_code) == (401, 400)
        for r in (unsigned, signed):
            assert error_shape_problem(r.status_code, r.headers["content-type"], r.content) is None


# Regression: schemathesis' first 5xx. Temperatures and top_p near zero are inside the documented ranges
# and must sample greedily, not fail the batch with a 500.
@pytest.mark.parametrize(("temperature", "top_p"), [(1e-40, 1.0), (1.0, 1e-300), (5e-324, 5e-324)])
def test_chat_with_a_tiny_temperature_or_top_p_answers_200(service, temperature, top_p) -> None:
    server, key, _ = service
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        "temperature": temperature,
        "top_p": top_p,
    }
    r = httpx.post(
        server.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize(
    ("seed", "status"), [(2**63 - 1, 200), (-(2**63), 200), (2**63, 400), (-(10**25), 400)]
)
def test_chat_seeds_outside_64_bits_are_a_400(service, seed: int, status: int) -> None:
    server, key, _ = service
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "seed": seed}
    r = httpx.post(
        server.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60
    )
    assert r.status_code == status, r.text
    if status == 400:
        assert r.json()["error"]["param"] == "seed"


def test_an_unpadded_embedding_b64_of_the_right_length_is_a_400(service) -> None:
    server, key, _ = service
    body = {"task": "next_word", "text": "a cup of", "label": "tea", "embedding_b64": "A" * 344}
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "fuzz-regression-unpadded-b64"}
    r = httpx.post(server.url + "/v1/uploads", json=body, headers=headers, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "embedding_b64"
