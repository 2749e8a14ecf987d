"""Manifest of an exported model folder: the format (shared with the phone side) plus ``onnx`` helpers.

The format itself lives in :mod:`veil.client_sdk.runtime.manifest`, which needs only the standard
library so that the phone-side SDK can read it; this module re-exports it and adds
:func:`describe_model`, which fills a :class:`ManifestEntry` from a written ONNX file. An exporter writes
its files into the folder and then calls :func:`add_entries` (entries of other exporters stay)::

    entry = describe_model(out_dir / "lm.onnx", name="lm", kind="lm", extra={"vocab_size": 49152})
    add_entries(out_dir, [entry])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from veil.client_sdk.runtime.manifest import (
    MANIFEST_FILE,
    Manifest,
    ManifestEntry,
    ModelFileError,
    TensorSpec,
    add_entries,
    read_manifest,
    sha256_file,
    write_manifest,
)

__all__ = [
    "MANIFEST_FILE",
    "Manifest",
    "ManifestEntry",
    "ModelFileError",
    "TensorSpec",
    "add_entries",
    "describe_model",
    "read_manifest",
    "sha256_file",
    "write_manifest",
]


def _specs(values: Any, skip: set[str]) -> tuple[TensorSpec, ...]:
    # lazy: onnx loads only when describing an exported graph
    from onnx import helper

    specs = []
    for value in values:
        if value.name in skip:
            continue
        tensor = value.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        shape: list[int | str] = []
        for i, dim in enumerate(tensor.shape.dim):
            if dim.HasField("dim_value"):
                shape.append(int(dim.dim_value))
            else:  # unnamed dynamic dims get a name of their own, so they never bind to each other
                shape.append(dim.dim_param or f"{value.name}.{i}")
        specs.append(TensorSpec(name=value.name, shape=tuple(shape), dtype=dtype))
    return tuple(specs)


def describe_model(
    path: str | os.PathLike[str],
    *,
    name: str,
    kind: str,
    family: str | None = None,
    extra: dict[str, Any] | None = None,
) -> ManifestEntry:
    """A manifest entry for an ONNX file: sha256, default-domain opset, inputs and outputs read from it.

    Parameters
    ----------
    path : path
        The model file, already inside the export folder (``entry.file`` is its base name).
    name, kind, family, extra
        Copied into the entry (see :class:`ManifestEntry`).

    Raises
    ------
    ModelFileError
        The file is not a loadable ONNX model or has no default-domain opset.
    """
    # lazy: onnx loads only when describing an exported graph
    import onnx

    target = Path(path)
    try:
        model = onnx.load(os.fspath(target), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends without a common base class
        raise ModelFileError(f"{target}: not a loadable ONNX model: {exc}") from exc
    opsets = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not opsets:
        raise ModelFileError(f"{target}: no opset for the default ai.onnx domain")
    initializers = {t.name for t in model.graph.initializer}
    return ManifestEntry(
        name=name,
        file=target.name,
        sha256=sha256_file(target),
        opset=int(opsets[0]),
        inputs=_specs(model.graph.input, initializers),
        outputs=_specs(model.graph.output, set()),
        kind=kind,
        family=family,
        extra=dict(extra or {}),
    )
