"""Fuzzed bodies POSTed to a real gateway's ``/ohttp``: never a 5xx, outside or inside the encapsulation.

Four kinds of body, each aimed at a different layer (RFC 9458 section 5):

* ``random``: random bytes, refused before any decryption;
* ``mutated_outer``: a valid encapsulated request, then mutated (header, ``enc``, ciphertext, length);
* ``mutated_inner``: a mutated binary HTTP request, correctly encapsulated, so the gateway decrypts it
  and its BHTTP decoder meets the damage (RFC 9292 section 3);
* ``mutated_json``: a well-formed phone request whose JSON content is mutated, correctly encapsulated,
  so the routes behind the gateway meet it.

Outer answers must be below 500 and, when not 200, carry Veil's JSON error. A 200 is opened with the
request's context and the inner response must also be below 500: the gateway encapsulates a crash in
the route as an inner 500 (RFC 9458 section 5.2), which would hide it from a check on outer statuses.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from random import Random

import httpx

from veil.client_sdk.ohttp.bhttp import BinaryHTTPError, BinaryRequest, BinaryResponse
from veil.client_sdk.ohttp.errors import OHTTPError
from veil.client_sdk.ohttp.keys import KeyConfig
from veil.client_sdk.ohttp.ohttp import REQUEST_MEDIA_TYPE, ClientResponseContext, encapsulate_request
from veil.cloud_service.relay_auth import RelayAuthError, relay_auth_header, verify_relay_auth
from veil.testing.api_fuzz import error_shape_problem
from veil.testing.ohttp_fuzz import DecoderTarget, mutate, phone_requests, random_mutations

__all__ = [
    "AUTH_KIND",
    "BODY_KINDS",
    "GatewayFinding",
    "GatewayFuzzReport",
    "fuzz_gateway",
    "fuzzed_body",
    "relay_auth_target",
]

BODY_KINDS = ("random", "mutated_outer", "mutated_inner", "mutated_json")
AUTH_KIND = "mutated_auth"


@dataclass(frozen=True)
class GatewayFinding:
    """A body that made the gateway (or the route behind it) fail; ``body`` replays it."""

    kind: str
    status: int
    inner_status: int | None
    problem: str
    body: bytes


@dataclass
class GatewayFuzzReport:
    """Counts of one run: bodies by kind, outer statuses, inner statuses, and the findings."""

    sent: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    inner_statuses: Counter[int] = field(default_factory=Counter)
    outer_errors: Counter[str] = field(default_factory=Counter)
    findings: list[GatewayFinding] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def server_errors(self) -> int:
        """Outer and inner responses with a 5xx status."""
        outer = sum(n for s, n in self.statuses.items() if s >= 500)
        return outer + sum(n for s, n in self.inner_statuses.items() if s >= 500)

    def summary(self) -> str:
        """A few lines for a terminal."""
        rate = self.sent / max(self.seconds, 1e-9)
        lines = [
            f"bodies POSTed to /ohttp: {self.sent} in {self.seconds:.1f} s ({rate:.0f}/s)",
            "by kind: " + ", ".join(f"{k}: {n}" for k, n in sorted(self.kinds.items())),
            "outer statuses: " + ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items())),
            "outer error types: " + ", ".join(f"{t}: {n}" for t, n in sorted(self.outer_errors.items())),
            "inner statuses: " + ", ".join(f"{s}: {n}" for s, n in sorted(self.inner_statuses.items())),
            f"5xx (outer + inner): {self.server_errors}; findings: {len(self.findings)}",
        ]
        for f in self.findings[:20]:
            lines.append(
                f"FINDING {f.kind} -> {f.status}/{f.inner_status}: {f.problem}\n  body={f.body.hex()}"
            )
        return "\n".join(lines)


# JSON values that break assumptions routes make about a field's type, range or size.
_ODD_VALUES: tuple[object, ...] = (
    None,
    True,
    0,
    -1,
    2**63,
    -(2**63) - 1,
    1e308,
    -1e-308,
    "",
    "x" * 70_000,
    "\u0000",
    "\ud800",
    "é" * 9,
    [],
    [[]],
    [[1e39]],
    [[0.0] * 65],
    [[0.0] * 64] * 2,
    {},
    {"a": [1]},
    [0.0] * 64,
    "AAAA",
    "!!!!",
    "=",
)


def _structured(rng: Random, content: bytes) -> bytes:
    """Replace, drop or add one top-level JSON field (the body stays valid JSON)."""
    body = json.loads(content)
    choice = rng.random()
    b64 = [k for k, v in body.items() if k.endswith("_b64") and isinstance(v, str)]
    if b64 and choice < 0.2:
        # the right length, but characters that decode to another byte count (no '=' padding)
        key = rng.choice(b64)
        body[key] = rng.choice("A/+9") * len(body[key])
    elif choice < 0.7:
        body[rng.choice(sorted(body))] = rng.choice(_ODD_VALUES)
    elif choice < 0.85:
        body.pop(rng.choice(sorted(body)))
    else:
        body[rng.choice(("encoding", "stream", "n", "extra", "logprobs"))] = rng.choice(_ODD_VALUES)
    return json.dumps(body).encode()


def relay_auth_target() -> DecoderTarget:
    """The gateway's check of the relay's ``Veil-Relay-Auth`` header, as a decoder under fuzz.

    An input is the header value (latin-1, as HTTP carries it), a newline, then the body; seeds are
    valid headers for real encapsulated requests at a fixed clock, so mutations hit ``t=``, ``mac=``,
    the separators and the body alike. Only :class:`RelayAuthError` may come out.
    """
    secret, now = bytes(range(32)), 1_800_000_000
    # Short bodies: the header, where the parsing is, takes most of each input.
    bodies = [b"", b"\x00\x20\x00\x01\x00\x01" + bytes(range(34)), bytes(range(7)) * 20]
    seeds = tuple(relay_auth_header(secret, b, now).encode("latin-1") + b"\n" + b for b in bodies)

    def check(data: bytes) -> None:
        header, _, body = data.partition(b"\n")
        verify_relay_auth(secret, header.decode("latin-1"), body, now=now)

    return DecoderTarget("verify_relay_auth", check, (RelayAuthError,), seeds)


def _mutated_json(rng: Random, request: BinaryRequest) -> BinaryRequest:
    if rng.random() < 0.5:
        content = _structured(rng, request.content)
    else:
        content = mutate(request.content, random_mutations(rng, 2))
    headers = [(n, v) for n, v in request.headers if n != "idempotency-key"]
    if request.header("idempotency-key") is not None:
        headers.append(("idempotency-key", secrets.token_urlsafe(18)))  # fresh, so uploads are stored
    return BinaryRequest(request.method, request.scheme, request.authority, request.path, headers, content)


def fuzzed_body(
    rng: Random, kind: str, config: KeyConfig, embedding_size: int = 64
) -> tuple[bytes, ClientResponseContext | None]:
    """One body of ``kind`` (see :data:`BODY_KINDS`) and, when it is a valid encapsulation, its context."""
    requests = phone_requests(embedding_size, secrets.token_urlsafe(18))
    if kind == "random":
        return rng.randbytes(rng.choice((0, 1, 7, 8, 40, 41, 200, rng.randrange(4096)))), None
    seed = rng.choice(requests)
    if kind == "mutated_outer":
        sealed, context = encapsulate_request(config, seed.encode())
        return mutate(sealed, random_mutations(rng, 4)), context  # opens only if the mutation was a no-op
    if kind == "mutated_inner":
        inner = mutate(seed.encode(indeterminate=rng.random() < 0.3), random_mutations(rng, 4))
    elif kind == "mutated_json":
        posts = [r for r in requests if r.content]
        inner = _mutated_json(rng, rng.choice(posts)).encode()
    else:
        raise ValueError(f"kind must be one of {BODY_KINDS}, got {kind!r}")
    return encapsulate_request(config, inner)


def fuzz_gateway(
    url: str,
    config: KeyConfig,
    count: int,
    *,
    seed: int = 0,
    embedding_size: int = 64,
    relay_secret: bytes | None = None,
    deadline_s: float | None = None,
    timeout_s: float = 30.0,
    progress: Callable[[GatewayFuzzReport], None] | None = None,
) -> GatewayFuzzReport:
    """POST ``count`` fuzzed bodies (kinds in turn) to ``url`` (a gateway's or a relay's ``/ohttp``).

    With ``relay_secret`` (the gateway's ``relay_secret``), every POST carries the relay's
    ``Veil-Relay-Auth`` for its body, as the relay sends it, and a fifth kind, ``mutated_auth``, sends a
    valid encapsulation under a mutated header, which must be refused (401), never a 5xx. ``deadline_s`` stops early after that many seconds; a POST unanswered after ``timeout_s`` is a
    finding; ``progress`` is called every 1,000 bodies.
    """
    rng = Random(seed)
    report = GatewayFuzzReport()
    started = time.perf_counter()
    kinds = BODY_KINDS if relay_secret is None else (*BODY_KINDS, AUTH_KIND)
    with httpx.Client(timeout=timeout_s, trust_env=False) as client:
        for i in range(count):
            if deadline_s is not None and time.perf_counter() - started > deadline_s:
                break
            kind = kinds[i % len(kinds)]
            body, context = fuzzed_body(
                rng, "mutated_json" if kind == AUTH_KIND else kind, config, embedding_size
            )
            headers = [(b"content-type", REQUEST_MEDIA_TYPE.encode())]
            if relay_secret is not None:
                headers.append((b"veil-relay-auth", _relay_auth(rng, relay_secret, body, kind == AUTH_KIND)))
            report.sent += 1
            report.kinds[kind] += 1
            try:
                response = client.post(url, content=body, headers=headers)
            except httpx.TransportError as exc:  # a hang or a dropped connection is a finding too
                report.findings.append(GatewayFinding(kind, 0, None, f"no response: {exc!r}", body))
                continue
            _check(report, kind, body, response, context)
            if progress is not None and report.sent % 1000 == 0:
                report.seconds = time.perf_counter() - started
                progress(report)
    report.seconds = time.perf_counter() - started
    return report


def _relay_auth(rng: Random, secret: bytes, body: bytes, mutated: bool) -> bytes:
    value = relay_auth_header(secret, body).encode("latin-1")
    if not mutated:
        return value
    value = mutate(value, random_mutations(rng, 3), max_size=400)
    # Control bytes are not field-value characters (RFC 9110 section 5.5): the server's HTTP parser
    # refuses them before the app sees the request, so they would test the parser, not the gateway.
    return value.translate(_CONTROLS).strip(b" \t") or b"x"


_CONTROLS = bytes.maketrans(bytes([*range(0x20), 0x7F]), b"?" * 0x21)


def _check(
    report: GatewayFuzzReport,
    kind: str,
    body: bytes,
    response: httpx.Response,
    context: ClientResponseContext | None,
) -> None:
    status = response.status_code
    report.statuses[status] += 1
    if status != 200:
        problem = error_shape_problem(status, response.headers.get("content-type", ""), response.content)
        if status >= 500:
            problem = f"outer {status}: {response.content[:300]!r}"
        if problem is None:
            report.outer_errors[str(response.json()["error"].get("type"))] += 1
        else:
            report.findings.append(GatewayFinding(kind, status, None, problem, body))
        return
    if context is None:
        report.findings.append(
            GatewayFinding(kind, status, None, "a body that is not ours was accepted", body)
        )
        return
    try:
        inner = BinaryResponse.decode(context.decapsulate_response(response.content))
    except (OHTTPError, BinaryHTTPError) as exc:
        report.findings.append(GatewayFinding(kind, status, None, f"response does not open: {exc}", body))
        return
    report.inner_statuses[inner.status] += 1
    if inner.status >= 500:
        problem = f"inner {inner.status}: {inner.content[:300]!r}"
        report.findings.append(GatewayFinding(kind, status, inner.status, problem, body))
