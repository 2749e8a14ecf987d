"""The wire-protocol vectors (tests/vectors/*.json): the Python client produces and verifies every byte.

``check_vector`` recomputes each value of a vector file from its inputs with the SDK (gateway key, key
configuration, binary HTTP, HPKE key schedule, encapsulated request and response) and opens what it
should open. ``test_every_value_is_checked`` flips one byte of each value in turn and requires
``check_vector`` to fail, so no value in the files goes unchecked.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from veil.client_sdk.api import PhoneAPI
from veil.client_sdk.ohttp import (
    KEM_X25519_HKDF_SHA256,
    RESPONSE_MEDIA_TYPE,
    AsyncOHTTPClient,
    BinaryRequest,
    BinaryResponse,
    ClientResponseContext,
    DecryptionFailedError,
    GatewayKeyPair,
    OHTTPError,
    decapsulate_request,
    decode_key_configs,
    encapsulate_request,
    encode_key_configs,
)
from veil.client_sdk.ohttp.hpke import DHKEMX25519, KEMS, SenderContext, Suite
from veil.client_sdk.ohttp.keysig import sign_key_configs, signing_key_from_seed
from veil.client_sdk.ohttp.ohttp import REQUEST_LABEL, RESPONSE_LABEL, request_header
from veil.client_sdk.ohttp.padding import DEFAULT_PADDING_BUCKETS, bucket_size

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
NAMES = ["x25519", "mlkem768_x25519"]
h = bytes.fromhex


class VectorMismatchError(AssertionError):
    """A value in a vector file differs from what the client computes."""


def _expect(actual: Any, expected: Any, what: str) -> None:
    if actual != expected:
        raise VectorMismatchError(f"{what}: computed {actual!r}, vector has {expected!r}")


def load(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / f"{name}.json").read_text())


def _gateway_key(vector: dict[str, Any]) -> GatewayKeyPair:
    g, s = vector["gateway"], vector["suite"]
    if s["kem_id"] == KEM_X25519_HKDF_SHA256:
        private = DHKEMX25519().derive_key_pair(h(g["ikm"]))[0]
    else:
        private = h(g["seed"])  # the X-Wing private key is the seed itself
    _expect(private.hex(), g["private_key"], "gateway private key")
    key = GatewayKeyPair.from_private_key(g["key_id"], s["kem_id"], private, [(s["kdf_id"], s["aead_id"])])
    _expect(key.public_key.hex(), g["public_key"], "gateway public key")
    _expect(key.config.encode().hex(), g["key_config"], "key configuration")
    _expect(encode_key_configs([key.config]).hex(), g["ohttp_keys"], "application/ohttp-keys")
    (parsed,) = decode_key_configs(h(g["ohttp_keys"]))
    _expect(parsed, key.config, "decoded key configuration")
    return key


def _check_exchange(key: GatewayKeyPair, ex: dict[str, Any]) -> None:
    name, config = ex["name"], key.config
    req = ex["request"]
    headers = [tuple(f) for f in req["headers"]]
    inner = BinaryRequest(
        req["method"], req["scheme"], req["authority"], req["path"], headers, req["content"].encode()
    )
    padded = inner.encode(padding=req["padding"])  # zero padding, RFC 9292 section 3.8
    _expect(padded.hex(), ex["bhttp_request"], f"{name}: binary request")
    suite = Suite(config.kem_id, *config.symmetric_algorithms[0])
    header = request_header(config.key_id, suite)
    info = REQUEST_LABEL + b"\x00" + header
    _expect(info.hex(), ex["hpke"]["info"], f"{name}: HPKE info")
    enc, shared_secret = h(ex["enc"]), h(ex["shared_secret"])
    if "ephemeral_private_key" in ex:  # X25519: the whole encapsulation is fixed by the ephemeral key
        eph = h(ex["ephemeral_private_key"])
        sealed, client_ctx = encapsulate_request(config, padded, ephemeral_key=eph)
        _expect(suite.kem.encap(config.public_key, ephemeral_key=eph), (shared_secret, enc), f"{name}: KEM")
    else:  # ML-KEM: recorded enc and shared secret; everything after the KEM is recomputed
        sender = SenderContext(suite, shared_secret, info)
        sealed = header + enc + sender.seal(b"", padded)
        client_ctx = ClientResponseContext(suite, enc, SenderContext(suite, shared_secret, info))
    _expect(sealed.hex(), ex["encapsulated_request"], f"{name}: encapsulated request")
    _expect(len(sealed), bucket_size(len(sealed), DEFAULT_PADDING_BUCKETS), f"{name}: request bucket")
    _expect(suite.kem.decap(enc, key.private_key).hex(), ex["shared_secret"], f"{name}: decapsulated secret")

    opened, server_ctx = decapsulate_request({config.key_id: key}, sealed)
    _expect(opened.hex(), ex["bhttp_request"], f"{name}: opened request")
    context = server_ctx._context
    nonce = h(ex["response_nonce"])
    secret = context.export(RESPONSE_LABEL, max(suite.aead.nonce_size, suite.aead.key_size))
    prk = suite.kdf.extract(enc + nonce, secret)
    computed = {
        "info": info.hex(),
        "key": context.key.hex(),
        "base_nonce": context.base_nonce.hex(),
        "exporter_secret": context.exporter_secret.hex(),
        "response_secret": secret.hex(),
        "response_prk": prk.hex(),
        "response_key": suite.kdf.expand(prk, b"key", suite.aead.key_size).hex(),
        "response_aead_nonce": suite.kdf.expand(prk, b"nonce", suite.aead.nonce_size).hex(),
    }
    _expect(computed, ex["hpke"], f"{name}: HPKE intermediates")

    resp = ex["response"]
    response = BinaryResponse(resp["status"], [tuple(f) for f in resp["headers"]], resp["content"].encode())
    padded_response = response.encode(padding=resp["padding"])
    _expect(padded_response.hex(), ex["bhttp_response"], f"{name}: binary response")
    sealed_response = server_ctx.encapsulate_response(padded_response, response_nonce=nonce)
    _expect(sealed_response.hex(), ex["encapsulated_response"], f"{name}: encapsulated response")
    size = len(sealed_response)
    _expect(size, bucket_size(size, DEFAULT_PADDING_BUCKETS), f"{name}: response bucket")
    opened_response = BinaryResponse.decode(client_ctx.decapsulate_response(h(ex["encapsulated_response"])))
    _expect(opened_response, response, f"{name}: opened response")


def check_vector(vector: dict[str, Any]) -> None:
    """Recompute and open every value of one vector file; raises on the first difference."""
    key = _gateway_key(vector)
    _expect(
        (vector["suite"]["kem"], vector["deterministic"]),
        (KEMS[vector["suite"]["kem_id"]].name, vector["suite"]["kem_id"] == KEM_X25519_HKDF_SHA256),
        "suite",
    )
    target = vector["target"]
    for ex in vector["exchanges"]:
        req = ex["request"]
        _expect((req["scheme"], req["authority"]), (target["scheme"], target["authority"]), "target")
        if req["content"]:
            _expect(json.loads(req["content"])["model"], target["model"], "model")
        _check_exchange(key, ex)


@pytest.mark.parametrize("name", NAMES)
def test_vectors_are_reproduced_byte_for_byte(name: str) -> None:
    vector = load(name)
    assert {e["name"] for e in vector["exchanges"]} >= {"upload", "embedding_gradient"}
    check_vector(vector)


def _hex_paths(node: Any, path: tuple = ()) -> Iterator[tuple]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _hex_paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _hex_paths(v, (*path, i))
    elif isinstance(node, str) and path[-1] not in ("description", "generator", "name", "kem"):
        yield path


def _get(node: Any, path: tuple) -> Any:
    for p in path:
        node = node[p]
    return node


def _flip(value: str) -> str:
    if not value:
        return "x"
    try:
        raw = bytearray(h(value))
    except ValueError:  # a text value (method, path, header, JSON content): change one character
        return value[:-1] + chr(ord(value[-1]) ^ 1)
    raw[len(raw) // 2] ^= 0x01
    return raw.hex()


@pytest.mark.parametrize("name", NAMES)
def test_every_value_is_checked(name: str) -> None:
    vector = load(name)
    paths = list(_hex_paths(vector))
    assert len(paths) > 20
    for path in paths:
        changed = copy.deepcopy(vector)
        parent = _get(changed, path[:-1])
        parent[path[-1]] = _flip(parent[path[-1]])
        with pytest.raises(Exception):  # noqa: B017 - any failure: mismatch, parse or decryption error
            check_vector(changed)
    # numbers too: the status and the suite ids
    changed = copy.deepcopy(vector)
    changed["exchanges"][0]["response"]["status"] += 1
    with pytest.raises(VectorMismatchError):
        check_vector(changed)


@pytest.mark.parametrize("name", NAMES)
def test_every_flipped_byte_of_a_sealed_message_is_refused(name: str) -> None:
    vector = load(name)
    key = _gateway_key(vector)
    ex = vector["exchanges"][-1]
    sealed = h(ex["encapsulated_request"])
    for i in range(len(sealed)):
        bad = bytearray(sealed)
        bad[i] ^= 0x80
        with pytest.raises(OHTTPError):
            decapsulate_request({key.key_id: key}, bytes(bad))
    suite = Suite(key.kem_id, *key.symmetric_algorithms[0])
    info = REQUEST_LABEL + b"\x00" + request_header(key.key_id, suite)
    ctx = ClientResponseContext(suite, h(ex["enc"]), SenderContext(suite, h(ex["shared_secret"]), info))
    response = h(ex["encapsulated_response"])
    assert ctx.decapsulate_response(response) == h(ex["bhttp_response"])
    for i in range(len(response)):
        bad = bytearray(response)
        bad[i] ^= 0x80
        with pytest.raises(DecryptionFailedError):
            ctx.decapsulate_response(bytes(bad))


def _embedding(body: dict[str, Any]) -> np.ndarray:
    """The body's sample, from either wire form (the compact base64 float32 one by default)."""
    if "embedding_b64" in body:
        return np.frombuffer(base64.b64decode(body["embedding_b64"]), dtype="<f4").reshape(2, 3)
    return np.array(body["embedding"])


