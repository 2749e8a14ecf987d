"""``export_onnx``: write the phone's distribution graphs and their manifest into a folder."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from veil.client_sdk.atomic_files import atomic_write_bytes
from veil.client_sdk.distributions.noise import BetaConstruction
from veil.models.onnx.graphs import DEFAULT_OPSET, FAMILY_GRAPHS, GraphShapes, build_graphs
from veil.models.onnx.manifest import Manifest, add_entries, describe_model

__all__ = ["export_onnx"]


def export_onnx(
    out_dir: str | os.PathLike[str],
    families: Iterable[str] = tuple(FAMILY_GRAPHS),
    shapes: GraphShapes | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    beta: BetaConstruction | None = None,
) -> Manifest:
    """Build the sampler, update, policy and choice graphs of ``families`` and write them with a manifest.

    Files are named ``<graph name>.onnx`` and written atomically; their bytes depend only on the
    arguments (no timestamps), so two exports with the same arguments have the same sha256. Entries
    already in ``out_dir/manifest.json`` under other names (e.g. the on-device language model) are kept;
    entries of the same name are replaced.

    Parameters
    ----------
    out_dir : path
        Folder to write into (created if missing).
    families : iterable of str
        Any of ``gaussian``, ``beta``, ``basis_mixture``, ``prototype`` (default: all).
    shapes : GraphShapes, optional
        Fixed ``n_tokens``, ``dim``, ``n_basis``, ``n_prototypes``; unset sizes stay symbolic.
    opset : int
        17 (default) or 18.
    beta : BetaConstruction, optional
        Rounds and boost of the Beta sampler construction.

    Returns
    -------
    Manifest
        The manifest as written (all entries of the folder).
    """
    if isinstance(families, str):  # a single family name, not its characters
        families = [families]
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for graph in build_graphs(families, shapes, opset=opset, beta=beta):
        path = directory / f"{graph.name}.onnx"
        atomic_write_bytes(path, graph.model.SerializeToString(), mode=0o644)
        entries.append(
            describe_model(path, name=graph.name, kind=graph.kind, family=graph.family, extra=graph.extra)
        )
    return add_entries(directory, entries)
