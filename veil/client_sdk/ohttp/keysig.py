"""Authenticated key configurations: the gateway signs ``application/ohttp-keys`` as an HTTP message.

A client that fetches key configurations through a relay must make sure they come from the gateway
(RFC 9458 section 6.1): a relay that hands out its own key could open every request, re-seal it to the
gateway and see content next to addresses. Veil's gateway therefore answers
``GET /.well-known/ohttp-gateway`` with a response signature (RFC 9421 section 2.5 signature base,
section 3.1 signing) by a long-term Ed25519 key (RFC 9421 section 3.3.6, RFC 8032) over:

* ``"@status"`` (RFC 9421 section 2.2.9),
* ``"content-type"`` (must be ``application/ohttp-keys``),
* ``"content-digest"``: the SHA-256 of the body (RFC 9530 section 2), so the signature covers the bytes,
* ``"veil-signing-key"``: base64 of the raw 32-byte public key, for clients that pin on first use,

with parameters ``created``, ``expires``, ``keyid`` (:func:`key_fingerprint`, the first 16 hex digits of
SHA-256 over the raw public key), ``alg="ed25519"`` and ``tag="veil-ohttp-keys"`` (RFC 9421 section
2.3), under the label ``veil``. The ``http-message-signatures`` package builds and checks the signature
base; this module fixes the policy both sides share: what is covered, which tag, how long a signature
lives, and the typed refusals of :mod:`veil.client_sdk.ohttp.errors`.

The same code runs in the gateway route, the phone's clients, and the test vectors.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from http_message_signatures import (
    HTTPMessageSignaturesException,
    HTTPMessageSigner,
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    InvalidSignature,
    algorithms,
)

from veil.client_sdk.ohttp.errors import (
    KeyConfigExpiredError,
    KeyConfigSignatureError,
    SigningKeyMismatchError,
)
from veil.client_sdk.ohttp.keys import KeyConfig, decode_key_configs
from veil.client_sdk.ohttp.ohttp import KEYS_MEDIA_TYPE

__all__ = [
    "COVERED_COMPONENTS",
    "DEFAULT_VALIDITY_S",
    "MAX_CLOCK_SKEW_S",
    "SIGNATURE_LABEL",
    "SIGNATURE_TAG",
    "SIGNING_KEY_HEADER",
    "VerifiedKeyConfigs",
    "decode_public_key",
    "encode_public_key",
    "key_fingerprint",
    "public_key_bytes",
    "sign_key_configs",
    "signing_key_from_seed",
    "verify_key_configs",
]

SIGNATURE_TAG = "veil-ohttp-keys"
SIGNATURE_LABEL = "veil"
SIGNING_KEY_HEADER = "veil-signing-key"
COVERED_COMPONENTS = ("@status", "content-type", "content-digest", SIGNING_KEY_HEADER)
DEFAULT_VALIDITY_S = 86_400
"""A signature made now expires after a day: longer than any cache (``max-age=3600``) keeps the list."""
MAX_CLOCK_SKEW_S = 300
"""Phones' clocks drift: ``created`` may lie this far in the future and ``expires`` this far in the past."""