async def _phone_call(api: PhoneAPI, request: dict[str, Any]) -> Any:
    body = json.loads(request["content"]) if request["content"] else {}
    if request["path"] == "/v1/models":
        return await api.models()
    if request["path"] == "/v1/uploads":
        key = dict(request["headers"])["idempotency-key"]
        emb = _embedding(body)
        return await api.upload(body["task"], body["text"], body["label"], emb, key)
    if request["path"] == "/v1/embedding-gradients":
        loss, grad = await api.embedding_gradient(body["task"], body["text"], body["label"], _embedding(body))
        return {"loss": loss, "gradient": grad.tolist()}
    raise AssertionError(f"no phone call for {request['path']}")


@pytest.mark.parametrize("name", NAMES)
def test_the_client_stack_sends_exactly_the_vector_requests(name: str) -> None:
    """PhoneAPI over AsyncOHTTPClient: what the gateway opens is the vector's binary request."""
    vector = load(name)
    key = _gateway_key(vector)
    for ex in vector["exchanges"]:
        opened: list[bytes] = []

        def gateway(request: httpx.Request, ex: dict[str, Any] = ex, opened: list = opened) -> httpx.Response:
            if request.method == "GET":
                body = encode_key_configs([key.config])
                signed = sign_key_configs(body, signing_key_from_seed(b"\x08" * 32))
                return httpx.Response(200, content=body, headers=signed)
            plaintext, ctx = decapsulate_request({key.key_id: key}, request.content)
            opened.append(plaintext)
            sealed = ctx.encapsulate_response(h(ex["bhttp_response"]))
            return httpx.Response(200, content=sealed, headers={"content-type": RESPONSE_MEDIA_TYPE})

        async def run(ex: dict[str, Any] = ex) -> Any:
            async with AsyncOHTTPClient(
                "https://relay.invalid/ohttp",
                key_config_url="https://relay.invalid/.well-known/ohttp-gateway",
                transport=httpx.MockTransport(gateway),
            ) as transport:
                return await _phone_call(PhoneAPI(transport, vector["target"]["model"]), ex["request"])

        answer = asyncio.run(run())
        assert [o.hex() for o in opened] == [ex["bhttp_request"]]
        expected = json.loads(ex["response"]["content"])
        assert answer == (expected["data"] if ex["request"]["path"] == "/v1/models" else expected) or (
            answer == {k: expected[k] for k in ("loss", "gradient")}
        )


def test_generator_reproduces_the_committed_files() -> None:
    spec = importlib.util.spec_from_file_location("veil_vector_generator", VECTORS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = module.build()
    for name in NAMES:
        assert module.dumps(built[name]) == (VECTORS / f"{name}.json").read_text(), name
