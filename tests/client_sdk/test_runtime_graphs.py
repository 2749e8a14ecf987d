"""Loading exported graphs on the device: manifest format, verification of every file, feed checks."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from veil.client_sdk.runtime import (
    GraphInputError,
    ManifestEntry,
    ModelFileError,
    TensorSpec,
    add_entries,
    load_graph,
    load_graphs,
    read_manifest,
    read_opsets,
    write_manifest,
)
from veil.models.onnx.export import export_onnx
from veil.models.onnx.graphs import GraphShapes
from veil.models.onnx.manifest import describe_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("graphs")
    export_onnx(out, ["gaussian"], GraphShapes(n_tokens=2, dim=3))
    return out


@pytest.fixture
def folder(exported: Path, tmp_path: Path) -> Path:
    """A private copy that a test may corrupt."""
    target = tmp_path / "graphs"
    shutil.copytree(exported, target)
    return target


def _edit_manifest(folder: Path, name: str, **changes: object) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    for entry in data["entries"]:
        if entry["name"] == name:
            entry.update(changes)
    path.write_text(json.dumps(data))


def _rewrite_model(folder: Path, name: str, model: onnx.ModelProto) -> None:
    """Replace a model file and give the manifest its correct sha256 (so other checks are reached)."""
    path = folder / f"{name}.onnx"
    onnx.save(model, path)
    _edit_manifest(folder, name, sha256=describe_model(path, name=name, kind="x").sha256)


# ---------------------------------------------------------------------------------------------- manifest
def test_manifest_round_trip_and_fields(exported: Path) -> None:
    manifest = read_manifest(exported)
    assert manifest.veil_version and manifest.onnx_version == onnx.__version__
    assert len(manifest.created_day) == 10  # YYYY-MM-DD, nothing finer
    entry = manifest.entry("gaussian_sample")
    assert entry.opset == 17 and entry.kind == "sampler" and entry.family == "gaussian"
    assert entry.inputs[2] == TensorSpec("normal", ("batch", 2, 3), "float32")
    assert entry.outputs == (TensorSpec("sample", ("batch", 2, 3), "float32"),)
    assert entry.extra["params"] == ["mean", "log_std"]
    assert ManifestEntry.from_json(json.loads(json.dumps(entry.to_json()))) == entry
    with pytest.raises(KeyError, match="known"):
        manifest.entry("nope")


def test_add_entries_keeps_other_exporters_entries(folder: Path) -> None:
    lm = ManifestEntry(
        name="lm",
        file="lm.onnx",
        sha256="0" * 64,
        opset=17,
        inputs=[{"name": "input_ids", "shape": ["batch", "seq"], "dtype": "int64"}],  # dicts are accepted
        outputs=[{"name": "logits", "shape": ["batch", 49152], "dtype": "float32"}],
        kind="causal_lm",
    )
    add_entries(folder, [lm])
    export_onnx(folder, ["gaussian"], GraphShapes(n_tokens=2, dim=3))  # re-export replaces its own only
    names = [e.name for e in read_manifest(folder).entries]
    assert names == ["gaussian_sample", "gaussian_update", "gaussian_policy", "lm"]
    assert read_manifest(folder).entry("lm").inputs[0].shape == ("batch", "seq")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"format": "other"}, "not a Veil ONNX manifest"),
        ({"format_version": 99}, "format_version"),
        ({"created_day": "2025-01-01T10:00:00"}, "created_day"),
    ],
)
def test_bad_manifest_is_refused(folder: Path, change: dict, match: str) -> None:
    path = folder / "manifest.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | change))
    with pytest.raises(ModelFileError, match=match):
        read_manifest(folder)


def test_missing_or_garbled_manifest(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="no manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="unreadable"):
        read_manifest(tmp_path)


def test_manifest_entry_file_must_stay_in_the_folder(folder: Path) -> None:
    _edit_manifest(folder, "gaussian_sample", file="../elsewhere.onnx")
    with pytest.raises(ModelFileError, match="plain file name"):
        read_manifest(folder)
    with pytest.raises(ValueError, match="sha256"):
        ManifestEntry(name="x", file="x.onnx", sha256="abc", opset=17, inputs=(), outputs=(), kind="k")


def test_write_manifest_is_readable_by_all(tmp_path: Path) -> None:
    write_manifest(tmp_path, [])
    mode = stat.S_IMODE((tmp_path / "manifest.json").stat().st_mode)
    assert mode == 0o644 and read_manifest(tmp_path).entries == ()


# ---------------------------------------------------------------------------------------------- verification
def test_all_graphs_load_and_run(exported: Path) -> None:
    sessions = load_graphs(exported)
    assert sorted(sessions) == ["gaussian_policy", "gaussian_sample", "gaussian_update"]
    assert sorted(load_graphs(exported, kinds=["policy"])) == ["gaussian_policy"]
    out = sessions["gaussian_sample"].run(
        mean=np.zeros((2, 3)), log_std=np.zeros((2, 3)), normal=np.ones((4, 2, 3))
    )
    np.testing.assert_array_equal(out["sample"], np.ones((4, 2, 3), np.float32))


def test_corrupt_file_fails_sha256(folder: Path) -> None:
    path = folder / "gaussian_sample.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="sha256"):
        load_graph(folder, "gaussian_sample")
    with pytest.raises(ModelFileError, match="sha256"):  # one bad file fails the whole folder
        load_graphs(folder)


def test_missing_file_and_unknown_graph(folder: Path) -> None:
    (folder / "gaussian_update.onnx").unlink()
    with pytest.raises(ModelFileError, match="cannot read"):
        load_graph(folder, "gaussian_update")
    with pytest.raises(ModelFileError, match="no graph 'nope'"):
        load_graph(folder, "nope")


def test_opset_differing_from_manifest(folder: Path) -> None:
    _edit_manifest(folder, "gaussian_sample", opset=18)
    with pytest.raises(ModelFileError, match="opset 17 differs from the manifest's 18"):
        load_graph(folder, "gaussian_sample")


def test_opset_outside_supported_range(folder: Path) -> None:
    model = onnx.load(folder / "gaussian_sample.onnx")
    model.opset_import[0].version = 12
    _rewrite_model(folder, "gaussian_sample", model)
    _edit_manifest(folder, "gaussian_sample", opset=12)
    with pytest.raises(ModelFileError, match="outside"):
        load_graph(folder, "gaussian_sample")


def test_model_input_shape_differing_from_manifest(folder: Path) -> None:
    _edit_manifest(
        folder,
        "gaussian_sample",
        inputs=[
            {"name": "mean", "shape": [2, 4], "dtype": "float32"},
            {"name": "log_std", "shape": [2, 3], "dtype": "float32"},
            {"name": "normal", "shape": ["batch", 2, 3], "dtype": "float32"},
        ],
    )
    with pytest.raises(ModelFileError, match="'mean': shape"):
        load_graph(folder, "gaussian_sample")


def test_model_io_names_and_dtypes_differing_from_manifest(folder: Path) -> None:
    entry = read_manifest(folder).entry("gaussian_policy").to_json()
    renamed = [dict(o, name="verdict") if o["name"] == "ok" else o for o in entry["outputs"]]
    _edit_manifest(folder, "gaussian_policy", outputs=renamed)
    with pytest.raises(ModelFileError, match="names"):
        load_graph(folder, "gaussian_policy")
    retyped = [dict(o, dtype="float32") if o["name"] == "ok" else o for o in entry["outputs"]]
    _edit_manifest(folder, "gaussian_policy", outputs=retyped)
    with pytest.raises(ModelFileError, match="dtype bool"):
        load_graph(folder, "gaussian_policy")


def test_read_opsets_matches_onnx(exported: Path) -> None:
    data = (exported / "gaussian_update.onnx").read_bytes()
    model = onnx.load_from_string(data)
    assert read_opsets(data) == {o.domain: o.version for o in model.opset_import}
    with pytest.raises(ModelFileError):
        read_opsets(b"\x0a\xff")  # a length-delimited field that runs past the end


# ---------------------------------------------------------------------------------------------- feeds
def test_run_checks_feeds(exported: Path) -> None:
    session = load_graph(exported, "gaussian_sample")
    ok = {"mean": np.zeros((2, 3)), "log_std": np.zeros((2, 3)), "normal": np.zeros((1, 2, 3))}
    with pytest.raises(GraphInputError, match="missing inputs \\['normal'\\]"):
        session.run(mean=ok["mean"], log_std=ok["log_std"])
    with pytest.raises(GraphInputError, match="unknown inputs \\['extra'\\]"):
        session.run(ok, extra=1.0)
    with pytest.raises(GraphInputError, match="axis 1 must be 2"):
        session.run(ok | {"normal": np.zeros((1, 3, 3))})
    with pytest.raises(GraphInputError, match="must have shape"):
        session.run(ok | {"mean": np.zeros(6)})
    with pytest.raises(GraphInputError, match="NaN"):
        session.run(ok | {"mean": np.full((2, 3), np.nan)})
    with pytest.raises(GraphInputError, match="must be float32"):
        session.run(ok | {"mean": np.zeros((2, 3), dtype=bool)})


def test_symbolic_dimension_binds_once_per_call(exported: Path) -> None:
    session = load_graph(exported, "gaussian_update")
    names = ["mean", "log_std"]
    feeds = {k: np.zeros((2, 3)) for k in names}
    feeds |= {f"{p}_{k}": np.zeros((2, 3)) for p in ("anchor", "adam_m", "adam_v") for k in names}
    feeds |= {
        "sample": np.zeros((4, 2, 3)),
        "grad": np.zeros((5, 2, 3)),
        "adam_t": 0,
        "trainable": [True, True],
    }
    feeds |= {k: 0.1 for k in ("lr", "beta1", "beta2", "eps", "max_grad_norm", "prior_weight")}
    with pytest.raises(GraphInputError, match="batch=4, got 5"):
        session.run(feeds)
    out = session.run(feeds | {"grad": np.zeros((4, 2, 3))})
    assert out["new_adam_t"].shape == () and int(out["new_adam_t"]) == 1


def test_loading_graphs_needs_neither_torch_nor_onnx(exported: Path) -> None:
    code = (
        "import sys; from veil.client_sdk.runtime import load_graphs; load_graphs(sys.argv[1]);"
        "bad = [m for m in ('torch', 'onnx', 'scipy', 'veil.models') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code, str(exported)], check=True)
