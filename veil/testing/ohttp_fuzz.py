"""Mutation fuzzing of the channel's decoders: each must return a value or raise its own typed error.

Inputs start from *valid* encodings (real BHTTP requests and responses, real encapsulated requests and
responses, real key-configuration lists, signed key-configuration responses with their RFC 9421
``Signature-Input``/``Signature`` and RFC 9530 ``Content-Digest`` fields, the wire codec's base64
float32 form) and are mutated the way AFL's deterministic and havoc stages
do (Zalewski, "american fuzzy lop" technical details, section 3): bit flips, bytes set to interesting
values, insertions, deletions, truncation, duplicated chunks, and QUIC varints (RFC 9000 section 16)
planted with huge or boundary values, so length fields lie about what follows. A mutation is a plain
``(kind, position, value)`` triple of integers: hypothesis draws and shrinks them in the tests, a
``random.Random`` draws them in the long run, and :func:`mutate` applies them the same way in both.

:class:`EdgeTracer` gives the long run its coverage guidance (``sys.settrace`` over the decoder
modules' source files, recording line-to-line edges; atheris' libFuzzer counters are not available
here): an input that reaches a new edge joins the corpus and is mutated further.
"""

from __future__ import annotations

import base64
import json
import struct
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from random import Random
from types import FrameType
from typing import Any

from veil.client_sdk import wire
from veil.client_sdk.ohttp import bhttp, hpke, keys, keysig, ohttp
from veil.client_sdk.ohttp.bhttp import BinaryHTTPError, BinaryRequest, BinaryResponse, encode_varint
from veil.client_sdk.ohttp.errors import OHTTPError
from veil.client_sdk.ohttp.hpke import KEM_MLKEM768_X25519
from veil.client_sdk.ohttp.keys import GatewayKeyPair, KeyConfig, decode_key_configs, encode_key_configs
from veil.client_sdk.ohttp.ohttp import decapsulate_request, encapsulate_request

__all__ = [
    "DECODER_FILES",
    "MUTATIONS",
    "DecoderTarget",
    "EdgeTracer",
    "UnexpectedDecoderError",
    "decoder_targets",
    "mutate",
    "phone_requests",
    "random_mutations",
    "run_target",
]

MUTATIONS = ("flip", "set", "insert", "delete", "truncate", "duplicate", "varint")
Mutation = tuple[int, int, int]
# Varint and length boundaries, plus the latin-1 superscript digits, which str.isdigit() accepts and
# int() refuses (a trap for header parsers that check before they convert).
_INTERESTING = (0x00, 0x01, 0x3F, 0x40, 0x7F, 0x80, 0xBF, 0xC0, 0xFE, 0xFF, 0xB2, 0xB3, 0xB9)
_VARINTS = (0, 1, 63, 64, 16383, 16384, 2**30 - 1, 2**30, 2**62 - 1)
_MAX_INPUT = 1 << 16
_TIME_LIMIT_S = 1.0
DECODER_FILES = frozenset(str(Path(m.__file__).resolve()) for m in (bhttp, hpke, keys, keysig, ohttp, wire))


