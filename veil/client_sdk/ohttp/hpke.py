"""HPKE base mode (RFC 9180) on the primitives of the ``cryptography`` package.

Why not ``cryptography.hazmat.primitives.hpke.Suite`` directly? It is single-shot: ``encrypt`` and
``decrypt`` return or take ``enc || ct`` and keep no context, so there is no exporter (RFC 9180 section
5.3), which Oblivious HTTP needs to derive the response key (RFC 9458 section 4.4), and no way to fix the
ephemeral key, which reproducing published test vectors requires. This module therefore implements the
key schedule (``SetupBaseS``/``SetupBaseR``, ``Seal``/``Open`` with sequence numbers, ``Export``) on
cryptography's X25519, ML-KEM-768, HMAC/HKDF, AES-GCM and ChaCha20-Poly1305. The tests show that it is
the same HPKE: what this module seals, ``Suite.decrypt`` opens, and what ``Suite.encrypt`` seals, this
module opens, for both KEMs; the RFC 9180 Appendix A.1 and A.2 vectors are reproduced.

KEMs
----
* ``DHKEM(X25519, HKDF-SHA256)`` (0x0020, RFC 9180 section 7.1), with ``DeriveKeyPair`` and an optional
  fixed ephemeral key for test vectors.
* ``MLKEM768-X25519`` (0x647A; draft-ietf-hpke-pq, identical to X-Wing, draft-connolly-cfrg-xwing-kem):
  ``enc = ct_M || ct_X``, ``pk = pk_M || pk_X`` and ``ss = SHA3-256(ss_M || ss_X || ct_X || pk_X ||
  "\\.//^\\")``. This is what ``hpke.KEM.MLKEM768_X25519`` in cryptography implements (checked by the
  interop tests). Private keys are the 32-byte X-Wing seed, expanded with SHAKE256 to the ML-KEM seed
  ``d || z`` and the X25519 scalar. Encapsulation is always randomised (cryptography does not take
  ML-KEM's encapsulation randomness), and ``DeriveKeyPair`` is not offered for this KEM.

KDF HKDF-SHA256 (0x0001); AEADs AES-128-GCM (0x0001), AES-256-GCM (0x0002), ChaCha20-Poly1305 (0x0003).
"""

from __future__ import annotations

import abc
import functools
import hashlib
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

__all__ = [
    "AEAD_AES_128_GCM",
    "AEAD_AES_256_GCM",
    "AEAD_CHACHA20_POLY1305",
    "AEADS",
    "KDFS",
    "KDF_HKDF_SHA256",
    "KEMS",
    "KEM_MLKEM768_X25519",
    "KEM_X25519_HKDF_SHA256",
    "Aead",
    "Context",
    "DHKEMX25519",
    "HPKEError",
    "HkdfSha256",
    "Kem",
    "KEMError",
    "MLKEM768X25519",
    "MessageLimitReachedError",
    "OpenError",
    "RecipientContext",
    "SenderContext",
    "Suite",
    "UnsupportedAlgorithmError",
    "setup_base_r",
    "setup_base_s",
]

KEM_X25519_HKDF_SHA256 = 0x0020
KEM_MLKEM768_X25519 = 0x647A
KDF_HKDF_SHA256 = 0x0001
AEAD_AES_128_GCM = 0x0001
AEAD_AES_256_GCM = 0x0002
AEAD_CHACHA20_POLY1305 = 0x0003

_HPKE_V1 = b"HPKE-v1"
_MODE_BASE = 0x00
_XWING_LABEL = b"\\.//^\\"


class HPKEError(Exception):
    """Base class of HPKE failures."""


class UnsupportedAlgorithmError(HPKEError, ValueError):
    """A KEM, KDF or AEAD identifier that this module does not implement."""


class KEMError(HPKEError):
    """Encapsulation or decapsulation failed: a malformed or low-order key or encapsulated secret."""


class OpenError(HPKEError):
    """AEAD decryption failed: wrong key, tampered ciphertext or associated data."""


