"""The codebook's JSON body: exact round trip, version verified, malformed bodies refused."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from veil.client_sdk.codebook_wire import (
    CodebookFormatError,
    codebook_from_json,
    codebook_to_json,
    float32_codebook,
)
from veil.client_sdk.distributions import Codebook


def _book() -> Codebook:
    rng = np.random.default_rng(0)
    return float32_codebook(Codebook(rng.normal(size=(4, 2, 3)), [True, False, True, True], k_min=3))


def test_round_trip_is_exact_and_little_endian_float32() -> None:
    book = _book()
    body = codebook_to_json(book)
    raw = base64.b64decode(body["prototypes_b64"])
    assert len(raw) == 4 * 2 * 3 * 4
    np.testing.assert_array_equal(np.frombuffer(raw, "<f4").reshape(4, 2, 3), book.prototypes)
    back = codebook_from_json(body)
    assert back.version == book.version and back.active.tolist() == [True, False, True, True]


def test_float64_prototypes_are_refused_on_the_way_out() -> None:
    with pytest.raises(ValueError, match="float32"):
        codebook_to_json(Codebook(np.full((1, 1, 1), 0.1)))


@pytest.mark.parametrize(
    "change",
    [
        {"version": "0" * 16},
        {"k_min": 2},
        {"active": [True, True, True, True]},
        {"active": [True, False]},
        {"size": 0},
        {"dim": 4},
        {"prototypes_b64": "not base64!"},
    ],
)
def test_altered_bodies_are_refused(change: dict) -> None:
    body = {**codebook_to_json(_book()), **change}
    with pytest.raises(CodebookFormatError):
        codebook_from_json(body)


def test_one_flipped_prototype_byte_fails_the_version_check() -> None:
    body = codebook_to_json(_book())
    raw = bytearray(base64.b64decode(body["prototypes_b64"]))
    raw[5] ^= 1
    body["prototypes_b64"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(CodebookFormatError, match="hash to"):
        codebook_from_json(body)
