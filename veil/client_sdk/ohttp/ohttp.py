"""Oblivious HTTP message encapsulation (RFC 9458 section 4).

Client::

    enc_request, ctx = encapsulate_request(config, bhttp_request)
    ... POST enc_request as message/ohttp-req through the relay ...
    bhttp_response = ctx.decapsulate_response(enc_response)

Gateway::

    bhttp_request, ctx = decapsulate_request(keys_by_id, enc_request)
    enc_response = ctx.encapsulate_response(bhttp_response)

The request is sealed with HPKE (base mode) to the gateway's key, with ``info = "message/bhttp request"
|| 0x00 || hdr``. The response key and nonce come from the HPKE exporter secret ``Export("message/bhttp
response", max(Nn, Nk))``, extracted with ``salt = enc || response_nonce`` and expanded with the labels
``"key"`` and ``"nonce"``; a fresh random ``response_nonce`` prefixes the sealed response.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from veil.client_sdk.ohttp.errors import (
    DecryptionFailedError,
    KeyConfigError,
    MalformedMessageError,
    UnknownKeyIdError,
    UnsupportedSuiteError,
)
from veil.client_sdk.ohttp.hpke import (
    Context,
    HPKEError,
    KEMError,
    Suite,
    UnsupportedAlgorithmError,
    setup_base_r,
    setup_base_s,
)
from veil.client_sdk.ohttp.keys import GatewayKeyPair, KeyConfig

__all__ = [
    "KEYS_MEDIA_TYPE",
    "REQUEST_LABEL",
    "REQUEST_MEDIA_TYPE",
    "RESPONSE_LABEL",
    "RESPONSE_MEDIA_TYPE",
    "ClientResponseContext",
    "ServerResponseContext",
    "decapsulate_request",
    "decapsulate_response",
    "encapsulate_request",
    "request_header",
]

REQUEST_LABEL = b"message/bhttp request"
RESPONSE_LABEL = b"message/bhttp response"
REQUEST_MEDIA_TYPE = "message/ohttp-req"
RESPONSE_MEDIA_TYPE = "message/ohttp-res"
KEYS_MEDIA_TYPE = "application/ohttp-keys"
_HEADER_SIZE = 7


def request_header(key_id: int, suite: Suite) -> bytes:
    """``hdr = key_id (8) || kem_id (16) || kdf_id (16) || aead_id (16)``."""
    return bytes([key_id]) + suite.suite_id[4:]


def _response_key_nonce(
    suite: Suite, context: Context, enc: bytes, response_nonce: bytes
) -> tuple[bytes, bytes]:
    aead, kdf = suite.aead, suite.kdf
    secret = context.export(RESPONSE_LABEL, max(aead.nonce_size, aead.key_size))
    prk = kdf.extract(enc + response_nonce, secret)
    return kdf.expand(prk, b"key", aead.key_size), kdf.expand(prk, b"nonce", aead.nonce_size)


@dataclass
class ClientResponseContext:
    """What a client keeps from :func:`encapsulate_request` to open the matching response."""

    suite: Suite
    enc: bytes
    _context: Context = field(repr=False)

    def decapsulate_response(self, data: bytes) -> bytes:
        """Open an Encapsulated Response; returns the binary HTTP response."""
        aead = self.suite.aead
        nonce_size = max(aead.nonce_size, aead.key_size)
        data = bytes(data)
        if len(data) < nonce_size + aead.tag_size:
            raise MalformedMessageError(
                f"encapsulated response must have at least {nonce_size + aead.tag_size} bytes, got {len(data)}"
            )
        key, nonce = _response_key_nonce(self.suite, self._context, self.enc, data[:nonce_size])
        try:
            return aead.open(key, nonce, b"", data[nonce_size:])
        except HPKEError as exc:
            raise DecryptionFailedError("the encapsulated response failed authentication") from exc


@dataclass
class ServerResponseContext:
    """What a gateway keeps from :func:`decapsulate_request` to encapsulate its response."""

    key_id: int
    suite: Suite
    enc: bytes
    _context: Context = field(repr=False)

    def encapsulate_response(self, response: bytes, *, response_nonce: bytes | None = None) -> bytes:
        """Seal the binary HTTP ``response``; ``response_nonce`` is fixed only to reproduce test vectors."""
        aead = self.suite.aead
        nonce_size = max(aead.nonce_size, aead.key_size)
        if response_nonce is None:
            response_nonce = os.urandom(nonce_size)
        elif len(response_nonce) != nonce_size:
            raise ValueError(f"response_nonce must be {nonce_size} bytes, got {len(response_nonce)}")
        key, nonce = _response_key_nonce(self.suite, self._context, self.enc, response_nonce)
        return bytes(response_nonce) + aead.seal(key, nonce, b"", bytes(response))


def encapsulate_request(
    config: KeyConfig,
    request: bytes,
    kdf_id: int | None = None,
    aead_id: int | None = None,
    *,
    ephemeral_key: bytes | None = None,
) -> tuple[bytes, ClientResponseContext]:
    """Seal a binary HTTP request to a gateway key configuration.

    Parameters
    ----------
    config : KeyConfig
        The gateway's key configuration.
    request : bytes
        Binary HTTP request (RFC 9292).
    kdf_id, aead_id : int, optional
        The symmetric pair to use; must be listed in ``config``. By default the first listed pair that
        this package implements.
    ephemeral_key : bytes, optional
        Fixed HPKE ephemeral private key, only to reproduce test vectors. Never set it in production:
        reusing it would link requests.

    Returns
    -------
    (bytes, ClientResponseContext)
        The Encapsulated Request (``message/ohttp-req``) and the context to open the response with.

    Raises
    ------
    UnsupportedSuiteError
        The configuration offers no (KDF, AEAD) pair this package implements, or not the one asked for.
    KeyConfigError
        The public key cannot be encapsulated to.
    """
    supported = config.supported_algorithms()
    if kdf_id is None and aead_id is None:
        if not supported:
            raise UnsupportedSuiteError(
                f"key {config.key_id} offers no (KDF, AEAD) pair this client implements"
            )
        kdf_id, aead_id = supported[0]
    if (kdf_id, aead_id) not in supported:
        raise UnsupportedSuiteError(
            f"(kdf 0x{kdf_id or 0:04x}, aead 0x{aead_id or 0:04x}) is not offered by key {config.key_id}"
        )
    suite = Suite(config.kem_id, kdf_id, aead_id)
    header = request_header(config.key_id, suite)
    try:
        enc, context = setup_base_s(
            suite, config.public_key, REQUEST_LABEL + b"\x00" + header, ephemeral_key=ephemeral_key
        )
    except KEMError as exc:
        # A well-formed configuration can still carry an unusable key: a low-order X25519 point (RFC 9180
        # section 7.1.4) or an ML-KEM key that fails its modulus check (FIPS 203 section 7.2).
        raise KeyConfigError(f"key {config.key_id} has an unusable public key: {exc}") from exc
    ciphertext = context.seal(b"", bytes(request))
    return header + enc + ciphertext, ClientResponseContext(suite, enc, context)


def decapsulate_request(
    keys: Mapping[int, GatewayKeyPair], data: bytes
) -> tuple[bytes, ServerResponseContext]:
    """Open an Encapsulated Request with the gateway's keys, indexed by key id.

    Raises
    ------
    MalformedMessageError
        Truncated request.
    UnknownKeyIdError
        No key with that id, or the key uses another KEM.
    UnsupportedSuiteError
        The (KDF, AEAD) pair is not accepted for that key.
    DecryptionFailedError
        Decapsulation or authentication failed.
    """
    data = bytes(data)
    if len(data) < _HEADER_SIZE:
        raise MalformedMessageError(
            f"encapsulated request must have at least {_HEADER_SIZE} bytes, got {len(data)}"
        )
    key_id = data[0]
    kem_id, kdf_id, aead_id = (int.from_bytes(data[i : i + 2], "big") for i in (1, 3, 5))
    key = keys.get(key_id)
    if key is None or key.kem_id != kem_id:
        raise UnknownKeyIdError(f"no gateway key with id {key_id} and KEM 0x{kem_id:04x}")
    if (kdf_id, aead_id) not in key.symmetric_algorithms:
        raise UnsupportedSuiteError(
            f"(kdf 0x{kdf_id:04x}, aead 0x{aead_id:04x}) is not accepted with key {key_id}"
        )
    try:
        suite = Suite(kem_id, kdf_id, aead_id)
    except UnsupportedAlgorithmError as exc:
        raise UnsupportedSuiteError(str(exc)) from exc
    enc_end = _HEADER_SIZE + suite.kem.enc_size
    if len(data) < enc_end + suite.aead.tag_size:
        raise MalformedMessageError("encapsulated request is truncated")
    enc = data[_HEADER_SIZE:enc_end]
    try:
        context = setup_base_r(suite, enc, key.private_key, REQUEST_LABEL + b"\x00" + data[:_HEADER_SIZE])
        request = context.open(b"", data[enc_end:])
    except HPKEError as exc:
        raise DecryptionFailedError(f"could not decrypt the encapsulated request: {exc}") from exc
    return request, ServerResponseContext(key_id, suite, enc, context)


def decapsulate_response(context: ClientResponseContext, data: bytes) -> bytes:
    """Function form of :meth:`ClientResponseContext.decapsulate_response`."""
    return context.decapsulate_response(data)