def signing_key_from_seed(seed: bytes) -> Ed25519PrivateKey:
    """The Ed25519 key whose 32-byte private seed (RFC 8032 section 5.1.5) is ``seed``."""
    if not isinstance(seed, bytes | bytearray) or len(seed) != 32:
        raise ValueError(
            f"an Ed25519 seed is 32 bytes, got {len(seed) if isinstance(seed, bytes) else seed!r}"
        )
    return Ed25519PrivateKey.from_private_bytes(bytes(seed))


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32-byte public key (RFC 8032 section 5.1.5)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_fingerprint(public_key: bytes) -> str:
    """The ``keyid``: the first 16 hex digits of SHA-256 over the raw 32-byte public key."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def encode_public_key(public_key: bytes) -> str:
    """Base64 (RFC 4648 section 4, padded) of the raw public key: how apps and manifests ship it."""
    return base64.b64encode(public_key).decode("ascii")


def decode_public_key(value: str | bytes) -> bytes:
    """The raw 32-byte key from its base64 text, or raw bytes as they are; ``ValueError`` otherwise."""
    if isinstance(value, bytes | bytearray) and len(value) == 32:
        raw = bytes(value)
    else:
        text = value.decode("ascii", "replace") if isinstance(value, bytes | bytearray) else str(value)
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"a gateway public key is base64 of 32 bytes, got {text[:60]!r}") from exc
    if len(raw) != 32:
        raise ValueError(f"a gateway public key is 32 bytes (Ed25519), got {len(raw)}")
    Ed25519PublicKey.from_public_bytes(raw)
    return raw


@dataclass
class _Response:
    """The smallest response the signing library resolves: status, field lines, no request."""

    status_code: int
    headers: Any
    request: None = None


class _Fields:
    """Read-only field lines in wire order (repeated lines kept) for the verifier."""

    def __init__(self, lines: Iterable[tuple[str, str]]) -> None:
        self._lines = [(str(n), str(v)) for n, v in lines]

    def items(self) -> list[tuple[str, str]]:
        return list(self._lines)

    def __iter__(self):  # noqa: ANN204 - the library's header protocol
        return iter(dict.fromkeys(n for n, _ in self._lines))

    def __contains__(self, name: object) -> bool:
        return any(n.lower() == str(name).lower() for n, _ in self._lines)


class _Keys(HTTPSignatureKeyResolver):
    """Keys by fingerprint: the trusted public keys (verifying) or the one signing key (signing)."""

    def __init__(
        self,
        public: Mapping[str, Ed25519PublicKey] | None = None,
        private: Mapping[str, Ed25519PrivateKey] | None = None,
    ) -> None:
        self.public, self.private = dict(public or {}), dict(private or {})

    def resolve_public_key(self, key_id: str) -> Ed25519PublicKey | None:
        if key_id not in self.public:
            raise SigningKeyMismatchError(
                f"the key configuration is signed by key {key_id!r}, not a trusted one {sorted(self.public)}"
            )
        return self.public[key_id]

    def resolve_private_key(self, key_id: str) -> Ed25519PrivateKey:
        return self.private[key_id]


class _Verifier(HTTPMessageVerifier):
    """The library's verifier with Veil's clock, skew, and required ``expires``, raising typed errors."""

    def __init__(self, now: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.now = now

    def validate_created_and_expires(self, sig_input: Any, max_age: Any = None) -> None:
        params = sig_input.params
        created, expires = params.get("created"), params.get("expires")
        if type(created) is not int or type(expires) is not int:
            raise KeyConfigSignatureError("the key configuration signature needs integer created and expires")
        if expires <= created:
            raise KeyConfigSignatureError(f"signature expires ({expires}) before it was created ({created})")
        if created > self.now + MAX_CLOCK_SKEW_S:
            raise KeyConfigExpiredError(
                f"signature created at {created}, in the future (now {int(self.now)})"
            )
        if expires < self.now - MAX_CLOCK_SKEW_S:
            raise KeyConfigExpiredError(f"signature expired at {expires} (now {int(self.now)})")


def sign_key_configs(
    body: bytes,
    signing_key: Ed25519PrivateKey,
    *,
    created: int | None = None,
    expires: int | None = None,
    validity_s: int = DEFAULT_VALIDITY_S,
) -> dict[str, str]:
    """The response header fields that authenticate the ``application/ohttp-keys`` ``body``.

    Parameters
    ----------
    body : bytes
        The encoded key configuration list (RFC 9458 section 3.2).
    signing_key : Ed25519PrivateKey
        The gateway's long-term signing key.
    created, expires : int, optional
        Unix seconds; default now and ``created + validity_s`` (fixed in test vectors).

    Returns
    -------
    dict
        ``content-type``, ``content-digest``, ``veil-signing-key``, ``signature-input`` and
        ``signature`` (lower-case names), to send unchanged with status 200.
    """
    if validity_s <= 0:
        raise ValueError(f"validity_s must be > 0, got {validity_s}")
    created = int(time.time()) if created is None else int(created)
    expires = created + validity_s if expires is None else int(expires)
    if expires <= created:
        raise ValueError(f"expires ({expires}) must be after created ({created})")
    public = public_key_bytes(signing_key)
    key_id = key_fingerprint(public)
    headers = {"content-type": KEYS_MEDIA_TYPE, SIGNING_KEY_HEADER: encode_public_key(public)}
    signer = HTTPMessageSigner(
        signature_algorithm=algorithms.ED25519, key_resolver=_Keys(private={key_id: signing_key})
    )
    message = _Response(200, headers)
    utc = datetime.UTC
    signer.sign(
        message,
        key_id=key_id,
        created=datetime.datetime.fromtimestamp(created, utc),
        expires=datetime.datetime.fromtimestamp(expires, utc),
        label=SIGNATURE_LABEL,
        tag=SIGNATURE_TAG,
        covered_component_ids=COVERED_COMPONENTS,
        body=bytes(body),  # adds Content-Digest (sha-256) and checks it is covered
    )
    return {name.lower(): value for name, value in message.headers.items()}


@dataclass(frozen=True)
class VerifiedKeyConfigs:
    """A key configuration list whose signature checked out.

    Attributes
    ----------
    configs : list of KeyConfig
        The decoded list, in the gateway's order (newest first).
    public_key : bytes
        The raw Ed25519 key that signed it.
    key_id : str
        Its fingerprint (the signature's ``keyid``).
    created, expires : int
        The signature's validity, Unix seconds.
    """

    configs: list[KeyConfig]
    public_key: bytes
    key_id: str
    created: int
    expires: int


def _lines(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(n).lower(), str(v)) for n, v in items]


def verify_key_configs(
    status: int,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes,
    *,
    public_key: bytes | Sequence[bytes] | None,
    now: float | None = None,
) -> VerifiedKeyConfigs:
    """Check a key configuration response's signature and digest; return the decoded list.

    Parameters
    ----------
    status, headers, body
        The response as received (``headers`` as a mapping or as field lines, repeated lines kept).
    public_key : bytes, sequence of bytes, or None
        The trusted raw 32-byte key, or several (an app may ship the current key and the next one, so that
        the gateway can move to the next without breaking it). ``None`` (pinning on first use) takes the
        key from the ``veil-signing-key`` field, checked against ``keyid``; the caller then pins it.
    now : float, optional
        Unix seconds to check ``created``/``expires`` against (default: the system clock).

    Raises
    ------
    KeyConfigSignatureError
        No signature with tag ``veil-ohttp-keys``, a component not covered, a bad signature, or a body
        that differs from the signed ``Content-Digest``.
    KeyConfigExpiredError
        ``expires`` has passed (or ``created`` is in the future) by more than :data:`MAX_CLOCK_SKEW_S`.
    SigningKeyMismatchError
        Signed by another key than the trusted one(s).
    KeyConfigError
        The signed body is not a valid key configuration list.
    """
    now = time.time() if now is None else float(now)
    lines = _lines(headers)
    names = {n for n, _ in lines}
    missing = [h for h in ("signature-input", "signature", "content-digest") if h not in names]
    if missing:
        raise KeyConfigSignatureError(f"the key configuration is not signed: no {', '.join(missing)} field")
    if public_key is None:
        announced = [v for n, v in lines if n == SIGNING_KEY_HEADER]
        if len(announced) != 1:
            raise KeyConfigSignatureError(f"need exactly one {SIGNING_KEY_HEADER} field to pin on first use")
        try:
            trusted = [decode_public_key(announced[0])]
        except ValueError as exc:
            raise KeyConfigSignatureError(f"{SIGNING_KEY_HEADER}: {exc}") from exc
    else:
        trusted = [public_key] if isinstance(public_key, bytes | bytearray) else list(public_key)
        if not trusted:
            raise ValueError("give at least one trusted public key, or None to pin on first use")
    by_id = {key_fingerprint(bytes(k)): bytes(k) for k in trusted}
    verifier = _Verifier(
        now,
        signature_algorithm=algorithms.ED25519,
        key_resolver=_Keys(public={i: Ed25519PublicKey.from_public_bytes(k) for i, k in by_id.items()}),
    )
    try:
        results = verifier.verify(
            _Response(int(status), _Fields(lines)),
            max_age=None,  # expiry is checked by _Verifier against ``now``
            expect_tag=SIGNATURE_TAG,
            require_components=COVERED_COMPONENTS,
            body=bytes(body),
        )
    except KeyConfigSignatureError:
        raise
    except (HTTPMessageSignaturesException, InvalidSignature) as exc:
        if isinstance(exc.__cause__, SigningKeyMismatchError):  # the library wraps resolver errors
            raise exc.__cause__ from None
        reason = str(exc) or "the Ed25519 signature is wrong"
        raise KeyConfigSignatureError(f"the key configuration signature does not verify: {reason}") from exc
    params = results[0].parameters
    key_id = str(params["keyid"])
    configs = decode_key_configs(bytes(body))  # KeyConfigError if the signed bytes are no valid list
    return VerifiedKeyConfigs(configs, by_id[key_id], key_id, int(params["created"]), int(params["expires"]))
