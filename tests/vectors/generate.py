"""Write the wire-protocol test vectors (``tests/vectors/*.json``) from the Python reference client.

Usage::

    .venv/bin/python tests/vectors/generate.py            # (re)write the files
    .venv/bin/python tests/vectors/generate.py --check    # exit 1 if the files differ from a fresh run
    .venv/bin/python tests/vectors/generate.py --fresh-mlkem   # new ML-KEM encapsulations (see below)

Every inner binary HTTP request is the one the real client stack sends: ``PhoneAPI`` over
``AsyncOHTTPClient``, whose sealed request an in-process gateway handler opens and records. The HPKE
encapsulation is then redone with a fixed ephemeral key, and each inner response is sealed with a
fixed response nonce, so the X25519 file is fully deterministic.

ML-KEM-768+X25519 (X-Wing): ``cryptography`` does not take ML-KEM's encapsulation randomness, so the
KEM step cannot be fixed. The file records one randomised encapsulation (``enc`` and its
``shared_secret``) per exchange and keeps it on regeneration (unless ``--fresh-mlkem``);
everything after the KEM (key schedule, sealed request, response) is deterministic from those.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from veil.client_sdk.api import PhoneAPI
from veil.client_sdk.ohttp import (
    KEM_MLKEM768_X25519,
    KEM_X25519_HKDF_SHA256,
    RESPONSE_MEDIA_TYPE,
    AsyncOHTTPClient,
    BinaryRequest,
    BinaryResponse,
    GatewayKeyPair,
    decapsulate_request,
    encapsulate_request,
    encode_key_configs,
)
from veil.client_sdk.ohttp.hpke import KEMS, Context, SenderContext, Suite
from veil.client_sdk.ohttp.keysig import sign_key_configs, signing_key_from_seed
from veil.client_sdk.ohttp.ohttp import REQUEST_LABEL, RESPONSE_LABEL, request_header
from veil.client_sdk.ohttp.padding import DEFAULT_PADDING_BUCKETS, pad_to_bucket, response_overhead

HERE = Path(__file__).resolve().parent
FILES = {"x25519": HERE / "x25519.json", "mlkem768_x25519": HERE / "mlkem768_x25519.json"}
RELAY = "https://relay.invalid/ohttp"
KEYS_URL = "https://relay.invalid/.well-known/ohttp-gateway"
MODEL = "tiny-llama"
EMBEDDING = [[0.125, -0.5, 0.75], [1.0, -0.0625, 0.3]]
"""A made-up sample of shape (2, 3); a real one has the model card's ``embedding_shape``."""
GRADIENT = [[0.01, -0.02, 0.5], [0.0, 1.5, -0.25]]
IDEMPOTENCY_KEY = "vector-upload-key-0000000000000001"


def label_bytes(label: str, size: int = 32) -> bytes:
    """Fixed "random" bytes: SHA-256 of a label, truncated."""
    return hashlib.sha256(f"veil-test-vector/{label}".encode()).digest()[:size]


