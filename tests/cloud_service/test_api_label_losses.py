"""``POST /v1/label-losses`` on a real server: each label's loss equals the loss request of
``/v1/embedding-gradients`` (``encoding: "none"``) for that label and the same embedding, in the order
asked, directly and through a real relay and the OHTTP gateway; bad bodies are 400s."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from veil.client_sdk.api import embedding_field
from veil.client_sdk.ohttp import OHTTPClient
from veil.cloud_service.background import BackgroundServer
from veil.cloud_service.relay import RelayConfig, create_relay_app

pytestmark = pytest.mark.integration

MODEL = "tiny-llama"
TEXT = "the cat sat on the"
LABELS = ["mat", "hat", "dog", "table", "moon"]


@pytest.fixture(scope="module")
def stack(keyed_app, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("label-losses-api")
    app, key = keyed_app(root, MODEL)
    with (
        BackgroundServer(app) as api,
        BackgroundServer(create_relay_app(RelayConfig(gateway_url=api.url))) as relay,
    ):
        yield api, relay, key


def _post(api, key: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(api.url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def _embedding(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 0.5, (1, 64)).astype(np.float32)


def test_label_losses_are_the_loss_requests_of_each_label_in_one(stack) -> None:
    api, relay, key = stack
    e = _embedding(0)
    body = {"model": MODEL, "task": "next_word", "text": TEXT, "labels": LABELS, "embedding": e.tolist()}
    r = _post(api, key, "/v1/label-losses", body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert set(answer) == {"object", "model", "losses"}
    assert (answer["object"], answer["model"], len(answer["losses"])) == ("label_losses", MODEL, len(LABELS))
    one_by_one = [
        _post(
            api, key, "/v1/embedding-gradients",
            {"task": "next_word", "text": TEXT, "label": label, "embedding": e.tolist(), "encoding": "none"},
        ).json()["loss"]
        for label in LABELS
    ]  # fmt: skip
    assert answer["losses"] == pytest.approx(one_by_one, rel=1e-5)
    assert len(set(answer["losses"])) == len(LABELS)  # the labels are told apart
    # the order asked is the order answered; the compact form is the same embedding
    compact = {**body, "labels": LABELS[::-1], **embedding_field("embedding", e)}
    del compact["embedding"]
    assert _post(api, key, "/v1/label-losses", compact).json()["losses"] == pytest.approx(
        answer["losses"][::-1], rel=1e-5
    )
    # another sample, other losses
    other = _post(api, key, "/v1/label-losses", {**body, "embedding": _embedding(1).tolist()})
    assert other.json()["losses"] != pytest.approx(answer["losses"], rel=1e-5)
    # a phone route: served through the relay and the gateway
    with OHTTPClient(relay.url + "/ohttp", key_config_url=relay.url + "/.well-known/ohttp-gateway") as c:
        inner = c.request("POST", "/v1/label-losses", json=compact)
    assert inner.status == 200 and inner.json()["losses"] == pytest.approx(answer["losses"][::-1], rel=1e-5)


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"labels": []}, "labels"),
        ({"labels": [f"w{i}" for i in range(33)]}, "labels"),
        ({"labels": ["mat", "hat", "mat"]}, "labels"),
        ({"labels": ["mat", "two words"]}, "labels.1"),
        ({"labels": ["mat", ""]}, "labels.1"),
        ({"labels": ["mat", "x" * 257]}, "labels.1"),
        ({"labels": "mat"}, "labels"),
        ({"task": "classification"}, "task"),  # tiny-llama has no classification head
        ({"embedding_b64": "AAAAPwAAgL8AAABA"}, None),  # both forms
        ({"embedding": None}, None),  # neither
        ({"embedding": [[0.1] * 63]}, "embedding"),
        ({"label": "mat"}, "label"),  # unknown field
        ({"codebook_version": "not-hex"}, "codebook_version"),
        ({"model": "another-model"}, "model"),
    ],
)
def test_bad_label_loss_requests_are_refused(stack, change: dict, param: str | None) -> None:
    api, _, key = stack
    body = {"model": MODEL, "task": "next_word", "text": TEXT, "labels": LABELS, "embedding": [[0.1] * 64]}
    r = _post(api, key, "/v1/label-losses", {**body, **change})
    assert r.status_code == (404 if param == "model" else 400), r.text
    err = r.json()["error"]
    assert err["message"] and err["param"] == param
    if param == "labels" and change["labels"] == ["mat", "hat", "mat"]:
        assert "distinct" in err["message"] and "mat" in err["message"]
