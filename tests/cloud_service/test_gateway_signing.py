"""The gateway's signing key (generated once in development, first writer wins) and the cached signer."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from veil.client_sdk.ohttp import GatewayKeyPair, encode_key_configs, verify_key_configs
from veil.client_sdk.ohttp.keysig import public_key_bytes, signing_key_from_seed
from veil.cloud_service.config import ServiceConfig
from veil.cloud_service.gateway_signing import (
    SIGNING_KEY_FILE,
    KeyConfigSigner,
    development_signing_seed,
    load_signing_key,
)

BODY = encode_key_configs([GatewayKeyPair.generate(1).config])


def test_the_development_seed_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    seeds: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: seeds.append(development_signing_seed(tmp_path))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seeds)) == 1 and len(seeds[0]) == 32  # every starting worker reads the winner's key
    path = tmp_path / SIGNING_KEY_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [SIGNING_KEY_FILE]  # no temporary files left
    config = ServiceConfig(data_dir=tmp_path)
    assert public_key_bytes(load_signing_key(config)) == public_key_bytes(signing_key_from_seed(seeds[0]))


def test_a_corrupt_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / SIGNING_KEY_FILE).write_bytes(b"too short")
    with pytest.raises(ValueError, match="exactly 32 bytes"):
        load_signing_key(ServiceConfig(data_dir=tmp_path))


def test_the_configured_key_wins_over_the_file(tmp_path: Path) -> None:
    seed = b"\x11" * 32
    signer = KeyConfigSigner.from_config(ServiceConfig(data_dir=tmp_path, gateway_signing_key=seed))
    assert signer.public_key == public_key_bytes(signing_key_from_seed(seed))
    assert len(signer.key_id) == 16 and not (tmp_path / SIGNING_KEY_FILE).exists()


def test_the_signer_reuses_a_signature_until_the_body_changes_or_it_ages() -> None:
    signer = KeyConfigSigner(signing_key_from_seed(b"\x12" * 32), validity_s=3_600, refresh_s=60)
    first = signer.headers(BODY, now=1_000_000)
    assert signer.headers(BODY, now=1_000_059) == first
    aged = signer.headers(BODY, now=1_000_060)
    assert aged["signature"] != first["signature"] and "created=1000060" in aged["signature-input"]
    other = encode_key_configs([GatewayKeyPair.generate(2).config])
    changed = signer.headers(other, now=1_000_061)
    assert changed["content-digest"] != first["content-digest"]
    verified = verify_key_configs(200, changed, other, public_key=signer.public_key, now=1_000_100)
    assert verified.expires - verified.created == 3_600
    changed["cache-control"] = "max-age=1"  # callers get a copy
    assert "cache-control" not in signer.headers(other, now=1_000_062)
    with pytest.raises(ValueError, match="refresh_s"):
        KeyConfigSigner(signing_key_from_seed(b"\x12" * 32), validity_s=60, refresh_s=60)
