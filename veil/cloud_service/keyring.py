"""The OHTTP gateway's key ring (RFC 9458 section 3): HPKE keys with one-byte key ids, sealed at rest.

Each key has a key id (0-255, what clients name in their requests, reused over time) and an *epoch*
(1, 2, 3, ... over the deployment's life, never reused). A key's record is sealed with AES-256-GCM
(NIST SP 800-38D) under a 32-byte key-encryption key (KEK); the associated data is
``"veil/ohttp-gateway-key/v2" || key_id || epoch``, so a record copied to another key id or epoch does
not open. Retired keys leave a tombstone in the :class:`~veil.cloud_service.key_storage.KeyStorage`;
a record of a tombstoned epoch that reappears (a restored backup) raises :class:`RevivedKeyError` and
is never served. Records sealed before epochs existed (associated data ``.../v1``) raise
:class:`LegacyKeyRecordError`: the store's migration 0002 drops them, so a deployment starts with fresh
keys and phones fetch the new key configuration on their next request.

Life cycle: the newest key is *current* (advertised first). :meth:`Keyring.rotate` adds a new current
key; older keys keep working until :meth:`Keyring.retire` removes those rotated out more than
``grace_period_s`` ago (a key is rotated out when its successor is created). Records are immutable, so
several processes can share one storage: rotation is an insert that only one of them wins.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
from veil.cloud_service.key_storage import (
    DirectoryKeyStorage,
    KeyStorage,
    MemoryKeyStorage,
    StoredKey,
    StoredKeys,
)

__all__ = [
    "KEM_NAMES",
    "DirectoryKeyStorage",
    "KeyStorage",
    "Keyring",
    "KeyringError",
    "LegacyKeyRecordError",
    "MemoryKeyStorage",
    "RevivedKeyError",
    "WrongKeyEncryptionKeyError",
    "purge_revived",
    "record_aad",
]

KEM_NAMES = {"x25519": KEM_X25519_HKDF_SHA256, "mlkem768-x25519": KEM_MLKEM768_X25519}
_AAD_PREFIX = b"veil/ohttp-gateway-key/v2"
_LEGACY_AAD = b"veil/ohttp-gateway-key/v1"
_META = struct.Struct(">Q")  # created_at (unix seconds)


class KeyringError(Exception):
    """The key store is unreadable, corrupt, or the keyring cannot allocate a key id."""


class WrongKeyEncryptionKeyError(KeyringError):
    """A stored record does not open: wrong KEK, or the record was altered or moved to another id/epoch."""


class RevivedKeyError(KeyringError):
    """A record of a retired key (its epoch has a tombstone) is back in the store; it is not served."""

    def __init__(self, message: str, key_id: int, epoch: int) -> None:
        super().__init__(message)
        self.key_id, self.epoch = key_id, epoch


class LegacyKeyRecordError(KeyringError):
    """A record sealed before key epochs (associated data v1); refused rather than trusted."""


def record_aad(key_id: int, epoch: int) -> bytes:
    """The AES-GCM associated data of a sealed record: binds it to its key id and epoch."""
    return _AAD_PREFIX + bytes([key_id]) + epoch.to_bytes(8, "big")


@dataclass(frozen=True)
class _Entry:
    key: GatewayKeyPair
    epoch: int
    created_at: int


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

    Raises
    ------
    WrongKeyEncryptionKeyError, RevivedKeyError, LegacyKeyRecordError, KeyringError
        From :meth:`reload` (also on construction): the stored records cannot all be trusted.
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
        self._lock = threading.RLock()
        self._entries: list[_Entry] = []  # by epoch, oldest first; the last is current
        # (key pairs by id, epochs by id): one tuple, swapped whole on reload, read without the lock.
        self._view: tuple[dict[int, GatewayKeyPair], dict[int, int]] = ({}, {})
        self._retired: dict[int, int] = {}
        self._max_epoch = 0
        self._opened: dict[int, tuple[bytes, _Entry]] = {}
        self.reload()
        if not self._entries:
            # Compare-and-set on what reload() just read: of processes starting together on an empty
            # store, one insert wins and the others adopt its key (rotate() would re-read and add a second).
            with self._lock:
                self._propose()
                self.reload()

    # -- storage -------------------------------------------------------------------------------------

    def reload(self) -> None:
        """Re-read the storage (another process may have rotated or retired).

        Nothing changes in memory when a record cannot be trusted: the keys served so far stay served.
        """
        with self._lock:
            self._install(self.storage.load())

    def _install(self, stored: StoredKeys) -> None:
        for key in stored.live:
            if key.epoch in stored.retired:
                raise RevivedKeyError(
                    f"gateway key id {key.key_id} (epoch {key.epoch}) was retired, yet its record is in "
                    "the store again (restored from a backup?); it is refused. Remove it with "
                    "'veil gateway retire --revived'",
                    key.key_id,
                    key.epoch,
                )
        # Records are immutable: one opened before (same epoch, same bytes) need not be opened again.
        cache: dict[int, tuple[bytes, _Entry]] = {}
        for key in stored.live:
            hit = self._opened.get(key.epoch)
            cache[key.epoch] = (key.record, hit[1] if hit and hit[0] == key.record else self._open(key))
        entries = sorted((entry for _, entry in cache.values()), key=lambda e: e.epoch)
        self._opened = cache
        self._entries = entries
        self._view = ({e.key.key_id: e.key for e in entries}, {e.key.key_id: e.epoch for e in entries})
        self._retired = dict(stored.retired)
        self._max_epoch = stored.max_epoch

    def _seal(self, entry: _Entry) -> bytes:
        nonce = os.urandom(12)
        plaintext = _META.pack(entry.created_at) + entry.key.to_bytes()
        return nonce + self._aead.encrypt(nonce, plaintext, record_aad(entry.key.key_id, entry.epoch))

    def _open(self, stored: StoredKey) -> _Entry:
        if len(stored.record) < 12 + 16:  # nonce and tag
            raise KeyringError(f"gateway key record of key id {stored.key_id} is truncated")
        nonce, sealed = stored.record[:12], stored.record[12:]
        try:
            plaintext = self._aead.decrypt(nonce, sealed, record_aad(stored.key_id, stored.epoch))
        except InvalidTag:
            try:
                self._aead.decrypt(nonce, sealed, _LEGACY_AAD)
            except InvalidTag:
                raise WrongKeyEncryptionKeyError(
                    f"the OHTTP gateway key id {stored.key_id} (epoch {stored.epoch}) cannot be decrypted "
                    "with this key-encryption key (wrong KEK, or the record was altered or moved to "
                    "another key id or epoch)"
                ) from None
            raise LegacyKeyRecordError(
                f"gateway key id {stored.key_id} is sealed without its epoch (format 1) and is refused; "
                "migrate the store (veil serve does) so fresh keys are made"
            ) from None
        try:
            (created_at,) = _META.unpack_from(plaintext)
            key = GatewayKeyPair.from_bytes(plaintext[_META.size :])
        except (struct.error, KeyConfigError) as exc:
            raise KeyringError(f"corrupt gateway key record: {exc}") from exc
        if key.key_id != stored.key_id:  # cannot happen past the AAD check; kept as a second lock
            raise KeyringError(f"record of key id {stored.key_id} holds key id {key.key_id}")
        return _Entry(key, stored.epoch, created_at)

    # -- life cycle ----------------------------------------------------------------------------------

    def rotate(self) -> KeyConfig:
        """Make a new current key; older keys keep working until :meth:`retire`. Returns its config.

        When another process rotates at the same moment, one insert wins and both adopt its key.
        """
        with self._lock:
            self.reload()
            self._propose()
            self.reload()  # our key, or the one that won the race
            return self._entries[-1].key.config

    def rotate_if_due(self, interval_s: float) -> KeyConfig | None:
        """Rotate when the current key is ``interval_s`` old; the new key's config if this call made it.

        Compare-and-set: the new epoch is ``max + 1`` as read when deciding, so of several processes
        that find the key due at once, one insert wins; the others (and any process that reads after
        it) see a fresh current key and do nothing.
        """
        with self._lock:
            self.reload()
            if self._entries and self._clock() - self._entries[-1].created_at < interval_s:
                return None
            won = self._propose()
            self.reload()
            return self._entries[-1].key.config if won else None

    def _propose(self) -> bool:
        used = set(self._view[0])
        start = self._entries[-1].key.key_id if self._entries else 0
        free = [(start + i) % 256 for i in range(1, 257) if (start + i) % 256 not in used]
        if not free:
            raise KeyringError("all 256 key ids are in use; retire old keys first")
        key = GatewayKeyPair.generate(free[0], self.kem_id, self.symmetric_algorithms)
        entry = _Entry(key, self._max_epoch + 1, int(self._clock()))
        return self.storage.add(StoredKey(key.key_id, entry.epoch, self._seal(entry)))

    def retire(self, key_id: int | None = None) -> list[int]:
        """Remove key ``key_id``, or every key rotated out ``grace_period_s`` ago; returns removed ids.

        Replays seen under a removed key are forgotten by the replay store
        (:meth:`veil.cloud_service.replay.ReplayStore.forget` with :meth:`retired_epochs`).
        """
        with self._lock:
            self.reload()
            now = self._clock()
            entries = self._entries
            if key_id is not None:
                if entries and key_id == entries[-1].key.key_id:
                    raise ValueError(f"key {key_id} is the current key; rotate before retiring it")
                gone = [e for e in entries if e.key.key_id == key_id]
            else:
                # A key is rotated out when its successor is created.
                gone = [
                    e
                    for e, successor in zip(entries, entries[1:], strict=False)
                    if now - successor.created_at >= self.grace_period_s
                ]
            for entry in gone:
                self.storage.retire(entry.epoch)
            if gone:
                self.reload()
            return [e.key.key_id for e in gone]

    # -- what the gateway reads ----------------------------------------------------------------------

    @property
    def current(self) -> GatewayKeyPair:
        """The newest key: the one clients are told to use first."""
        with self._lock:
            return self._entries[-1].key

    def key_configs(self) -> list[KeyConfig]:
        """Configurations of the usable keys, newest first."""
        with self._lock:
            return [e.key.config for e in reversed(self._entries)]

    def key_config_bytes(self) -> bytes:
        """The ``application/ohttp-keys`` body to publish."""
        return encode_key_configs(self.key_configs())

    def private_keys_by_id(self) -> dict[int, GatewayKeyPair]:
        """Every usable key pair, by key id (for :func:`decapsulate_request`); do not modify."""
        return self._view[0]  # replaced, never mutated, on reload

    def epoch_of(self, key_id: int) -> int | None:
        """The epoch of the usable key with this id (``None`` when there is none)."""
        return self._view[1].get(key_id)

    def live_epochs(self) -> set[int]:
        """Epochs of the usable keys."""
        return set(self._view[1].values())

    def retired_epochs(self) -> set[int]:
        """Epochs with a tombstone (as of the last reload)."""
        return set(self._retired)


def purge_revived(storage: KeyStorage) -> list[tuple[int, int]]:
    """Delete live records whose epoch has a tombstone; returns their ``(key_id, epoch)``.

    Needs no KEK: the operator's way out of :class:`RevivedKeyError`.
    """
    stored = storage.load()
    revived = [(k.key_id, k.epoch) for k in stored.live if k.epoch in stored.retired]
    for _, epoch in revived:
        storage.retire(epoch)
    return revived
