"""``veil gateway public-key`` and ``veil export-onnx --gateway-public-key`` as operators run them."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import assert_one_line_error

from veil.client_sdk.ohttp.keysig import (
    encode_public_key,
    public_key_bytes,
    signing_key_from_seed,
)
from veil.client_sdk.runtime.manifest import read_manifest
from veil.cloud_service.config import ServiceConfig
from veil.cloud_service.gateway_signing import KeyConfigSigner

pytestmark = pytest.mark.integration


def _veil(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "VEIL_GATEWAY_SIGNING_KEY"}
    full.update({"VEIL_DATA_DIR": str(data_dir), "VEIL_ENVIRONMENT": "development", **env})
    return subprocess.run(
        [sys.executable, "-m", "veil.cli.main", *args], capture_output=True, text=True, env=full, timeout=300
    )


def test_public_key_prints_the_key_the_gateway_signs_with(tmp_path: Path) -> None:
    shown = _veil(tmp_path, "gateway", "public-key", "--json")
    assert shown.returncode == 0, shown.stderr
    out = json.loads(shown.stdout)
    signer = KeyConfigSigner.from_config(ServiceConfig(data_dir=tmp_path))  # the key `veil serve` loads
    assert out == {"public_key": signer.public_key_b64, "key_id": signer.key_id}
    assert len(base64.b64decode(out["public_key"])) == 32
    assert_one_line_error(
        _veil(tmp_path, "gateway", "public-key", VEIL_GATEWAY_SIGNING_KEY="not-base64!"),
        "VEIL_GATEWAY_SIGNING_KEY",
    )


@pytest.mark.slow
def test_export_onnx_records_the_gateway_key_in_the_manifest(tmp_path: Path) -> None:
    key = encode_public_key(public_key_bytes(signing_key_from_seed(b"\x22" * 32)))
    out = tmp_path / "onnx"
    done = _veil(
        tmp_path, "export-onnx", "--out", str(out), "--families", "gaussian", "--gateway-public-key", key
    )
    assert done.returncode == 0, done.stderr
    assert read_manifest(out).gateway_public_key == key
    assert_one_line_error(
        _veil(tmp_path, "export-onnx", "--out", str(tmp_path / "bad"), "--gateway-public-key", "abc"),
        "gateway_public_key",
    )
    assert not (tmp_path / "bad").exists()  # refused before anything was exported
