"""Signed key configurations (RFC 9421 over an RFC 9530 digest): the fixed vector, every refusal, pinning."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from veil.client_sdk.ohttp import (
    GatewayKeyPair,
    GatewayKeyPin,
    KeyConfigError,
    KeyConfigExpiredError,
    KeyConfigSignatureError,
    SigningKeyMismatchError,
    encode_key_configs,
    sign_key_configs,
    verify_key_configs,
)
from veil.client_sdk.ohttp.keysig import (
    MAX_CLOCK_SKEW_S,
    decode_public_key,
    key_fingerprint,
    public_key_bytes,
    signing_key_from_seed,
)

VECTORS = Path(__file__).resolve().parents[2] / "vectors"
VECTOR = json.loads((VECTORS / "keysig.json").read_text())
GATEWAY = signing_key_from_seed(b"\x01" * 32)
OTHER = signing_key_from_seed(b"\x02" * 32)
BODY = encode_key_configs([GatewayKeyPair.generate(3).config])


def _signed(body: bytes = BODY, key: Any = GATEWAY, **kwargs: Any) -> dict[str, str]:
    return sign_key_configs(body, key, **kwargs)


def _vector_at(now: float, headers: dict[str, str] | None = None, body: bytes | None = None) -> Any:
    return verify_key_configs(
        VECTOR["status"],
        VECTOR["headers"] if headers is None else headers,
        bytes.fromhex(VECTOR["body"]) if body is None else body,
        public_key=bytes.fromhex(VECTOR["public_key"]),
        now=now,
    )


# ---------------------------------------------------------------------------------------------- vector
def test_the_vector_is_reproduced_byte_for_byte() -> None:
    spec = importlib.util.spec_from_file_location("generate_keysig", VECTORS / "generate_keysig.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.build() == VECTOR
    # RFC 8032 section 7.1 TEST 1: the seed's public key
    assert VECTOR["public_key"] == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"


def test_the_vector_verifies_against_a_hand_built_signature_base() -> None:
    """RFC 9421 section 2.5 written out by hand, and Ed25519 checked with ``cryptography`` alone."""
    headers, body = VECTOR["headers"], bytes.fromhex(VECTOR["body"])
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    assert headers["content-digest"] == f"sha-256=:{digest}:"
    params = (
        '("@status" "content-type" "content-digest" "veil-signing-key");'
        f'created={VECTOR["created"]};keyid="{VECTOR["key_id"]}";alg="ed25519";'
        f'expires={VECTOR["expires"]};tag="veil-ohttp-keys"'
    )
    base = "\n".join(
        [
            '"@status": 200',
            '"content-type": application/ohttp-keys',
            f'"content-digest": sha-256=:{digest}:',
            f'"veil-signing-key": {VECTOR["public_key_b64"]}',
            f'"@signature-params": {params}',
        ]
    )
    assert base == VECTOR["signature_base"]
    assert headers["signature-input"] == f"veil={params}"
    signature = base64.b64decode(headers["signature"].removeprefix("veil=:").removesuffix(":"))
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(VECTOR["public_key"])).verify(signature, base.encode())
    assert key_fingerprint(bytes.fromhex(VECTOR["public_key"])) == VECTOR["key_id"]
    verified = _vector_at(VECTOR["created"] + 60)
    assert verified.key_id == VECTOR["key_id"] and verified.configs[0].key_id == 1


def test_every_changed_byte_of_the_vector_is_refused() -> None:
    now, body = VECTOR["created"] + 60, bytes.fromhex(VECTOR["body"])
    for i in range(len(body)):
        changed = bytearray(body)
        changed[i] ^= 0x01
        with pytest.raises(KeyConfigSignatureError):
            _vector_at(now, body=bytes(changed))
    for name, value in VECTOR["headers"].items():
        for i in range(len(value)):
            flipped = value[:i] + chr(ord(value[i]) ^ 0x01) + value[i + 1 :]
            with pytest.raises((KeyConfigSignatureError, KeyConfigError)):
                _vector_at(now, headers={**VECTOR["headers"], name: flipped})


# --------------------------------------------------------------------------------- round trip, refusals
def test_sign_verify_round_trip() -> None:
    headers = _signed()
    assert headers["content-type"] == "application/ohttp-keys"
    verified = verify_key_configs(200, headers, BODY, public_key=public_key_bytes(GATEWAY))
    assert [c.key_id for c in verified.configs] == [3]
    assert verified.expires - verified.created == 86_400
    assert verified.public_key == public_key_bytes(GATEWAY)
    # field lines as a list (repeated lines kept, any case) work the same
    lines = [(k.title(), v) for k, v in headers.items()]
    assert verify_key_configs(200, lines, BODY, public_key=None).key_id == key_fingerprint(
        public_key_bytes(GATEWAY)
    )


@pytest.mark.parametrize("missing", ["signature", "signature-input", "content-digest", "veil-signing-key"])
def test_missing_fields_are_refused(missing: str) -> None:
    headers = {k: v for k, v in _signed().items() if k != missing}
    with pytest.raises(KeyConfigSignatureError):
        verify_key_configs(200, headers, BODY, public_key=None)
    if missing != "veil-signing-key":  # a pinned key needs no announced key, the rest it needs
        with pytest.raises(KeyConfigSignatureError):
            verify_key_configs(200, headers, BODY, public_key=public_key_bytes(GATEWAY))


def test_unsigned_answers_are_refused() -> None:
    with pytest.raises(KeyConfigSignatureError, match="not signed"):
        verify_key_configs(200, {"content-type": "application/ohttp-keys"}, BODY, public_key=None)


def test_tampered_body_signature_status_and_type_are_refused() -> None:
    headers, pinned = _signed(), public_key_bytes(GATEWAY)
    other_body = encode_key_configs([GatewayKeyPair.generate(3).config])
    with pytest.raises(KeyConfigSignatureError, match="Content-Digest"):
        verify_key_configs(200, headers, other_body, public_key=pinned)
    # a consistent digest of the new body does not help: the digest is signed
    forged = {**headers, "content-digest": _signed(other_body)["content-digest"]}
    with pytest.raises(KeyConfigSignatureError):
        verify_key_configs(200, forged, other_body, public_key=pinned)
    raw = base64.b64decode(headers["signature"][len("veil=:") : -1])
    flipped = bytes([raw[0] ^ 1]) + raw[1:]
    bad_sig = {**headers, "signature": "veil=:" + base64.b64encode(flipped).decode() + ":"}
    with pytest.raises(KeyConfigSignatureError):
        verify_key_configs(200, bad_sig, BODY, public_key=pinned)
    with pytest.raises(KeyConfigSignatureError):
        verify_key_configs(203, headers, BODY, public_key=pinned)
    with pytest.raises(KeyConfigSignatureError):
        verify_key_configs(200, {**headers, "content-type": "text/plain"}, BODY, public_key=pinned)


def test_a_signature_by_another_key_is_refused() -> None:
    with pytest.raises(SigningKeyMismatchError):
        verify_key_configs(200, _signed(key=OTHER), BODY, public_key=public_key_bytes(GATEWAY))
    # Announcing the gateway's key over another key's signature fails the signature itself.
    swapped = {**_signed(key=OTHER), "veil-signing-key": _signed()["veil-signing-key"]}
    with pytest.raises(KeyConfigSignatureError):
        verify_key_configs(200, swapped, BODY, public_key=None)


def test_expired_and_future_signatures_are_refused() -> None:
    created = int(time.time()) - 10_000
    old = _signed(created=created, expires=created + 3_600)
    with pytest.raises(KeyConfigExpiredError, match="expired"):
        verify_key_configs(200, old, BODY, public_key=None)
    assert verify_key_configs(200, old, BODY, public_key=None, now=created + 3_600 + MAX_CLOCK_SKEW_S)
    future = _signed(created=int(time.time()) + 2 * MAX_CLOCK_SKEW_S)
    with pytest.raises(KeyConfigExpiredError, match="future"):
        verify_key_configs(200, future, BODY, public_key=None)
    with pytest.raises(ValueError, match="after created"):
        _signed(created=100, expires=100)


def test_a_signature_that_does_not_cover_the_body_is_refused() -> None:
    """A valid signature by the pinned key over other components (no digest) does not vouch for the body."""
    import datetime

    from http_message_signatures import HTTPMessageSigner, algorithms

    from veil.client_sdk.ohttp.keysig import _Keys, _Response

    public = public_key_bytes(GATEWAY)
    message = _Response(200, {"content-type": "application/ohttp-keys", "content-digest": "x"})
    message.headers.pop("content-digest")
    HTTPMessageSigner(
        signature_algorithm=algorithms.ED25519, key_resolver=_Keys(private={key_fingerprint(public): GATEWAY})
    ).sign(
        message,
        key_id=key_fingerprint(public),
        created=datetime.datetime.now(datetime.UTC),
        expires=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1),
        label="veil",
        tag="veil-ohttp-keys",
        covered_component_ids=("@status", "content-type"),
    )
    headers = {**message.headers, "content-digest": _signed()["content-digest"]}
    with pytest.raises(KeyConfigSignatureError, match="not covered"):
        verify_key_configs(200, headers, BODY, public_key=public)


def test_a_signed_body_that_is_no_key_list_is_a_key_config_error() -> None:
    with pytest.raises(KeyConfigError):
        verify_key_configs(200, _signed(b"\x00\x05abc"), b"\x00\x05abc", public_key=None)


def test_public_key_encoding() -> None:
    raw = public_key_bytes(GATEWAY)
    assert decode_public_key(base64.b64encode(raw).decode()) == raw == decode_public_key(raw)
    for bad in ("not base64!", base64.b64encode(b"short").decode(), ""):
        with pytest.raises(ValueError, match="base64|32 bytes"):
            decode_public_key(bad)
    with pytest.raises(ValueError, match="32 bytes"):
        signing_key_from_seed(b"\x00" * 31)


# -------------------------------------------------------------------------------------------- pinning
def test_a_shipped_key_accepts_only_its_own_signatures() -> None:
    pin = GatewayKeyPin(base64.b64encode(public_key_bytes(GATEWAY)).decode())
    assert pin.verify(200, _signed(), BODY).configs
    with pytest.raises(SigningKeyMismatchError):
        pin.verify(200, _signed(key=OTHER), BODY)


def test_trust_on_first_use_pins_the_first_key_and_refuses_any_other(tmp_path: Path) -> None:
    path = tmp_path / "phone" / "gateway.pin"
    pin = GatewayKeyPin(path=path)
    assert pin.public_key is None
    pin.verify(200, _signed(), BODY)
    assert pin.public_key == public_key_bytes(GATEWAY)
    assert os.stat(path).st_mode & 0o777 == 0o600
    with pytest.raises(SigningKeyMismatchError):
        pin.verify(200, _signed(key=OTHER), BODY)
    # the pin survives a restart of the app
    again = GatewayKeyPin(path=path)
    with pytest.raises(SigningKeyMismatchError):
        again.verify(200, _signed(key=OTHER), BODY)
    assert again.verify(200, _signed(), BODY).public_key == public_key_bytes(GATEWAY)
    # an unsigned answer never pins anything
    fresh = GatewayKeyPin(path=tmp_path / "other.pin")
    with pytest.raises(KeyConfigSignatureError):
        fresh.verify(200, {"content-type": "application/ohttp-keys"}, BODY)
    assert not (tmp_path / "other.pin").exists() and fresh.public_key is None


def test_a_corrupt_pin_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gateway.pin"
    path.write_text("garbage")
    with pytest.raises(SigningKeyMismatchError, match="unreadable"):
        GatewayKeyPin(path=path).verify(200, _signed(), BODY)


def test_the_first_pinning_writer_wins(tmp_path: Path) -> None:
    path = tmp_path / "gateway.pin"
    first, second = GatewayKeyPin(path=path), GatewayKeyPin(path=path)
    assert first.public_key is None and second.public_key is None
    first.verify(200, _signed(), BODY)
    # ``second`` verified OTHER's list while the file was still missing, and pins after ``first`` wrote
    with pytest.raises(SigningKeyMismatchError):
        second._pin(public_key_bytes(OTHER))
    assert second.public_key == public_key_bytes(GATEWAY)
    assert decode_public_key(path.read_text()) == public_key_bytes(GATEWAY)


def test_the_phone_does_not_retry_a_refused_configuration() -> None:
    """Retrying through the relay that sent it cannot help: the reference client gives up at once."""
    from veil.client_sdk.client import _retryable

    for exc in (KeyConfigSignatureError("x"), KeyConfigExpiredError("x"), SigningKeyMismatchError("x")):
        assert not _retryable(exc)
    assert _retryable(KeyConfigError("garbled on the way"))


def test_an_app_shipping_the_next_key_too_survives_the_gateway_moving_to_it() -> None:
    """A backup pin: lists signed by either shipped key are used, by any third key refused."""
    third = signing_key_from_seed(b"\x03" * 32)
    pin = GatewayKeyPin([public_key_bytes(GATEWAY), base64.b64encode(public_key_bytes(OTHER)).decode()])
    assert pin.verify(200, _signed(), BODY).public_key == public_key_bytes(GATEWAY)
    assert pin.verify(200, _signed(key=OTHER), BODY).public_key == public_key_bytes(OTHER)
    with pytest.raises(SigningKeyMismatchError):
        pin.verify(200, _signed(key=third), BODY)
    assert pin.public_key is None and pin.path is None  # shipped keys are never replaced by a pin
    with pytest.raises(ValueError, match="at least one"):
        GatewayKeyPin([])
