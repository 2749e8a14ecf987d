"""Fuzzed and mutated messages into every OHTTP/BHTTP decoder: a value or the module's typed error, nothing else.

The long run (>= 100,000 messages, coverage-guided) is ``benchmarks/fuzz_ohttp.py``; this is its short
version, with hypothesis drawing (and shrinking) the mutations of real encodings.
"""

from __future__ import annotations

import functools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veil.client_sdk.ohttp import (
    BinaryHTTPError,
    BinaryRequest,
    GatewayKeyPair,
    KeyConfig,
    KeyConfigError,
    encapsulate_request,
)
from veil.client_sdk.ohttp.hpke import KEM_MLKEM768_X25519
from veil.testing.ohttp_fuzz import (
    MUTATIONS,
    DecoderTarget,
    EdgeTracer,
    UnexpectedDecoderError,
    decoder_targets,
    mutate,
    run_target,
)

_FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
_mutations = st.lists(
    st.tuples(st.integers(0, len(MUTATIONS) - 1), st.integers(0, 1 << 16), st.integers(0, 1 << 12)),
    min_size=1,
    max_size=6,
)


@functools.cache
def _targets() -> dict[str, DecoderTarget]:
    return {t.name: t for t in decoder_targets()}


NAMES = list(_targets())


@pytest.mark.parametrize("name", NAMES)
def test_every_seed_decodes(name: str) -> None:
    target = _targets()[name]
    assert target.seeds and all(run_target(target, seed) == "ok" for seed in target.seeds)


@pytest.mark.parametrize("name", NAMES)
@_FUZZ
@given(data=st.data(), mutations=_mutations)
def test_mutated_valid_messages_raise_only_typed_errors(name: str, data: st.DataObject, mutations) -> None:
    target = _targets()[name]
    seed = data.draw(st.sampled_from(target.seeds), label="seed")
    run_target(target, mutate(seed, mutations))


@pytest.mark.parametrize("name", NAMES)
@_FUZZ
@given(raw=st.binary(max_size=2048))
def test_random_bytes_raise_only_typed_errors(name: str, raw: bytes) -> None:
    run_target(_targets()[name], raw)


def test_mutations_apply_as_documented() -> None:
    assert mutate(b"abc", [(0, 0, 0)]) == b"`bc"  # flip bit 0 of byte 0
    assert mutate(b"abc", [(4, 1, 0)]) == b"a"  # truncate at 1
    assert mutate(b"abc", [(3, 0, 1)]) == b"c"  # delete 2 bytes at 0
    assert mutate(b"abc", [(2, 3, 0x100 | 0x7A)]) == b"abczz"  # insert 2 x 'z' at the end
    assert mutate(b"\x00\x00\x00", [(6, 0, 22)]) == bytes.fromhex("7fff00")  # varint 16383 on 2 bytes
    assert mutate(b"", [(0, 5, 5), (1, 5, 5)]) == b""  # nothing to flip or set
    assert len(mutate(b"x", [(2, 0, 0xFFF)] * 10, max_size=100)) == 100


def test_the_harness_reports_untyped_errors_and_slow_decoders() -> None:
    def index_error(data: bytes) -> None:
        raise IndexError("out of range")

    crashing = DecoderTarget("crash", index_error, (BinaryHTTPError,), (b"",))
    with pytest.raises(UnexpectedDecoderError, match="IndexError") as info:
        run_target(crashing, b"\x01\x02")
    assert info.value.data == b"\x01\x02"
    slow = DecoderTarget("slow", lambda d: sum(range(200_000)), (BinaryHTTPError,), (b"",))
    with pytest.raises(UnexpectedDecoderError, match="took"):
        run_target(slow, b"", time_limit_s=1e-6)


def test_the_tracer_sees_new_edges_only_once() -> None:
    tracer = EdgeTracer()
    request = BinaryRequest("GET", path="/v1/models").encode()
    with tracer:
        BinaryRequest.decode(request)
    assert tracer.novel()
    with tracer:
        BinaryRequest.decode(request)
    assert not tracer.novel()
    with tracer, pytest.raises(BinaryHTTPError):
        BinaryRequest.decode(b"\x07")
    assert tracer.novel()


# Regression: the fuzzer's first finding. A configuration that decodes can still hold a public key no one
# can encapsulate to; the phone got hpke's KEMError, outside the OHTTPError hierarchy it handles.
def test_a_low_order_x25519_key_is_refused_with_a_key_config_error() -> None:
    key = GatewayKeyPair.generate(1)
    for point in (bytes(32), (1).to_bytes(32, "little")):
        with pytest.raises(KeyConfigError, match="unusable public key"):
            encapsulate_request(KeyConfig(1, key.kem_id, point), b"\x00")


def test_a_malformed_mlkem_key_is_refused_with_a_key_config_error() -> None:
    key = GatewayKeyPair.generate(2, KEM_MLKEM768_X25519)
    with pytest.raises(KeyConfigError, match="unusable public key"):
        encapsulate_request(KeyConfig(2, key.kem_id, b"\xff" * len(key.public_key)), b"\x00")


# Regression, the same trap as the relay-auth timestamp: a relay answering 503 with "retry-after: ²"
# (byte 0xB2) made the phone's client raise ValueError from float() instead of a RelayError.
def test_a_superscript_retry_after_from_the_relay_is_ignored() -> None:
    import httpx

    from veil.client_sdk.ohttp import OHTTPClient, RelayError

    def relay(request: httpx.Request) -> httpx.Response:
        error = {"error": {"type": "busy", "message": "try later", "param": None, "code": None}}
        return httpx.Response(503, headers=[(b"retry-after", b"\xb2")], json=error)

    key = GatewayKeyPair.generate(1)
    transport = httpx.MockTransport(relay)
    with (
        OHTTPClient(
            "http://relay.invalid/ohttp", key_config=key.config, transport=transport, retries=1
        ) as client,
        pytest.raises(RelayError) as info,
    ):
        client.request("GET", "/v1/models")
    assert info.value.status_code == 503


# Regression: the decoder fuzz's find in the wire codec. The right number of base64 characters without
# '=' padding decodes to 66 bytes for 16 values; np.frombuffer raised a plain ValueError, which the
# upload route did not catch (a 500) and the phone did not expect from gradient_b64.
@pytest.mark.parametrize("text", ["A" * 88, "AAAAAArXIzwK16M8" * 5 + "j8L1PArX"])
def test_base64_that_decodes_to_a_partial_float_is_a_wire_format_error(text: str) -> None:
    from veil.client_sdk.wire import WireFormatError, b64_length, decode_f32

    assert len(text) == b64_length(16)
    with pytest.raises(WireFormatError, match="float32 values"):
        decode_f32(text, (1, 16))
