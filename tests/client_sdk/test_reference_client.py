"""The reference client (veil.client_sdk.client) and its parameter store (veil.client_sdk.param_store).

Unit tests run the real client stack (VeilClient -> PhoneAPI -> AsyncOHTTPClient) against an
in-process relay+gateway (a real gateway key opens every request) whose inner answers each test
programs; the integration test runs the real API and relay with tiny-llama.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from veil.client_sdk import BasisMixtureDistribution, BetaDistribution, GaussianDistribution, OnDeviceLearner
from veil.client_sdk.api import VeilAPIError
from veil.client_sdk.client import (
    InvalidResponseError,
    LearningConfig,
    ModelMismatchError,
    NumpyBackend,
    RetryPolicy,
    VeilClient,
    secure_rng,
)
from veil.client_sdk.ohttp import (
    RESPONSE_MEDIA_TYPE,
    AsyncOHTTPClient,
    BinaryRequest,
    BinaryResponse,
    DecryptionFailedError,
    GatewayKeyPair,
    RelayError,
    decapsulate_request,
    encode_key_configs,
)
from veil.client_sdk.ohttp.keysig import sign_key_configs, signing_key_from_seed
from veil.client_sdk.param_store import (
    ClientState,
    CorruptParamFileError,
    MissingParamFileError,
    ParamStore,
    ParamStoreError,
    PassphraseRequiredError,
    ScryptCost,
    WrongPassphraseError,
)
from veil.client_sdk.policy_guard import PolicyGuard, PolicyViolationError

FAST = ScryptCost(log2_n=10, r=8, p=1)
SHAPE = (1, 4)
TARGET = np.array([[1.0, -1.0, 0.5, 2.0]])
MODEL = "tiny-test"
SIGNING_KEY = signing_key_from_seed(b"\x06" * 32)  # the service's gateway signing key


def gaussian(mean: float = 0.0, std: float = 0.5) -> GaussianDistribution:
    return GaussianDistribution(np.full(SHAPE, mean), np.full(SHAPE, std))


# ---------------------------------------------------------------------------------------------- store
def _families() -> list[Any]:
    beta = BetaDistribution(np.full(SHAPE, 2.0), np.full(SHAPE, 3.0))
    return [gaussian(), beta, BasisMixtureDistribution([gaussian(), gaussian(1.0), beta], [0.2, 0.3, 0.5])]


@pytest.mark.parametrize("passphrase", [None, "correct horse"])
@pytest.mark.parametrize("family", range(3))
def test_store_round_trips_every_family(tmp_path: Path, family: int, passphrase: str | None) -> None:
    dist = _families()[family]
    learner = OnDeviceLearner(dist, lr=0.1)
    learner.step(dist.sample(np.random.default_rng(0)), np.ones(SHAPE))
    state = ClientState(learner.distribution, learner.optimizer.state_dict(), MODEL)
    store = ParamStore(tmp_path / "p" / "params.veil", passphrase=passphrase, cost=FAST)
    store.save(state)
    back = store.load()
    assert type(back.distribution) is type(dist) and back.model == MODEL and back.steps == 1
    for a, b in zip(back.distribution._arrays().values(), state.distribution._arrays().values(), strict=True):
        np.testing.assert_array_equal(a, b)
    for moment in ("m", "v"):
        for k, v in state.optimizer[moment].items():
            np.testing.assert_array_equal(back.optimizer[moment][k], v)
    assert (back.optimizer["lr"], back.optimizer["betas"]) == (0.1, (0.9, 0.999))
    if passphrase:
        assert b"mean" not in store.path.read_bytes() and b"alpha" not in store.path.read_bytes()


def test_store_file_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store = ParamStore(tmp_path / "new-dir" / "params.veil")
        store.save(ClientState(gaussian()))
        store.save(ClientState(gaussian(0.5)))  # the replacement too
    finally:
        os.umask(old)
    assert store.path.stat().st_mode & 0o777 == 0o600
    assert store.path.parent.stat().st_mode & 0o777 == 0o700
    assert [p.name for p in store.path.parent.iterdir()] == ["params.veil"]  # no temporary left


def test_store_typed_errors(tmp_path: Path) -> None:
    path = tmp_path / "params.veil"
    with pytest.raises(MissingParamFileError):
        ParamStore(path).load()
    ParamStore(path, passphrase="right", cost=FAST).save(ClientState(gaussian()))
    with pytest.raises(WrongPassphraseError):
        ParamStore(path, passphrase="wrong").load()
    with pytest.raises(PassphraseRequiredError):
        ParamStore(path).load()
    plain = tmp_path / "plain.veil"
    ParamStore(plain).save(ClientState(gaussian()))
    with pytest.raises(PassphraseRequiredError):
        ParamStore(plain, passphrase="x").load()
    with pytest.raises(ValueError, match="empty"):
        ParamStore(path, passphrase="")
    path.write_bytes(b"not a parameter file")
    with pytest.raises(CorruptParamFileError):
        ParamStore(path).load()


@pytest.mark.parametrize("passphrase", [None, "pw"])
def test_store_detects_any_altered_or_truncated_byte(tmp_path: Path, passphrase: str | None) -> None:
    store = ParamStore(tmp_path / "params.veil", passphrase=passphrase, cost=FAST)
    store.save(ClientState(gaussian(), {}, MODEL))
    good = store.path.read_bytes()
    positions = sorted({8, 9, 12, 20, 40, 60, len(good) // 2, len(good) - 20, len(good) - 1})
    for pos in positions:
        bad = bytearray(good)
        bad[pos] ^= 0x01
        store.path.write_bytes(bytes(bad))
        with pytest.raises(ParamStoreError):  # corrupt or (in the salt/check) wrong passphrase
            store.load()
    for size in (5, 9, 40, len(good) - 1):
        store.path.write_bytes(good[:size])
        with pytest.raises(CorruptParamFileError):
            store.load()


def test_store_refuses_a_header_asking_for_huge_scrypt_cost(tmp_path: Path) -> None:
    store = ParamStore(tmp_path / "params.veil", passphrase="pw", cost=FAST)
    store.save(ClientState(gaussian()))
    data = bytearray(store.path.read_bytes())
    data[9] = 40  # log2(N) = 40 would need terabytes
    store.path.write_bytes(bytes(data))
    with pytest.raises(CorruptParamFileError, match="scrypt"):
        store.load()


def test_failed_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ParamStore(tmp_path / "params.veil")
    store.save(ClientState(gaussian(0.0)))

    def broken_replace(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(ParamStoreError, match="No space"):
        store.save(ClientState(gaussian(9.0)))
    monkeypatch.undo()
    assert float(store.load().distribution.loc[0, 0]) == 0.0
    assert [p.name for p in tmp_path.iterdir()] == ["params.veil"]


@pytest.mark.integration
def test_store_survives_sigkill_during_writes(tmp_path: Path) -> None:
    """A process saving in a loop is killed at random moments; the file always opens, whole."""
    path = tmp_path / "params.veil"
    script = textwrap.dedent(
        f"""
        import numpy as np, sys
        from veil.client_sdk import GaussianDistribution
        from veil.client_sdk.param_store import ClientState, ParamStore, ScryptCost
        store = ParamStore({str(path)!r}, passphrase="pw", cost=ScryptCost(10, 8, 1))
        i = 0
        while True:
            store.save(ClientState(GaussianDistribution(np.full((1, 256), float(i)), np.ones((1, 256)))))
            i += 1
            if i == 1:
                print("ready", flush=True)
        """
    )
    rng = np.random.default_rng(0)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        import time

        time.sleep(float(rng.uniform(0.05, 0.3)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        loc = ParamStore(path, passphrase="pw").load().distribution.loc
        assert np.all(loc == loc[0, 0])  # one whole state, never a mixture
    assert all(p.name == "params.veil" or p.name.endswith(".tmp") for p in tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------- client


def _sample(body: dict, name: str) -> np.ndarray:
    """The sample a request carries, in either wire form (base64 float32 by default)."""
    if f"{name}_b64" in body:
        return (
            np.frombuffer(base64.b64decode(body[f"{name}_b64"]), dtype="<f4")
            .astype(np.float64)
            .reshape(SHAPE)
        )
    return np.asarray(body[name])


class Service:
    """Relay and gateway in one httpx handler: a real gateway key opens every request; ``answer``
    plays the API. ``outer`` queues outer failures (a status, ``"garbage"`` or an httpx exception)."""

    def __init__(self) -> None:
        self.key = GatewayKeyPair.generate(1)
        self.outer: list[Any] = []
        self.inner: list[Any] = []  # queued inner answers: (status, body) before the normal one
        self.seen: list[BinaryRequest] = []
        self.outer_requests: list[httpx.Request] = []
        self.uploads: dict[str, bytes] = {}

    def answer(self, req: BinaryRequest) -> tuple[int, Any]:
        if self.inner:
            return self.inner.pop(0)
        body = json.loads(req.content) if req.content else {}
        if req.path == "/v1/models":
            card = {"id": MODEL, "object": "model", "embedding_shape": list(SHAPE)}
            return 200, {"object": "list", "data": [card]}
        if req.path == "/v1/embedding-gradients":  # L = ||e - TARGET||^2
            e = _sample(body, "embedding")
            return 200, {"object": "embedding_gradient", "model": MODEL, "loss": float(np.sum((e - TARGET) ** 2)),
                         "gradient": (2 * (e - TARGET)).tolist()}  # fmt: skip
        if req.path == "/v1/label-losses":  # L = ||e - TARGET||^2 + the label's length
            loss = float(np.sum((_sample(body, "embedding") - TARGET) ** 2))
            return 200, {"object": "label_losses", "model": MODEL,
                         "losses": [loss + len(label) for label in body["labels"]]}  # fmt: skip
        if req.path == "/v1/uploads":
            key = req.header("idempotency-key")
            if key in self.uploads:
                return (200 if self.uploads[key] == req.content else 409), {"id": 1, "object": "upload",
                                                                             "status": "duplicate"}  # fmt: skip
            self.uploads[key] = req.content
            return 201, {"id": len(self.uploads), "object": "upload", "status": "created"}
        if req.path == "/v1/chat/completions":
            text = "personalised" if "user_embedding_b64" in body else "plain"
            return 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
        if req.path == "/v1/translations":
            text = "personalised" if "user_embedding_b64" in body else "plain"
            used = list(range(len(body["documents"]))) if "documents" in body else None
            return 200, {"translation": text, "mode": body["mode"], "thought": None, "documents_used": used}
        return 404, {"error": {"type": "not_found_error", "message": "no route", "param": None, "code": None}}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            body = encode_key_configs([self.key.config])
            return httpx.Response(200, content=body, headers=sign_key_configs(body, SIGNING_KEY))
        self.outer_requests.append(request)
        if self.outer:
            failure = self.outer.pop(0)
            if isinstance(failure, int):
                error = {"error": {"type": "bad_gateway", "message": "x", "param": None}}
                return httpx.Response(failure, json=error)
            if failure == "garbage":
                return httpx.Response(
                    200, content=os.urandom(80), headers={"content-type": RESPONSE_MEDIA_TYPE}
                )
            raise failure("relay trouble", request=request)
        plaintext, ctx = decapsulate_request({self.key.key_id: self.key}, request.content)
        inner = BinaryRequest.decode(plaintext)
        self.seen.append(inner)
        status, body = self.answer(inner)
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = BinaryResponse(status, [("content-type", "application/json")], content)
        sealed = ctx.encapsulate_response(response.encode())
        return httpx.Response(200, content=sealed, headers={"content-type": RESPONSE_MEDIA_TYPE})


def make_client(service: Service, store: ParamStore, **kwargs: Any) -> VeilClient:
    transport = AsyncOHTTPClient(
        "https://relay.invalid/ohttp",
        key_config_url="https://relay.invalid/.well-known/ohttp-gateway",
        transport=httpx.MockTransport(service),
        retries=0,
    )
    kwargs.setdefault("retry", RetryPolicy(retries=3, backoff_s=0.0))
    kwargs.setdefault("backend", NumpyBackend(LearningConfig(lr=0.1)))
    return VeilClient(transport, store, model=MODEL, **kwargs)


def run(coro_fn: Callable[[], Any]) -> Any:
    return asyncio.run(coro_fn())


def _file(store: ParamStore) -> bytes:
    return store.path.read_bytes()


def test_client_learns_from_returned_gradients(tmp_path: Path) -> None:
    service, store = Service(), ParamStore(tmp_path / "params.veil", passphrase="pw", cost=FAST)
    seeds = iter(range(1000))
    client = make_client(service, store, rng=lambda: np.random.default_rng(next(seeds)))
    prior = gaussian(0.0, 0.3)
    client.initialise(prior)

    async def go() -> list[float]:
        assert (await client.discover())["embedding_shape"] == list(SHAPE)
        return [(await client.learn("next_word", "a cup of", "tea")).loss for _ in range(40)]

    losses = run(go)
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:5])
    again = ParamStore(store.path, passphrase="pw")  # a restarted app reads the same state
    state = again.load()
    assert state.steps == 40 and state.model == MODEL
    np.testing.assert_allclose(state.distribution.loc, client.state.distribution.loc)
    assert np.linalg.norm(state.distribution.loc - TARGET) < 0.5 * np.linalg.norm(prior.loc - TARGET)
    one_service = Service()
    step1 = make_client(one_service, ParamStore(tmp_path / "one.veil"), rng=lambda: np.random.default_rng(0))
    step1.initialise(prior)
    run(lambda: step1.learn("next_word", "a cup of", "tea"))
    one = _sample(json.loads(one_service.seen[0].content), "embedding")
    ref = OnDeviceLearner(prior, lr=0.1)
    ref.step(one, 2 * (one - TARGET))
    # the wire carries float32, the phone keeps its float64 sample: equal to float32 precision
    np.testing.assert_allclose(step1.state.distribution.loc, ref.distribution.loc, rtol=1e-6)
    np.testing.assert_allclose(step1.state.distribution.std, ref.distribution.std, rtol=1e-12)


def test_client_learns_through_the_onnx_graphs(tmp_path: Path) -> None:
    """The same client with the exported graphs as its math: it learns, and stays inside the policy."""
    pytest.importorskip("onnx")
    from veil.client_sdk.client import OnnxBackend
    from veil.models.onnx.export import export_onnx
    from veil.models.onnx.graphs import GraphShapes

    export_onnx(tmp_path / "graphs", ["gaussian"], GraphShapes(n_tokens=SHAPE[0], dim=SHAPE[1]))
    prior = gaussian(0.0, 0.3)
    guard = PolicyGuard(prior, max_gdp_mu=8.0)
    backend = OnnxBackend(tmp_path / "graphs", "gaussian", LearningConfig(lr=0.1), guard)
    service = Service()
    client = make_client(service, ParamStore(tmp_path / "params.veil"), backend=backend)
    client.initialise(prior)
    results = [run(lambda: client.learn("next_word", "a", "b")) for _ in range(30)]
    assert np.mean([r.loss for r in results[-5:]]) < 0.5 * np.mean([r.loss for r in results[:5]])
    assert all(r.policy.ok for r in results) and results[-1].steps == 30
    assert guard.check(ParamStore(tmp_path / "params.veil").load().distribution).ok


FAILURES: dict[str, tuple[Callable[[Service], None], type[Exception]]] = {
    "garbage from the relay": (lambda s: s.outer.extend(["garbage"] * 4), DecryptionFailedError),
    "relay times out": (lambda s: s.outer.extend([httpx.ReadTimeout] * 4), RelayError),
    "relay unreachable": (lambda s: s.outer.extend([httpx.ConnectError] * 4), RelayError),
    "gateway down (502)": (lambda s: s.outer.extend([502] * 4), RelayError),
    "wrong gradient shape": (
        lambda s: s.inner.extend([(200, {"loss": 1.0, "gradient": [[0.0] * 5]})] * 4),
        InvalidResponseError,
    ),
    "NaN gradient": (
        lambda s: s.inner.extend([(200, b'{"loss": 1.0, "gradient": [[NaN, 0, 0, 0]]}')] * 4),
        InvalidResponseError,
    ),
    "missing loss": (lambda s: s.inner.extend([(200, {"gradient": [[0.0] * 4]})] * 4), InvalidResponseError),
    "not JSON": (lambda s: s.inner.extend([(200, b"<html>")] * 4), VeilAPIError),
    "server error": (
        lambda s: s.inner.extend([(500, {"error": {"type": "server_error"}})] * 4),
        VeilAPIError,
    ),
    "bad request": (
        lambda s: s.inner.append((400, {"error": {"type": "invalid_request_error"}})),
        VeilAPIError,
    ),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_failed_steps_leave_the_parameters_untouched(tmp_path: Path, case: str) -> None:
    service, store = Service(), ParamStore(tmp_path / "params.veil")
    client = make_client(service, store)
    client.initialise(gaussian())
    run(lambda: client.learn("next_word", "x", "y"))
    before_file, before = _file(store), client.state
    setup, error = FAILURES[case]
    setup(service)
    with pytest.raises(error):
        run(lambda: client.learn("next_word", "x", "y"))
    assert client.state is before and _file(store) == before_file
    attempts = len(service.outer_requests) - 1
    assert attempts == (1 if case == "bad request" else 4)  # 4xx is final; the rest retried 3 times
    run(lambda: client.learn("next_word", "x", "y"))  # and the next step works from the same state
    assert client.state.steps == 2


def test_a_failed_save_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    service, store = Service(), ParamStore(tmp_path / "params.veil")
    client = make_client(service, store)
    client.initialise(gaussian())
    before, before_file = client.state, _file(store)
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(30, "Read-only file system")))
    with pytest.raises(ParamStoreError):
        run(lambda: client.learn("next_word", "x", "y"))
    assert client.state is before and _file(store) == before_file


def test_retries_resend_the_same_upload_freshly_sealed(tmp_path: Path) -> None:
    service = Service()
    client = make_client(service, ParamStore(tmp_path / "params.veil"))
    client.initialise(gaussian())
    service.outer.extend([503, "garbage"])
    service.inner.append((500, {"error": {"type": "server_error"}}))
    out = run(lambda: client.upload("next_word", "a cup of", "tea"))
    assert out["status"] == "created" and len(service.uploads) == 1
    sent = service.seen
    assert len(sent) == 2  # two reached the API (500, then 201); two were lost before it
    assert sent[0].content == sent[1].content and sent[0].header("idempotency-key") == sent[1].header(
        "idempotency-key"
    )
    assert re.fullmatch(r"[A-Za-z0-9_-]{16,128}", sent[0].header("idempotency-key") or "")
    outer = [r.content for r in service.outer_requests]
    assert len(outer) == 4 and len(set(outer)) == 4  # every try is a fresh HPKE encapsulation
    # a second upload gets a new key and a new sample
    run(lambda: client.upload("next_word", "a cup of", "tea"))
    assert len(service.uploads) == 2 and service.seen[-1].content != sent[0].content


def test_requests_carry_nothing_identifying(tmp_path: Path) -> None:
    service = Service()
    client = make_client(service, ParamStore(tmp_path / "params.veil"))
    client.initialise(gaussian())

    async def go() -> None:
        await client.discover()
        await client.learn("next_word", "a", "b")
        await client.upload("next_word", "a", "b")
        await client.upload("next_word", "a", None, with_embedding=False)
        await client.chat([{"role": "user", "content": "hi"}], max_tokens=4)
        await client.predict("next_word", "a", ["b", "c"])

    run(go)
    allowed = {"content-type", "idempotency-key"}
    for req in service.seen:
        assert {n for n, _ in req.headers} <= allowed, req.headers
        assert (req.scheme, req.authority) == ("https", "veil.invalid")
        body = json.loads(req.content) if req.content else {}
        assert set(body) <= {"model", "task", "text", "label", "embedding_b64", "messages", "max_tokens",
                             "user_embedding_b64", "encoding", "labels"}  # fmt: skip
    for request in service.outer_requests:
        assert set(request.headers) == {"host", "content-type", "accept", "user-agent", "content-length"}
    embeddings = [json.loads(r.content).get("embedding_b64") for r in service.seen[1:3]]
    assert embeddings[0] != embeddings[1]  # a fresh sample per request


def test_chat_is_personalised_with_a_fresh_sample(tmp_path: Path) -> None:
    service = Service()
    client = make_client(service, ParamStore(tmp_path / "params.veil"))
    client.initialise(gaussian())
    msgs = [{"role": "user", "content": "hi"}]
    assert run(lambda: client.chat(msgs, max_tokens=2)) == "personalised"
    assert _sample(json.loads(service.seen[-1].content), "user_embedding").shape == SHAPE
    assert run(lambda: client.chat(msgs, personalised=False)) == "plain"
    with pytest.raises(ValueError, match="user"):
        run(lambda: client.chat(msgs, user="alice@example.com"))
    service.inner.extend([(200, {"choices": []})] * 4)  # retried: a garbled answer may be transient
    with pytest.raises(InvalidResponseError):
        run(lambda: client.chat(msgs))


def test_translate_sends_the_mode_documents_and_a_fresh_sample(tmp_path: Path) -> None:
    service = Service()
    client = make_client(service, ParamStore(tmp_path / "params.veil"))
    client.initialise(gaussian())
    out = run(
        lambda: client.translate("The river floods.", "en", "zh", mode="document", documents=["d0", "d1"])
    )
    assert out == {
        "translation": "personalised",
        "mode": "document",
        "thought": None,
        "documents_used": [0, 1],
    }
    body = json.loads(service.seen[-1].content)
    assert (body["source_language"], body["target_language"], body["documents"]) == ("en", "zh", ["d0", "d1"])
    assert _sample(body, "user_embedding").shape == SHAPE
    assert run(lambda: client.translate("Hi.", "en", "zh", personalised=False))["translation"] == "plain"
    assert "documents" not in json.loads(service.seen[-1].content)
    error = {"error": {"type": "invalid_request_error", "message": "unsupported", "param": "target_language"}}
    service.inner.append((400, error))
    with pytest.raises(VeilAPIError) as refused:
        run(lambda: client.translate("Hi.", "en", "xx"))
    assert refused.value.status == 400 and refused.value.param == "target_language"
    service.inner.extend([(200, {"mode": "direct"})] * 4)  # no translation field: malformed, retried
    with pytest.raises(InvalidResponseError, match="translation"):
        run(lambda: client.translate("Hi.", "en", "zh"))


def test_a_prediction_is_one_request_for_every_label(tmp_path: Path) -> None:
    service = Service()
    client = make_client(service, ParamStore(tmp_path / "params.veil"))
    client.initialise(gaussian())
    assert (
        run(lambda: client.predict("next_word", "a cup of", ["ccc", "bb", "dd", "eee"])) == "bb"
    )  # ties: first
    assert [r.path for r in service.seen] == ["/v1/label-losses"]
    body = json.loads(service.seen[0].content)
    assert body["labels"] == ["ccc", "bb", "dd", "eee"] and "codebook_version" not in body  # not a prototype
    assert _sample(body, "embedding").shape == SHAPE
    # an answer that is not one finite loss per label is refused, and retried as a garbled answer is
    service.inner.extend([(200, {"losses": [1.0]}), (200, {"losses": [1.0, float("nan")]})])
    assert run(lambda: client.predict("next_word", "a", ["x", "yy"])) == "x"
    assert len(service.seen) == 4 and service.seen[1].content == service.seen[3].content  # the same sample


@pytest.mark.parametrize(
    "losses",
    [
        None,
        "1.0",
        [1.0],
        [1.0, 2.0, 3.0],
        [1.0, None],
        [1.0, "2"],
        [True, 1.0],
        [1.0, float("inf")],
        [1, 10**400],
    ],
)
def test_label_losses_refuses_an_answer_that_is_not_one_finite_loss_per_label(losses: Any) -> None:
    from veil.client_sdk.api import PhoneAPI

    service = Service()
    service.inner.append((200, json.dumps({"object": "label_losses", "losses": losses}).encode()))
    transport = AsyncOHTTPClient(
        "https://relay.invalid/ohttp",
        key_config_url="https://relay.invalid/.well-known/ohttp-gateway",
        transport=httpx.MockTransport(service),
        retries=0,
    )
    api = PhoneAPI(transport, MODEL)
    with pytest.raises(VeilAPIError) as err:
        run(
            lambda: api.label_losses("next_word", "a", ["b", "c"], np.zeros(SHAPE), codebook_version="0" * 16)
        )
    assert (err.value.status, err.value.type) == (200, "invalid_response")
    assert json.loads(service.seen[0].content)["codebook_version"] == "0" * 16
    service.inner.append((200, {"object": "label_losses", "losses": [0.5, 2]}))
    out = run(lambda: api.label_losses("next_word", "a", ["b", "c"], np.zeros(SHAPE)))
    assert out.dtype == np.float64 and out.tolist() == [0.5, 2.0]
    assert "codebook_version" not in json.loads(service.seen[1].content)


def test_model_checks(tmp_path: Path) -> None:
    service, store = Service(), ParamStore(tmp_path / "params.veil")
    client = make_client(service, store)
    client.initialise(GaussianDistribution(np.zeros((2, 4)), np.ones((2, 4))))
    with pytest.raises(ModelMismatchError, match="shape"):
        run(client.discover)
    other = VeilClient(client.transport, store, model="another-model")
    with pytest.raises(ModelMismatchError, match="another-model"):
        _ = other.state
    with pytest.raises(FileExistsError):
        client.initialise(gaussian())


def test_the_privacy_policy_is_enforced(tmp_path: Path) -> None:
    prior = gaussian(0.0, 0.5)
    guard = PolicyGuard(prior, max_gdp_mu=1.0)
    store = ParamStore(tmp_path / "params.veil")
    store.save(ClientState(gaussian(3.0, 0.5), {}, MODEL))  # far outside the policy
    service = Service()
    client = make_client(service, store, backend=NumpyBackend(LearningConfig(lr=0.5), guard))
    with pytest.raises(PolicyViolationError):
        _ = client.state
    with pytest.raises(PolicyViolationError):
        client.initialise(gaussian(3.0, 0.5), overwrite=True)
    client.initialise(prior, overwrite=True)
    for _ in range(30):  # the gradient pulls towards TARGET, far outside mu <= 1
        result = run(lambda: client.learn("next_word", "x", "y"))
        assert result.policy.ok and result.policy.value <= 1.0 + 1e-9
    assert guard.check(ParamStore(store.path).load().distribution).ok


def test_secure_rng_gives_independent_generators() -> None:
    assert secure_rng().standard_normal() != secure_rng().standard_normal()
    with pytest.raises(ValueError):
        RetryPolicy(retries=-1)
    with pytest.raises(ValueError):
        LearningConfig(lr=0.0)


# ---------------------------------------------------------------------------------------------- real stack
@pytest.fixture(scope="module")
def stack(data_dir: str, tmp_path_factory: pytest.TempPathFactory):
    from veil.cloud_service.app import create_app, load_served_model
    from veil.cloud_service.background import BackgroundServer
    from veil.cloud_service.config import ServiceConfig
    from veil.cloud_service.relay import RelayConfig, create_relay_app

    root = tmp_path_factory.mktemp("client-stack")
    served = load_served_model(ServiceConfig(data_dir=Path(data_dir), model="tiny-llama"))
    with (
        BackgroundServer(
            create_app(ServiceConfig(data_dir=root, model="tiny-llama"), preloaded=served)
        ) as api,
        BackgroundServer(create_relay_app(RelayConfig(gateway_url=api.url, hold_window_s=0.01))) as relay,
    ):
        yield api, relay, root


@pytest.mark.integration
def test_reference_client_against_the_real_service(stack, tmp_path: Path) -> None:
    from veil.cloud_service.store import count_uploads, make_engine, session_factory

    api, relay, root = stack
    sessions = session_factory(make_engine(None, root))
    prior = GaussianDistribution(np.zeros((1, 64)), np.full((1, 64), 0.1))
    backend = NumpyBackend(LearningConfig(lr=0.05), PolicyGuard(prior, max_tv=0.99))
    store = ParamStore(tmp_path / "phone" / "params.veil", passphrase="pin 1234", cost=FAST)

    async def first_run() -> list[float]:
        async with VeilClient.through_relay(
            relay.url + "/ohttp", store, model="tiny-llama", backend=backend
        ) as c:
            c.initialise(prior)
            card = await c.discover()
            assert card["embedding_shape"] == [1, 64] and "next_word" in card["tasks"]
            losses = [(await c.learn("next_word", "a cup of", "tea")).loss for _ in range(3)]
            with sessions() as s:
                before = count_uploads(s)
            assert (await c.upload("next_word", "a cup of", "tea"))["status"] == "created"
            with sessions() as s:
                assert count_uploads(s) == before + 1
            assert isinstance(await c.chat([{"role": "user", "content": "Hi"}], max_tokens=3), str)
            translated = await c.translate(
                "The river floods.", "en", "zh", mode="document", documents=["A river."]
            )
            assert translated["mode"] == "document" and isinstance(translated["translation"], str)
            # the inner response is what PROTOCOL.md and the vectors say: only a content-type header
            raw = await c.transport.request("GET", "/v1/models")
            assert raw.status == 200 and raw.headers == (("content-type", "application/json"),)
            assert set(raw.json()["data"][0]) == {"id", "object", "created", "owned_by", "embedding_shape",
                                                  "context_length", "tasks", "classes"}  # fmt: skip
            return losses

    losses = asyncio.run(first_run())
    assert all(np.isfinite(losses))
    state = ParamStore(store.path, passphrase="pin 1234").load()
    assert state.steps == 3 and not np.allclose(state.distribution.loc, 0.0)

    async def second_run() -> int:  # the app restarts: same file, same passphrase
        async with VeilClient.through_relay(
            relay.url + "/ohttp", store, model="tiny-llama", backend=backend
        ) as c:
            return (await c.learn("next_word", "a cup of", "tea")).steps

    assert asyncio.run(second_run()) == 4


@pytest.mark.integration
def test_a_relay_whose_gateway_is_down_fails_cleanly(tmp_path: Path) -> None:
    from veil.cloud_service.background import BackgroundServer, free_port
    from veil.cloud_service.relay import RelayConfig, create_relay_app

    store = ParamStore(tmp_path / "params.veil")
    store.save(ClientState(gaussian(), {}, MODEL))
    before = _file(store)
    dead = RelayConfig(gateway_url=f"http://127.0.0.1:{free_port()}", timeout_s=2.0)
    with BackgroundServer(create_relay_app(dead)) as relay:

        async def go() -> None:
            retry = RetryPolicy(retries=1, backoff_s=0.0)
            async with VeilClient.through_relay(relay.url + "/ohttp", store, model=MODEL, retry=retry) as c:
                await c.learn("next_word", "x", "y")

        with pytest.raises(RelayError) as err:
            asyncio.run(go())
    assert err.value.status_code == 502 and err.value.error_type == "bad_gateway"
    assert _file(store) == before


@pytest.mark.integration
def test_the_service_answers_as_protocol_md_says(stack) -> None:
    """Idempotency (201, 200 duplicate, 409) and the key-problem answer through the relay."""
    from veil.client_sdk.api import new_idempotency_key
    from veil.client_sdk.ohttp import KeyConfig, decode_key_configs, encapsulate_request
    from veil.client_sdk.ohttp.errors import OHTTP_KEY_PROBLEM

    _, relay, _ = stack

    async def go() -> list[Any]:
        async with AsyncOHTTPClient(
            relay.url + "/ohttp", key_config_url=relay.url + "/.well-known/ohttp-gateway"
        ) as t:
            key, body = (
                new_idempotency_key(),
                {"model": "tiny-llama", "task": "next_word", "text": "a b", "label": "c"},
            )
            first = await t.request("POST", "/v1/uploads", json=body, headers={"idempotency-key": key})
            again = await t.request("POST", "/v1/uploads", json=body, headers={"idempotency-key": key})
            other = await t.request(
                "POST", "/v1/uploads", json={**body, "text": "d e"}, headers={"idempotency-key": key}
            )
            short = await t.request(
                "POST", "/v1/uploads", json=body, headers={"idempotency-key": "too-short"}
            )
            return [first, again, other, short]

    first, again, other, short = asyncio.run(go())
    assert first.status == 201 and first.json()["status"] == "created"
    assert again.status == 200 and again.json() == {**first.json(), "status": "duplicate"}
    err = other.json()["error"]
    assert other.status == 409 and (err["type"], err["code"], err["param"]) == (
        "conflict_error",
        "idempotency_conflict",
        "Idempotency-Key",
    )
    assert short.status == 400 and short.json()["error"]["param"] == "Idempotency-Key"
    # a retired key id: the relay passes the gateway's plain JSON 400 with the ohttp-key problem type
    keys = httpx.get(relay.url + "/.well-known/ohttp-gateway")
    assert (
        keys.headers["content-type"] == "application/ohttp-keys"
        and "max-age" in keys.headers["cache-control"]
    )
    config = decode_key_configs(keys.content)[0]
    stale = KeyConfig(
        (config.key_id + 100) % 256, config.kem_id, config.public_key, config.symmetric_algorithms
    )
    sealed, _ = encapsulate_request(stale, b"\x00\x03GET\x05https\x00\x0a/v1/models\x00\x00\x00")
    r = httpx.post(relay.url + "/ohttp", content=sealed, headers={"content-type": "message/ohttp-req"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "unknown_key_id"
    assert r.json()["error"]["problem_type"] == OHTTP_KEY_PROBLEM
