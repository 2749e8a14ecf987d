"""The manifest that describes a folder of exported ONNX graphs (``manifest.json``).

``veil export-onnx`` writes every graph a phone runs into one folder together with this manifest. An app
(or :mod:`veil.client_sdk.runtime.graphs`) reads the manifest first and refuses any model file whose bytes,
opset, input/output names, shapes or dtypes differ from it. The format is plain JSON so that Kotlin and
Swift code can read it without ONNX tooling::

    {
      "format": "veil-onnx-manifest",
      "format_version": 1,
      "veil_version": "0.1.0",
      "onnx_version": "1.23.2",
      "created_day": "2025-01-31",
      "gateway_public_key": "<base64 of the gateway's 32-byte Ed25519 signing key>",   (optional)
      "entries": [
        {"name": "gaussian_sample", "file": "gaussian_sample.onnx", "sha256": "<64 hex digits>",
         "opset": 17, "kind": "sampler", "family": "gaussian",
         "inputs": [{"name": "mean", "shape": ["n_tokens", "dim"], "dtype": "float32"}, ...],
         "outputs": [{"name": "sample", "shape": ["batch", "n_tokens", "dim"], "dtype": "float32"}],
         "extra": {...}}
      ]
    }

A dimension is an int (fixed) or a string (symbolic: any size, but one size per name within one call).
``created_day`` is a date only: nothing finer than a day is recorded. ``opset`` is the file's opset of the
default ``ai.onnx`` domain. ``gateway_public_key`` (``veil export-onnx --gateway-public-key``) is the key the
app pins for the gateway's signed key configurations (:mod:`veil.client_sdk.ohttp.keysig`); it ships with
the graphs so an app verifies both from one file. This module needs only the standard library, so the phone-side SDK can read it;
the export side (:mod:`veil.models.onnx.manifest`) re-exports it and adds helpers that need ``onnx``.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from veil import __version__
from veil.client_sdk.atomic_files import atomic_write_text

__all__ = [
    "DTYPES",
    "MANIFEST_FILE",
    "MANIFEST_FORMAT",
    "MANIFEST_FORMAT_VERSION",
    "Manifest",
    "ManifestEntry",
    "ModelFileError",
    "TensorSpec",
    "add_entries",
    "check_gateway_public_key",
    "read_manifest",
    "set_gateway_public_key",
    "sha256_file",
    "write_manifest",
]

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "veil-onnx-manifest"
MANIFEST_FORMAT_VERSION = 1
DTYPES = ("float32", "float16", "int64", "int32", "bool")
"""Tensor element types a manifest may name (numpy spelling)."""

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class ModelFileError(ValueError):
    """A manifest or model file that is missing, corrupt, or differs from what the manifest promises."""


def check_gateway_public_key(value: str) -> str:
    """``value`` stripped, if it is base64 (RFC 4648 section 4) of 32 bytes; ``ValueError`` otherwise."""
    text = str(value).strip()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"gateway_public_key must be base64 of 32 bytes, got {text[:60]!r}") from exc
    if len(raw) != 32:
        raise ValueError(f"gateway_public_key must be base64 of 32 bytes (Ed25519), got {len(raw)} bytes")
    return text


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and element type of one graph input or output."""

    name: str
    shape: tuple[int | str, ...]
    """Dimensions: an ``int`` is fixed, a ``str`` is symbolic (e.g. ``"batch"``)."""
    dtype: str
    """Element type in numpy spelling, one of :data:`DTYPES`."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"tensor name must be a non-empty string, got {self.name!r}")
        object.__setattr__(self, "shape", tuple(self.shape))  # accept lists (e.g. parsed JSON)
        for dim in self.shape:
            ok = (isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0) or (
                isinstance(dim, str) and dim != ""
            )
            if not ok:
                raise ValueError(f"{self.name}: dims must be ints >= 0 or non-empty names, got {dim!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"{self.name}: dtype must be one of {DTYPES}, got {self.dtype!r}")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(name=data["name"], shape=tuple(data["shape"]), dtype=data["dtype"])


@dataclass(frozen=True)
class ManifestEntry:
    """One model file of the folder."""

    name: str
    """Unique name the app looks the graph up by (e.g. ``"beta_sample"``)."""
    file: str
    """File name relative to the manifest's folder (no directories above it)."""
    sha256: str
    """Lower-case hex SHA-256 of the file's bytes."""
    opset: int
    """Opset version of the default ``ai.onnx`` domain."""
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    kind: str
    """What the graph does: ``"sampler"``, ``"update"``, ``"policy"``, ``"lm"``, ..."""
    family: str | None = None
    """Distribution family the graph belongs to, or ``None`` (e.g. a language model)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form, JSON-serialisable details (parameter order, noise layout, constants)."""

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"entry name must be a non-empty string, got {self.name!r}")
        # Accept specs as TensorSpec or as their JSON dicts, in any sequence.
        for group in ("inputs", "outputs"):
            specs = tuple(
                t if isinstance(t, TensorSpec) else TensorSpec.from_json(t) for t in getattr(self, group)
            )
            object.__setattr__(self, group, specs)
        path = Path(self.file)
        if not self.file or path.is_absolute() or ".." in path.parts or len(path.parts) != 1:
            raise ValueError(f"{self.name}: file must be a plain file name in the folder, got {self.file!r}")
        if not isinstance(self.sha256, str) or not _SHA256.match(self.sha256):
            raise ValueError(f"{self.name}: sha256 must be 64 lower-case hex digits, got {self.sha256!r}")
        if not isinstance(self.opset, int) or isinstance(self.opset, bool) or self.opset < 1:
            raise ValueError(f"{self.name}: opset must be an int >= 1, got {self.opset!r}")
        if not self.kind or not isinstance(self.kind, str):
            raise ValueError(f"{self.name}: kind must be a non-empty string, got {self.kind!r}")
        for group in (self.inputs, self.outputs):
            names = [t.name for t in group]
            if len(set(names)) != len(names):
                raise ValueError(f"{self.name}: duplicate tensor names in {names}")

    def input(self, name: str) -> TensorSpec:
        """The input called ``name`` (``KeyError`` if none)."""
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": self.file,
            "sha256": self.sha256,
            "opset": self.opset,
            "kind": self.kind,
            "family": self.family,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ManifestEntry:
        return cls(
            name=data["name"],
            file=data["file"],
            sha256=data["sha256"],
            opset=data["opset"],
            inputs=tuple(TensorSpec.from_json(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_json(t) for t in data["outputs"]),
            kind=data["kind"],
            family=data.get("family"),
            extra=dict(data.get("extra") or {}),
        )


@dataclass(frozen=True)
class Manifest:
    """The whole ``manifest.json``: versions, the day it was written, and the entries."""

    entries: tuple[ManifestEntry, ...]
    veil_version: str
    onnx_version: str
    """Version of the ``onnx`` package that built the graphs (``"unknown"`` if not installed)."""
    created_day: str
    """``YYYY-MM-DD`` (UTC); deliberately no finer time."""
    format_version: int = MANIFEST_FORMAT_VERSION
    gateway_public_key: str | None = None
    """Base64 of the gateway's Ed25519 signing key apps pin (``None``: not shipped here)."""

    def __post_init__(self) -> None:
        names = [e.name for e in self.entries]
        if len(set(names)) != len(names):
            raise ValueError(f"manifest entry names must be unique, got {names}")
        if not _DAY.match(self.created_day):
            raise ValueError(f"created_day must be YYYY-MM-DD, got {self.created_day!r}")
        if self.gateway_public_key is not None:
            object.__setattr__(self, "gateway_public_key", check_gateway_public_key(self.gateway_public_key))

    def entry(self, name: str) -> ManifestEntry:
        """The entry called ``name``; ``KeyError`` listing the known names otherwise."""
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(f"no graph {name!r} in the manifest; known: {[e.name for e in self.entries]}")

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "format_version": self.format_version,
            "veil_version": self.veil_version,
            "onnx_version": self.onnx_version,
            "created_day": self.created_day,
        }
        if self.gateway_public_key is not None:
            data["gateway_public_key"] = self.gateway_public_key
        data["entries"] = [e.to_json() for e in self.entries]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        return cls(
            entries=tuple(ManifestEntry.from_json(e) for e in data["entries"]),
            veil_version=data["veil_version"],
            onnx_version=data["onnx_version"],
            created_day=data["created_day"],
            format_version=data["format_version"],
            gateway_public_key=data.get("gateway_public_key"),
        )


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Lower-case hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def write_manifest(
    out_dir: str | os.PathLike[str],
    entries: Iterable[ManifestEntry],
    *,
    onnx_version: str | None = None,
    day: datetime.date | None = None,
    gateway_public_key: str | None = None,
) -> Manifest:
    """Write ``out_dir/manifest.json`` (atomically) listing exactly ``entries``.

    Parameters
    ----------
    out_dir : path
        Folder holding the model files.
    entries : iterable of ManifestEntry
    onnx_version : str, optional
        Defaults to the installed ``onnx`` package's version (read from package metadata, no import).
    day : datetime.date, optional
        Defaults to today's UTC date.
    gateway_public_key : str, optional
        Base64 of the gateway's Ed25519 signing key, for apps to pin.

    Returns
    -------
    Manifest
        What was written.
    """
    when = day or datetime.datetime.now(datetime.UTC).date()
    manifest = Manifest(
        entries=tuple(entries),
        veil_version=__version__,
        onnx_version=onnx_version or _package_version("onnx"),
        created_day=when.isoformat(),
        gateway_public_key=gateway_public_key,
    )
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(manifest.to_json(), indent=2, sort_keys=False) + "\n"
    atomic_write_text(directory / MANIFEST_FILE, text, mode=0o644)
    return manifest


