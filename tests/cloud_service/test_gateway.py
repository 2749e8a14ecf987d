"""The OHTTP gateway: key ring rotation and encryption at rest, request handling, replay refusal."""

from __future__ import annotations

import asyncio
import json
import os
import stat

import pytest
from servers import asgi_dispatch, make_echo_app

from veil.client_sdk.ohttp import (
    KEM_MLKEM768_X25519,
    BinaryRequest,
    BinaryResponse,
    DecryptionFailedError,
    KeyConfig,
    MalformedMessageError,
    ReplayedRequestError,
    RequestTooLargeError,
    UnknownKeyIdError,
    decode_key_configs,
    encapsulate_request,
)
from veil.cloud_service.gateway import (
    DirectoryKeyStorage,
    Gateway,
    Keyring,
    KeyringError,
    MemoryKeyStorage,
    WrongKeyEncryptionKeyError,
)
from veil.cloud_service.replay import MemoryReplayStore

KEK = bytes(range(32))


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_keyring_persists_encrypted_and_reloads(tmp_path) -> None:
    storage = DirectoryKeyStorage(tmp_path / "keys")
    keyring = Keyring(storage, KEK)
    key = keyring.current
    data = storage.file.read_bytes()
    assert key.private_key not in data and key.public_key not in data  # sealed, not just encoded
    assert stat.S_IMODE(storage.file.stat().st_mode) == 0o600
    assert stat.S_IMODE(storage.path.stat().st_mode) == 0o700
    assert os.listdir(storage.path) == [storage.filename]  # no temporary file left behind

    again = Keyring(DirectoryKeyStorage(tmp_path / "keys"), KEK)
    assert again.private_keys_by_id() == keyring.private_keys_by_id()
    with pytest.raises(WrongKeyEncryptionKeyError, match="key-encryption key"):
        Keyring(DirectoryKeyStorage(tmp_path / "keys"), bytes(32))
    storage.file.write_bytes(b"garbage")
    with pytest.raises(KeyringError):
        Keyring(storage, KEK)


def test_keyring_rotation_grace_and_retirement() -> None:
    clock = Clock()
    storage = MemoryKeyStorage()
    keyring = Keyring(storage, KEK, grace_period_s=3600, clock=clock)
    first = keyring.current
    clock.now += 10
    new_config = keyring.rotate()
    assert new_config.key_id != first.key_id and keyring.current.config == new_config
    assert set(keyring.private_keys_by_id()) == {first.key_id, new_config.key_id}
    assert [c.key_id for c in decode_key_configs(keyring.key_config_bytes())] == [
        new_config.key_id,
        first.key_id,
    ]

    # The rotated-out key still works within the grace period, and survives a reload.
    assert keyring.retire() == []
    assert set(Keyring(storage, KEK, clock=clock).private_keys_by_id()) == {first.key_id, new_config.key_id}
    clock.now += 3600
    assert keyring.retire() == [first.key_id]
    assert list(keyring.private_keys_by_id()) == [new_config.key_id]
    assert [c.key_id for c in Keyring(storage, KEK).key_configs()] == [new_config.key_id]
    with pytest.raises(ValueError, match="current"):
        keyring.retire(new_config.key_id)
    keyring.rotate()
    assert keyring.retire(new_config.key_id) == [new_config.key_id]


def test_key_ids_wrap_and_run_out() -> None:
    keyring = Keyring(MemoryKeyStorage(), KEK, grace_period_s=10**9)
    ids = [keyring.current.key_id] + [keyring.rotate().key_id for _ in range(255)]
    assert sorted(ids) == list(range(256))
    with pytest.raises(KeyringError, match="256"):
        keyring.rotate()


def test_keyring_argument_validation() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Keyring(MemoryKeyStorage(), b"short")
    with pytest.raises(ValueError, match="kem"):
        Keyring(MemoryKeyStorage(), KEK, kem="rsa")


async def _echo(request: BinaryRequest) -> BinaryResponse:
    body = {"method": request.method, "path": request.path, "content": request.content.decode()}
    return BinaryResponse(200, [("content-type", "application/json")], json.dumps(body).encode())


def _call(gateway: Gateway, config: KeyConfig, request: BinaryRequest, dispatch=_echo) -> BinaryResponse:
    body, ctx = encapsulate_request(config, request.encode())
    return BinaryResponse.decode(ctx.decapsulate_response(asyncio.run(gateway.handle(body, dispatch))))


@pytest.mark.parametrize("kem", ["x25519", "mlkem768-x25519"])
def test_gateway_round_trip(kem: str) -> None:
    keyring = Keyring(MemoryKeyStorage(), KEK, kem=kem)
    if kem == "mlkem768-x25519":
        assert keyring.current.kem_id == KEM_MLKEM768_X25519
    response = _call(
        Gateway(keyring), keyring.current.config, BinaryRequest("POST", path="/v1/x", content=b"hi")
    )
    assert response.status == 200
    assert json.loads(response.content) == {"method": "POST", "path": "/v1/x", "content": "hi"}


