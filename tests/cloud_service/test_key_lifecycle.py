"""Gateway key life cycle: sealed records bound to key id and epoch, no revival, rotation on schedule."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from veil.client_sdk.ohttp import (
    BinaryRequest,
    BinaryResponse,
    ReplayedRequestError,
    UnknownKeyIdError,
    encapsulate_request,
)
from veil.cloud_service.gateway import Gateway
from veil.cloud_service.gateway_setup import DatabaseKeyStorage, DatabaseReplayStore
from veil.cloud_service.key_lifecycle import KeyLifecycle
from veil.cloud_service.key_storage import DirectoryKeyStorage, MemoryKeyStorage, StoredKey
from veil.cloud_service.keyring import (
    Keyring,
    KeyringError,
    LegacyKeyRecordError,
    RevivedKeyError,
    WrongKeyEncryptionKeyError,
    purge_revived,
)
from veil.cloud_service.replay import MemoryReplayStore
from veil.cloud_service.store import make_engine, migrate, session_factory

KEK = bytes(range(32))
DAY = 24 * 3600.0


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def _ok(request: BinaryRequest) -> BinaryResponse:
    return BinaryResponse(200, [], b"ok")


def _send(gateway: Gateway, body: bytes) -> None:
    asyncio.run(gateway.handle(body, _ok))


def test_a_record_moved_to_another_id_or_epoch_or_altered_does_not_open() -> None:
    storage = MemoryKeyStorage()
    Keyring(storage, KEK)
    (key,) = storage.load().live
    for moved in (replace(key, epoch=key.epoch + 1), replace(key, key_id=(key.key_id + 1) % 256)):
        other = MemoryKeyStorage()
        other.add(moved)
        with pytest.raises(WrongKeyEncryptionKeyError, match=f"epoch {moved.epoch}.*moved"):
            Keyring(other, KEK)
    tampered = MemoryKeyStorage()
    tampered.add(replace(key, record=key.record[:-1] + bytes([key.record[-1] ^ 1])))
    with pytest.raises(WrongKeyEncryptionKeyError):
        Keyring(tampered, KEK)
    with pytest.raises(WrongKeyEncryptionKeyError, match="key-encryption key"):
        Keyring(storage, bytes(32))
    truncated = MemoryKeyStorage()
    truncated.add(replace(key, record=key.record[:20]))
    with pytest.raises(KeyringError, match="truncated"):
        Keyring(truncated, KEK)


def test_a_retired_record_restored_from_a_backup_is_refused_and_not_served() -> None:
    clock = Clock()
    storage = MemoryKeyStorage()
    keyring = Keyring(storage, KEK, grace_period_s=0, clock=clock)
    backup = storage.load().live[0]
    old_config = keyring.current.config
    keyring.rotate()
    assert keyring.retire() == [old_config.key_id]
    body, _ = encapsulate_request(old_config, BinaryRequest("GET").encode())

    storage.live[backup.epoch] = backup  # the operator restores last week's record
    with pytest.raises(RevivedKeyError) as err:
        keyring.reload()
    assert (err.value.key_id, err.value.epoch) == (backup.key_id, backup.epoch)
    assert old_config.key_id not in keyring.private_keys_by_id()  # the ring in memory is unchanged
    with pytest.raises(UnknownKeyIdError):
        _send(Gateway(keyring), body)
    with pytest.raises(RevivedKeyError):  # a fresh process refuses to start on it
        Keyring(storage, KEK)
    assert purge_revived(storage) == [(backup.key_id, backup.epoch)]
    assert Keyring(storage, KEK).key_configs() == keyring.key_configs()


def test_records_sealed_without_the_epoch_are_refused(tmp_path: Path) -> None:
    nonce = bytes(12)
    legacy = nonce + AESGCM(KEK).encrypt(nonce, b"\x00" * 16 + b"key", b"veil/ohttp-gateway-key/v1")
    storage = MemoryKeyStorage()
    storage.add(StoredKey(1, 1, legacy))
    with pytest.raises(LegacyKeyRecordError, match="without its epoch"):
        Keyring(storage, KEK)
    (tmp_path / DirectoryKeyStorage.filename).write_bytes(b"VEILOHK1" + b"\x00\x00\x00\x01x")
    with pytest.raises(LegacyKeyRecordError, match="format 1"):
        Keyring(DirectoryKeyStorage(tmp_path), KEK)


def test_rotation_and_retirement_follow_the_schedule() -> None:
    clock = Clock()
    keyring = Keyring(MemoryKeyStorage(), KEK, grace_period_s=DAY / 2, clock=clock)
    replays = MemoryReplayStore()
    gateway = Gateway(keyring, replays=replays)
    lifecycle = KeyLifecycle(keyring, replays, rotation_s=DAY)
    first = keyring.current.config
    sent = [encapsulate_request(first, BinaryRequest("GET").encode())[0] for _ in range(3)]
    for body in sent:
        _send(gateway, body)

    clock.now += DAY - 1
    assert lifecycle.tick().rotated_to is None  # not yet a day old
    clock.now += 1
    report = lifecycle.tick()
    assert report.rotated_to is not None and report.retired == [] and len(replays) == 3
    assert [c.key_id for c in keyring.key_configs()] == [report.rotated_to, first.key_id]
    _send(gateway, encapsulate_request(first, BinaryRequest("GET").encode())[0])  # grace: still works

    clock.now += DAY / 2
    report = lifecycle.tick()
    assert report.rotated_to is None and report.retired == [first.key_id]
    assert report.forgotten == 4 and len(replays) == 0  # retiring a key drops its replay digests
    with pytest.raises(UnknownKeyIdError):
        _send(gateway, sent[0])
    with pytest.raises(ValueError, match="rotation_s"):
        KeyLifecycle(keyring, replays, rotation_s=0)


def test_workers_ticking_at_once_rotate_once(store_url: str, tmp_path: Path) -> None:
    engine = make_engine(store_url, tmp_path)
    migrate(engine)
    sessions = session_factory(engine)
    clock = Clock()
    workers = [
        KeyLifecycle(
            Keyring(DatabaseKeyStorage(sessions), KEK, grace_period_s=DAY, clock=clock),
            DatabaseReplayStore(sessions),
            rotation_s=DAY,
        )
        for _ in range(4)
    ]
    assert len({w.keyring.current.key_id for w in workers}) == 1  # they started on one key too
    clock.now += DAY
    start = threading.Barrier(len(workers))
    reports = []

    def tick(worker: KeyLifecycle) -> None:
        start.wait()
        reports.append(worker.tick())

    threads = [threading.Thread(target=tick, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.rotated_to is not None for r in reports) == 1
    stored = DatabaseKeyStorage(sessions).load()
    assert [k.epoch for k in stored.live] == [1, 2]
    for worker in workers:
        worker.keyring.reload()
        assert worker.keyring.live_epochs() == {1, 2}
    engine.dispose()


def test_workers_starting_together_on_an_empty_store_make_one_key() -> None:
    shared = MemoryKeyStorage()

    class Interleaved(MemoryKeyStorage):
        """Worker B's view of the shared store: worker A commits its first key right after B's first read."""

        reads = 0

        def load(self):  # type: ignore[no-untyped-def]
            self.reads += 1
            stored = shared.load()
            if self.reads == 1:
                Keyring(shared, KEK)  # worker A
            return stored

        def add(self, key):  # type: ignore[no-untyped-def]
            return shared.add(key)

    b = Keyring(Interleaved(), KEK)
    (stored,) = shared.load().live  # B's proposal lost the compare-and-set instead of adding a second key
    assert b.current.key_id == stored.key_id and b.live_epochs() == {stored.epoch}


def test_replays_are_refused_after_a_long_delay_through_the_database(tmp_path: Path) -> None:
    engine = make_engine(None, tmp_path)
    migrate(engine)
    sessions = session_factory(engine)
    clock = Clock()
    keyring = Keyring(DatabaseKeyStorage(sessions), KEK, grace_period_s=DAY, clock=clock)
    body, _ = encapsulate_request(keyring.current.config, BinaryRequest("GET").encode())
    _send(Gateway(keyring, replays=DatabaseReplayStore(sessions)), body)
    clock.now += 365 * DAY  # a year on, a gateway built afresh (a restart) on the same database
    again = Gateway(
        Keyring(DatabaseKeyStorage(sessions), KEK, clock=clock), replays=DatabaseReplayStore(sessions)
    )
    with pytest.raises(ReplayedRequestError):
        _send(again, body)
    engine.dispose()


def test_the_background_task_rotates_and_survives_a_failing_pass() -> None:
    class FlakyReplays(MemoryReplayStore):
        failures = 0

        def forget(self, epochs):  # type: ignore[no-untyped-def]
            if self.failures == 0:
                self.failures += 1
                raise OSError("store briefly unreachable")
            return super().forget(epochs)

    keyring = Keyring(MemoryKeyStorage(), KEK, grace_period_s=0)
    replays = FlakyReplays()
    first = keyring.current.key_id
    lifecycle = KeyLifecycle(keyring, replays, rotation_s=1.0, check_every_s=0.05)

    async def run_briefly() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(lifecycle.run(), timeout=2.5)

    asyncio.run(run_briefly())
    assert replays.failures == 1  # the first pass failed; the schedule went on
    assert keyring.current.key_id != first and first not in keyring.private_keys_by_id()
