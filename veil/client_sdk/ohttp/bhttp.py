"""Binary HTTP messages (RFC 9292): the plaintext that Oblivious HTTP encrypts.

The encoder writes the known-length form (framing indicators 0 and 1) by default and, for tests and
completeness, the indeterminate-length form (2 and 3), with optional truncation of empty trailing
sections and zero padding. The decoder reads all four forms strictly: any truncation other than the
omission of whole empty trailing sections (RFC 9292, section 3.8), non-zero padding, a field section
whose lines do not exactly fill its length, upper-case or otherwise invalid field names, forbidden
pseudo-fields and out-of-range status codes raise :class:`BinaryHTTPError`.

Field names are lower-cased by the constructors (the binary form requires lower case, as HTTP/2 does);
field values are ``str`` encoded as ISO-8859-1, which maps every byte to one character and back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "BinaryHTTPError",
    "BinaryRequest",
    "BinaryResponse",
    "InformationalResponse",
    "decode_message",
    "decode_varint",
    "encode_varint",
]

Field = tuple[str, str]

_MAX_VARINT = (1 << 62) - 1
# RFC 9110 section 5.6.2 token characters, lower case only (the binary form forbids upper case).
_LOWER_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-zA-Z]+")
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]*")
_FORBIDDEN_PSEUDO = frozenset({":method", ":scheme", ":authority", ":path", ":status"})


class BinaryHTTPError(ValueError):
    """A binary HTTP message is truncated, malformed or carries an invalid field."""


def encode_varint(value: int) -> bytes:
    """QUIC variable-length integer (RFC 9000, section 16), on the fewest bytes.

    >>> encode_varint(37).hex(), encode_varint(15293).hex(), encode_varint(494878333).hex()
    ('25', '7bbd', '9d7f3e7d')
    """
    if not 0 <= value <= _MAX_VARINT:
        raise BinaryHTTPError(f"varint must be in [0, 2**62), got {value}")
    if value < 1 << 6:
        return value.to_bytes(1, "big")
    if value < 1 << 14:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 1 << 30:
        return (value | 0x8000_0000).to_bytes(4, "big")
    return (value | 0xC000_0000_0000_0000).to_bytes(8, "big")


def decode_varint(data: bytes, offset: int = 0) -> tuple[int, int]:
    """Read one QUIC varint at ``offset``; returns ``(value, next_offset)``.

    >>> decode_varint(bytes.fromhex("c2197c5eff14e88c"))
    (151288809941952652, 8)
    """
    if offset >= len(data):
        raise BinaryHTTPError(f"truncated message: varint expected at byte {offset}")
    size = 1 << (data[offset] >> 6)
    if offset + size > len(data):
        raise BinaryHTTPError(f"truncated message: {size}-byte varint at byte {offset}")
    value = int.from_bytes(data[offset : offset + size], "big") & ((1 << (8 * size - 2)) - 1)
    return value, offset + size


def _check_fields(fields: Iterable[Sequence[str]], *, trailers: bool) -> tuple[Field, ...]:
    """Lower-case names and validate one field section (RFC 9292 section 3.6, RFC 9113 8.2.1)."""
    out: list[Field] = []
    seen_regular = False
    for item in fields:
        if len(item) != 2:
            raise BinaryHTTPError(f"a field must be a (name, value) pair, got {item!r}")
        name, value = str(item[0]).lower(), str(item[1])
        if name.startswith(":"):
            if name in _FORBIDDEN_PSEUDO or trailers or seen_regular or not _LOWER_TOKEN.fullmatch(name[1:]):
                raise BinaryHTTPError(f"pseudo-field {name!r} is not allowed here")
        else:
            if not _LOWER_TOKEN.fullmatch(name):
                raise BinaryHTTPError(f"invalid field name {name!r}")
            seen_regular = True
        if any(c in value for c in "\x00\r\n") or value != value.strip(" \t"):
            raise BinaryHTTPError(f"invalid value for field {name!r}: {value!r}")
        try:
            value.encode("latin-1")
        except UnicodeEncodeError as exc:
            raise BinaryHTTPError(f"field {name!r} has characters outside ISO-8859-1") from exc
        out.append((name, value))
    return tuple(out)


def _lines(fields: Sequence[Field]) -> bytes:
    parts = []
    for name, value in fields:
        n, v = name.encode("ascii"), value.encode("latin-1")
        parts += [encode_varint(len(n)), n, encode_varint(len(v)), v]
    return b"".join(parts)


def _section(fields: Sequence[Field], indeterminate: bool) -> bytes:
    body = _lines(fields)
    return body + b"\x00" if indeterminate else encode_varint(len(body)) + body


def _content(content: bytes, indeterminate: bool) -> bytes:
    if not indeterminate:
        return encode_varint(len(content)) + content
    return (encode_varint(len(content)) + content if content else b"") + b"\x00"


def _tail(
    headers: Sequence[Field],
    content: bytes,
    trailers: Sequence[Field],
    indeterminate: bool,
    truncate: bool,
    padding: int,
) -> bytes:
    """Header section, content, trailers, then padding; with ``truncate``, empty tail parts are omitted."""
    if padding < 0:
        raise BinaryHTTPError(f"padding must be >= 0, got {padding}")
    parts = [(not headers, _section(headers, indeterminate)), (not content, _content(content, indeterminate))]
    parts.append((not trailers, _section(trailers, indeterminate)))
    while truncate and parts and parts[-1][0]:
        parts.pop()
    return b"".join(p for _, p in parts) + bytes(padding)


class _Reader:
    """Cursor over a message; every read checks bounds and raises on truncation."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def varint(self) -> int:
        value, self.pos = decode_varint(self.data, self.pos)
        return value

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise BinaryHTTPError(f"truncated message: {what} needs {n} bytes at byte {self.pos}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def text(self, what: str) -> str:
        raw = self.take(self.varint(), what)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError as exc:
            raise BinaryHTTPError(f"{what} is not ASCII") from exc

    def field_line(self, name_len: int) -> Field:
        if name_len == 0:
            raise BinaryHTTPError("field name must not be empty")
        raw = self.take(name_len, "field name")
        name = raw.decode("latin-1")
        if name != name.lower():
            raise BinaryHTTPError(f"field name {name!r} must be lower case in binary HTTP")
        return name, self.take(self.varint(), "field value").decode("latin-1")

    def section(self, indeterminate: bool, *, trailers: bool) -> tuple[Field, ...]:
        fields: list[Field] = []
        if indeterminate:
            while (name_len := self.varint()) != 0:
                fields.append(self.field_line(name_len))
        else:
            sub = _Reader(self.take(self.varint(), "field section"))
            while not sub.at_end():
                fields.append(sub.field_line(sub.varint()))
        return _check_fields(fields, trailers=trailers)

    def content(self, indeterminate: bool) -> bytes:
        if not indeterminate:
            return self.take(self.varint(), "content")
        chunks = []
        while (size := self.varint()) != 0:
            chunks.append(self.take(size, "content chunk"))
        return b"".join(chunks)

    def tail(self, indeterminate: bool) -> tuple[tuple[Field, ...], bytes, tuple[Field, ...]]:
        # A message may end before any of these three parts: missing parts are empty (RFC 9292 3.8).
        headers = () if self.at_end() else self.section(indeterminate, trailers=False)
        content = b"" if self.at_end() else self.content(indeterminate)
        trailers = () if self.at_end() else self.section(indeterminate, trailers=True)
        rest = len(self.data) - self.pos
        if rest and self.data[self.pos :] != bytes(rest):  # compared at C speed: padding can be KiBs
            raise BinaryHTTPError("padding after the message must be zero bytes")
        return headers, content, trailers


def _framing(data: bytes) -> tuple[_Reader, int]:
    reader = _Reader(bytes(data))
    framing = reader.varint()
    if framing > 3:
        raise BinaryHTTPError(f"unknown framing indicator {framing}")
    return reader, framing


@dataclass(frozen=True)
class BinaryRequest:
    """An HTTP request in binary form.

    Parameters
    ----------
    method : str
        Request method, an HTTP token (``"GET"``, ``"POST"``).
    scheme, authority, path : str
        The ``:scheme``, ``:authority`` (empty when absent) and ``:path`` pseudo-header values.
    headers, trailers : sequence of (name, value)
        Field lines in order; names are lower-cased.
    content : bytes
        The request content.
    """

    method: str
    scheme: str = "https"
    authority: str = ""
    path: str = "/"
    headers: Sequence[Field] = ()
    content: bytes = b""
    trailers: Sequence[Field] = ()

    def __post_init__(self) -> None:
        if not _TOKEN.fullmatch(self.method):
            raise BinaryHTTPError(f"method must be an HTTP token, got {self.method!r}")
        for name in ("scheme", "authority", "path"):
            if not _VISIBLE_ASCII.fullmatch(getattr(self, name)):
                raise BinaryHTTPError(f"{name} must be visible ASCII, got {getattr(self, name)!r}")
        object.__setattr__(self, "headers", _check_fields(self.headers, trailers=False))
        object.__setattr__(self, "trailers", _check_fields(self.trailers, trailers=True))
        object.__setattr__(self, "content", bytes(self.content))

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        return next((v for n, v in self.headers if n == name.lower()), None)

    def encode(self, *, indeterminate: bool = False, truncate: bool = False, padding: int = 0) -> bytes:
        """Binary encoding; known-length (framing 0) unless ``indeterminate`` (framing 2)."""
        control = b"".join(
            encode_varint(len(v)) + v
            for v in (s.encode("ascii") for s in (self.method, self.scheme, self.authority, self.path))
        )
        tail = _tail(self.headers, self.content, self.trailers, indeterminate, truncate, padding)
        return encode_varint(2 if indeterminate else 0) + control + tail

    @classmethod
    def decode(cls, data: bytes) -> BinaryRequest:
        """Parse a binary request in either framing; raises :class:`BinaryHTTPError`."""
        reader, framing = _framing(data)
        if framing not in (0, 2):
            raise BinaryHTTPError(f"framing indicator {framing} is a response, expected a request")
        method, scheme = reader.text("method"), reader.text("scheme")
        authority, path = reader.text("authority"), reader.text("path")
        headers, content, trailers = reader.tail(framing == 2)
        return cls(method, scheme, authority, path, headers, content, trailers)


@dataclass(frozen=True)
class InformationalResponse:
    """An interim (1xx) response: status in ``[100, 199]`` and its header fields."""

    status: int
    headers: Sequence[Field] = ()

    def __post_init__(self) -> None:
        if not 100 <= self.status <= 199:
            raise BinaryHTTPError(f"informational status must be in [100, 199], got {self.status}")
        object.__setattr__(self, "headers", _check_fields(self.headers, trailers=False))


@dataclass(frozen=True)
class BinaryResponse:
    """An HTTP response in binary form.

    Parameters
    ----------
    status : int
        Final status code in ``[200, 599]``.
    headers, trailers : sequence of (name, value)
        Field lines in order; names are lower-cased.
    content : bytes
        The response content.
    informational : sequence of InformationalResponse
        Interim responses that preceded the final one.
    """

    status: int
    headers: Sequence[Field] = ()
    content: bytes = b""
    informational: Sequence[InformationalResponse] = field(default=())
    trailers: Sequence[Field] = ()

    def __post_init__(self) -> None:
        if not 200 <= self.status <= 599:
            raise BinaryHTTPError(f"final status must be in [200, 599], got {self.status}")
        object.__setattr__(self, "headers", _check_fields(self.headers, trailers=False))
        object.__setattr__(self, "trailers", _check_fields(self.trailers, trailers=True))
        object.__setattr__(self, "content", bytes(self.content))
        object.__setattr__(self, "informational", tuple(self.informational))

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        return next((v for n, v in self.headers if n == name.lower()), None)

    def encode(self, *, indeterminate: bool = False, truncate: bool = False, padding: int = 0) -> bytes:
        """Binary encoding; known-length (framing 1) unless ``indeterminate`` (framing 3)."""
        interim = b"".join(
            encode_varint(i.status) + _section(i.headers, indeterminate) for i in self.informational
        )
        tail = _tail(self.headers, self.content, self.trailers, indeterminate, truncate, padding)
        return encode_varint(3 if indeterminate else 1) + interim + encode_varint(self.status) + tail

    @classmethod
    def decode(cls, data: bytes) -> BinaryResponse:
        """Parse a binary response in either framing; raises :class:`BinaryHTTPError`."""
        reader, framing = _framing(data)
        if framing not in (1, 3):
            raise BinaryHTTPError(f"framing indicator {framing} is a request, expected a response")
        indeterminate = framing == 3
        interim: list[InformationalResponse] = []
        while True:
            status = reader.varint()
            if 100 <= status <= 199:
                # An interim response's header section is not optional: a final status must follow.
                interim.append(InformationalResponse(status, reader.section(indeterminate, trailers=False)))
            elif 200 <= status <= 599:
                break
            else:
                raise BinaryHTTPError(f"status code must be in [100, 599], got {status}")
        headers, content, trailers = reader.tail(indeterminate)
        return cls(status, headers, content, interim, trailers)


def decode_message(data: bytes) -> BinaryRequest | BinaryResponse:
    """Parse a binary request or response, chosen by its framing indicator."""
    _, framing = _framing(data)
    return BinaryRequest.decode(data) if framing in (0, 2) else BinaryResponse.decode(data)