def test_gateway_accepts_old_keys_until_retired() -> None:
    clock = Clock()
    keyring = Keyring(MemoryKeyStorage(), KEK, grace_period_s=60, clock=clock)
    gateway = Gateway(keyring)
    old = keyring.current.config
    keyring.rotate()
    assert _call(gateway, old, BinaryRequest("GET")).status == 200
    clock.now += 60
    keyring.retire()
    with pytest.raises(UnknownKeyIdError):
        _call(gateway, old, BinaryRequest("GET"))


def test_replays_are_refused_for_the_whole_life_of_the_key() -> None:
    clock = Clock()
    keyring = Keyring(MemoryKeyStorage(), KEK, grace_period_s=3600, clock=clock)
    replays = MemoryReplayStore()
    gateway = Gateway(keyring, replays=replays)
    body, _ = encapsulate_request(keyring.current.config, BinaryRequest("GET").encode())
    asyncio.run(gateway.handle(body, _echo))
    with pytest.raises(ReplayedRequestError) as err:
        asyncio.run(gateway.handle(body, _echo))
    assert err.value.status == 400
    clock.now += 30 * 24 * 3600  # a month later, while the key still lives: still refused
    with pytest.raises(ReplayedRequestError):
        asyncio.run(gateway.handle(body, _echo))
    # Once the key retires, the request no longer decrypts and its digest is dropped.
    keyring.rotate()
    clock.now += 3600
    assert keyring.retire() and replays.forget(keyring.retired_epochs()) == 1 and len(replays) == 0
    with pytest.raises(UnknownKeyIdError):
        asyncio.run(gateway.handle(body, _echo))


def test_concurrent_requests_are_checked_in_one_batch() -> None:
    class CountingStore(MemoryReplayStore):
        calls = 0

        def record(self, seen):  # type: ignore[no-untyped-def]
            self.calls += 1
            return super().record(seen)

    keyring = Keyring(MemoryKeyStorage(), KEK)
    store = CountingStore()
    gateway = Gateway(keyring, replays=store)
    bodies = [
        encapsulate_request(keyring.current.config, BinaryRequest("GET").encode())[0] for _ in range(20)
    ]

    async def burst() -> list[object]:
        return await asyncio.gather(
            *[gateway.handle(b, _echo) for b in bodies + bodies[:5]], return_exceptions=True
        )

    results = asyncio.run(burst())
    assert sum(isinstance(r, bytes) for r in results) == 20
    assert sum(isinstance(r, ReplayedRequestError) for r in results) == 5
    assert len(store) == 20 and store.calls <= 2  # group commit: one store call for the burst


def test_errors_before_decryption_are_typed() -> None:
    keyring = Keyring(MemoryKeyStorage(), KEK)
    gateway = Gateway(keyring, max_request_bytes=200)
    config = keyring.current.config
    body, _ = encapsulate_request(config, BinaryRequest("GET").encode())
    with pytest.raises(RequestTooLargeError) as err:
        asyncio.run(gateway.handle(body + bytes(200), _echo))
    assert err.value.status == 413
    with pytest.raises(MalformedMessageError):
        asyncio.run(gateway.handle(body[:20], _echo))
    with pytest.raises(UnknownKeyIdError):
        asyncio.run(gateway.handle(bytes([(config.key_id + 1) % 256]) + body[1:], _echo))
    with pytest.raises(DecryptionFailedError):
        asyncio.run(gateway.handle(body[:-1] + bytes([body[-1] ^ 1]), _echo))
    # A failed decryption does not burn the request: the genuine one still goes through.
    asyncio.run(gateway.handle(body, _echo))


def test_errors_after_decryption_are_encapsulated() -> None:
    keyring = Keyring(MemoryKeyStorage(), KEK)
    gateway = Gateway(keyring)
    config = keyring.current.config

    body, ctx = encapsulate_request(config, b"\x00\x03GE")  # truncated binary HTTP
    response = BinaryResponse.decode(ctx.decapsulate_response(asyncio.run(gateway.handle(body, _echo))))
    assert response.status == 400 and json.loads(response.content)["error"]["type"] == "invalid_request"

    async def broken(request: BinaryRequest) -> BinaryResponse:
        raise RuntimeError("bug")

    assert _call(gateway, config, BinaryRequest("GET"), broken).status == 500
    expect = BinaryRequest("POST", headers=[("expect", "100-continue")], content=b"x")
    assert _call(gateway, config, expect).status == 417


def test_asgi_dispatch_serves_an_inner_app() -> None:
    keyring = Keyring(MemoryKeyStorage(), KEK)
    request = BinaryRequest(
        "POST",
        "https",
        "api.veil",
        "/v1/echo?x=1",
        [("content-type", "text/plain"), ("x-task", "qa")],
        b"hello",
    )
    response = _call(Gateway(keyring), keyring.current.config, request, asgi_dispatch(make_echo_app()))
    assert response.status == 201 and response.header("content-type") == "application/json"
    echo = json.loads(response.content)
    assert echo["path"] == "/v1/echo" and echo["body"] == "hello" and echo["client"] == "0.0.0.0"
    assert {k for k, _ in echo["headers"]} == {"host", "content-type", "x-task", "content-length"}
