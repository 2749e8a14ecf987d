"""The phone's ONNX path: verified graph loading (:mod:`.graphs`), the manifest format (:mod:`.manifest`)
and numpy references of every graph's math (:mod:`.reference`).

Importing this package imports numpy only; onnxruntime is imported when a graph is loaded.
"""

from __future__ import annotations

from veil.client_sdk.distributions.noise import BetaConstruction
from veil.client_sdk.runtime.graphs import (
    MAX_OPSET,
    MIN_OPSET,
    GraphInputError,
    GraphSession,
    load_graph,
    load_graphs,
    read_opsets,
)
from veil.client_sdk.runtime.manifest import (
    MANIFEST_FILE,
    Manifest,
    ManifestEntry,
    ModelFileError,
    TensorSpec,
    add_entries,
    read_manifest,
    write_manifest,
)

__all__ = [
    "MANIFEST_FILE",
    "MAX_OPSET",
    "MIN_OPSET",
    "BetaConstruction",
    "GraphInputError",
    "GraphSession",
    "Manifest",
    "ManifestEntry",
    "ModelFileError",
    "TensorSpec",
    "add_entries",
    "load_graph",
    "load_graphs",
    "read_manifest",
    "read_opsets",
    "write_manifest",
]
