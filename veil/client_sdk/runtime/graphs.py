"""Load exported ONNX graphs on the device, verified against their manifest, and run them.

Before a graph is used, its file must match the manifest entry exactly: the SHA-256 of its bytes, the
default-domain opset written in the file (read from the ModelProto bytes directly: the phone has no
``onnx`` package) and within :data:`MIN_OPSET`..:data:`MAX_OPSET`, and the input and output names, shapes
and element types that onnxruntime reports. Any difference raises :class:`ModelFileError`; the session is
built from the very bytes that were hashed (so a graph with external data files needs its own loader,
as the language model has). Sessions run on one thread (``intra_op_num_threads=1``), as
on a phone, with deterministic compute.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from veil.client_sdk.runtime.manifest import (
    Manifest,
    ManifestEntry,
    ModelFileError,
    TensorSpec,
    read_manifest,
)

__all__ = [
    "MAX_OPSET",
    "MIN_OPSET",
    "GraphInputError",
    "GraphSession",
    "ModelFileError",
    "load_graph",
    "load_graphs",
    "read_opsets",
]

MIN_OPSET = 13
MAX_OPSET = 21
"""Default-domain opsets this client accepts: onnxruntime 1.18, the oldest the SDK depends on, runs 7..21;
below 13 the graphs' operators have other signatures (``ReduceSum`` axes)."""

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
}


class GraphInputError(ValueError):
    """Feeds that do not match a graph's inputs (missing, unknown, wrong shape, dtype or NaN)."""


