"""The OHTTP gateway's key ring (RFC 9458 section 3): HPKE keys with one-byte key ids, sealed at rest.

:class:`Keyring` holds the gateway's HPKE keys. ``rotate()`` adds a new key and keeps the previous ones
(still accepted) until ``retire()``. Keys are stored through a :class:`KeyStorage` and sealed at rest
with AES-256-GCM under a 32-byte key-encryption key (KEK).
"""

from __future__ import annotations

import os
import secrets
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from veil.client_sdk.ohttp.hpke import KEM_MLKEM768_X25519, KEM_X25519_HKDF_SHA256
from veil.client_sdk.ohttp.keys import (
    DEFAULT_SYMMETRIC_ALGORITHMS,
    GatewayKeyPair,
    KeyConfig,
    KeyConfigError,
    encode_key_configs,
)

__all__ = [
    "KEM_NAMES",
    "DirectoryKeyStorage",
    "KeyStorage",
    "Keyring",
    "KeyringError",
    "MemoryKeyStorage",
    "WrongKeyEncryptionKeyError",
]

KEM_NAMES = {"x25519": KEM_X25519_HKDF_SHA256, "mlkem768-x25519": KEM_MLKEM768_X25519}
_RECORD_AAD = b"veil/ohttp-gateway-key/v1"
_FILE_MAGIC = b"VEILOHK1"
_META = struct.Struct(">QQ")  # created_at, rotated_at (unix seconds; 0 = current key)


class KeyringError(Exception):
    """The key store is unreadable, corrupt, or the keyring cannot allocate a key id."""


class WrongKeyEncryptionKeyError(KeyringError):
    """The stored keys do not open with this key-encryption key."""


class KeyStorage(Protocol):
    """Where sealed key records live; each record is opaque ciphertext."""

    def load(self) -> list[bytes]: ...

    def save(self, records: list[bytes]) -> None: ...


class MemoryKeyStorage:
    """In-process storage (tests, single-process demos)."""

    def __init__(self) -> None:
        self.records: list[bytes] = []

    def load(self) -> list[bytes]:
        return list(self.records)

    def save(self, records: list[bytes]) -> None:
        self.records = list(records)


class DirectoryKeyStorage:
    """One file, ``ohttp-keys.bin``, in ``path``: replaced atomically, mode 0600, directory 0700."""

    filename = "ohttp-keys.bin"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @property
    def file(self) -> Path:
        return self.path / self.filename

    def load(self) -> list[bytes]:
        if not self.file.exists():
            return []
        data = self.file.read_bytes()
        if not data.startswith(_FILE_MAGIC):
            raise KeyringError(f"{self.file} is not a Veil OHTTP key file")
        records, pos = [], len(_FILE_MAGIC)
        while pos < len(data):
            size = int.from_bytes(data[pos : pos + 4], "big")
            record = data[pos + 4 : pos + 4 + size]
            if pos + 4 > len(data) or len(record) != size:
                raise KeyringError(f"{self.file} is truncated")
            records.append(record)
            pos += 4 + size
        return records

    def save(self, records: list[bytes]) -> None:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        payload = _FILE_MAGIC + b"".join(len(r).to_bytes(4, "big") + r for r in records)
        tmp = self.path / f".{self.filename}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.file)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)


@dataclass
class _Entry:
    key: GatewayKeyPair
    created_at: int
    rotated_at: int = 0  # 0 while it is the current key


