"""Binary HTTP (RFC 9292): the RFC's section 5 examples byte for byte, strict decoding, round trips."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.client_sdk.ohttp.bhttp import (
    BinaryHTTPError,
    BinaryRequest,
    BinaryResponse,
    InformationalResponse,
    decode_message,
    decode_varint,
    encode_varint,
)


def _dump(*rows: str) -> bytes:
    """Bytes of an RFC hex dump given as its rows of 4-byte groups."""
    return bytes.fromhex("".join(rows).replace(" ", ""))


# RFC 9292 Figure 8: known-length encoding of the Figure 7 request.
FIG8_KNOWN_LENGTH_REQUEST = _dump(
    "00034745 54056874 74707300 0a2f6865",
    "6c6c6f2e 74787440 6c0a7573 65722d61",
    "67656e74 34637572 6c2f372e 31362e33",
    "206c6962 6375726c 2f372e31 362e3320",
    "4f70656e 53534c2f 302e392e 376c207a",
    "6c69622f 312e322e 3304686f 73740f77",
    "77772e65 78616d70 6c652e63 6f6d0f61",
    "63636570 742d6c61 6e677561 67650665",
    "6e2c206d 690000",
)
# RFC 9292 Figure 9: the same request, indeterminate length, with 10 bytes of padding.
FIG9_INDETERMINATE_REQUEST = _dump(
    "02034745 54056874 74707300 0a2f6865",
    "6c6c6f2e 7478740a 75736572 2d616765",
    "6e743463 75726c2f 372e3136 2e33206c",
    "69626375 726c2f37 2e31362e 33204f70",
    "656e5353 4c2f302e 392e376c 207a6c69",
    "622f312e 322e3304 686f7374 0f777777",
    "2e657861 6d706c65 2e636f6d 0f616363",
    "6570742d 6c616e67 75616765 06656e2c",
    "206d6900 00000000 00000000 00000000",
)
# RFC 9292 Figure 11: indeterminate-length response with 102 and 103 informational responses.
FIG11_RESPONSE = _dump(
    "03406607 72756e6e 696e670a 22736c65",
    "65702031 35220040 67046c69 6e6b233c",
    "2f737479 6c652e63 73733e3b 2072656c",
    "3d707265 6c6f6164 3b206173 3d737479",
    "6c65046c 696e6b24 3c2f7363 72697074",
    "2e6a733e 3b207265 6c3d7072 656c6f61",
    "643b2061 733d7363 72697074 0040c804",
    "64617465 1d4d6f6e 2c203237 204a756c",
    "20323030 39203132 3a32383a 35332047",
    "4d540673 65727665 72064170 61636865",
    "0d6c6173 742d6d6f 64696669 65641d57",
    "65642c20 3232204a 756c2032 30303920",
    "31393a31 353a3536 20474d54 04657461",
    "67142233 34616133 38372d64 2d313536",
    "38656230 30220d61 63636570 742d7261",
    "6e676573 05627974 65730e63 6f6e7465",
    "6e742d6c 656e6774 68023531 04766172",
    "790f4163 63657074 2d456e63 6f64696e",
    "670c636f 6e74656e 742d7479 70650a74",
    "6578742f 706c6169 6e003348 656c6c6f",
    "20576f72 6c642120 4d792063 6f6e7465",
    "6e742069 6e636c75 64657320 61207472",
    "61696c69 6e672043 524c462e 0d0a0000",
)
# RFC 9292 Figure 13: known-length response with content and a trailer.
FIG13_KNOWN_LENGTH_RESPONSE = _dump(
    "0140c800 1d546869 7320636f 6e74656e",
    "7420636f 6e746169 6e732043 524c462e",
    "0d0a0d07 74726169 6c657204 74657874",
)

FIG7_REQUEST = BinaryRequest(
    "GET",
    "https",
    "",
    "/hello.txt",
    [
        ("User-Agent", "curl/7.16.3 libcurl/7.16.3 OpenSSL/0.9.7l zlib/1.2.3"),
        ("Host", "www.example.com"),
        ("Accept-Language", "en, mi"),
    ],
)
FIG10_RESPONSE = BinaryResponse(
    200,
    [
        ("date", "Mon, 27 Jul 2009 12:28:53 GMT"),
        ("server", "Apache"),
        ("last-modified", "Wed, 22 Jul 2009 19:15:56 GMT"),
        ("etag", '"34aa387-d-1568eb00"'),
        ("accept-ranges", "bytes"),
        ("content-length", "51"),
        ("vary", "Accept-Encoding"),
        ("content-type", "text/plain"),
    ],
    b"Hello World! My content includes a trailing CRLF.\r\n",
    [
        InformationalResponse(102, [("running", '"sleep 15"')]),
        InformationalResponse(
            103,
            [
                ("link", "</style.css>; rel=preload; as=style"),
                ("link", "</script.js>; rel=preload; as=script"),
            ],
        ),
    ],
)


def test_rfc_lengths_are_those_the_rfc_states() -> None:
    # Guards the transcription of the dumps themselves.
    assert [len(FIG8_KNOWN_LENGTH_REQUEST), len(FIG9_INDETERMINATE_REQUEST)] == [135, 144]
    assert [len(FIG11_RESPONSE), len(FIG13_KNOWN_LENGTH_RESPONSE)] == [368, 48]


def test_known_length_request_matches_figure_8() -> None:
    assert FIG7_REQUEST.encode() == FIG8_KNOWN_LENGTH_REQUEST
    assert BinaryRequest.decode(FIG8_KNOWN_LENGTH_REQUEST) == FIG7_REQUEST


def test_figure_8_truncated_by_one_and_two_bytes_means_the_same() -> None:
    # RFC 9292 section 5.1: the trailer and content lengths can each be removed.
    for cut in (1, 2):
        assert BinaryRequest.decode(FIG8_KNOWN_LENGTH_REQUEST[:-cut]) == FIG7_REQUEST
    assert FIG7_REQUEST.encode(truncate=True) == FIG8_KNOWN_LENGTH_REQUEST[:-2]


def test_indeterminate_request_matches_figure_9() -> None:
    assert BinaryRequest.decode(FIG9_INDETERMINATE_REQUEST) == FIG7_REQUEST
    assert FIG7_REQUEST.encode(indeterminate=True, padding=10) == FIG9_INDETERMINATE_REQUEST
    # "anything up to 12 bytes can be removed from this message without affecting its meaning"
    for cut in range(13):
        assert BinaryRequest.decode(FIG9_INDETERMINATE_REQUEST[: len(FIG9_INDETERMINATE_REQUEST) - cut]) == (
            FIG7_REQUEST
        )
    with pytest.raises(BinaryHTTPError, match="truncated"):
        BinaryRequest.decode(FIG9_INDETERMINATE_REQUEST[:-14])  # cuts the header section's terminator


def test_response_with_informational_matches_figure_11() -> None:
    decoded = BinaryResponse.decode(FIG11_RESPONSE)
    assert decoded == FIG10_RESPONSE
    assert [i.status for i in decoded.informational] == [102, 103]
    assert FIG10_RESPONSE.encode(indeterminate=True) == FIG11_RESPONSE
    assert BinaryResponse.decode(FIG10_RESPONSE.encode()) == FIG10_RESPONSE


def test_known_length_response_with_trailer_matches_figure_13() -> None:
    expected = BinaryResponse(200, [], b"This content contains CRLF.\r\n", trailers=[("trailer", "text")])
    assert BinaryResponse.decode(FIG13_KNOWN_LENGTH_RESPONSE) == expected
    assert expected.encode() == FIG13_KNOWN_LENGTH_RESPONSE


def test_rfc_9458_minimal_messages_decode() -> None:
    # RFC 9458 Appendix A truncates after the control data.
    request = BinaryRequest.decode(bytes.fromhex("00034745540568747470730b6578616d706c652e636f6d012f"))
    assert request == BinaryRequest("GET", "https", "example.com", "/")
    assert request.encode(truncate=True).hex() == "00034745540568747470730b6578616d706c652e636f6d012f"
    assert BinaryResponse.decode(bytes.fromhex("0140c8")) == BinaryResponse(200)
    assert BinaryResponse(200).encode(truncate=True) == bytes.fromhex("0140c8")


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),
        (63, "3f"),
        (64, "4040"),
        (37, "25"),
        (15293, "7bbd"),
        (494878333, "9d7f3e7d"),
        (151288809941952652, "c2197c5eff14e88c"),
        ((1 << 62) - 1, "ffffffffffffffff"),
    ],
)
def test_varint_rfc_9000_examples(value: int, encoded: str) -> None:
    assert encode_varint(value).hex() == encoded
    assert decode_varint(bytes.fromhex(encoded)) == (value, len(encoded) // 2)


def test_varint_accepts_non_minimal_and_rejects_out_of_range() -> None:
    assert decode_varint(bytes.fromhex("4025")) == (37, 2)  # RFC 9000: two-byte 37
    with pytest.raises(BinaryHTTPError):
        encode_varint(1 << 62)
    with pytest.raises(BinaryHTTPError):
        encode_varint(-1)
    with pytest.raises(BinaryHTTPError, match="truncated"):
        decode_varint(bytes.fromhex("7b"))


_GET = "0003474554056874747073" + "0000"  # known-length GET https, empty authority and path
_GET_I = "0203474554056874747073" + "0000"  # the same, indeterminate length


@pytest.mark.parametrize(
    ("hexdata", "match"),
    [
        ("", "truncated"),
        ("04", "framing"),
        ("0003474554", "truncated"),  # control data cut before the scheme
        ("000347455405", "truncated"),  # cut inside the scheme
        ("00034745540568747470730001", "truncated"),  # path length 1, no byte
        (_GET + "05" + "0141", "truncated"),  # section shorter than its length
        (_GET + "03" + "014100", "lower case"),  # upper-case name 'A'
        (_GET + "02" + "0000", "empty"),  # empty field name
        (_GET + "03" + "01610d", "value"),  # CR in a value
        (_GET + "02" + "01610000", "truncated"),  # section length 2 ends inside the field line
        (_GET + "00" + "00" + "00" + "01", "padding"),  # non-zero padding
        (_GET + "09" + "073a6d6574686f6400", "pseudo"),  # :method is reserved
        (_GET + "00" + "00" + "05" + "033a787800", "pseudo"),  # pseudo-field in trailers
        ("0103e8", "status"),  # status 1000
        ("01406300", "status"),  # final status 99
        ("014064", "truncated"),  # informational 100 without its header section
        ("01474554", "status"),  # a request's bytes read as a response
        (_GET_I + "01610162", "truncated"),  # indeterminate header section not terminated
        (_GET_I + "0161", "truncated"),  # field line cut after its name
        (_GET_I + "00" + "0568", "truncated"),  # content chunk shorter than its length
        ("0140c80000" + "05" + "6869", "truncated"),  # content shorter than its length
    ],
)
def test_strict_decoding(hexdata: str, match: str | None) -> None:
    with pytest.raises(BinaryHTTPError, match=match):
        decode_message(bytes.fromhex(hexdata))


def test_framing_must_match_the_message_kind() -> None:
    with pytest.raises(BinaryHTTPError, match="response"):
        BinaryRequest.decode(bytes.fromhex("0140c8"))
    with pytest.raises(BinaryHTTPError, match="request"):
        BinaryResponse.decode(FIG8_KNOWN_LENGTH_REQUEST)


def test_constructor_validation() -> None:
    with pytest.raises(BinaryHTTPError, match="method"):
        BinaryRequest("GE T")
    with pytest.raises(BinaryHTTPError, match="path"):
        BinaryRequest("GET", path="/a b")
    with pytest.raises(BinaryHTTPError, match="value"):
        BinaryRequest("GET", headers=[("x", "a\r\nb")])
    with pytest.raises(BinaryHTTPError, match="value"):
        BinaryRequest("GET", headers=[("x", " padded")])
    with pytest.raises(BinaryHTTPError, match="ISO-8859-1"):
        BinaryRequest("GET", headers=[("x", "snow☃")])
    with pytest.raises(BinaryHTTPError, match="pseudo"):
        BinaryRequest("GET", trailers=[(":x", "1")])
    with pytest.raises(BinaryHTTPError, match="pseudo"):
        BinaryRequest("GET", headers=[("a", "1"), (":x", "1")])
    with pytest.raises(BinaryHTTPError, match="status"):
        BinaryResponse(99)
    with pytest.raises(BinaryHTTPError, match="informational"):
        InformationalResponse(200)
    # Names are lowered; a pseudo-field other than the five reserved ones is allowed first.
    request = BinaryRequest("GET", headers=[(":protocol", "x"), ("X-A", "1")])
    assert request.headers == ((":protocol", "x"), ("x-a", "1"))
    assert request.header("X-A") == "1" and request.header("missing") is None


_token = st.text(alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=12)
_value = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40
).map(lambda s: s.strip(" \t"))
_fields = st.lists(st.tuples(_token, _value), max_size=6)
_visible = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30)


@settings(max_examples=150, deadline=None)
@given(
    method=_token.map(str.upper),
    scheme=_visible,
    authority=_visible,
    path=_visible,
    headers=_fields,
    content=st.binary(max_size=300),
    trailers=_fields,
    indeterminate=st.booleans(),
    truncate=st.booleans(),
    padding=st.integers(0, 20),
)
def test_request_round_trip(
    method, scheme, authority, path, headers, content, trailers, indeterminate, truncate, padding
) -> None:
    request = BinaryRequest(method, scheme, authority, path, headers, content, trailers)
    encoded = request.encode(indeterminate=indeterminate, truncate=truncate, padding=padding)
    assert BinaryRequest.decode(encoded) == request
    assert decode_message(encoded) == request


@settings(max_examples=100, deadline=None)
@given(
    status=st.integers(200, 599),
    interim=st.lists(st.tuples(st.integers(100, 199), _fields), max_size=3),
    headers=_fields,
    content=st.binary(max_size=300),
    trailers=_fields,
    indeterminate=st.booleans(),
    truncate=st.booleans(),
)
def test_response_round_trip(status, interim, headers, content, trailers, indeterminate, truncate) -> None:
    response = BinaryResponse(
        status, headers, content, [InformationalResponse(s, h) for s, h in interim], trailers
    )
    encoded = response.encode(indeterminate=indeterminate, truncate=truncate)
    assert BinaryResponse.decode(encoded) == response


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_never_crash_the_decoder(data: bytes) -> None:
    with contextlib.suppress(BinaryHTTPError):  # any other exception fails the test
        decode_message(data)
