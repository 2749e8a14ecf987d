"""Where the gateway's sealed key records live: the :class:`KeyStorage` interface and two implementations.

A stored key is ``(key_id, epoch, record)``: the one-byte OHTTP key id (RFC 9458 section 3), an epoch
that numbers every key the deployment ever made (1, 2, 3, ...; never reused, unlike key ids), and the
AES-GCM sealed record, whose associated data binds both. Retiring a key deletes its record and keeps a
*tombstone* ``(epoch, key_id)``, so a record of a retired epoch that comes back (restored from a backup)
is recognised and refused by the :class:`~veil.cloud_service.keyring.Keyring`.

Storage is insert-only for live keys: :meth:`KeyStorage.add` fails (returns ``False``) when the epoch or
the key id is taken. That is the compare-and-set that lets several processes rotate concurrently: each
proposes ``max(epoch) + 1``, one insert wins, the others reload and adopt the winner's key.

The database implementation is :class:`veil.cloud_service.gateway_setup.DatabaseKeyStorage`.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from veil.client_sdk.atomic_files import atomic_write_bytes

__all__ = ["DirectoryKeyStorage", "KeyStorage", "MemoryKeyStorage", "StoredKey", "StoredKeys"]


@dataclass(frozen=True)
class StoredKey:
    """One live key as stored: ids in the clear, the key itself sealed."""

    key_id: int
    """OHTTP key id, 0-255 (reused after retirement)."""
    epoch: int
    """Deployment-wide key number, >= 1, never reused."""
    record: bytes
    """AES-256-GCM ``nonce || ciphertext``; the associated data binds ``key_id`` and ``epoch``."""


@dataclass(frozen=True)
class StoredKeys:
    """Everything a storage holds: live keys, and tombstones of retired ones (``epoch -> key_id``)."""

    live: list[StoredKey] = field(default_factory=list)
    retired: dict[int, int] = field(default_factory=dict)

    @property
    def max_epoch(self) -> int:
        """The highest epoch ever used (0 for an empty storage)."""
        return max([k.epoch for k in self.live] + list(self.retired), default=0)


class KeyStorage(Protocol):
    """Where sealed key records live."""

    def load(self) -> StoredKeys:
        """The live keys and the tombstones."""
        ...

    def add(self, key: StoredKey) -> bool:
        """Insert a new live key; ``False`` (nothing written) when its epoch or key id is taken."""
        ...

    def retire(self, epoch: int) -> bool:
        """Delete the live key of ``epoch`` and keep its tombstone, atomically; ``False`` if not live."""
        ...


def _check(key: StoredKey) -> None:
    if not 0 <= key.key_id <= 255 or key.epoch < 1 or not key.record:
        raise ValueError(f"need key_id in 0..255, epoch >= 1 and a record; got {key.key_id}, {key.epoch}")


class MemoryKeyStorage:
    """In-process storage (tests, single-process demos)."""

    def __init__(self) -> None:
        self.live: dict[int, StoredKey] = {}
        self.retired: dict[int, int] = {}
        self._lock = threading.Lock()

    def load(self) -> StoredKeys:
        with self._lock:
            return StoredKeys(sorted(self.live.values(), key=lambda k: k.epoch), dict(self.retired))

    def add(self, key: StoredKey) -> bool:
        _check(key)
        with self._lock:
            taken = key.epoch in self.live or key.epoch in self.retired
            if taken or any(k.key_id == key.key_id for k in self.live.values()):
                return False
            self.live[key.epoch] = key
            return True

    def retire(self, epoch: int) -> bool:
        with self._lock:
            key = self.live.pop(epoch, None)
            if key is None:
                return False
            self.retired.setdefault(epoch, key.key_id)
            return True


_FILE_MAGIC = b"VEILOHK2"
_LEGACY_MAGIC = b"VEILOHK1"


class DirectoryKeyStorage(MemoryKeyStorage):
    """One file, ``ohttp-keys.bin``, in ``path``: replaced atomically, mode 0600, directory 0700.

    For one process (a single gateway without a database); several processes sharing keys use the
    database storage, whose inserts are atomic across processes. Each entry is ``key_id (1 byte) ||
    epoch (8) || record length (4) || record``; a tombstone has an empty record.
    """

    filename = "ohttp-keys.bin"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)

    @property
    def file(self) -> Path:
        return self.path / self.filename

    def load(self) -> StoredKeys:
        # lazy: keyring imports this module (an import cycle at module level)
        from veil.cloud_service.keyring import KeyringError, LegacyKeyRecordError

        self.live, self.retired = {}, {}
        if self.file.exists():
            data = self.file.read_bytes()
            if data.startswith(_LEGACY_MAGIC):
                raise LegacyKeyRecordError(
                    f"{self.file} holds keys sealed before key epochs (format 1); they are refused: "
                    "delete the file and restart to make new keys"
                )
            if not data.startswith(_FILE_MAGIC):
                raise KeyringError(f"{self.file} is not a Veil OHTTP key file")
            pos = len(_FILE_MAGIC)
            while pos < len(data):
                if pos + 13 > len(data):
                    raise KeyringError(f"{self.file} is truncated")
                key_id, epoch = data[pos], int.from_bytes(data[pos + 1 : pos + 9], "big")
                size = int.from_bytes(data[pos + 9 : pos + 13], "big")
                record = data[pos + 13 : pos + 13 + size]
                if len(record) != size:
                    raise KeyringError(f"{self.file} is truncated")
                if size:
                    self.live[epoch] = StoredKey(key_id, epoch, record)
                else:
                    self.retired[epoch] = key_id
                pos += 13 + size
        return super().load()

    def add(self, key: StoredKey) -> bool:
        self.load()
        if not super().add(key):
            return False
        self._save()
        return True

    def retire(self, epoch: int) -> bool:
        self.load()
        if not super().retire(epoch):
            return False
        self._save()
        return True

    def _save(self) -> None:
        entries = [(k.key_id, k.epoch, k.record) for k in self.live.values()]
        entries += [(key_id, epoch, b"") for epoch, key_id in self.retired.items()]
        payload = _FILE_MAGIC + b"".join(
            bytes([key_id]) + epoch.to_bytes(8, "big") + len(record).to_bytes(4, "big") + record
            for key_id, epoch, record in sorted(entries, key=lambda e: e[1])
        )
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write_bytes(self.file, payload, mode=0o600)