class Keyring:
    """The gateway's HPKE keys, sealed at rest.

    Parameters
    ----------
    storage : KeyStorage
        Where the sealed records are kept.
    kek : bytes
        32-byte key-encryption key; every record is AES-256-GCM sealed under it.
    kem : str
        KEM for new keys: ``"x25519"`` (default) or ``"mlkem768-x25519"``.
    symmetric_algorithms : sequence of (kdf_id, aead_id)
        Pairs accepted with new keys; default HKDF-SHA256 with AES-128-GCM.
    grace_period_s : float
        How long a rotated-out key keeps working before ``retire()`` removes it.
    clock : callable
        Wall-clock seconds (injectable for tests).
    """

    def __init__(
        self,
        storage: KeyStorage,
        kek: bytes,
        *,
        kem: str = "x25519",
        symmetric_algorithms: Sequence[tuple[int, int]] = DEFAULT_SYMMETRIC_ALGORITHMS,
        grace_period_s: float = 7 * 24 * 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(kek, bytes | bytearray) or len(kek) != 32:
            raise ValueError("kek must be 32 bytes (an AES-256 key-encryption key)")
        if kem not in KEM_NAMES:
            raise ValueError(f"kem must be one of {sorted(KEM_NAMES)}, got {kem!r}")
        if grace_period_s < 0:
            raise ValueError(f"grace_period_s must be >= 0, got {grace_period_s}")
        self.storage = storage
        self.kem_id = KEM_NAMES[kem]
        self.symmetric_algorithms = tuple(symmetric_algorithms)
        self.grace_period_s = grace_period_s
        self._aead = AESGCM(bytes(kek))
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: list[_Entry] = []
        self.reload()
        if not self._entries:
            with self._lock:
                self._entries.append(self._new_entry(1))
                self._persist()

    def reload(self) -> None:
        """Re-read the storage (another process may have rotated)."""
        entries = [self._open(record) for record in self.storage.load()]
        with self._lock:
            self._entries = sorted(entries, key=lambda e: (e.rotated_at == 0, e.created_at))

    def _seal(self, entry: _Entry) -> bytes:
        nonce = os.urandom(12)
        plaintext = _META.pack(entry.created_at, entry.rotated_at) + entry.key.to_bytes()
        return nonce + self._aead.encrypt(nonce, plaintext, _RECORD_AAD)

    def _open(self, record: bytes) -> _Entry:
        try:
            plaintext = self._aead.decrypt(record[:12], record[12:], _RECORD_AAD)
        except InvalidTag:
            raise WrongKeyEncryptionKeyError(
                "the OHTTP gateway keys cannot be decrypted with this key-encryption key "
                "(wrong KEK, or the key file was altered)"
            ) from None
        try:
            created_at, rotated_at = _META.unpack_from(plaintext)
            return _Entry(GatewayKeyPair.from_bytes(plaintext[_META.size :]), created_at, rotated_at)
        except (struct.error, KeyConfigError) as exc:
            raise KeyringError(f"corrupt gateway key record: {exc}") from exc

    def _persist(self) -> None:
        self.storage.save([self._seal(e) for e in self._entries])

    def _new_entry(self, key_id: int) -> _Entry:
        key = GatewayKeyPair.generate(key_id, self.kem_id, self.symmetric_algorithms)
        return _Entry(key, int(self._clock()))

    @property
    def current(self) -> GatewayKeyPair:
        """The newest key: the one clients are told to use first."""
        with self._lock:
            return self._entries[-1].key

    def rotate(self) -> KeyConfig:
        """Make a new current key; older keys keep working until :meth:`retire`. Returns its config."""
        with self._lock:
            used = {e.key.key_id for e in self._entries}
            start = self._entries[-1].key.key_id
            free = [(start + i) % 256 for i in range(1, 257) if (start + i) % 256 not in used]
            if not free:
                raise KeyringError("all 256 key ids are in use; retire old keys first")
            now = int(self._clock())
            for entry in self._entries:
                entry.rotated_at = entry.rotated_at or now
            self._entries.append(self._new_entry(free[0]))
            self._persist()
            return self._entries[-1].key.config

    def retire(self, key_id: int | None = None) -> list[int]:
        """Remove key ``key_id``, or every rotated-out key past the grace period; returns removed ids."""
        with self._lock:
            now = self._clock()
            if key_id is not None:
                if key_id == self._entries[-1].key.key_id:
                    raise ValueError(f"key {key_id} is the current key; rotate before retiring it")
                gone = [e for e in self._entries if e.key.key_id == key_id]
            else:
                gone = [
                    e for e in self._entries if e.rotated_at and now - e.rotated_at >= self.grace_period_s
                ]
            if gone:
                self._entries = [e for e in self._entries if e not in gone]
                self._persist()
            return [e.key.key_id for e in gone]

    def key_configs(self) -> list[KeyConfig]:
        """Configurations of the usable keys, newest first."""
        with self._lock:
            return [e.key.config for e in reversed(self._entries)]

    def key_config_bytes(self) -> bytes:
        """The ``application/ohttp-keys`` body to publish."""
        return encode_key_configs(self.key_configs())

    def private_keys_by_id(self) -> dict[int, GatewayKeyPair]:
        """Every usable key pair, by key id (for :func:`decapsulate_request`)."""
        with self._lock:
            return {e.key.key_id: e.key for e in self._entries}