def mutate(data: bytes, mutations: Iterable[Mutation], max_size: int = _MAX_INPUT) -> bytes:
    """Apply ``(kind, position, value)`` mutations in order; positions and values wrap to fit.

    >>> mutate(b"abc", [(0, 0, 0), (4, 2, 0)])  # flip bit 0 of byte 0, then truncate at 2
    b'`b'
    """
    buf = bytearray(data)
    for kind, position, value in mutations:
        name = MUTATIONS[kind % len(MUTATIONS)]
        at = position % (len(buf) + 1)
        if name in ("flip", "set") and not buf:
            continue
        if name == "flip":
            buf[at % len(buf)] ^= 1 << (value % 8)
        elif name == "set":
            buf[at % len(buf)] = _INTERESTING[value % len(_INTERESTING)] if value & 0x100 else value & 0xFF
        elif name == "insert":
            buf[at:at] = bytes([value & 0xFF]) * (1 + (value >> 8) % 32)
        elif name == "delete":
            del buf[at : at + 1 + value % 32]
        elif name == "truncate":
            del buf[at:]
        elif name == "duplicate":
            buf[at:at] = buf[at : at + 1 + value % 64]
        else:  # a varint on 1, 2, 4 or 8 bytes overwriting what was there
            raw = encode_varint(_VARINTS[value % len(_VARINTS)])
            width = max(len(raw), 1 << ((value >> 4) % 4))
            prefix = {1: 0x00, 2: 0x40, 4: 0x80, 8: 0xC0}[width]
            number = int.from_bytes(raw, "big") & ((1 << (8 * len(raw) - 2)) - 1)
            buf[at : at + width] = (number | (prefix << (8 * width - 8))).to_bytes(width, "big")
        if len(buf) > max_size:
            del buf[max_size:]
    return bytes(buf)


def random_mutations(rng: Random, most: int = 6) -> list[Mutation]:
    """1 to ``most`` mutations, drawn from ``rng``."""
    return [
        (rng.randrange(len(MUTATIONS)), rng.randrange(1 << 16), rng.randrange(1 << 12))
        for _ in range(rng.randint(1, most))
    ]


class UnexpectedDecoderError(AssertionError):
    """A decoder raised something other than its typed errors, or took too long."""

    def __init__(self, target: str, data: bytes, problem: str) -> None:
        super().__init__(f"{target}: {problem} on input {data.hex()}")
        self.target = target
        self.data = data
        self.problem = problem


@dataclass(frozen=True)
class DecoderTarget:
    """One decoder under test: its entry point, the errors it may raise, and valid inputs to start from."""

    name: str
    decode: Callable[[bytes], object]
    expected: tuple[type[BaseException], ...]
    seeds: tuple[bytes, ...]


def run_target(target: DecoderTarget, data: bytes, time_limit_s: float = _TIME_LIMIT_S) -> str:
    """Decode ``data``; returns ``"ok"`` or the name of the typed error raised.

    Raises
    ------
    UnexpectedDecoderError
        Any other exception, or a decode slower than ``time_limit_s``.
    """
    started = time.perf_counter()
    try:
        target.decode(data)
        outcome = "ok"
    except target.expected as exc:
        outcome = type(exc).__name__
    except Exception as exc:
        raise UnexpectedDecoderError(target.name, data, f"{type(exc).__name__}: {exc}") from exc
    elapsed = time.perf_counter() - started
    if elapsed > time_limit_s:
        raise UnexpectedDecoderError(target.name, data, f"took {elapsed:.2f} s (limit {time_limit_s} s)")
    return outcome


def _embedding_b64(size: int) -> str:
    return base64.b64encode(struct.pack(f"<{size}f", *(0.01 * i for i in range(size)))).decode()


def phone_requests(
    embedding_size: int = 64, idempotency_key: str = "fuzz-seed-key-0000"
) -> list[BinaryRequest]:
    """Inner requests as a phone sends them (RFC 9292 section 3): one per phone route."""
    emb = [[0.01 * i for i in range(embedding_size)]]
    json_type = [("content-type", "application/json")]

    def post(path: str, body: dict[str, Any], extra: Sequence[tuple[str, str]] = ()) -> BinaryRequest:
        content = json.dumps(body, separators=(",", ":")).encode()
        return BinaryRequest("POST", "https", "veil.invalid", path, [*json_type, *extra], content)

    upload = {"task": "next_word", "text": "a cup of", "label": "tea", "embedding": emb}
    upload_b64 = {**upload, "embedding": None, "embedding_b64": _embedding_b64(embedding_size)}
    chat = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return [
        BinaryRequest("GET", "https", "veil.invalid", "/v1/models"),
        BinaryRequest("GET", "https", "veil.invalid", "/v1/codebook"),
        post("/v1/uploads", upload, [("idempotency-key", idempotency_key)]),
        post("/v1/uploads", upload_b64, [("idempotency-key", idempotency_key + "b")]),
        post("/v1/embedding-gradients", upload),
        post("/v1/chat/completions", {**chat, "user_embedding": emb}),
    ]


