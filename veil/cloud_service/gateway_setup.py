"""Wire the OHTTP gateway to the service: key-encryption key, key and replay storage in the database.

The sealed key records live in the ``gateway_keys`` table (tombstones of retired keys in
``gateway_key_tombstones``) and the digests of accepted encapsulations in ``ohttp_replays``, so several
API workers on one database publish and accept the same keys and refuse each other's replays, across
restarts. The key-encryption key comes from ``VEIL_GATEWAY_KEK``; in development, when it is unset,
one is generated once into ``<data_dir>/gateway.kek`` (mode 0600).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from veil.cloud_service.dev_secrets import development_secret
from veil.cloud_service.gateway import Gateway, Keyring
from veil.cloud_service.key_storage import StoredKey, StoredKeys
from veil.cloud_service.replay import ReplayVerdict, SeenRequest
from veil.cloud_service.store.ohttp import (
    add_gateway_key,
    forget_replays,
    load_gateway_keys,
    record_replays,
    retire_gateway_key,
)

if TYPE_CHECKING:  # the config pulls in the model engine (torch); a bare gateway does not need it
    from veil.cloud_service.config import ServiceConfig

__all__ = [
    "DatabaseKeyStorage",
    "DatabaseReplayStore",
    "build_gateway",
    "build_keyring",
    "development_kek",
]


class DatabaseKeyStorage:
    """:class:`~veil.cloud_service.key_storage.KeyStorage` on ``gateway_keys`` and its tombstones.

    ``add`` is one conditional INSERT (primary key on the epoch, unique live key id, no tombstone of the
    epoch), so of several workers rotating at once exactly one succeeds.
    """

    def __init__(self, sessions: Any) -> None:
        self.sessions = sessions

    def load(self) -> StoredKeys:
        with self.sessions() as session:
            live, retired = load_gateway_keys(session)
        return StoredKeys([StoredKey(*row) for row in live], retired)

    def add(self, key: StoredKey) -> bool:
        with self.sessions() as session:
            return add_gateway_key(session, key.key_id, key.epoch, key.record)

    def retire(self, epoch: int) -> bool:
        with self.sessions() as session:
            return retire_gateway_key(session, epoch)


class DatabaseReplayStore:
    """:class:`~veil.cloud_service.replay.ReplayStore` on the ``ohttp_replays`` table.

    One transaction per :meth:`record` call (a batch, with :class:`~veil.cloud_service.replay.GroupCommit`);
    the primary key on the digest makes each insert atomic across workers.
    """

    def __init__(self, sessions: Any) -> None:
        self.sessions = sessions

    def record(self, seen: Sequence[SeenRequest]) -> list[ReplayVerdict]:
        with self.sessions() as session:
            verdicts = record_replays(session, [(s.digest, s.key_id, s.epoch) for s in seen])
        return [ReplayVerdict(v) for v in verdicts]

    def forget(self, epochs: Collection[int]) -> int:
        with self.sessions() as session:
            return forget_replays(session, epochs)


def development_kek(data_dir: Path) -> bytes:
    """Read or create ``<data_dir>/gateway.kek`` (32 random bytes, mode 0600)."""
    return development_secret(Path(data_dir) / "gateway.kek")


def build_keyring(config: ServiceConfig, sessions: Any) -> Keyring:
    """The service's key ring on the database (raises ``KeyringError`` subclasses; see :class:`Keyring`)."""
    kek = config.gateway_kek if config.gateway_kek is not None else development_kek(config.data_dir)
    return Keyring(
        DatabaseKeyStorage(sessions), kek, kem=config.gateway_kem, grace_period_s=config.key_grace_s
    )


def build_gateway(config: ServiceConfig, sessions: Any) -> Gateway:
    """The service's gateway: keys and replays in the database behind ``sessions``."""
    return Gateway(
        build_keyring(config, sessions),
        replays=DatabaseReplayStore(sessions),
        max_request_bytes=config.max_body_bytes,
        padding_buckets=config.padding_buckets,
    )
