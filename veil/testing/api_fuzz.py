"""Schemathesis against the served OpenAPI document: every operation, no 5xx, every error in Veil's shape.

:func:`fuzz_api` loads ``/openapi.json`` from a running server, and for each operation draws cases from
schemathesis' hypothesis strategy (OpenAPI 3.1 positive data, then negative data that violates the
schema), sends them over HTTP and records the status. Half the cases are *steered* towards the code
behind validation: the served model's id, a well-formed ``Idempotency-Key`` and an embedding of the
served shape, so that uploads are stored and completions generated, not only refused. Every request
carries the API key unless the draw leaves it out (then a 401 is expected).

``POST /ohttp`` gets random bytes and real encapsulated requests, mutated (a media-type strategy for
``message/ohttp-req``). A finding is a 5xx, a dropped connection or timeout, or a 4xx whose body is not
``{"error": {"type", "message", "param", "code"}}``; each comes with a curl command that replays it.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from veil.client_sdk.ohttp import decode_key_configs, encapsulate_request
from veil.testing.ohttp_fuzz import MUTATIONS, mutate, phone_requests

__all__ = ["APIFinding", "APIFuzzReport", "error_shape_problem", "fuzz_api"]

_ERROR_KEYS = frozenset({"type", "message", "param", "code"})
_KEY_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


@dataclass(frozen=True)
class APIFinding:
    """One failing request: what went wrong and a command that sends it again."""

    operation: str
    status: int | None
    problem: str
    reproduce: str


@dataclass
class APIFuzzReport:
    """Counts of one fuzzing run (statuses by code, requests by operation) and its findings."""

    requests: int = 0
    unsendable: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    by_operation: Counter[str] = field(default_factory=Counter)
    findings: list[APIFinding] = field(default_factory=list)
    nothing_to_negate: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def server_errors(self) -> int:
        """Responses with a 5xx status."""
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def summary(self) -> str:
        """A few lines for a terminal: totals, the status histogram, the findings."""
        lines = [
            f"requests sent: {self.requests} in {self.seconds:.1f} s "
            f"({self.requests / max(self.seconds, 1e-9):.0f}/s); not sendable by the client: {self.unsendable}",
            "status histogram: " + ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items())),
            "per operation: " + ", ".join(f"{op}: {n}" for op, n in sorted(self.by_operation.items())),
            f"5xx responses: {self.server_errors}; findings: {len(self.findings)}",
        ]
        for f in self.findings:
            lines.append(f"FINDING {f.operation} -> {f.status}: {f.problem}\n  {f.reproduce}")
        return "\n".join(lines)


def error_shape_problem(status: int, content_type: str, content: bytes) -> str | None:
    """Why a 4xx/5xx body is not Veil's JSON error, or ``None`` when it is (RFC 9110 section 15.5)."""
    if status < 400:
        return None
    if content_type.split(";")[0].strip().lower() != "application/json":
        return f"error body has content-type {content_type!r}, not application/json"
    try:
        body = json.loads(content)
    except ValueError:
        return "error body is not JSON"
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not error.keys() >= _ERROR_KEYS:
        return f"error body lacks error.{{type,message,param,code}}: {content[:200]!r}"
    if not isinstance(error["type"], str) or not isinstance(error["message"], str):
        return f"error.type and error.message must be strings: {content[:200]!r}"
    return None


def _steer(case: Any, draw: Callable[[Any], Any], served_model: str, embedding_size: int) -> None:
    """Move a case past validation: the served model, a valid idempotency key, an embedding that fits,
    candidate labels the tiny model knows, and (half the time) no codebook version."""
    # lazy: schemathesis and hypothesis are dev dependencies, needed only to fuzz
    from hypothesis import strategies as st

    body = case.body if isinstance(case.body, dict) else None
    if body is not None and "model" in body:
        body["model"] = served_model
    if body is not None and any(k in body for k in ("embedding", "user_embedding")):
        name = "embedding" if "embedding" in body else "user_embedding"
        finite = st.floats(-4, 4, allow_nan=False, width=32)
        body[name] = [draw(st.lists(finite, min_size=embedding_size, max_size=embedding_size))]
        body.pop(f"{name}_b64", None)
    if body is not None and "max_tokens" in body:
        body["max_tokens"] = draw(st.integers(1, 4))  # keep generation on the tiny model short
        body.pop("max_completion_tokens", None)
    if body is not None and "codebook_version" in body and draw(st.booleans()):
        del body["codebook_version"]  # none is published: a version stops the request at its first check
    if body is not None and case.operation.path == "/v1/label-losses":
        words = st.sampled_from(["tea", "mat", "dog", "moon", "the"])
        body["labels"] = draw(st.lists(words, min_size=1, max_size=5, unique=True))
    if case.operation.path == "/v1/uploads":
        key = draw(st.text(_KEY_ALPHABET, min_size=16, max_size=32))
        case.headers = {**(case.headers or {}), "idempotency-key": key}


