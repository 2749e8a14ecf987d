"""The gateway's signing key in the ONNX export's manifest: written, kept by later exporters, validated."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from veil.client_sdk.ohttp.keysig import encode_public_key, public_key_bytes, signing_key_from_seed
from veil.client_sdk.runtime.manifest import (
    MANIFEST_FILE,
    ManifestEntry,
    ModelFileError,
    TensorSpec,
    add_entries,
    read_manifest,
    set_gateway_public_key,
)

KEY = encode_public_key(public_key_bytes(signing_key_from_seed(b"\x31" * 32)))


def _entry(name: str) -> ManifestEntry:
    spec = TensorSpec("x", ("n",), "float32")
    return ManifestEntry(name, f"{name}.onnx", "0" * 64, 17, (spec,), (spec,), "sampler")


def test_the_key_is_written_and_kept_when_entries_are_added(tmp_path: Path) -> None:
    add_entries(tmp_path, [_entry("a")])
    assert read_manifest(tmp_path).gateway_public_key is None
    assert "gateway_public_key" not in json.loads((tmp_path / MANIFEST_FILE).read_text())  # old format
    set_gateway_public_key(tmp_path, KEY)
    add_entries(tmp_path, [_entry("b")])  # e.g. the on-device LM exported later
    manifest = read_manifest(tmp_path)
    assert manifest.gateway_public_key == KEY and [e.name for e in manifest.entries] == ["a", "b"]


def test_a_malformed_key_is_refused_when_written_and_when_read(tmp_path: Path) -> None:
    for bad in ("abc", encode_public_key(b"\x00" * 31), "not base64 at all!"):
        with pytest.raises(ValueError, match="gateway_public_key"):
            set_gateway_public_key(tmp_path, bad)
    set_gateway_public_key(tmp_path, KEY)
    data = json.loads((tmp_path / MANIFEST_FILE).read_text())
    data["gateway_public_key"] = KEY[:-4]
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match="gateway_public_key"):
        read_manifest(tmp_path)


def test_a_client_on_the_exported_graphs_pins_the_manifest_key(tmp_path: Path) -> None:
    """``through_relay`` with an :class:`OnnxBackend` takes the key shipped in that folder's manifest."""
    pytest.importorskip("onnx")
    from veil.client_sdk.client import VeilClient
    from veil.client_sdk.math_backends import OnnxBackend
    from veil.client_sdk.ohttp.keysig import decode_public_key
    from veil.client_sdk.param_store import ParamStore
    from veil.models.onnx.export import export_onnx
    from veil.models.onnx.graphs import GraphShapes

    graphs = tmp_path / "graphs"
    export_onnx(graphs, ["gaussian"], GraphShapes(n_tokens=1, dim=3))
    store = ParamStore(tmp_path / "params.veil")
    unpinned = VeilClient.through_relay(
        "http://relay.invalid/ohttp", store, model="m", backend=OnnxBackend(graphs, "gaussian")
    )
    assert unpinned.transport.key_pin.shipped == ()  # no key in the manifest: pin on first use
    assert unpinned.transport.key_pin.path == tmp_path / "params.veil.gateway-key"
    set_gateway_public_key(graphs, KEY)
    shipped = VeilClient.through_relay(
        "http://relay.invalid/ohttp", store, model="m", backend=OnnxBackend(graphs, "gaussian")
    )
    assert shipped.transport.key_pin.shipped == (decode_public_key(KEY),)
    assert shipped.transport.key_pin.path is None  # a shipped key is never replaced by a pin
    for client in (unpinned, shipped):
        asyncio.run(client.aclose())
