"""The anonymous channel: Oblivious HTTP (RFC 9458) carrying Binary HTTP (RFC 9292) over HPKE (RFC 9180).

Modules: :mod:`~veil.client_sdk.ohttp.bhttp` (binary HTTP messages), :mod:`~veil.client_sdk.ohttp.hpke`
(HPKE base mode on ``cryptography``), :mod:`~veil.client_sdk.ohttp.keys` (key configurations, gateway key
pairs), :mod:`~veil.client_sdk.ohttp.keysig` (signed key configurations, RFC 9421) and
:mod:`~veil.client_sdk.ohttp.keypin` (the trusted gateway signing key), :mod:`~veil.client_sdk.ohttp.ohttp` (request/response encapsulation),
:mod:`~veil.client_sdk.ohttp.errors` and :mod:`~veil.client_sdk.ohttp.client` (sync and async clients).
Only the standard library, ``cryptography``, ``http-message-signatures`` and ``httpx`` are imported: this
ships to phones.
"""

from __future__ import annotations

from veil.client_sdk.ohttp.bhttp import (
    BinaryHTTPError,
    BinaryRequest,
    BinaryResponse,
    InformationalResponse,
    decode_message,
)
from veil.client_sdk.ohttp.client import USER_AGENT, AsyncOHTTPClient, InnerResponse, OHTTPClient, RelayError
from veil.client_sdk.ohttp.errors import (
    OHTTP_KEY_PROBLEM,
    DecryptionFailedError,
    KeyConfigError,
    KeyConfigExpiredError,
    KeyConfigSignatureError,
    MalformedMessageError,
    OHTTPError,
    ReplayedRequestError,
    RequestTooLargeError,
    SigningKeyMismatchError,
    UnknownKeyIdError,
    UnsupportedSuiteError,
)
from veil.client_sdk.ohttp.hpke import (
    AEAD_AES_128_GCM,
    AEAD_AES_256_GCM,
    AEAD_CHACHA20_POLY1305,
    KDF_HKDF_SHA256,
    KEM_MLKEM768_X25519,
    KEM_X25519_HKDF_SHA256,
    Suite,
)
from veil.client_sdk.ohttp.keypin import GatewayKeyPin
from veil.client_sdk.ohttp.keys import (
    DEFAULT_SYMMETRIC_ALGORITHMS,
    GatewayKeyPair,
    KeyConfig,
    decode_key_configs,
    encode_key_configs,
)
from veil.client_sdk.ohttp.keysig import (
    VerifiedKeyConfigs,
    decode_public_key,
    encode_public_key,
    key_fingerprint,
    sign_key_configs,
    verify_key_configs,
)
from veil.client_sdk.ohttp.ohttp import (
    KEYS_MEDIA_TYPE,
    REQUEST_MEDIA_TYPE,
    RESPONSE_MEDIA_TYPE,
    ClientResponseContext,
    ServerResponseContext,
    decapsulate_request,
    decapsulate_response,
    encapsulate_request,
)

__all__ = [
    "AEAD_AES_128_GCM",
    "AEAD_AES_256_GCM",
    "AEAD_CHACHA20_POLY1305",
    "DEFAULT_SYMMETRIC_ALGORITHMS",
    "KDF_HKDF_SHA256",
    "KEM_MLKEM768_X25519",
    "KEM_X25519_HKDF_SHA256",
    "KEYS_MEDIA_TYPE",
    "OHTTP_KEY_PROBLEM",
    "REQUEST_MEDIA_TYPE",
    "RESPONSE_MEDIA_TYPE",
    "USER_AGENT",
    "AsyncOHTTPClient",
    "BinaryHTTPError",
    "BinaryRequest",
    "BinaryResponse",
    "ClientResponseContext",
    "DecryptionFailedError",
    "GatewayKeyPair",
    "GatewayKeyPin",
    "InformationalResponse",
    "InnerResponse",
    "KeyConfig",
    "KeyConfigError",
    "KeyConfigExpiredError",
    "KeyConfigSignatureError",
    "MalformedMessageError",
    "OHTTPClient",
    "OHTTPError",
    "RelayError",
    "ReplayedRequestError",
    "RequestTooLargeError",
    "ServerResponseContext",
    "SigningKeyMismatchError",
    "Suite",
    "UnknownKeyIdError",
    "UnsupportedSuiteError",
    "VerifiedKeyConfigs",
    "decapsulate_request",
    "decapsulate_response",
    "decode_key_configs",
    "decode_message",
    "decode_public_key",
    "encapsulate_request",
    "encode_key_configs",
    "encode_public_key",
    "key_fingerprint",
    "sign_key_configs",
    "verify_key_configs",
]
