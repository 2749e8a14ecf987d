"""Oblivious HTTP key configurations (RFC 9458 section 3) and gateway key pairs.

A key configuration is what a gateway publishes and a client encrypts to: a one-byte key id, the HPKE
KEM id, the public key, and the (KDF, AEAD) pairs the gateway accepts with that key. The
``application/ohttp-keys`` media type is a list of configurations, each prefixed by its two-byte length.
A :class:`GatewayKeyPair` adds the private key; it is what the gateway stores (encrypted at rest by
``veil.cloud_service.gateway.Keyring``) and never leaves the cloud.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from veil.client_sdk.ohttp.errors import KeyConfigError, UnsupportedSuiteError
from veil.client_sdk.ohttp.hpke import (
    AEAD_AES_128_GCM,
    AEADS,
    KDF_HKDF_SHA256,
    KDFS,
    KEM_X25519_HKDF_SHA256,
    KEMS,
)

__all__ = [
    "DEFAULT_SYMMETRIC_ALGORITHMS",
    "GatewayKeyPair",
    "KeyConfig",
    "decode_key_configs",
    "encode_key_configs",
]

SymmetricAlgorithm = tuple[int, int]
DEFAULT_SYMMETRIC_ALGORITHMS: tuple[SymmetricAlgorithm, ...] = ((KDF_HKDF_SHA256, AEAD_AES_128_GCM),)
_PRIVATE_RECORD_VERSION = 1


def _u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


def _pairs(raw: bytes) -> list[SymmetricAlgorithm]:
    """Decode consecutive (kdf_id, aead_id) 16-bit pairs."""
    return [
        (int.from_bytes(raw[i : i + 2], "big"), int.from_bytes(raw[i + 2 : i + 4], "big"))
        for i in range(0, len(raw), 4)
    ]


def _check_algorithms(algorithms: Iterable[Sequence[int]]) -> tuple[SymmetricAlgorithm, ...]:
    out = tuple((int(kdf), int(aead)) for kdf, aead in algorithms)
    if not 1 <= len(out) <= 16383:
        raise KeyConfigError(f"a key configuration needs 1 to 16383 (kdf, aead) pairs, got {len(out)}")
    if any(not (0 <= i <= 0xFFFF) for pair in out for i in pair):
        raise KeyConfigError(f"KDF and AEAD ids must be 16-bit, got {out}")
    return out


def _kem(kem_id: int):
    try:
        return KEMS[kem_id]
    except KeyError:
        raise UnsupportedSuiteError(f"unsupported HPKE KEM id 0x{kem_id:04x}") from None


@dataclass(frozen=True)
class KeyConfig:
    """One OHTTP key configuration (RFC 9458 figure 2).

    Parameters
    ----------
    key_id : int
        Key identifier in ``[0, 255]``.
    kem_id : int
        HPKE KEM id; must be one this package implements (the public key's length depends on it).
    public_key : bytes
        Serialised HPKE public key of the KEM's length (``Npk``).
    symmetric_algorithms : sequence of (kdf_id, aead_id)
        The pairs the gateway accepts with this key, in its order of preference.
    """

    key_id: int
    kem_id: int
    public_key: bytes
    symmetric_algorithms: Sequence[SymmetricAlgorithm] = DEFAULT_SYMMETRIC_ALGORITHMS

    def __post_init__(self) -> None:
        if not 0 <= self.key_id <= 255:
            raise KeyConfigError(f"key_id must be in [0, 255], got {self.key_id}")
        kem = _kem(self.kem_id)
        if len(self.public_key) != kem.public_key_size:
            raise KeyConfigError(
                f"{kem.name} public key must be {kem.public_key_size} bytes, got {len(self.public_key)}"
            )
        object.__setattr__(self, "public_key", bytes(self.public_key))
        object.__setattr__(self, "symmetric_algorithms", _check_algorithms(self.symmetric_algorithms))

    def supported_algorithms(self) -> list[SymmetricAlgorithm]:
        """The configuration's (kdf, aead) pairs that this package implements, in the gateway's order."""
        return [(k, a) for k, a in self.symmetric_algorithms if k in KDFS and a in AEADS]

    def encode(self) -> bytes:
        """The configuration's wire encoding (without the list's length prefix)."""
        algorithms = b"".join(_u16(k) + _u16(a) for k, a in self.symmetric_algorithms)
        return bytes([self.key_id]) + _u16(self.kem_id) + self.public_key + _u16(len(algorithms)) + algorithms

    @classmethod
    def decode(cls, data: bytes) -> KeyConfig:
        """Parse exactly one configuration; trailing bytes are an error."""
        data = bytes(data)
        if len(data) < 3:
            raise KeyConfigError(f"key configuration truncated: {len(data)} bytes")
        key_id, kem_id = data[0], int.from_bytes(data[1:3], "big")
        npk = _kem(kem_id).public_key_size
        if len(data) < 3 + npk + 2:
            raise KeyConfigError("key configuration truncated in the public key")
        public_key = data[3 : 3 + npk]
        alg_len = int.from_bytes(data[3 + npk : 5 + npk], "big")
        body = data[5 + npk :]
        if alg_len % 4 or alg_len != len(body):
            raise KeyConfigError(
                f"symmetric algorithms length {alg_len} does not match the {len(body)} bytes that follow"
            )
        return cls(key_id, kem_id, public_key, _pairs(body))


def encode_key_configs(configs: Iterable[KeyConfig]) -> bytes:
    """``application/ohttp-keys``: each configuration prefixed by its 2-byte length."""
    out = []
    for config in configs:
        encoded = config.encode()
        out.append(_u16(len(encoded)) + encoded)
    if not out:
        raise KeyConfigError("application/ohttp-keys needs at least one key configuration")
    return b"".join(out)


def decode_key_configs(data: bytes, *, skip_unsupported: bool = True) -> list[KeyConfig]:
    """Parse an ``application/ohttp-keys`` list.

    Any encoding error rejects the whole list (RFC 9458 section 3.2: a client must not recover part of a
    malformed list). Well-formed configurations whose KEM this package lacks are skipped when
    ``skip_unsupported``, otherwise they raise :class:`UnsupportedSuiteError`.
    """
    data = bytes(data)
    configs: list[KeyConfig] = []
    pos = 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise KeyConfigError("application/ohttp-keys truncated in a length prefix")
        size = int.from_bytes(data[pos : pos + 2], "big")
        chunk = data[pos + 2 : pos + 2 + size]
        if len(chunk) != size:
            raise KeyConfigError("application/ohttp-keys truncated in a key configuration")
        pos += 2 + size
        try:
            configs.append(KeyConfig.decode(chunk))
        except UnsupportedSuiteError:
            if not skip_unsupported:
                raise
    if not data:
        raise KeyConfigError("application/ohttp-keys is empty")
    return configs


@dataclass(frozen=True)
class GatewayKeyPair:
    """A gateway's HPKE key pair with its OHTTP key id and accepted (kdf, aead) pairs.

    Build with :meth:`generate` or :meth:`from_private_key`; the public key is always derived from the
    private key, so a stored record cannot pair a private key with someone else's public key.
    """

    key_id: int
    kem_id: int
    private_key: bytes = field(repr=False)
    public_key: bytes
    symmetric_algorithms: Sequence[SymmetricAlgorithm] = DEFAULT_SYMMETRIC_ALGORITHMS

    def __post_init__(self) -> None:
        kem = _kem(self.kem_id)
        if len(self.private_key) != kem.private_key_size:
            raise KeyConfigError(f"{kem.name} private key must be {kem.private_key_size} bytes")
        if kem.public_key(bytes(self.private_key)) != bytes(self.public_key):
            raise KeyConfigError("public key does not belong to the private key")
        # Validates key_id, public key length and algorithms once, through KeyConfig.
        object.__setattr__(self, "symmetric_algorithms", self.config.symmetric_algorithms)

    @classmethod
    def generate(
        cls,
        key_id: int,
        kem_id: int = KEM_X25519_HKDF_SHA256,
        symmetric_algorithms: Sequence[SymmetricAlgorithm] = DEFAULT_SYMMETRIC_ALGORITHMS,
    ) -> GatewayKeyPair:
        """A fresh random key pair."""
        private_key, public_key = _kem(kem_id).generate_key_pair()
        return cls(key_id, kem_id, private_key, public_key, symmetric_algorithms)

    @classmethod
    def from_private_key(
        cls,
        key_id: int,
        kem_id: int,
        private_key: bytes,
        symmetric_algorithms: Sequence[SymmetricAlgorithm] = DEFAULT_SYMMETRIC_ALGORITHMS,
    ) -> GatewayKeyPair:
        """The key pair of a serialised private key."""
        private_key = bytes(private_key)
        public_key = _kem(kem_id).public_key(private_key)
        return cls(key_id, kem_id, private_key, public_key, symmetric_algorithms)

    @property
    def config(self) -> KeyConfig:
        """The public key configuration to publish."""
        return KeyConfig(self.key_id, self.kem_id, self.public_key, self.symmetric_algorithms)

    def to_bytes(self) -> bytes:
        """Private serialisation (contains the private key: encrypt it before storing)."""
        algorithms = b"".join(_u16(k) + _u16(a) for k, a in self.symmetric_algorithms)
        return (
            bytes([_PRIVATE_RECORD_VERSION, self.key_id])
            + _u16(self.kem_id)
            + _u16(len(self.private_key))
            + self.private_key
            + algorithms
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> GatewayKeyPair:
        """Inverse of :meth:`to_bytes`."""
        data = bytes(data)
        if len(data) < 6 or data[0] != _PRIVATE_RECORD_VERSION:
            raise KeyConfigError("not a gateway key record (bad length or version)")
        key_id, kem_id, sk_len = data[1], int.from_bytes(data[2:4], "big"), int.from_bytes(data[4:6], "big")
        private_key, rest = data[6 : 6 + sk_len], data[6 + sk_len :]
        if len(private_key) != sk_len or len(rest) % 4:
            raise KeyConfigError("gateway key record is truncated")
        pairs = _pairs(rest)
        return cls.from_private_key(key_id, kem_id, private_key, pairs)