# ---------------------------------------------------------------------------------------------- opset
def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ModelFileError("truncated or malformed protobuf varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes) -> Iterable[tuple[int, int, Any]]:
    """Top-level protobuf fields ``(number, wire type, value)``; bytes for length-delimited ones."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ModelFileError(f"unsupported protobuf wire type {wire}")
        if pos > len(data):
            raise ModelFileError("truncated protobuf field")
        yield number, wire, value


def read_opsets(data: bytes) -> dict[str, int]:
    """``domain -> version`` from the ``opset_import`` field (8) of a serialized ONNX ModelProto.

    The default domain is reported as ``""`` (``"ai.onnx"`` is mapped to it).

    Raises
    ------
    ModelFileError
        If the bytes are not a well-formed protobuf message.
    """
    opsets: dict[str, int] = {}
    for number, wire, value in _fields(data):
        if number != 8 or wire != 2:
            continue
        domain, version = "", None
        for sub_number, sub_wire, sub_value in _fields(value):
            if sub_number == 1 and sub_wire == 2:
                domain = bytes(sub_value).decode("utf-8", errors="replace")
            elif sub_number == 2 and sub_wire == 0:
                version = int(sub_value)
        if version is not None:
            opsets["" if domain == "ai.onnx" else domain] = version
    return opsets


# ---------------------------------------------------------------------------------------------- sessions
def _check_io(where: str, expected: tuple[TensorSpec, ...], actual: list[Any]) -> None:
    names = [a.name for a in actual]
    if names != [s.name for s in expected]:
        raise ModelFileError(
            f"{where}: names {names} differ from the manifest's {[s.name for s in expected]}"
        )
    for spec, arg in zip(expected, actual, strict=True):
        dtype = _ORT_TYPES.get(arg.type, arg.type)
        if dtype != spec.dtype:
            raise ModelFileError(
                f"{where} {spec.name!r}: dtype {dtype} differs from the manifest's {spec.dtype}"
            )
        shape = list(arg.shape)
        same = len(shape) == len(spec.shape) and all(
            (isinstance(want, int) and got == want)
            or (isinstance(want, str) and (got is None or got == want))
            for want, got in zip(spec.shape, shape, strict=True)
        )
        if not same:
            raise ModelFileError(
                f"{where} {spec.name!r}: shape {shape} differs from the manifest's {list(spec.shape)}"
            )


class GraphSession:
    """One verified graph and its onnxruntime session.

    Parameters
    ----------
    model_dir : path
        Folder holding the manifest and the model files.
    entry : ManifestEntry
        The manifest entry the file must match.

    Raises
    ------
    ModelFileError
        Missing or unreadable file, SHA-256, opset, input or output mismatch, or a model onnxruntime
        refuses.
    """

    def __init__(self, model_dir: str | os.PathLike[str], entry: ManifestEntry) -> None:
        # lazy: onnxruntime costs ~0.2 s at import; only running a graph needs it
        import onnxruntime as ort

        self.entry = entry
        self.path = Path(model_dir) / entry.file
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise ModelFileError(f"{self.path}: cannot read model file for {entry.name!r}: {exc}") from exc
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.sha256:
            raise ModelFileError(
                f"{self.path}: sha256 {digest} differs from the manifest's {entry.sha256} (corrupt or replaced)"
            )
        default = read_opsets(data).get("")
        if default is None:
            raise ModelFileError(f"{self.path}: no opset for the default ai.onnx domain")
        if default != entry.opset:
            raise ModelFileError(f"{self.path}: opset {default} differs from the manifest's {entry.opset}")
        if not MIN_OPSET <= default <= MAX_OPSET:
            raise ModelFileError(
                f"{self.path}: opset {default} is outside this client's {MIN_OPSET}..{MAX_OPSET}"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.use_deterministic_compute = True
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for invalid models
            raise ModelFileError(f"{self.path}: onnxruntime cannot load it: {exc}") from exc
        _check_io(f"{self.path}: input", entry.inputs, self._session.get_inputs())
        _check_io(f"{self.path}: output", entry.outputs, self._session.get_outputs())

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.entry.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.entry.outputs]

    def _feed(self, spec: TensorSpec, value: Any, sizes: dict[str, int]) -> np.ndarray:
        arr = np.asarray(value)
        kind = np.dtype(spec.dtype).kind
        allowed = {"f": "fiu", "i": "iu", "b": "b"}[kind]
        if arr.dtype.kind not in allowed:
            raise GraphInputError(
                f"{self.entry.name}: input {spec.name!r} must be {spec.dtype}, got {arr.dtype}"
            )
        if kind == "f" and np.isnan(arr).any():
            raise GraphInputError(f"{self.entry.name}: input {spec.name!r} holds NaN")
        if arr.ndim != len(spec.shape):
            raise GraphInputError(
                f"{self.entry.name}: input {spec.name!r} must have shape {list(spec.shape)}, got {arr.shape}"
            )
        for axis, (want, got) in enumerate(zip(spec.shape, arr.shape, strict=True)):
            bound = sizes.setdefault(want, got) if isinstance(want, str) else want
            if got != bound:
                raise GraphInputError(
                    f"{self.entry.name}: input {spec.name!r} axis {axis} must be {want}={bound}, got {got} "
                    f"(shape {arr.shape})"
                )
        return np.asarray(arr, dtype=spec.dtype, order="C")  # ascontiguousarray would make 0-d 1-d

    def run(self, feeds: Mapping[str, Any] | None = None, /, **inputs: Any) -> dict[str, np.ndarray]:
        """Run the graph on named inputs (a mapping, keywords, or both); returns outputs by name.

        Float inputs may be any real array (they are cast to float32); symbolic dimensions must take one
        size per call (e.g. the same ``batch`` for noise and gradients).

        Raises
        ------
        GraphInputError
            Missing or unknown inputs, wrong rank or size, wrong kind of dtype, or NaN.
        """
        given = {**(feeds or {}), **inputs}
        missing = [n for n in self.input_names if n not in given]
        unknown = sorted(set(given) - set(self.input_names))
        if missing or unknown:
            raise GraphInputError(f"{self.entry.name}: missing inputs {missing}, unknown inputs {unknown}")
        sizes: dict[str, int] = {}
        arrays = {spec.name: self._feed(spec, given[spec.name], sizes) for spec in self.entry.inputs}
        results = self._session.run(None, arrays)
        return dict(zip(self.output_names, results, strict=True))

    def __repr__(self) -> str:
        return f"GraphSession({self.entry.name!r}, file={self.entry.file!r})"


def load_graph(
    model_dir: str | os.PathLike[str], name: str, manifest: Manifest | None = None
) -> GraphSession:
    """Verify and load the graph ``name`` of the folder's manifest.

    Raises
    ------
    ModelFileError
        Bad manifest, no such graph, or a file that differs from its entry.
    """
    manifest = manifest or read_manifest(model_dir)
    try:
        entry = manifest.entry(name)
    except KeyError as exc:
        raise ModelFileError(f"{model_dir}: {exc.args[0]}") from exc
    return GraphSession(model_dir, entry)


def load_graphs(
    model_dir: str | os.PathLike[str],
    names: Iterable[str] | None = None,
    *,
    kinds: Iterable[str] | None = None,
) -> dict[str, GraphSession]:
    """Verify and load several graphs: ``names`` (default: all), optionally only some ``kinds``.

    Every selected file is verified before any is returned, so a folder with one corrupt file fails as a
    whole.
    """
    manifest = read_manifest(model_dir)
    kind_of = {e.name: e.kind for e in manifest.entries}
    wanted = list(kind_of) if names is None else list(names)
    if kinds is not None:
        kind_set = set(kinds)
        wanted = [n for n in wanted if n not in kind_of or kind_of[n] in kind_set]  # unknown names still fail
    return {name: load_graph(model_dir, name, manifest) for name in wanted}
