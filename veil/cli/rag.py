"""``veil rag build-default``: the default retrieval collection (gensim's Wikipedia sample) built into the
data dir ahead of the service, which otherwise builds a BM25-only copy on first need
(:mod:`veil.cloud_service.rag_store`)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from veil.cli.errors import UserError

__all__ = ["register"]

rag_app = typer.Typer(no_args_is_help=True, help="Retrieval collections of /v1/rag/answers.")


def register(app: typer.Typer) -> None:
    app.add_typer(rag_app, name="rag")


@rag_app.command("build-default")
def build_default(
    dense: Annotated[
        bool,
        typer.Option(
            "--dense/--no-dense",
            help="Also embed every passage with MiniLM for hybrid search (about 25 min on 2 busy cores); "
            "the default indexes BM25 alone (seconds).",
        ),
    ] = False,
    data_dir: Annotated[
        Path | None, typer.Option(help="Where the collection goes (default VEIL_DATA_DIR): DIR/rag/NAME.")
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(help="Only the first N articles, as a collection of its own: wikipedia-sample-N."),
    ] = None,
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Build even if the collection is there (replaced atomically).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
) -> None:
    """Build the default collection, wikipedia-sample (106 articles, about 5,100 passages).

    A collection already there is kept unless --rebuild, or unless --dense is asked and it is BM25-only;
    a build replaces it atomically at the end, so a running service serves the old one until then.
    """
    from veil.cli.main import _writable_dir

    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    if data_dir is None:
        from veil.cli.main import _data_dir

        data_dir = _data_dir()
    _writable_dir(data_dir / "rag", "--data-dir")

    from veil.cloud_service.rag_store import CollectionStore, describe
    from veil.models.rag import Collection, IndexConfig, RagError, collection_dir, is_saved_collection
    from veil.models.rag.wikipedia import build_wikipedia_sample, default_collection_name

    name = default_collection_name(limit)
    target = collection_dir(name, data_dir)
    started = time.perf_counter()
    built = False
    try:
        existing = Collection.load(target) if is_saved_collection(target) else None
        if existing is not None and not rebuild and (existing.config.dense or not dense):
            collection = existing
        else:
            from veil.progress import NullProgress, RichProgress

            if dense:
                from veil.cli.main import _quiet_libraries

                _quiet_libraries()
            progress = NullProgress() if as_json and not sys.stderr.isatty() else RichProgress()
            collection = build_wikipedia_sample(
                config=IndexConfig(dense=dense), limit=limit, progress=progress
            )
            target = CollectionStore(data_dir).put(collection)
            built = True
    except RagError as exc:  # gensim or the MiniLM wheel missing, an unreadable index
        raise UserError(str(exc)) from exc
    info = describe(collection)
    out = {
        "name": info.name,
        "path": str(target),
        "documents": info.documents,
        "passages": info.passages,
        "dense": info.dense,
        "built": built,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if as_json:
        typer.echo(json.dumps(out))
        return
    kind = "BM25 and MiniLM" if info.dense else "BM25 only"
    verb = f"built in {out['seconds']:.1f} s" if built else "already built (--rebuild builds it again)"
    typer.echo(f"{info.name}: {info.documents} articles, {info.passages} passages, {kind}; {verb}")
    typer.echo(f"path: {target}")
