"""``veil export-onnx``: write the phone's ONNX graphs (samplers, updates, policy checks, the prototype
choice) and manifest.

The command imports torch and the graph builders inside its function (lazy: start-up time, see
:mod:`veil.cli.main`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from veil.cli.errors import UserError

__all__ = ["export_onnx_command", "register"]


def register(app: typer.Typer) -> None:
    """Add ``veil export-onnx`` to the ``veil`` command."""
    app.command("export-onnx")(export_onnx_command)


def export_onnx_command(
    out: Annotated[Path, typer.Option("--out", help="Folder for the .onnx files and manifest.json.")],
    families: Annotated[
        str, typer.Option("--families", help="Comma-separated: gaussian, beta, basis_mixture, prototype.")
    ] = "gaussian,beta,basis_mixture,prototype",
    n_tokens: Annotated[
        int | None, typer.Option("--n-tokens", help="Fix n_tokens (default: symbolic).", show_default=False)
    ] = None,
    dim: Annotated[
        int | None,
        typer.Option("--dim", help="Fix the embedding width (default: symbolic).", show_default=False),
    ] = None,
    n_basis: Annotated[
        int | None,
        typer.Option(
            "--n-basis", help="Fix the mixture basis size K (default: symbolic).", show_default=False
        ),
    ] = None,
    n_prototypes: Annotated[
        int | None,
        typer.Option(
            "--n-prototypes", help="Fix the codebook size K (default: symbolic).", show_default=False
        ),
    ] = None,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset: 17 or 18.")] = 17,
    lm: Annotated[
        str | None,
        typer.Option(
            "--lm",
            help="Also export this on-device LM (model name or directory), with its KV cache, as 'lm'.",
            show_default=False,
        ),
    ] = None,
    lm_query_window: Annotated[
        int,
        typer.Option(
            "--lm-query-window",
            help="With --lm: export the LM compressible, giving the last N queries per layer so the phone "
            "can compress its KV cache (1 for DBudgetKV, 32 for SnapKV); 0 = a plain graph.",
        ),
    ] = 0,
    gateway_public_key: Annotated[
        str | None,
        typer.Option(
            "--gateway-public-key",
            help="Record the gateway's signing key (base64, `veil gateway public-key`) for apps to pin.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object on stdout instead of a table.")
    ] = False,
) -> None:
    """Export every graph a phone runs, with a manifest of versions, shapes, dtypes and sha256.

    Entries already in the folder's manifest under other names (e.g. the on-device LM) are kept.
    """
    from veil.models.onnx.export import export_onnx
    from veil.models.onnx.graphs import GraphShapes

    chosen = [f.strip() for f in families.split(",") if f.strip()]
    try:
        if gateway_public_key is not None:
            from veil.client_sdk.runtime.manifest import check_gateway_public_key, set_gateway_public_key

            check_gateway_public_key(gateway_public_key)  # refuse a bad key before minutes of export
        shapes = GraphShapes(n_tokens=n_tokens, dim=dim, n_basis=n_basis, n_prototypes=n_prototypes)
        manifest = export_onnx(out, chosen, shapes, opset=opset)
        if lm is not None:
            from veil.models.loading import quiet_transformers
            from veil.models.onnx.lm import export_lm
            from veil.models.onnx.manifest import read_manifest
            from veil.settings import get_settings

            quiet_transformers()
            export_lm(lm, out, get_settings().resolved_data_dir(), query_window=lm_query_window)
            manifest = read_manifest(out)
        if gateway_public_key is not None:
            manifest = set_gateway_public_key(out, gateway_public_key)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    written = [
        e
        for e in manifest.entries
        if (e.family in chosen and e.kind in ("sampler", "update", "policy", "choice", "head"))
        or (lm and e.kind == "lm")
    ]
    sizes = {e.name: (out / e.file).stat().st_size for e in written}
    if as_json:
        typer.echo(json.dumps({"out": str(out), "bytes": sizes, "manifest": manifest.to_json()}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ONNX graphs in {out} (opset {opset}; manifest.json lists {len(manifest.entries)})")
    for head in ("graph", "kind", "family", "bytes", "sha256"):
        table.add_column(head, justify="right" if head == "bytes" else "left")
    for e in written:
        table.add_row(e.name, e.kind, e.family or "", str(sizes[e.name]), e.sha256[:16])
    Console().print(table)