def json_body(value: Any) -> bytes:
    """The service's JSON encoding (Starlette's ``JSONResponse``)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def model_card() -> dict[str, Any]:
    card = {"id": MODEL, "object": "model", "created": 0, "owned_by": "veil", "embedding_shape": [2, 3]}
    card.update({"context_length": 512, "tasks": ["next_word"], "classes": None})
    return {"object": "list", "data": [card]}


# name -> (PhoneAPI call, inner response status, response JSON)
Call = Callable[[PhoneAPI], Any]
EXCHANGES: dict[str, tuple[Call, int, Any]] = {
    "models": (lambda api: api.models(), 200, model_card()),
    "upload": (
        lambda api: api.upload("next_word", "a cup of café", "tea", np.array(EMBEDDING), IDEMPOTENCY_KEY),
        201,
        {"id": 1, "object": "upload", "status": "created"},
    ),
    "embedding_gradient": (
        lambda api: api.embedding_gradient("next_word", "a cup of", "tea", np.array(EMBEDDING)),
        200,
        {"object": "embedding_gradient", "model": MODEL, "loss": 2.5, "gradient": GRADIENT},
    ),
}
MLKEM_EXCHANGES = ("upload", "embedding_gradient")


def gateway_key(kem_id: int, key_id: int) -> tuple[bytes, GatewayKeyPair]:
    """The gateway key pair: DeriveKeyPair(ikm) for X25519, the 32-byte X-Wing seed for the hybrid."""
    seed = label_bytes(f"gateway-key/{kem_id:04x}")
    kem = KEMS[kem_id]
    private = kem.derive_key_pair(seed)[0] if kem_id == KEM_X25519_HKDF_SHA256 else seed  # type: ignore[attr-defined]
    return seed, GatewayKeyPair.from_private_key(key_id, kem_id, private)


def bhttp_response(status: int, body: Any) -> BinaryResponse:
    """An inner response as the service sends it: ``content-type`` only (hop-by-hop fields dropped)."""
    return BinaryResponse(status, [("content-type", "application/json")], json_body(body))


def capture_inner_request(key: GatewayKeyPair, name: str) -> bytes:
    """Run one PhoneAPI call through AsyncOHTTPClient; return the binary request the gateway opened."""
    call, status, body = EXCHANGES[name]
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            keys = encode_key_configs([key.config])
            signed = sign_key_configs(keys, signing_key_from_seed(b"\x08" * 32))
            return httpx.Response(200, content=keys, headers=signed)
        plaintext, context = decapsulate_request({key.key_id: key}, request.content)
        seen.append(plaintext)
        sealed = context.encapsulate_response(bhttp_response(status, body).encode())
        return httpx.Response(200, content=sealed, headers={"content-type": RESPONSE_MEDIA_TYPE})

    async def run() -> None:
        async with AsyncOHTTPClient(
            RELAY, key_config_url=KEYS_URL, transport=httpx.MockTransport(handler)
        ) as transport:
            await call(PhoneAPI(transport, MODEL))

    asyncio.run(run())
    if len(seen) != 1:
        raise RuntimeError(f"{name}: expected one request, saw {len(seen)}")
    return seen[0]


def hpke_values(context: Context, info: bytes, enc: bytes, nonce: bytes) -> dict[str, str]:
    """Key-schedule and response-key intermediates, for implementers to compare step by step."""
    suite = context.suite
    aead, kdf = suite.aead, suite.kdf
    secret = context.export(RESPONSE_LABEL, max(aead.nonce_size, aead.key_size))
    prk = kdf.extract(enc + nonce, secret)
    return {
        "info": info.hex(),
        "key": context.key.hex(),
        "base_nonce": context.base_nonce.hex(),
        "exporter_secret": context.exporter_secret.hex(),
        "response_secret": secret.hex(),
        "response_prk": prk.hex(),
        "response_key": kdf.expand(prk, b"key", aead.key_size).hex(),
        "response_aead_nonce": kdf.expand(prk, b"nonce", aead.nonce_size).hex(),
    }


def exchange_vector(
    key: GatewayKeyPair, name: str, *, ephemeral: bytes | None = None, recorded: dict[str, str] | None = None
) -> dict[str, Any]:
    """One exchange: the inner request, its encapsulation, the inner response and its encapsulation."""
    _, status, body = EXCHANGES[name]
    config = key.config
    request = capture_inner_request(key, name)
    suite = Suite(config.kem_id, *config.symmetric_algorithms[0])
    header = request_header(config.key_id, suite)
    info = REQUEST_LABEL + b"\x00" + header
    parsed = BinaryRequest.decode(request)
    out: dict[str, Any] = {
        "name": name,
        "request": {
            "method": parsed.method,
            "scheme": parsed.scheme,
            "authority": parsed.authority,
            "path": parsed.path,
            "headers": [list(f) for f in parsed.headers],
            "content": parsed.content.decode("utf-8"),
            "padding": len(request) - len(parsed.encode()),
        },
        "bhttp_request": request.hex(),
    }
    if ephemeral is not None:
        sealed, _ = encapsulate_request(config, request, ephemeral_key=ephemeral)
        enc = sealed[len(header) : len(header) + suite.kem.enc_size]
        shared_secret = suite.kem.encap(config.public_key, ephemeral_key=ephemeral)[0]
        out["ephemeral_private_key"] = ephemeral.hex()
    else:
        if recorded is None:  # a fresh randomised encapsulation, recorded
            shared_secret, enc = suite.kem.encap(config.public_key)
        else:
            enc, shared_secret = bytes.fromhex(recorded["enc"]), bytes.fromhex(recorded["shared_secret"])
        sender = SenderContext(suite, shared_secret, info)
        sealed = header + enc + sender.seal(b"", request)
    out.update({"enc": enc.hex(), "shared_secret": shared_secret.hex(), "encapsulated_request": sealed.hex()})
    opened, server_ctx = decapsulate_request({key.key_id: key}, sealed)
    if opened != request:
        raise RuntimeError(f"{name}: the gateway opened something else")
    nonce = label_bytes(f"response-nonce/{config.kem_id:04x}/{name}", 16)
    # The gateway pads every inner response so the encapsulated response is a bucket size.
    unpadded = bhttp_response(status, body).encode()
    response = pad_to_bucket(unpadded, response_overhead(suite), DEFAULT_PADDING_BUCKETS)
    out.update(
        {
            "response": {
                "status": status,
                "headers": [["content-type", "application/json"]],
                "content": json_body(body).decode("utf-8"),
                "padding": len(response) - len(unpadded),
            },
            "bhttp_response": response.hex(),
            "response_nonce": nonce.hex(),
            "encapsulated_response": server_ctx.encapsulate_response(response, response_nonce=nonce).hex(),
            "hpke": hpke_values(server_ctx._context, info, enc, nonce),
        }
    )
    return out


def suite_vector(kem_id: int, key_id: int, names: tuple[str, ...], recorded: dict | None) -> dict[str, Any]:
    seed, key = gateway_key(kem_id, key_id)
    kdf_id, aead_id = key.config.symmetric_algorithms[0]
    deterministic = kem_id == KEM_X25519_HKDF_SHA256
    exchanges = []
    for name in names:
        if deterministic:
            exchanges.append(
                exchange_vector(key, name, ephemeral=label_bytes(f"ephemeral/{kem_id:04x}/{name}"))
            )
        else:
            old = (recorded or {}).get(name)
            exchanges.append(exchange_vector(key, name, recorded=old))
    return {
        "description": (
            "Veil wire-protocol vectors: OHTTP (RFC 9458) over HPKE (RFC 9180) carrying Binary HTTP "
            "(RFC 9292), produced by the Python reference client. See veil/client_sdk/PROTOCOL.md."
        ),
        "generator": "tests/vectors/generate.py",
        "deterministic": deterministic,
        "suite": {"kem_id": kem_id, "kdf_id": kdf_id, "aead_id": aead_id, "kem": KEMS[kem_id].name},
        "target": {"scheme": "https", "authority": "veil.invalid", "model": MODEL},
        "gateway": {
            "key_id": key_id,
            "seed" if not deterministic else "ikm": seed.hex(),
            "private_key": key.private_key.hex(),
            "public_key": key.public_key.hex(),
            "key_config": key.config.encode().hex(),
            "ohttp_keys": encode_key_configs([key.config]).hex(),
        },
        "exchanges": exchanges,
    }


def build(fresh_mlkem: bool = False) -> dict[str, dict[str, Any]]:
    """Both files' contents; the ML-KEM file reuses its recorded encapsulations unless ``fresh_mlkem``."""
    recorded = None
    path = FILES["mlkem768_x25519"]
    if path.exists() and not fresh_mlkem:
        old = json.loads(path.read_text())
        recorded = {e["name"]: e for e in old["exchanges"]}
    return {
        "x25519": suite_vector(KEM_X25519_HKDF_SHA256, 1, tuple(EXCHANGES), None),
        "mlkem768_x25519": suite_vector(KEM_MLKEM768_X25519, 2, MLKEM_EXCHANGES, recorded),
    }


def dumps(vector: dict[str, Any]) -> str:
    return json.dumps(vector, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="compare with the committed files; write nothing"
    )
    parser.add_argument("--fresh-mlkem", action="store_true", help="new randomised ML-KEM encapsulations")
    args = parser.parse_args(argv)
    vectors = build(args.fresh_mlkem)
    stale = []
    for name, vector in vectors.items():
        path, text = FILES[name], dumps(vector)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("out of date: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