class MessageLimitReachedError(HPKEError):
    """The context's sequence number is exhausted (RFC 9180 section 5.2)."""


def _i2osp(value: int, length: int) -> bytes:
    return value.to_bytes(length, "big")


class HkdfSha256:
    """HKDF-SHA256 (RFC 5869) with HPKE's labelled variants (RFC 9180 section 4)."""

    kdf_id = KDF_HKDF_SHA256
    hash_size = 32

    def extract(self, salt: bytes, ikm: bytes) -> bytes:
        """HKDF-Extract; an empty salt means ``hash_size`` zero bytes."""
        mac = hmac.HMAC(salt or bytes(self.hash_size), hashes.SHA256())
        mac.update(ikm)
        return mac.finalize()

    def expand(self, prk: bytes, info: bytes, length: int) -> bytes:
        """HKDF-Expand to ``length`` bytes (at most ``255 * hash_size``)."""
        if not 0 < length <= 255 * self.hash_size:
            raise ValueError(f"HKDF-Expand length must be in [1, {255 * self.hash_size}], got {length}")
        return HKDFExpand(hashes.SHA256(), length, info).derive(prk)

    def labeled_extract(self, suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
        """``LabeledExtract`` of RFC 9180 section 4."""
        return self.extract(salt, _HPKE_V1 + suite_id + label + ikm)

    def labeled_expand(self, suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
        """``LabeledExpand`` of RFC 9180 section 4."""
        return self.expand(prk, _i2osp(length, 2) + _HPKE_V1 + suite_id + label + info, length)


@dataclass(frozen=True)
class Aead:
    """An HPKE AEAD: identifier, sizes (Nk, Nn, Nt in bytes) and the cryptography class."""

    aead_id: int
    name: str
    key_size: int
    nonce_size: int
    tag_size: int
    cipher: type

    def seal(self, key: bytes, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
        """Encrypt and authenticate; returns ciphertext || tag."""
        return self.cipher(key).encrypt(nonce, plaintext, aad)

    def open(self, key: bytes, nonce: bytes, aad: bytes, ciphertext: bytes) -> bytes:
        """Decrypt and verify; raises :class:`OpenError` on any failure."""
        try:
            return self.cipher(key).decrypt(nonce, ciphertext, aad)
        except InvalidTag as exc:
            raise OpenError("AEAD authentication failed") from exc


class Kem(abc.ABC):
    """The HPKE KEM interface over serialised keys (RFC 9180 section 4)."""

    kem_id: int
    name: str
    shared_secret_size: int
    enc_size: int
    public_key_size: int
    private_key_size: int

    @abc.abstractmethod
    def generate_key_pair(self) -> tuple[bytes, bytes]:
        """A fresh ``(private_key, public_key)``."""
        raise NotImplementedError

    @abc.abstractmethod
    def public_key(self, private_key: bytes) -> bytes:
        """The serialised public key of a serialised private key."""
        raise NotImplementedError

    @abc.abstractmethod
    def encap(self, public_key: bytes, *, ephemeral_key: bytes | None = None) -> tuple[bytes, bytes]:
        """``(shared_secret, enc)`` for the recipient ``public_key``."""
        raise NotImplementedError

    @abc.abstractmethod
    def decap(self, enc: bytes, private_key: bytes) -> bytes:
        """The shared secret encapsulated in ``enc``."""
        raise NotImplementedError

    def _check_len(self, value: bytes, size: int, what: str) -> None:
        if len(value) != size:
            raise KEMError(f"{self.name} {what} must be {size} bytes, got {len(value)}")


@functools.lru_cache(maxsize=32)
def _x25519_private(raw: bytes) -> x25519.X25519PrivateKey:
    # Cached: loading a key derives its public half (~30 us), and a gateway opens every request with
    # one of a handful of long-lived keys.
    return x25519.X25519PrivateKey.from_private_bytes(raw)


def _x25519_public_bytes(key: x25519.X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def _x25519_exchange(private: x25519.X25519PrivateKey, peer: bytes) -> bytes:
    try:
        return private.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
    except ValueError as exc:  # cryptography refuses an all-zero (low-order) result
        raise KEMError("X25519 exchange produced an invalid shared secret") from exc


class DHKEMX25519(Kem):
    """DHKEM(X25519, HKDF-SHA256), RFC 9180 section 4.1."""

    kem_id = KEM_X25519_HKDF_SHA256
    name = "DHKEM(X25519, HKDF-SHA256)"
    shared_secret_size = enc_size = public_key_size = private_key_size = 32
    _kdf = HkdfSha256()
    _suite_id = b"KEM" + _i2osp(KEM_X25519_HKDF_SHA256, 2)

    def generate_key_pair(self) -> tuple[bytes, bytes]:
        key = x25519.X25519PrivateKey.generate()
        return key.private_bytes_raw(), _x25519_public_bytes(key)

    def derive_key_pair(self, ikm: bytes) -> tuple[bytes, bytes]:
        """``DeriveKeyPair`` (RFC 9180 section 7.1.3); ``ikm`` must have at least 32 bytes."""
        if len(ikm) < self.private_key_size:
            raise ValueError(f"ikm must have at least {self.private_key_size} bytes, got {len(ikm)}")
        prk = self._kdf.labeled_extract(self._suite_id, b"", b"dkp_prk", ikm)
        sk = self._kdf.labeled_expand(self._suite_id, prk, b"sk", b"", self.private_key_size)
        return sk, self.public_key(sk)

    def public_key(self, private_key: bytes) -> bytes:
        self._check_len(private_key, self.private_key_size, "private key")
        return _x25519_public_bytes(_x25519_private(private_key))

    def _extract_and_expand(self, dh: bytes, kem_context: bytes) -> bytes:
        prk = self._kdf.labeled_extract(self._suite_id, b"", b"eae_prk", dh)
        return self._kdf.labeled_expand(
            self._suite_id, prk, b"shared_secret", kem_context, self.shared_secret_size
        )

    def encap(self, public_key: bytes, *, ephemeral_key: bytes | None = None) -> tuple[bytes, bytes]:
        """Encap; ``ephemeral_key`` (skE, 32 bytes) fixes the ephemeral key, for test vectors only."""
        self._check_len(public_key, self.public_key_size, "public key")
        sk_e = x25519.X25519PrivateKey.generate() if ephemeral_key is None else _x25519_private(ephemeral_key)
        enc = _x25519_public_bytes(sk_e)
        dh = _x25519_exchange(sk_e, public_key)
        return self._extract_and_expand(dh, enc + public_key), enc

    def decap(self, enc: bytes, private_key: bytes) -> bytes:
        self._check_len(enc, self.enc_size, "enc")
        self._check_len(private_key, self.private_key_size, "private key")
        sk_r = _x25519_private(private_key)
        dh = _x25519_exchange(sk_r, enc)
        return self._extract_and_expand(dh, enc + _x25519_public_bytes(sk_r))


class MLKEM768X25519(Kem):
    """MLKEM768-X25519 (X-Wing) hybrid KEM; private keys are 32-byte seeds."""

    kem_id = KEM_MLKEM768_X25519
    name = "MLKEM768-X25519"
    shared_secret_size = 32
    enc_size = 1088 + 32
    public_key_size = 1184 + 32
    private_key_size = 32

    def _expand(self, seed: bytes) -> tuple[mlkem.MLKEM768PrivateKey, x25519.X25519PrivateKey]:
        self._check_len(seed, self.private_key_size, "private key")
        expanded = hashlib.shake_256(seed).digest(96)
        return mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64]), _x25519_private(expanded[64:])

    def generate_key_pair(self) -> tuple[bytes, bytes]:
        seed = os.urandom(self.private_key_size)
        return seed, self.public_key(seed)

    def public_key(self, private_key: bytes) -> bytes:
        key_m, key_x = self._expand(private_key)
        return key_m.public_key().public_bytes_raw() + _x25519_public_bytes(key_x)

    @staticmethod
    def _combine(ss_m: bytes, ss_x: bytes, ct_x: bytes, pk_x: bytes) -> bytes:
        return hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + _XWING_LABEL).digest()

    def encap(self, public_key: bytes, *, ephemeral_key: bytes | None = None) -> tuple[bytes, bytes]:
        """Randomised encapsulation; a fixed ``ephemeral_key`` is not supported for this KEM."""
        if ephemeral_key is not None:
            raise UnsupportedAlgorithmError(f"{self.name} encapsulation cannot take a fixed ephemeral key")
        self._check_len(public_key, self.public_key_size, "public key")
        pk_m, pk_x = public_key[:1184], public_key[1184:]
        try:
            ss_m, ct_m = mlkem.MLKEM768PublicKey.from_public_bytes(pk_m).encapsulate()
        except ValueError as exc:
            raise KEMError(f"invalid ML-KEM-768 public key: {exc}") from exc
        ek_x = x25519.X25519PrivateKey.generate()
        ct_x = _x25519_public_bytes(ek_x)
        ss_x = _x25519_exchange(ek_x, pk_x)
        return self._combine(ss_m, ss_x, ct_x, pk_x), ct_m + ct_x

    def decap(self, enc: bytes, private_key: bytes) -> bytes:
        self._check_len(enc, self.enc_size, "enc")
        key_m, key_x = self._expand(private_key)
        ct_m, ct_x = enc[:1088], enc[1088:]
        try:
            ss_m = key_m.decapsulate(ct_m)
        except ValueError as exc:
            raise KEMError(f"ML-KEM-768 decapsulation failed: {exc}") from exc
        ss_x = _x25519_exchange(key_x, ct_x)
        return self._combine(ss_m, ss_x, ct_x, _x25519_public_bytes(key_x))


KEMS: dict[int, Kem] = {k.kem_id: k for k in (DHKEMX25519(), MLKEM768X25519())}
KDFS: dict[int, HkdfSha256] = {KDF_HKDF_SHA256: HkdfSha256()}
AEADS: dict[int, Aead] = {
    a.aead_id: a
    for a in (
        Aead(AEAD_AES_128_GCM, "AES-128-GCM", 16, 12, 16, AESGCM),
        Aead(AEAD_AES_256_GCM, "AES-256-GCM", 32, 12, 16, AESGCM),
        Aead(AEAD_CHACHA20_POLY1305, "ChaCha20-Poly1305", 32, 12, 16, ChaCha20Poly1305),
    )
}


@dataclass(frozen=True)
class Suite:
    """An HPKE ciphersuite by identifier; unsupported identifiers raise :class:`UnsupportedAlgorithmError`.

    Parameters
    ----------
    kem_id : int
        0x0020 (DHKEM X25519, default) or 0x647A (MLKEM768-X25519).
    kdf_id : int
        0x0001 (HKDF-SHA256).
    aead_id : int
        0x0001 (AES-128-GCM, default), 0x0002 (AES-256-GCM) or 0x0003 (ChaCha20-Poly1305).
    """

    kem_id: int = KEM_X25519_HKDF_SHA256
    kdf_id: int = KDF_HKDF_SHA256
    aead_id: int = AEAD_AES_128_GCM

    def __post_init__(self) -> None:
        for what, ident, table in (("KEM", self.kem_id, KEMS), ("KDF", self.kdf_id, KDFS)):
            if ident not in table:
                raise UnsupportedAlgorithmError(f"unsupported HPKE {what} id 0x{ident:04x}")
        if self.aead_id not in AEADS:
            # 0xFFFF (export-only) is a valid HPKE id but OHTTP always encrypts, so it is refused too.
            raise UnsupportedAlgorithmError(f"unsupported HPKE AEAD id 0x{self.aead_id:04x}")

    @property
    def kem(self) -> Kem:
        return KEMS[self.kem_id]

    @property
    def kdf(self) -> HkdfSha256:
        return KDFS[self.kdf_id]

    @property
    def aead(self) -> Aead:
        return AEADS[self.aead_id]

    @property
    def suite_id(self) -> bytes:
        """``"HPKE" || kem_id || kdf_id || aead_id`` (RFC 9180 section 5.1)."""
        return b"HPKE" + _i2osp(self.kem_id, 2) + _i2osp(self.kdf_id, 2) + _i2osp(self.aead_id, 2)

    def key_schedule(self, shared_secret: bytes, info: bytes) -> tuple[bytes, bytes, bytes]:
        """Base-mode ``KeySchedule``; returns ``(key, base_nonce, exporter_secret)``."""
        kdf, sid = self.kdf, self.suite_id
        psk_id_hash = kdf.labeled_extract(sid, b"", b"psk_id_hash", b"")
        info_hash = kdf.labeled_extract(sid, b"", b"info_hash", info)
        context = bytes([_MODE_BASE]) + psk_id_hash + info_hash
        secret = kdf.labeled_extract(sid, shared_secret, b"secret", b"")
        key = kdf.labeled_expand(sid, secret, b"key", context, self.aead.key_size)
        base_nonce = kdf.labeled_expand(sid, secret, b"base_nonce", context, self.aead.nonce_size)
        exporter_secret = kdf.labeled_expand(sid, secret, b"exp", context, kdf.hash_size)
        return key, base_nonce, exporter_secret


class Context:
    """Shared state of an HPKE encryption context (RFC 9180 sections 5.2-5.3): key, nonce, exporter."""

    def __init__(self, suite: Suite, shared_secret: bytes, info: bytes) -> None:
        self.suite = suite
        self.key, self.base_nonce, self.exporter_secret = suite.key_schedule(shared_secret, info)
        self.seq = 0

    def _nonce(self) -> bytes:
        seq = self.seq.to_bytes(len(self.base_nonce), "big")
        return bytes(a ^ b for a, b in zip(self.base_nonce, seq, strict=True))

    def _advance(self) -> None:
        if self.seq >= (1 << (8 * len(self.base_nonce))) - 1:
            raise MessageLimitReachedError("HPKE sequence number exhausted")
        self.seq += 1

    def export(self, exporter_context: bytes, length: int) -> bytes:
        """``Export``: a secret of ``length`` bytes bound to this context and ``exporter_context``."""
        kdf = self.suite.kdf
        return kdf.labeled_expand(self.suite.suite_id, self.exporter_secret, b"sec", exporter_context, length)


class SenderContext(Context):
    """The sender's context from :func:`setup_base_s`."""

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        """Encrypt the next message; the sequence number advances on success."""
        ciphertext = self.suite.aead.seal(self.key, self._nonce(), aad, plaintext)
        self._advance()
        return ciphertext


class RecipientContext(Context):
    """The recipient's context from :func:`setup_base_r`."""

    def open(self, aad: bytes, ciphertext: bytes) -> bytes:
        """Decrypt the next message; raises :class:`OpenError` and keeps the sequence number on failure."""
        plaintext = self.suite.aead.open(self.key, self._nonce(), aad, ciphertext)
        self._advance()
        return plaintext


def setup_base_s(
    suite: Suite, public_key: bytes, info: bytes, *, ephemeral_key: bytes | None = None
) -> tuple[bytes, SenderContext]:
    """``SetupBaseS``: returns ``(enc, context)`` for the recipient's serialised ``public_key``.

    ``ephemeral_key`` fixes the sender's ephemeral private key; use it only to reproduce test vectors.
    """
    shared_secret, enc = suite.kem.encap(public_key, ephemeral_key=ephemeral_key)
    return enc, SenderContext(suite, shared_secret, info)


def setup_base_r(suite: Suite, enc: bytes, private_key: bytes, info: bytes) -> RecipientContext:
    """``SetupBaseR``: the recipient's context for ``enc`` and its serialised ``private_key``."""
    return RecipientContext(suite, suite.kem.decap(enc, private_key), info)
