"""Key configurations (RFC 9458 section 3), the application/ohttp-keys list, and gateway key records."""

from __future__ import annotations

import pytest

from veil.client_sdk.ohttp import (
    KEM_MLKEM768_X25519,
    KEM_X25519_HKDF_SHA256,
    GatewayKeyPair,
    KeyConfig,
    KeyConfigError,
    UnsupportedSuiteError,
    decode_key_configs,
    encode_key_configs,
)

RFC_CONFIG = bytes.fromhex(
    "01002031e1f05a740102115220e9af918f738674aec95f54db6e04eb705aae8e79815500080001000100010003"
)


def test_rfc_key_config_decodes() -> None:
    config = KeyConfig.decode(RFC_CONFIG)
    assert config.key_id == 1 and config.kem_id == KEM_X25519_HKDF_SHA256
    assert config.public_key.hex() == "31e1f05a740102115220e9af918f738674aec95f54db6e04eb705aae8e798155"
    assert config.symmetric_algorithms == ((1, 1), (1, 3))
    assert config.encode() == RFC_CONFIG


def test_list_round_trip_with_both_kems() -> None:
    configs = [GatewayKeyPair.generate(7, KEM_MLKEM768_X25519).config, KeyConfig.decode(RFC_CONFIG)]
    data = encode_key_configs(configs)
    assert data[:2] == (3 + 1216 + 2 + 4).to_bytes(2, "big")
    assert decode_key_configs(data) == configs


def test_malformed_lists_are_rejected_whole() -> None:
    data = encode_key_configs([KeyConfig.decode(RFC_CONFIG)] * 2)
    for bad in (data[:-1], data[:1], data + b"\x00", b""):
        with pytest.raises(KeyConfigError):
            decode_key_configs(bad)
    for bad in (RFC_CONFIG[:-1], RFC_CONFIG + b"\x00", RFC_CONFIG[:20], RFC_CONFIG[:2]):
        with pytest.raises(KeyConfigError):
            KeyConfig.decode(bad)
    with pytest.raises(KeyConfigError):  # algorithms length not a multiple of 4
        KeyConfig.decode(RFC_CONFIG[:35] + b"\x00\x03\x00\x01\x00")


def test_unknown_kem_configs_are_skipped_or_refused() -> None:
    foreign = bytes([9]) + b"\x00\x10" + bytes(65) + b"\x00\x04\x00\x01\x00\x01"  # P-256 config
    data = len(foreign).to_bytes(2, "big") + foreign + len(RFC_CONFIG).to_bytes(2, "big") + RFC_CONFIG
    assert [c.key_id for c in decode_key_configs(data)] == [1]
    with pytest.raises(UnsupportedSuiteError):
        decode_key_configs(data, skip_unsupported=False)


def test_key_config_validation() -> None:
    with pytest.raises(KeyConfigError, match="key_id"):
        KeyConfig(256, KEM_X25519_HKDF_SHA256, bytes(32))
    with pytest.raises(KeyConfigError, match="32 bytes"):
        KeyConfig(1, KEM_X25519_HKDF_SHA256, bytes(31))
    with pytest.raises(KeyConfigError, match="pairs"):
        KeyConfig(1, KEM_X25519_HKDF_SHA256, bytes(32), [])
    with pytest.raises(UnsupportedSuiteError):
        KeyConfig(1, 0x0010, bytes(65))
    with pytest.raises(KeyConfigError):
        encode_key_configs([])
    assert KeyConfig(1, KEM_X25519_HKDF_SHA256, bytes(32), [(2, 1), (1, 2)]).supported_algorithms() == [
        (1, 2)
    ]


@pytest.mark.parametrize("kem_id", [KEM_X25519_HKDF_SHA256, KEM_MLKEM768_X25519])
def test_gateway_key_pair_serialisation(kem_id: int) -> None:
    key = GatewayKeyPair.generate(200, kem_id, [(1, 1), (1, 3)])
    restored = GatewayKeyPair.from_bytes(key.to_bytes())
    assert restored == key and restored.config == key.config
    assert key.private_key.hex() not in repr(key)
    for bad in (key.to_bytes()[:-1], b"\x02" + key.to_bytes()[1:], b""):
        with pytest.raises(KeyConfigError):
            GatewayKeyPair.from_bytes(bad)


def test_gateway_key_pair_refuses_a_foreign_public_key() -> None:
    a, b = GatewayKeyPair.generate(1), GatewayKeyPair.generate(2)
    with pytest.raises(KeyConfigError, match="does not belong"):
        GatewayKeyPair(1, KEM_X25519_HKDF_SHA256, a.private_key, b.public_key)
