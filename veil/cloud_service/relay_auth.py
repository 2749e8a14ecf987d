"""The relay proves itself to the gateway: an HMAC over each forwarded body, with a timestamp.

RFC 9458 section 6.2 leaves it to the deployment to make the gateway accept encapsulated requests only
from its relay: otherwise anyone can bypass the relay (and its rate limits and mixing) and post
straight to the gateway. Veil's relay and gateway share an operator-configured secret
(``VEIL_RELAY_SECRET``, at least 32 bytes) and every ``POST /ohttp`` the relay forwards carries::

    Veil-Relay-Auth: t=<unix seconds>, mac=<base64url of HMAC-SHA256(secret, label || t || body)>

(HMAC, RFC 2104, with SHA-256). The gateway recomputes the MAC and compares it in constant time,
and refuses a timestamp more than ``max_skew_s`` away from its clock, so a captured header is useless
for another body and soon useless for the same one (whose ``enc`` the gateway's replay check refuses
anyway). A MAC over the body rather than a bare bearer token: a token seen once in a log or a proxy
would admit any request forever. Mutual TLS between relay and gateway (client certificates,
RFC 8446 section 4.4.2) is the alternative where a TLS terminator can check them; this header works
through any proxy in between.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

__all__ = [
    "MIN_SECRET_BYTES",
    "RELAY_AUTH_HEADER",
    "RelayAuthError",
    "relay_auth_header",
    "relay_secret_bytes",
    "verify_relay_auth",
]

RELAY_AUTH_HEADER = "veil-relay-auth"
MIN_SECRET_BYTES = 32
_LABEL = b"veil-relay-auth/v1\n"
_MAX_HEADER = 200


class RelayAuthError(Exception):
    """The request did not come from the configured relay (missing, malformed, stale or wrong MAC)."""


def relay_secret_bytes(secret: str | bytes) -> bytes:
    """The shared secret as bytes; raises ``ValueError`` when shorter than 32 bytes.

    Make one with ``python -c "import secrets; print(secrets.token_urlsafe(32))"``.
    """
    raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if len(raw) < MIN_SECRET_BYTES:
        raise ValueError(
            f"the relay secret must have at least {MIN_SECRET_BYTES} bytes, got {len(raw)} "
            "(make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return raw


def _mac(secret: bytes, timestamp: int, body: bytes) -> bytes:
    mac = hmac.new(secret, _LABEL, hashlib.sha256)
    mac.update(str(timestamp).encode("ascii") + b"\n")
    mac.update(body)
    return mac.digest()


def relay_auth_header(secret: bytes, body: bytes, now: float | None = None) -> str:
    """The ``Veil-Relay-Auth`` value for forwarding ``body`` at time ``now`` (default: the clock)."""
    timestamp = int(time.time() if now is None else now)
    mac = base64.urlsafe_b64encode(_mac(secret, timestamp, body)).rstrip(b"=").decode("ascii")
    return f"t={timestamp}, mac={mac}"


def _parse(value: str) -> tuple[int, bytes]:
    if len(value) > _MAX_HEADER:
        raise RelayAuthError(f"{RELAY_AUTH_HEADER} is longer than {_MAX_HEADER} characters")
    fields: dict[str, str] = {}
    for part in value.split(","):
        name, sep, item = part.strip().partition("=")
        if not sep or name in fields:
            raise RelayAuthError(f"{RELAY_AUTH_HEADER} must be 't=<unix seconds>, mac=<base64url>'")
        fields[name] = item
    # isascii too: str.isdigit() accepts '²' (a latin-1 header byte), which int() refuses
    t = fields.get("t", "")
    if set(fields) != {"t", "mac"} or not (t.isascii() and t.isdigit()) or len(t) > 12:
        raise RelayAuthError(f"{RELAY_AUTH_HEADER} must be 't=<unix seconds>, mac=<base64url>'")
    try:
        mac = base64.b64decode(fields["mac"] + "=" * (-len(fields["mac"]) % 4), altchars=b"-_", validate=True)
    except ValueError as exc:
        raise RelayAuthError(f"{RELAY_AUTH_HEADER} mac is not base64url") from exc
    return int(fields["t"]), mac


def verify_relay_auth(
    secret: bytes, value: str | None, body: bytes, *, now: float | None = None, max_skew_s: float = 60.0
) -> None:
    """Check a ``Veil-Relay-Auth`` value for ``body``; raises :class:`RelayAuthError` if it fails."""
    if value is None:
        raise RelayAuthError(f"missing {RELAY_AUTH_HEADER}: /ohttp accepts requests only from its relay")
    timestamp, mac = _parse(value)
    clock = time.time() if now is None else now
    if abs(clock - timestamp) > max_skew_s:
        raise RelayAuthError(
            f"{RELAY_AUTH_HEADER} timestamp is more than {max_skew_s:g} s from the gateway's clock"
        )
    if not hmac.compare_digest(mac, _mac(secret, timestamp, body)):
        raise RelayAuthError(f"{RELAY_AUTH_HEADER} does not match this body and the relay secret")