def _responses() -> list[BinaryResponse]:
    body = b'{"id":"0b5c","status":"created"}'
    return [
        BinaryResponse(200, [("content-type", "application/json")], b'{"data":[]}'),
        BinaryResponse(201, [("content-type", "application/json"), ("cache-control", "no-store")], body),
        BinaryResponse(
            400, [("content-type", "application/json")], b'{"error":{"type":"x"}}', trailers=[("x", "y")]
        ),
        BinaryResponse(204, informational=[bhttp.InformationalResponse(103, [("link", "</a>")])]),
    ]


def _encodings(messages: Iterable[BinaryRequest | BinaryResponse]) -> list[bytes]:
    """Every framing the decoders accept: known-length, indeterminate, truncated, padded."""
    out = []
    for m in messages:
        out += [m.encode(), m.encode(indeterminate=True), m.encode(truncate=True), m.encode(padding=7)]
        out.append(m.encode(indeterminate=True, truncate=True, padding=3))
    return out


def decoder_targets(embedding_size: int = 64) -> list[DecoderTarget]:
    """The public decoders, with real keys and valid seeds (fresh keys and encapsulations each call)."""
    x25519 = GatewayKeyPair.generate(1)
    hybrid = GatewayKeyPair.generate(2, KEM_MLKEM768_X25519)
    many = KeyConfig(7, x25519.kem_id, x25519.public_key, [(1, 1), (1, 3), (0x9999, 2)])
    gateway_keys = {1: x25519, 2: hybrid}
    requests, responses = _encodings(phone_requests(embedding_size)), _encodings(_responses())
    sealed = [encapsulate_request(k.config, r)[0] for k in (x25519, hybrid) for r in requests[::5]]
    key_lists = [
        encode_key_configs([x25519.config]),
        encode_key_configs([hybrid.config, x25519.config]),
        encode_key_configs([many]),
    ]

    def gateway_open(data: bytes) -> BinaryRequest:  # what the gateway does before dispatch
        plaintext, _ = decapsulate_request(gateway_keys, data)
        return BinaryRequest.decode(plaintext)

    client_context = {}
    sealed_responses = []
    for key in (x25519, hybrid):
        request, client = encapsulate_request(key.config, requests[0])
        _, server = decapsulate_request(gateway_keys, request)
        client_context[key.key_id] = client
        sealed_responses += [bytes([key.key_id]) + server.encapsulate_response(r) for r in responses[::3]]

    # An input here is one byte naming the request's key (so its client context: X25519 or the hybrid),
    # then the encapsulated response; mutations reach both.
    def client_open(data: bytes) -> BinaryResponse:  # what the phone does with the relay's answer
        context = client_context.get(data[0] if data else 1, client_context[1])
        return BinaryResponse.decode(context.decapsulate_response(data[1:]))

    def client_seal(data: bytes) -> list[bytes]:  # what the phone does with fetched key configurations
        return [
            encapsulate_request(c, requests[0])[0]
            for c in decode_key_configs(data)
            if c.supported_algorithms()
        ]

    typed = (OHTTPError, BinaryHTTPError)
    signed, check_signed = _signed_key_lists(key_lists)
    # The wire codec's base64 form (embedding_b64 into the cloud, gradient_b64 back to the phone).
    f32 = tuple(_embedding_b64(size).encode() for size in (16, embedding_size))

    def wire_decode(data: bytes) -> object:
        text = data.decode("latin-1")
        return wire.decode_f32(text, (1, 16) if len(text) <= wire.b64_length(16) else (1, embedding_size))

    return [
        DecoderTarget("BinaryRequest.decode", BinaryRequest.decode, (BinaryHTTPError,), tuple(requests)),
        DecoderTarget("BinaryResponse.decode", BinaryResponse.decode, (BinaryHTTPError,), tuple(responses)),
        DecoderTarget(
            "decode_message", bhttp.decode_message, (BinaryHTTPError,), tuple(requests + responses)
        ),
        DecoderTarget("decode_key_configs", decode_key_configs, (OHTTPError,), tuple(key_lists)),
        DecoderTarget(
            "decode_key_configs(strict)",
            lambda d: decode_key_configs(d, skip_unsupported=False),
            (OHTTPError,),
            tuple(key_lists),
        ),
        DecoderTarget("encapsulate_request(decoded keys)", client_seal, (OHTTPError,), tuple(key_lists)),
        DecoderTarget("verify_key_configs(pinned)", lambda d: check_signed(d, True), (OHTTPError,), signed),
        DecoderTarget(
            "verify_key_configs(first use)", lambda d: check_signed(d, False), (OHTTPError,), signed
        ),
        DecoderTarget("wire.decode_f32", wire_decode, (wire.WireFormatError,), f32),
        DecoderTarget("decapsulate_request", gateway_open, typed, tuple(sealed)),
        DecoderTarget("decapsulate_response", client_open, typed, tuple(sealed_responses)),
    ]


