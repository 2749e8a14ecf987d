"""The wire codec of embeddings and gradients: round trips, refusals naming the field, JSON parity."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from veil.client_sdk.wire import (
    F32_MAX,
    WireFormatError,
    b64_length,
    decode_f32,
    encode_f32,
    encode_field,
    f32_from_values,
)

FINITE_F32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 40)), elements=FINITE_F32))
def test_base64_round_trip_is_exact(values: np.ndarray) -> None:
    text = encode_f32(values)
    assert len(text) == b64_length(values.size)
    back = decode_f32(text, values.shape)
    assert back.dtype == np.float32 and back.shape == values.shape
    assert back.tobytes() == values.astype("<f4").tobytes()  # bit for bit, signed zeros included


def test_wire_bytes_are_little_endian_float32_row_major() -> None:
    # 1.0 = 0x3f800000 and -2.0 = 0xc0000000, least significant byte first.
    raw = base64.b64decode(encode_f32(np.array([[1.0, -2.0], [0.5, 0.0]])))
    assert raw == bytes.fromhex("0000803f000000c00000003f00000000")


def test_json_and_base64_forms_decode_to_the_same_array() -> None:
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((2, 16))
    as_json = json.loads(json.dumps(encode_field("embedding", sample, "json")))["embedding"]
    from_json = f32_from_values(as_json, (2, 16))
    from_b64 = decode_f32(encode_field("embedding", sample)["embedding_b64"], (2, 16))
    np.testing.assert_array_equal(from_json, from_b64)
    np.testing.assert_array_equal(from_json, sample.astype(np.float32))
    # One flat row is accepted when n_tokens == 1, as before.
    assert f32_from_values(sample[0].tolist(), (1, 16)).shape == (1, 16)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("not base64!" * 2 + "xx", "valid base64"),
        (base64.b64encode(b"\0" * 12).decode(), "must hold 1 x 4 = 4"),
        (base64.b64encode(b"\0" * 20).decode(), "must hold 1 x 4 = 4"),
        ("", "must hold"),
        (encode_f32([[0.0, 0.0, 0.0, 0.0]]).replace("A", "?", 1), "valid base64"),
        (base64.b64encode(np.array([0, np.nan, 0, 0], "<f4").tobytes()).decode(), "NaN or Inf"),
        (base64.b64encode(np.array([0, 0, np.inf, 0], "<f4").tobytes()).decode(), "NaN or Inf"),
    ],
)
def test_bad_base64_is_refused_with_the_field_named(text: str, fragment: str) -> None:
    with pytest.raises(WireFormatError) as err:
        decode_f32(text, (1, 4), "user_embedding_b64")
    assert err.value.field == "user_embedding_b64"
    assert fragment in str(err.value) and str(err.value).startswith("user_embedding_b64 ")


def test_a_huge_field_is_refused_before_it_is_decoded() -> None:
    with pytest.raises(WireFormatError, match="base64 characters"):
        decode_f32("A" * 10_000_000, (1, 4))


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ([[1.0, 2.0, 3.0]], "shape [1, 4]"),
        ([[1.0, 2.0], [3.0]], "equal-length rows"),
        ([["a", 1.0, 2.0, 3.0]], "list of numbers"),
        ([[1.0, float("nan"), 0.0, 0.0]], "NaN or Inf"),
        ([[1.0, 0.0, float("-inf"), 0.0]], "NaN or Inf"),
        ([[1e39, 0.0, 0.0, 0.0]], "float32 range"),
        ([[0.0] * 70_000], "more than"),
    ],
)
def test_bad_json_values_are_refused_with_the_field_named(values: list, fragment: str) -> None:
    with pytest.raises(WireFormatError) as err:
        f32_from_values(values, (1, 4), "embedding")
    assert err.value.field == "embedding" and fragment in str(err.value)


def test_the_float32_extremes_pass_and_encoding_refuses_non_finite() -> None:
    edge = np.array([[F32_MAX, -F32_MAX, np.finfo(np.float32).tiny, -0.0]])
    np.testing.assert_array_equal(decode_f32(encode_f32(edge), (1, 4)), edge.astype(np.float32))
    np.testing.assert_array_equal(f32_from_values(edge.tolist(), (1, 4)), edge.astype(np.float32))
    with pytest.raises(WireFormatError):
        encode_f32([np.nan])
    with pytest.raises(ValueError, match="encoding"):
        encode_field("embedding", [0.0], "msgpack")