def fuzz_api(
    base_url: str,
    *,
    api_key: str,
    served_model: str,
    embedding_size: int,
    examples_per_operation: int,
    modes: Sequence[str] = ("positive", "negative"),
    seed: int = 0,
    timeout_s: float = 60.0,
    exclude_paths: Sequence[str] = (),
    log: Callable[[str], None] | None = None,
) -> APIFuzzReport:
    """Fuzz every operation of the server at ``base_url``; returns the counts and the findings.

    Parameters
    ----------
    base_url : str
        The running API (``/openapi.json`` is read from it).
    api_key : str
        Sent as ``Authorization: Bearer <key>`` on most cases.
    served_model : str
        The served model's id, for steered cases.
    embedding_size : int
        ``n_tokens * hidden`` of the served model's user embedding, for steered cases.
    examples_per_operation : int
        Cases drawn per operation and per generation mode.
    modes : sequence of str
        Schemathesis generation modes: ``"positive"`` (fits the schema) and/or ``"negative"``.
    seed : int
        Hypothesis seed: the same seed and server draw the same cases.
    timeout_s : float
        Per-request timeout; a request that exceeds it is a finding.
    exclude_paths : sequence of str
        Operation paths not to fuzz.
    log : callable, optional
        Receives a progress line after each operation.
    """
    # lazy: schemathesis and hypothesis are dev dependencies, needed only to fuzz
    import requests
    import schemathesis
    from schemathesis import GenerationMode

    _register_ohttp_bodies(base_url)
    schema = schemathesis.openapi.from_url(base_url.rstrip("/") + "/openapi.json")
    run = _Run(
        base_url, api_key, served_model, embedding_size, timeout_s, requests.Session(), APIFuzzReport()
    )
    started = time.perf_counter()
    operations = [r.ok() for r in schema.get_all_operations()]
    for mode in modes:
        for operation in operations:
            if operation.path in exclude_paths:
                continue
            label = f"{operation.method.upper()} {operation.path}"
            run.operation(
                label,
                operation.as_strategy(generation_mode=GenerationMode(mode)),
                examples_per_operation,
                seed,
            )
            if log is not None:
                log(
                    f"{mode:8s} {label:32s} {run.report.by_operation[label]:6d} cases, {run.report.requests} sent"
                )
    run.session.close()
    run.report.seconds = time.perf_counter() - started
    return run.report


@dataclass
class _Run:
    base_url: str
    api_key: str
    served_model: str
    embedding_size: int
    timeout_s: float
    session: Any  # requests.Session
    report: APIFuzzReport

    def operation(self, label: str, strategy: Any, examples: int, seed: int) -> None:
        """Draw ``examples`` cases from ``strategy`` (seeded) and send each one."""
        # lazy: schemathesis and hypothesis are dev dependencies, needed only to fuzz
        from hypothesis import HealthCheck, Phase, Verbosity, given, settings
        from hypothesis import seed as hypothesis_seed
        from hypothesis import strategies as st
        from hypothesis.errors import Unsatisfiable

        @hypothesis_seed(seed)
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
            verbosity=Verbosity.quiet,
        )
        @given(case=strategy, data=st.data())
        def run(case: Any, data: st.DataObject) -> None:
            if data.draw(st.booleans(), label="steer"):
                _steer(case, data.draw, self.served_model, self.embedding_size)
            with_key = data.draw(st.integers(0, 15), label="auth") != 0
            self.send(label, case, {"Authorization": f"Bearer {self.api_key}"} if with_key else {})

        try:
            run()
        except Unsatisfiable:
            self.report.nothing_to_negate.append(label)  # no parameter or body to break

    def send(self, label: str, case: Any, headers: dict[str, str]) -> None:
        # lazy: schemathesis and hypothesis are dev dependencies, needed only to fuzz
        import requests

        report = self.report
        report.by_operation[label] += 1
        try:
            response = case.call(
                base_url=self.base_url, session=self.session, headers=headers, timeout=self.timeout_s
            )
        except (requests.exceptions.InvalidHeader, requests.exceptions.InvalidURL, UnicodeError):
            report.unsendable += 1  # refused by the client library, never reached the server
            return
        except requests.exceptions.RequestException as exc:
            problem = f"no response: {type(exc).__name__}: {exc}"
            report.findings.append(APIFinding(label, None, problem, _curl(case, headers, self.base_url)))
            return
        report.requests += 1
        report.statuses[response.status_code] += 1
        content_type = (response.headers.get("content-type") or [""])[0]
        problem = error_shape_problem(response.status_code, content_type, response.content)
        if response.status_code >= 500:
            problem = f"server error {response.status_code}: {response.content[:300]!r}"
        if problem is not None:
            reproduce = _curl(case, headers, self.base_url)
            report.findings.append(APIFinding(label, response.status_code, problem, reproduce))


def _register_ohttp_bodies(base_url: str) -> None:
    """Bodies for ``message/ohttp-req``: random bytes, or a real encapsulated request, mutated."""
    # lazy: schemathesis and hypothesis are dev dependencies, needed only to fuzz
    import schemathesis
    from hypothesis import strategies as st

    keys = httpx.get(base_url.rstrip("/") + "/.well-known/ohttp-gateway", timeout=30)
    config = decode_key_configs(keys.content)[0]
    inner = [r.encode() for r in phone_requests()]
    mutation = st.tuples(st.integers(0, len(MUTATIONS) - 1), st.integers(0, 1 << 16), st.integers(0, 1 << 12))
    sealed = st.builds(
        lambda i, ops: mutate(encapsulate_request(config, inner[i])[0], ops),
        st.integers(0, len(inner) - 1),
        st.lists(mutation, max_size=3),
    )
    schemathesis.openapi.media_type("message/ohttp-req", st.one_of(st.binary(max_size=1024), sealed))


def _curl(case: Any, headers: dict[str, str], base_url: str) -> str:
    try:
        return case.as_curl_command(headers=headers, base_url=base_url)
    except Exception as exc:  # a reproduction hint must never hide the finding itself
        return f"(no curl command: {type(exc).__name__}) body={case.body!r} headers={case.headers!r}"
