"""What an inner (decapsulated) request may ask: the phone routes only, with the headers they need.

The gateway serves inner requests with the API app in process, so without a filter a phone (or anyone
holding the public key configuration) could reach every route through OHTTP, and a careless client
could send fields that identify it. RFC 9458 section 6.3 and section 8 leave the choice of targets and
fields to the gateway; Veil's is:

* routes: exactly the ``(method, path)`` pairs of :data:`PHONE_ROUTES` (what ``PhoneAPI`` calls), no
  query string. Anything else gets an encapsulated 403 ``route_not_allowed``; nothing runs.
* headers: :data:`PASSED_HEADERS` are kept; :data:`REFUSED_HEADERS` (credentials and forwarding
  fields, which would tie the request to a person or an address) get an encapsulated 400
  ``header_not_allowed``; every other field (``host``, ``user-agent``, ``accept-language``...) is
  dropped before the app sees it.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["PASSED_HEADERS", "PHONE_ROUTES", "REFUSED_HEADERS", "InnerRequestRefusedError", "screen"]

PHONE_ROUTES: frozenset[tuple[str, str]] = frozenset(
    {
        ("GET", "/v1/models"),
        ("GET", "/v1/codebook"),
        ("POST", "/v1/codebook/losses"),
        ("POST", "/v1/embedding-gradients"),
        ("POST", "/v1/label-losses"),
        ("POST", "/v1/uploads"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/translations"),
        ("POST", "/v1/rag/answers"),
    }
)
"""``(method, path)`` of every route a phone may reach through the gateway."""

PASSED_HEADERS = frozenset({"content-type", "accept", "idempotency-key"})
"""Inner header fields handed to the app; all others are dropped or refused."""

REFUSED_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "forwarded",
        "via",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
        "x-client-ip",
        "true-client-ip",
        "cf-connecting-ip",
    }
)
"""Fields that carry credentials or an address: a request with one is refused, not silently cleaned,
so a client that sends them learns it at once."""


class InnerRequestRefusedError(Exception):
    """An inner request outside the allow-list; becomes an encapsulated JSON error."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param


def screen(method: str, target: str, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers to pass on, or :class:`InnerRequestRefusedError` when the request is not allowed.

    >>> screen("POST", "/v1/uploads", [("host", "x"), ("idempotency-key", "k" * 16)])
    [('idempotency-key', 'kkkkkkkkkkkkkkkk')]
    """
    path, _, query = target.partition("?")
    if (method.upper(), path) not in PHONE_ROUTES or query:
        allowed = ", ".join(f"{m} {p}" for m, p in sorted(PHONE_ROUTES, key=lambda r: r[1]))
        raise InnerRequestRefusedError(
            403,
            f"{method.upper()} {target[:100]} is not served through the oblivious gateway; "
            f"phone routes: {allowed}",
            "route_not_allowed",
        )
    kept = []
    for name, value in headers:
        lowered = name.lower()
        if lowered in REFUSED_HEADERS:
            raise InnerRequestRefusedError(
                400,
                f"header {lowered!r} may not be sent through the oblivious gateway: it would identify the "
                "sender",
                "header_not_allowed",
                param=lowered,
            )
        if lowered in PASSED_HEADERS:
            kept.append((lowered, value))
    return kept
