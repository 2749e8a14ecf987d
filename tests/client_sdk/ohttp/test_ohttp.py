"""OHTTP encapsulation (RFC 9458 section 4): the Appendix A example byte for byte, round trips, tampering."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.client_sdk.ohttp import (
    AEAD_AES_128_GCM,
    AEAD_AES_256_GCM,
    AEAD_CHACHA20_POLY1305,
    KDF_HKDF_SHA256,
    KEM_MLKEM768_X25519,
    KEM_X25519_HKDF_SHA256,
    OHTTP_KEY_PROBLEM,
    BinaryRequest,
    BinaryResponse,
    DecryptionFailedError,
    GatewayKeyPair,
    MalformedMessageError,
    OHTTPError,
    UnknownKeyIdError,
    UnsupportedSuiteError,
    decapsulate_request,
    decapsulate_response,
    encapsulate_request,
)
from veil.client_sdk.ohttp.hpke import DHKEMX25519, Suite, setup_base_r
from veil.client_sdk.ohttp.ohttp import REQUEST_LABEL, RESPONSE_LABEL, request_header

h = bytes.fromhex

# RFC 9458 Appendix A.
SERVER_SK = h("3c168975674b2fa8e465970b79c8dcf09f1c741626480bd4c6162fc5b6a98e1a")
KEY_CONFIG = h("01002031e1f05a740102115220e9af918f738674aec95f54db6e04eb705aae8e79815500080001000100010003")
REQUEST = h("00034745540568747470730b6578616d706c652e636f6d012f")
EPHEMERAL_SK = h("bc51d5e930bda26589890ac7032f70ad12e4ecb37abb1b65b1256c9c48999c73")
EPHEMERAL_PK = h("4b28f881333e7c164ffc499ad9796f877f4e1051ee6d31bad19dec96c208b472")
INFO = h("6d6573736167652f626874747020726571756573740001002000010001")
ENC_REQUEST = h(
    "010020000100014b28f881333e7c164ffc499ad9796f877f4e1051ee6d31bad1"
    "9dec96c208b4726374e469135906992e1268c594d2a10c695d858c40a026e796"
    "5e7d86b83dd440b2c0185204b4d63525"
)
RESPONSE = h("0140c8")
EXPORTED_SECRET = h("62d87a6ba569ee81014c2641f52bea36")
RESPONSE_NONCE = h("c789e7151fcba46158ca84b04464910d")
ENC_RESPONSE = h("c789e7151fcba46158ca84b04464910d86f9013e404feea014e7be4a441f234f857fbd")


def _rfc_key() -> GatewayKeyPair:
    return GatewayKeyPair.from_private_key(
        1, KEM_X25519_HKDF_SHA256, SERVER_SK, [(KDF_HKDF_SHA256, AEAD_AES_128_GCM), (KDF_HKDF_SHA256, 3)]
    )


def test_rfc_9458_appendix_a_byte_for_byte() -> None:
    key = _rfc_key()
    assert key.config.encode() == KEY_CONFIG
    assert DHKEMX25519().public_key(EPHEMERAL_SK) == EPHEMERAL_PK
    suite = Suite(KEM_X25519_HKDF_SHA256, KDF_HKDF_SHA256, AEAD_AES_128_GCM)
    assert REQUEST_LABEL + b"\x00" + request_header(1, suite) == INFO
    assert BinaryRequest.decode(REQUEST) == BinaryRequest("GET", "https", "example.com", "/")

    enc_request, client_ctx = encapsulate_request(
        key.config, REQUEST, KDF_HKDF_SHA256, AEAD_AES_128_GCM, ephemeral_key=EPHEMERAL_SK
    )
    # (The example's illustrative "Content-Length: 78" and ": 38" do not match its own bytes, 80 and 35.)
    assert enc_request == ENC_REQUEST

    request, server_ctx = decapsulate_request({1: key}, ENC_REQUEST)
    assert request == REQUEST and server_ctx.enc == EPHEMERAL_PK
    assert server_ctx._context.export(RESPONSE_LABEL, 16) == EXPORTED_SECRET
    assert BinaryResponse.decode(RESPONSE) == BinaryResponse(200)

    enc_response = server_ctx.encapsulate_response(RESPONSE, response_nonce=RESPONSE_NONCE)
    assert enc_response == ENC_RESPONSE
    assert client_ctx.decapsulate_response(ENC_RESPONSE) == RESPONSE
    assert decapsulate_response(client_ctx, ENC_RESPONSE) == RESPONSE


def test_default_suite_is_the_first_offered_pair() -> None:
    key = GatewayKeyPair.generate(9, symmetric_algorithms=[(KDF_HKDF_SHA256, 3), (KDF_HKDF_SHA256, 1)])
    enc_request, ctx = encapsulate_request(key.config, REQUEST)
    assert enc_request[:7] == bytes([9]) + h("002000010003")
    assert ctx.suite.aead_id == AEAD_CHACHA20_POLY1305


_PAIRS = [(KDF_HKDF_SHA256, a) for a in (AEAD_AES_128_GCM, AEAD_AES_256_GCM, AEAD_CHACHA20_POLY1305)]
_X25519_KEY = GatewayKeyPair.generate(3, KEM_X25519_HKDF_SHA256, _PAIRS)
_HYBRID_KEY = GatewayKeyPair.generate(4, KEM_MLKEM768_X25519, _PAIRS)


@settings(max_examples=40, deadline=None)
@given(
    request=st.binary(max_size=2000),
    response=st.binary(max_size=2000),
    hybrid=st.booleans(),
    pair=st.sampled_from(_PAIRS),
)
def test_round_trip(request: bytes, response: bytes, hybrid: bool, pair: tuple[int, int]) -> None:
    key = _HYBRID_KEY if hybrid else _X25519_KEY
    enc_request, client_ctx = encapsulate_request(key.config, request, *pair)
    opened, server_ctx = decapsulate_request({3: _X25519_KEY, 4: _HYBRID_KEY}, enc_request)
    assert opened == request
    enc_response = server_ctx.encapsulate_response(response)
    assert client_ctx.decapsulate_response(enc_response) == response


def test_each_request_has_a_fresh_encapsulation() -> None:
    first, _ = encapsulate_request(_X25519_KEY.config, REQUEST)
    second, _ = encapsulate_request(_X25519_KEY.config, REQUEST)
    assert first[7:39] != second[7:39] and first != second


@pytest.mark.parametrize("key", [_X25519_KEY, _HYBRID_KEY], ids=["x25519", "hybrid"])
def test_any_flipped_byte_is_rejected(key: GatewayKeyPair) -> None:
    enc_request, client_ctx = encapsulate_request(key.config, REQUEST)
    keys = {key.key_id: key}
    enc_size = Suite(key.kem_id).kem.enc_size
    # Header bytes change the key id or suite (other errors); enc and ciphertext bytes break decryption.
    for position in [7, 8, 7 + enc_size - 1, 7 + enc_size, len(enc_request) - 1]:
        tampered = bytearray(enc_request)
        tampered[position] ^= 0x01
        with pytest.raises(DecryptionFailedError):
            decapsulate_request(keys, bytes(tampered))
    _, server_ctx = decapsulate_request(keys, enc_request)
    enc_response = server_ctx.encapsulate_response(RESPONSE)
    for position in (0, len(enc_response) - 1):
        tampered = bytearray(enc_response)
        tampered[position] ^= 0x80
        with pytest.raises(DecryptionFailedError):
            client_ctx.decapsulate_response(bytes(tampered))


def test_truncation_unknown_keys_and_unsupported_suites() -> None:
    key = _rfc_key()
    keys = {1: key}
    for cut in (0, 6, 7, 38, 39 + 15):
        with pytest.raises(MalformedMessageError):
            decapsulate_request(keys, ENC_REQUEST[:cut])
    with pytest.raises(UnknownKeyIdError) as unknown:
        decapsulate_request({2: key}, ENC_REQUEST)
    assert unknown.value.status == 400 and unknown.value.problem_type == OHTTP_KEY_PROBLEM
    with pytest.raises(UnknownKeyIdError):  # right id, wrong KEM
        decapsulate_request(keys, ENC_REQUEST[:1] + h("647a") + ENC_REQUEST[3:])
    with pytest.raises(UnsupportedSuiteError):  # AES-256-GCM is not offered for this key
        decapsulate_request(keys, ENC_REQUEST[:5] + h("0002") + ENC_REQUEST[7:])
    with pytest.raises(UnsupportedSuiteError):  # client side: the pair is not in the configuration
        encapsulate_request(key.config, REQUEST, KDF_HKDF_SHA256, AEAD_AES_256_GCM)
    odd = GatewayKeyPair.generate(5, symmetric_algorithms=[(0x0002, 0x0001)])  # HKDF-SHA384: not implemented
    with pytest.raises(UnsupportedSuiteError):
        encapsulate_request(odd.config, REQUEST)
    with pytest.raises(UnsupportedSuiteError):
        decapsulate_request({5: odd}, bytes([5]) + h("002000020001") + bytes(60))
    _, server_ctx = decapsulate_request(keys, ENC_REQUEST)
    _, client_ctx = encapsulate_request(key.config, REQUEST)
    with pytest.raises(MalformedMessageError):
        client_ctx.decapsulate_response(ENC_RESPONSE[:31])
    with pytest.raises(ValueError, match="response_nonce"):
        server_ctx.encapsulate_response(RESPONSE, response_nonce=b"short")


def test_a_response_opens_only_with_its_own_request_context() -> None:
    _, ctx_a = encapsulate_request(_X25519_KEY.config, REQUEST)
    enc_b, _ = encapsulate_request(_X25519_KEY.config, REQUEST)
    _, server_b = decapsulate_request({3: _X25519_KEY}, enc_b)
    with pytest.raises(DecryptionFailedError):
        ctx_a.decapsulate_response(server_b.encapsulate_response(RESPONSE))


def test_request_info_binds_the_header() -> None:
    # The header is part of HPKE's info: opening with another key id's info fails.
    enc_request, _ = encapsulate_request(_X25519_KEY.config, REQUEST)
    suite = Suite()
    wrong_info = REQUEST_LABEL + b"\x00" + request_header(7, suite)
    receiver = setup_base_r(suite, enc_request[7:39], _X25519_KEY.private_key, wrong_info)
    with pytest.raises(Exception, match="authentication"):
        receiver.open(b"", enc_request[39:])


def test_errors_carry_status_and_json_body() -> None:
    body = UnknownKeyIdError("no key 7").to_dict()
    assert body == {
        "error": {
            "type": "unknown_key_id",
            "message": "no key 7",
            "param": None,
            "code": None,
            "problem_type": OHTTP_KEY_PROBLEM,
        }
    }
    assert DecryptionFailedError("x").to_dict()["error"].keys() == {"type", "message", "param", "code"}
    assert all(issubclass(e, OHTTPError) for e in (MalformedMessageError, UnsupportedSuiteError))
