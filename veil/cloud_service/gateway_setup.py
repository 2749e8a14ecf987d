"""Wire the OHTTP gateway to the service: key-encryption key, key storage in the database.

The sealed key records live in the ``gateway_keys`` table, so several API workers on one database
publish and accept the same keys. The key-encryption key comes from ``VEIL_GATEWAY_KEK``; in
development, when it is unset, one is generated once into ``<data_dir>/gateway.kek`` (mode 0600).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from sqlalchemy import delete

from veil.cloud_service.config import ServiceConfig
from veil.cloud_service.gateway import Gateway, Keyring

__all__ = ["DatabaseKeyStorage", "build_gateway", "development_kek"]


class DatabaseKeyStorage:
    """:class:`~veil.cloud_service.gateway.KeyStorage` on the ``gateway_keys`` table.

    The records are opaque (sealed); rows are numbered in ring order, so ``key_id`` is the slot here,
    and the OHTTP key id is inside the sealed record.
    """

    def __init__(self, sessions: Any) -> None:
        self.sessions = sessions

    def load(self) -> list[bytes]:
        from veil.cloud_service.store.repository import load_gateway_keys

        with self.sessions() as session:
            return [row.record for row in load_gateway_keys(session) if not row.retired]

    def save(self, records: list[bytes]) -> None:
        from veil.cloud_service.store.tables import GatewayKey
        from veil.cloud_service.store.util import utc_day

        if len(records) > 256:
            raise ValueError(f"at most 256 gateway keys, got {len(records)}")
        with self.sessions() as session, session.begin():
            session.execute(delete(GatewayKey))
            for slot, record in enumerate(records):
                session.add(GatewayKey(key_id=slot, record=record, created_day=utc_day(), retired=False))


def development_kek(data_dir: Path) -> bytes:
    """Read or create ``<data_dir>/gateway.kek`` (32 random bytes, mode 0600)."""
    path = Path(data_dir) / "gateway.kek"
    if path.exists():
        kek = path.read_bytes()
        if len(kek) != 32:
            raise ValueError(f"{path} must hold exactly 32 bytes, found {len(kek)}")
        return kek
    kek = secrets.token_bytes(32)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(kek)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)  # first writer wins when several workers start at once
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return development_kek(data_dir)


def build_gateway(config: ServiceConfig, sessions: Any) -> Gateway:
    kek = config.gateway_kek if config.gateway_kek is not None else development_kek(config.data_dir)
    keyring = Keyring(DatabaseKeyStorage(sessions), kek, kem=config.gateway_kem)
    return Gateway(
        keyring,
        max_request_bytes=config.max_body_bytes,
        replay_window_s=config.replay_window_s,
        padding_buckets=config.padding_buckets,
    )
