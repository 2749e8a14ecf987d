"""The gateway's long-term signing key and the signed ``/.well-known/ohttp-gateway`` answer.

The key is an Ed25519 seed from ``VEIL_GATEWAY_SIGNING_KEY``; in development, when it is unset, one is
generated once into ``<data_dir>/gateway-signing.key`` (mode 0600; the first of several starting workers
wins). Its public half ships with apps (``veil gateway public-key``, the ONNX manifest). The signature
itself is :func:`veil.client_sdk.ohttp.keysig.sign_key_configs`, the code phones verify with.
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from veil.client_sdk.ohttp.keysig import (
    DEFAULT_VALIDITY_S,
    encode_public_key,
    key_fingerprint,
    public_key_bytes,
    sign_key_configs,
    signing_key_from_seed,
)
from veil.cloud_service.dev_secrets import development_secret

if TYPE_CHECKING:  # the config pulls in the model engine; `veil gateway public-key` needs none of it
    from veil.cloud_service.config import ServiceConfig

__all__ = [
    "SIGNING_KEY_FILE",
    "KeyConfigSigner",
    "decode_signing_seed",
    "development_signing_seed",
    "load_signing_key",
    "signing_key_for",
]

SIGNING_KEY_FILE = "gateway-signing.key"


def development_signing_seed(data_dir: Path) -> bytes:
    """Read or create ``<data_dir>/gateway-signing.key`` (a 32-byte Ed25519 seed, mode 0600)."""
    return development_secret(Path(data_dir) / SIGNING_KEY_FILE)


def decode_signing_seed(text: str) -> bytes:
    """The seed from ``VEIL_GATEWAY_SIGNING_KEY``'s base64 text; ``ValueError`` naming the variable."""
    try:
        seed = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("VEIL_GATEWAY_SIGNING_KEY must be base64 of a 32-byte Ed25519 seed") from exc
    if len(seed) != 32:
        raise ValueError(f"VEIL_GATEWAY_SIGNING_KEY must be base64 of 32 bytes, got {len(seed)} bytes")
    return seed


def signing_key_for(seed: bytes | None, environment: str, data_dir: Path) -> Ed25519PrivateKey:
    """The key of ``seed``, or (development only) the one kept in ``data_dir``."""
    if seed is None:
        if environment == "production":
            raise ValueError(
                "production needs VEIL_GATEWAY_SIGNING_KEY (base64 of a 32-byte Ed25519 seed); "
                "refusing a generated key"
            )
        seed = development_signing_seed(data_dir)
    return signing_key_from_seed(seed)


def load_signing_key(config: ServiceConfig) -> Ed25519PrivateKey:
    """The configured signing key, or (development only) the one kept in the data dir."""
    return signing_key_for(config.gateway_signing_key, config.environment, config.data_dir)


class KeyConfigSigner:
    """Signs the key configuration list, re-signing when it changes or its signature ages.

    Parameters
    ----------
    signing_key : Ed25519PrivateKey
    validity_s : int
        Each signature's lifetime (``expires - created``).
    refresh_s : int
        A cached signature is reused for at most this long (so a cached answer keeps most of its life).
    """

    def __init__(
        self, signing_key: Ed25519PrivateKey, *, validity_s: int = DEFAULT_VALIDITY_S, refresh_s: int = 600
    ) -> None:
        if not 0 < refresh_s < validity_s:
            raise ValueError(f"need 0 < refresh_s < validity_s, got {refresh_s} and {validity_s}")
        self.signing_key = signing_key
        self.validity_s = validity_s
        self.refresh_s = refresh_s
        self._cached: tuple[bytes, int, dict[str, str]] | None = None
        self._lock = threading.Lock()

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte public key."""
        return public_key_bytes(self.signing_key)

    @property
    def public_key_b64(self) -> str:
        return encode_public_key(self.public_key)

    @property
    def key_id(self) -> str:
        return key_fingerprint(self.public_key)

    def headers(self, body: bytes, *, now: float | None = None) -> dict[str, str]:
        """The signature fields for ``body`` (a fresh copy: callers may add ``cache-control``)."""
        now_s = int(time.time() if now is None else now)
        with self._lock:
            cached = self._cached
            if cached is None or cached[0] != body or not 0 <= now_s - cached[1] < self.refresh_s:
                signed = sign_key_configs(body, self.signing_key, created=now_s, validity_s=self.validity_s)
                cached = self._cached = (body, now_s, signed)
            return dict(cached[2])

    @classmethod
    def from_config(cls, config: ServiceConfig) -> KeyConfigSigner:
        return cls(load_signing_key(config))