def _signed_key_lists(lists: Sequence[bytes]) -> tuple[tuple[bytes, ...], Callable[[bytes, bool], object]]:
    """Signed key configuration responses (RFC 9421 over RFC 9530) as one blob each, and their checker.

    A blob is the header lines ``name: value\\n``, an empty line, then the body, so that mutations reach
    the structured fields (``signature-input``, ``signature``, ``content-digest``) and the body alike.
    """
    signing_key = keysig.signing_key_from_seed(bytes(range(32)))
    public_key, created = keysig.public_key_bytes(signing_key), 1_800_000_000
    blobs = []
    for body in lists:
        headers = keysig.sign_key_configs(body, signing_key, created=created)
        lines = "".join(f"{n}: {v}\n" for n, v in headers.items()).encode("latin-1")
        blobs.append(lines + b"\n" + body)

    def check(blob: bytes, pinned: bool) -> object:
        head, _, body = blob.partition(b"\n\n")
        fields = [line.partition(": ") for line in head.decode("latin-1").split("\n")]
        lines = [(n, v) for n, _, v in fields]
        return keysig.verify_key_configs(
            200, lines, body, public_key=public_key if pinned else None, now=created + 60
        )

    return tuple(blobs), check


class EdgeTracer:
    """Line-to-line edges executed in the decoder modules, for coverage-guided corpus growth.

    ``with tracer: decode(data)`` records the edges one call reaches in :attr:`last`; :meth:`novel`
    says whether any was never seen before (and remembers them).
    """

    def __init__(self, files: frozenset[str] = DECODER_FILES) -> None:
        self.files = files
        self.seen: set[tuple[int, int, int]] = set()
        self.last: set[tuple[int, int, int]] = set()
        self._prev: dict[int, int] = {}

    def _global(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "call" and frame.f_code.co_filename in self.files:
            self._prev[id(frame)] = -1  # a new frame may reuse a finished one's address
            return self._local
        return None

    def _local(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            code = id(frame.f_code)
            self.last.add((code, self._prev.get(id(frame), -1), frame.f_lineno))
            self._prev[id(frame)] = frame.f_lineno
        return self._local

    def __enter__(self) -> EdgeTracer:
        self.last = set()
        self._prev = {}
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.settrace(None)

    def novel(self) -> bool:
        """Whether the last traced call reached an edge not seen before."""
        new = self.last - self.seen
        self.seen |= new
        return bool(new)