def read_manifest(out_dir: str | os.PathLike[str]) -> Manifest:
    """Read and validate ``out_dir/manifest.json``.

    Raises
    ------
    ModelFileError
        Missing file, invalid JSON, another format or format version, or malformed entries.
    """
    path = Path(out_dir) / MANIFEST_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelFileError(f"{path}: no manifest (run `veil export-onnx --out {out_dir}`)") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: unreadable manifest: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise ModelFileError(f"{path}: not a Veil ONNX manifest (format != {MANIFEST_FORMAT!r})")
    if data.get("format_version") != MANIFEST_FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: manifest format_version {data.get('format_version')!r} is not supported "
            f"(this client reads {MANIFEST_FORMAT_VERSION})"
        )
    try:
        return Manifest.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: malformed manifest: {exc!r}") from exc


def add_entries(out_dir: str | os.PathLike[str], entries: Sequence[ManifestEntry]) -> Manifest:
    """Add ``entries`` to the folder's manifest (creating it), replacing entries of the same name.

    Entries already there keep their order; new names are appended. Used by every exporter that writes
    into a shared folder (distribution graphs, the on-device language model).
    """
    existing: list[ManifestEntry] = []
    key = None
    if (Path(out_dir) / MANIFEST_FILE).exists():
        old = read_manifest(out_dir)
        existing, key = list(old.entries), old.gateway_public_key
    new = {e.name: e for e in entries}
    merged = [new.pop(e.name, e) for e in existing]
    merged.extend(e for e in entries if e.name in new)
    return write_manifest(out_dir, merged, gateway_public_key=key)


def set_gateway_public_key(out_dir: str | os.PathLike[str], gateway_public_key: str) -> Manifest:
    """Record the gateway's signing key (base64 of 32 bytes) in the folder's manifest (creating it)."""
    key = check_gateway_public_key(gateway_public_key)
    entries: list[ManifestEntry] = []
    if (Path(out_dir) / MANIFEST_FILE).exists():
        entries = list(read_manifest(out_dir).entries)
    return write_manifest(out_dir, entries, gateway_public_key=key)
