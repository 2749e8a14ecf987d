"""Typed Oblivious HTTP errors, each with the status a gateway answers it with (RFC 9458 section 5.2).

All of these are detected before the request could be decrypted (or, for the client, while opening a
response), so a gateway cannot encapsulate its answer: it sends the status and a JSON error body in the
clear, which reveals nothing about the request's content. ``to_dict`` gives Veil's error body
``{"error": {"type", "message", "param", "code"}}``; key-configuration problems also carry the RFC 9458
problem type ``https://iana.org/assignments/http-problem-types#ohttp-key`` so a client knows to refresh
its keys.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "OHTTP_KEY_PROBLEM",
    "DecryptionFailedError",
    "KeyConfigError",
    "KeyConfigExpiredError",
    "KeyConfigSignatureError",
    "MalformedMessageError",
    "OHTTPError",
    "ReplayedRequestError",
    "RequestTooLargeError",
    "SigningKeyMismatchError",
    "UnknownKeyIdError",
    "UnsupportedSuiteError",
]

OHTTP_KEY_PROBLEM = "https://iana.org/assignments/http-problem-types#ohttp-key"


class OHTTPError(Exception):
    """Base class: ``error_type`` names the failure, ``status`` is the HTTP status a gateway returns."""

    error_type = "ohttp_error"
    status = 400
    problem_type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Veil's JSON error body for this failure."""
        error: dict[str, Any] = {"type": self.error_type, "message": str(self), "param": None, "code": None}
        if self.problem_type is not None:
            error["problem_type"] = self.problem_type
        return {"error": error}


class MalformedMessageError(OHTTPError, ValueError):
    """An encapsulated request or response is truncated or structurally invalid."""

    error_type = "malformed_ohttp_message"


class KeyConfigError(OHTTPError, ValueError):
    """A key configuration (or an ``application/ohttp-keys`` list) is incorrectly encoded."""

    error_type = "invalid_key_config"


class UnknownKeyIdError(OHTTPError):
    """The request names a key id the gateway does not hold, or a KEM that key does not use."""

    error_type = "unknown_key_id"
    problem_type = OHTTP_KEY_PROBLEM


class UnsupportedSuiteError(OHTTPError, ValueError):
    """The request's KEM, KDF or AEAD is not offered for its key."""

    error_type = "unsupported_ohttp_suite"
    problem_type = OHTTP_KEY_PROBLEM


class DecryptionFailedError(OHTTPError):
    """HPKE decapsulation or AEAD authentication failed (tampered, or sealed to another key)."""

    error_type = "ohttp_decryption_failed"


class ReplayedRequestError(OHTTPError):
    """An encapsulated request already seen within the gateway's replay window."""

    error_type = "replayed_ohttp_request"


class RequestTooLargeError(OHTTPError):
    """The encapsulated request exceeds the gateway's size limit."""

    error_type = "request_too_large"
    status = 413


class KeyConfigSignatureError(OHTTPError):
    """A key configuration list is unsigned, wrongly signed, or its body differs from its digest.

    Raised by the client before any request is sealed (RFC 9458 section 6.1 leaves key authentication to
    the deployment; Veil signs the list with RFC 9421 over an RFC 9530 digest). Not a transport failure:
    retrying through the same relay cannot help, so clients do not retry it.
    """

    error_type = "key_config_signature_invalid"


class KeyConfigExpiredError(KeyConfigSignatureError):
    """The signature's ``expires`` time has passed (or ``created`` lies in the future) beyond the skew."""

    error_type = "key_config_signature_expired"


class SigningKeyMismatchError(KeyConfigSignatureError):
    """The list is signed by another key than the pinned one (shipped with the app or pinned on first use)."""

    error_type = "gateway_signing_key_mismatch"
