"""The public prototype codebook on the wire: the JSON body of ``GET /v1/codebook`` (``PROTOCOL.md`` 5.5).

The cloud encodes a :class:`~veil.client_sdk.distributions.Codebook` with :func:`codebook_to_json`; the
phone decodes it with :func:`codebook_from_json`, which rebuilds the codebook and checks that the version
it computes from the contents is the one the body advertises. Prototypes travel as float32 (the compact
embedding encoding of the API: standard base64 of little-endian float32, row-major), so the cloud
publishes only float32-representable codebooks (:func:`float32_codebook`): then the version survives the
round trip exactly, and any byte altered on the way fails the check.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np

from veil.client_sdk.distributions.prototype import Codebook

__all__ = ["CodebookFormatError", "codebook_from_json", "codebook_to_json", "float32_codebook"]

MAX_CODEBOOK_VALUES = 1 << 24
"""Most float32 values a phone accepts in one codebook (64 MiB): a bound on what a body can make it allocate."""


class CodebookFormatError(ValueError):
    """A codebook body is malformed, or its contents do not hash to the version it advertises.

    Attributes
    ----------
    field : str or None
        The body field at fault (``"active"``, ``"prototypes_b64"``, ``"version"`` ...), when one is.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def float32_codebook(book: Codebook) -> Codebook:
    """The same codebook with its prototypes rounded to float32 (what the wire can carry exactly)."""
    return Codebook(book.prototypes.astype(np.float32).astype(np.float64), book.active, book.k_min)


def codebook_to_json(book: Codebook) -> dict[str, Any]:
    """The ``GET /v1/codebook`` body.

    Raises
    ------
    ValueError
        If a prototype is not exactly a float32 value (publish :func:`float32_codebook` instead).
    """
    values = np.ascontiguousarray(book.prototypes, dtype="<f4")
    if not np.array_equal(values.astype(np.float64), book.prototypes):
        raise ValueError("codebook prototypes must be float32 values to travel exactly; use float32_codebook")
    n_tokens, dim = book.shape
    return {
        "object": "codebook",
        "version": book.version,
        "k_min": book.k_min,
        "size": book.size,
        "active": [bool(a) for a in book.active],
        "n_tokens": n_tokens,
        "dim": dim,
        "prototypes_b64": base64.b64encode(values.tobytes()).decode("ascii"),
    }


def _positive_int(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CodebookFormatError(f"codebook field {name!r} must be an integer >= 1, got {value!r}", name)
    return value


def codebook_from_json(body: Any) -> Codebook:
    """Rebuild the codebook of a ``GET /v1/codebook`` body and verify its version.

    Raises
    ------
    CodebookFormatError
        A missing or mistyped field, prototypes of the wrong length or not finite, or contents whose
        version differs from the advertised ``version``.
    """
    if not isinstance(body, dict):
        raise CodebookFormatError(f"codebook body must be a JSON object, got {type(body).__name__}")
    size, n_tokens, dim, k_min = (_positive_int(body, k) for k in ("size", "n_tokens", "dim", "k_min"))
    if size * n_tokens * dim > MAX_CODEBOOK_VALUES:
        raise CodebookFormatError(
            f"codebook of {size} x {n_tokens} x {dim} values exceeds {MAX_CODEBOOK_VALUES}", "size"
        )
    active = body.get("active")
    if not isinstance(active, list) or len(active) != size or not all(isinstance(a, bool) for a in active):
        raise CodebookFormatError(f"codebook field 'active' must be a list of {size} booleans", "active")
    version, text = body.get("version"), body.get("prototypes_b64")
    for name, value in (("version", version), ("prototypes_b64", text)):
        if not isinstance(value, str):
            raise CodebookFormatError(f"codebook field {name!r} must be a string", name)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CodebookFormatError(
            "codebook field 'prototypes_b64' is not valid base64", "prototypes_b64"
        ) from exc
    if len(raw) != size * n_tokens * dim * 4:
        raise CodebookFormatError(
            f"prototypes_b64 must hold {size} x {n_tokens} x {dim} float32 values, got {len(raw)} bytes",
            "prototypes_b64",
        )
    protos = np.frombuffer(raw, dtype="<f4").astype(np.float64).reshape(size, n_tokens, dim)
    try:
        book = Codebook(protos, active, k_min)
    except ValueError as exc:
        raise CodebookFormatError(f"invalid codebook: {exc}") from exc
    if book.version != version:
        raise CodebookFormatError(
            f"codebook contents hash to {book.version}, the body says {version}", "version"
        )
    return book
