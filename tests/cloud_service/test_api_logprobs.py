"""``logprobs``/``top_logprobs`` on a real server, pinned to the simulator's cloud half of private
mixing, and the phone's mixed next token through a real relay and the OHTTP gateway."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest

from veil.client_sdk.client import VeilClient
from veil.client_sdk.distributions import Codebook, PrototypeDistribution
from veil.client_sdk.param_store import ClientState, MemoryParamStore
from veil.client_sdk.private_head import PrivateHead
from veil.cloud_service.app import create_app, load_served_model
from veil.cloud_service.background import BackgroundServer
from veil.cloud_service.codebooks import CodebookStore
from veil.cloud_service.config import ServiceConfig
from veil.cloud_service.relay import RelayConfig, create_relay_app
from veil.cloud_service.store import create_api_key, make_engine, migrate, session_factory
from veil.models.personalization import PersonalizationConfig, PersonalizedLM
from veil.models.tasks import TokenizedTask
from veil.simulation.mixing import head_answers

pytestmark = pytest.mark.integration

MODEL = "tiny-llama"
MESSAGES = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def served(data_dir: str):
    """tiny-llama with the soft token as a suffix: at the last position it steers the random model."""
    model, tokenizer, name, classes = load_served_model(ServiceConfig(data_dir=Path(data_dir), model=MODEL))
    model = PersonalizedLM(model.base, PersonalizationConfig(n_tokens=1, placement="suffix")).eval()
    return model, tokenizer, name, classes


@pytest.fixture(scope="module")
def stack(served, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("logprobs-api")
    engine = make_engine(None, root)
    migrate(engine)
    key = create_api_key(session_factory(engine)(), "tests")
    app = create_app(ServiceConfig(data_dir=root, model=MODEL), preloaded=served)
    with (
        BackgroundServer(app) as api,
        BackgroundServer(create_relay_app(RelayConfig(gateway_url=api.url))) as relay,
    ):
        yield api, relay, key, CodebookStore(root)


@pytest.fixture()
def client(stack):
    api, _, key, _ = stack
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        yield c


def _prototype(served, token: int) -> np.ndarray:
    """``(1, hidden)``: a scaled input embedding, which pulls the first answer token towards ``token``."""
    weight = served[0].base.get_input_embeddings().weight.detach().numpy()
    return 10 * weight[token][None].astype(np.float64)


def _chat(**extra):
    return {"model": MODEL, "messages": MESSAGES, "max_tokens": 3, **extra}


def test_top_logprobs_are_sorted_valid_and_led_by_the_greedy_token(client, served) -> None:
    tokenizer = served[1]
    body = _chat(
        temperature=0, logprobs=True, top_logprobs=5, user_embedding=_prototype(served, 500).tolist()
    )
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    content = choice["logprobs"]["content"]
    assert len(content) == r.json()["usage"]["completion_tokens"] > 0
    assert "".join(tokenizer.decode([c["id"]]) for c in content) == choice["message"]["content"]
    for entry in content:
        top = entry["top_logprobs"]
        values = [t["logprob"] for t in top]
        assert len(top) == 5 and values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        assert entry["logprob"] <= 0 and sum(np.exp(values)) <= 1 + 1e-5
        assert top[0]["id"] == entry["id"] and top[0]["logprob"] == pytest.approx(entry["logprob"])
        assert entry["bytes"] == list(entry["token"].encode("utf-8"))
    plain = client.post("/v1/chat/completions", json=_chat(temperature=0)).json()
    assert plain["choices"][0]["logprobs"] is None


def test_logprobs_are_the_models_before_temperature(client, served) -> None:
    e = _prototype(served, 500).tolist()

    def first(**extra) -> dict:
        body = _chat(max_tokens=1, logprobs=True, user_embedding=e, **extra)
        return client.post("/v1/chat/completions", json=body).json()["choices"][0]["logprobs"]["content"][0]

    greedy = first(temperature=0, top_logprobs=5)
    hot = first(temperature=1.7, top_p=0.5, seed=5, top_logprobs=5)
    assert [t["id"] for t in hot["top_logprobs"]] == [t["id"] for t in greedy["top_logprobs"]]
    np.testing.assert_allclose(
        [t["logprob"] for t in hot["top_logprobs"]], [t["logprob"] for t in greedy["top_logprobs"]], atol=1e-5
    )
    assert first(temperature=0)["top_logprobs"] == []  # logprobs without top_logprobs: the token's only


@pytest.mark.parametrize("token", [500, 1200])
def test_first_position_equals_the_simulators_head_answers(client, served, token) -> None:
    model, tokenizer, _, _ = served
    proto = _prototype(served, token)
    body = _chat(temperature=0, max_tokens=1, logprobs=True, top_logprobs=20, user_embedding=proto.tolist())
    top = client.post("/v1/chat/completions", json=body).json()["choices"][0]["logprobs"]["content"][0]
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)["input_ids"]
    data = TokenizedTask("next_word", [list(prompt)], np.zeros(1, dtype=np.int64), tokenizer.pad_token_id)
    sim = head_answers(model, data, np.array([0]), proto[None, None], top_k=20)  # (1, 1, 20)
    assert [t["id"] for t in top["top_logprobs"]] == sim.tokens[0, 0].tolist()
    np.testing.assert_allclose([t["logprob"] for t in top["top_logprobs"]], sim.logprobs[0, 0], atol=1e-4)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ({"top_logprobs": 3}, None),  # top_logprobs without logprobs
        ({"logprobs": True, "stream": True}, "logprobs"),
    ],
)
def test_bad_logprobs_requests_get_400_json(client, extra, param) -> None:
    r = client.post("/v1/chat/completions", json=_chat(**extra))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    if param is not None:
        assert err["param"] == param


def test_openai_client_parses_logprobs(stack, served) -> None:
    from openai import OpenAI

    api, _, key, _ = stack
    oai = OpenAI(base_url=api.url + "/v1", api_key=key, max_retries=0)
    out = oai.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=2, temperature=0, logprobs=True, top_logprobs=3,
        extra_body={"user_embedding": _prototype(served, 500).tolist()},
    )  # fmt: skip
    content = out.choices[0].logprobs.content
    assert content and len(content[0].top_logprobs) == 3
    assert content[0].top_logprobs[0].token == content[0].token and content[0].logprob <= 0
    assert content[0].top_logprobs[0].model_extra["id"] == content[0].model_extra["id"]


def test_phone_mixes_its_prototypes_answers_through_the_relay(stack, served, client) -> None:
    _, relay, _, books = stack
    protos = np.stack([_prototype(served, t) for t in (500, 1200, 77)])  # (3, 1, hidden)
    book = books.publish(Codebook(protos, [True, True, True], k_min=1))
    store = MemoryParamStore()
    store.save(ClientState(PrototypeDistribution(book, 1), {}, MODEL))

    async def run() -> tuple[int, int]:
        async with VeilClient.through_relay(relay.url + "/ohttp", store, model=MODEL) as phone:
            own = await phone.mixed_next_token(MESSAGES, PrivateHead(1), top_k=5)
            both = await phone.mixed_next_token(
                MESSAGES, PrivateHead(2, np.array([0.0, 50.0])), top_k=5, prototypes=[1, 0]
            )
            answers = await phone.api.prototype_answers(MESSAGES, book.prototypes[[1, 0]], 5)
            assert answers.tokens.shape == answers.logprobs.shape == (1, 2, 5)
            return own, both

    own, both = asyncio.run(run())
    greedy = []
    for j in (1, 0):
        body = _chat(temperature=0, max_tokens=1, logprobs=True, user_embedding=book.prototypes[j].tolist())
        greedy.append(
            client.post("/v1/chat/completions", json=body).json()["choices"][0]["logprobs"]["content"][0][
                "id"
            ]
        )
    assert greedy[0] != greedy[1]  # the two prototypes steer the first token apart
    assert own == greedy[0]  # a zero head over one prototype: the greedy token under it
    assert both == greedy[1]  # nearly all weight on the second requested prototype (index 0)
