"""The wire form of embeddings and gradients, shared by the phone and the server (numpy only).

A sample travels as ``{name}_b64``: standard base64 (RFC 4648 section 4) of the float32 values,
little-endian, row-major ``(n_tokens, hidden)``; or, in the older form, as ``{name}``: JSON numbers
(RFC 8259 section 6), ``(n_tokens, hidden)`` rows or one flat row when ``n_tokens == 1``. Either form
becomes a validated float32 array in one call (:func:`decode_f32`, :func:`f32_from_values`) at the edge
of the service, and every later layer (the engine, the store) trusts that array. The store keeps the
same little-endian float32 bytes that travelled, so an upload is decoded exactly once.

Typical use::

    body.update(encode_field("embedding", sample))             # phone: {"embedding_b64": "..."}
    emb = decode_f32(body["embedding_b64"], (1, 576))           # server: float32 (1, 576), finite
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "ENCODINGS",
    "F32_MAX",
    "MAX_VALUES",
    "WireFormatError",
    "b64_length",
    "check_f32",
    "decode_f32",
    "encode_f32",
    "encode_field",
    "f32_from_values",
]

ENCODINGS = ("base64", "json")
"""How a float array travels: ``"base64"`` (``{name}_b64``, float32) or ``"json"`` (``{name}``, numbers)."""
F32_MAX = float(np.finfo(np.float32).max)
"""The largest finite float32 (about 3.4e38): JSON numbers beyond it cannot be stored as float32."""
MAX_VALUES = 65_536
"""The most values one embedding may carry in either form."""

_LE_F32 = np.dtype("<f4")


class WireFormatError(ValueError):
    """An embedding or gradient field does not decode to a valid array.

    Attributes
    ----------
    field : str
        The body field at fault (``"embedding_b64"``, ``"user_embedding"``, ``"gradient_b64"`` ...).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field} {message}")
        self.field = field
        self.reason = message


def b64_length(n_values: int) -> int:
    """Characters of the base64 form of ``n_values`` float32 values (padding included)."""
    return (4 * n_values + 2) // 3 * 4


def encode_f32(values: Any) -> str:
    """Base64 of ``values`` as little-endian float32, row-major; ``WireFormatError`` if not finite.

    >>> encode_f32([[1.0, -2.0]])
    'AACAPwAAAMA='
    """
    arr = np.ascontiguousarray(values, dtype=_LE_F32)
    if not np.isfinite(arr).all():
        raise WireFormatError("values", "contain NaN or Inf (or exceed the float32 range)")
    return base64.b64encode(arr.data).decode("ascii")


def encode_field(name: str, values: Any, encoding: str = "base64") -> dict[str, Any]:
    """The body field for an array: ``{name_b64: "..."}`` (float32, about a quarter of JSON's size and
    much cheaper to encode; figures in ``benchmarks/README.md``, "The wire codec") or ``{name: [[...]]}``
    (JSON numbers, float64 precision)."""
    if encoding == "base64":
        return {f"{name}_b64": encode_f32(values)}
    if encoding == "json":
        return {name: np.asarray(values, dtype=np.float64).tolist()}
    raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")


def check_f32(arr: np.ndarray, shape: tuple[int, int], field: str) -> np.ndarray:
    """``arr`` as float32 of ``shape``, finite; ``WireFormatError`` naming ``field`` otherwise."""
    if arr.ndim == 1 and shape[0] == 1:
        arr = arr[None, :]
    if arr.shape != tuple(shape):
        raise WireFormatError(field, f"must have shape {list(shape)}, got {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise WireFormatError(field, "contains NaN or Inf")
    if arr.dtype != np.float32:
        if np.abs(arr).max(initial=0.0) > F32_MAX:
            raise WireFormatError(field, f"has values beyond the float32 range (|x| > {F32_MAX:.3g})")
        arr = arr.astype(np.float32)
    return arr


def decode_f32(text: str | bytes, shape: tuple[int, int], field: str = "embedding_b64") -> np.ndarray:
    """The base64 form as a float32 array of ``shape``, checked finite.

    Parameters
    ----------
    text : standard base64 (RFC 4648 section 4) of ``n_tokens * hidden`` little-endian float32 values.
    shape : the expected ``(n_tokens, hidden)``.
    field : the body field, named in errors.

    Raises
    ------
    WireFormatError
        Not base64, the wrong number of bytes, or a NaN/Inf value.

    >>> decode_f32("AACAPwAAAMA=", (1, 2)).tolist()
    [[1.0, -2.0]]
    """
    n, h = shape
    if not isinstance(text, str | bytes):
        raise WireFormatError(field, f"must be a base64 string, got {type(text).__name__}")
    if len(text) != b64_length(n * h):
        # Checked before decoding, so an oversized field costs nothing.
        raise WireFormatError(
            field,
            f"must hold {n} x {h} = {n * h} float32 values ({b64_length(n * h)} base64 characters), "
            f"got {len(text)} characters",
        )
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise WireFormatError(field, "is not valid base64") from None
    # Checked on the bytes: the right number of characters without '=' padding decodes to a length
    # that is no multiple of 4, which np.frombuffer refuses with a plain ValueError.
    if len(raw) != 4 * n * h:
        raise WireFormatError(field, f"must hold {n} x {h} = {n * h} float32 values, got {len(raw)} bytes")
    # A writable copy of the decoded bytes (torch.as_tensor warns on read-only arrays); 2 KiB for SmolLM2.
    arr = np.frombuffer(bytearray(raw), dtype=_LE_F32)
    if not np.isfinite(arr).all():
        raise WireFormatError(field, "contains NaN or Inf")
    return arr.reshape(n, h)


def f32_from_values(
    values: Sequence[float] | Sequence[Sequence[float]], shape: tuple[int, int], field: str = "embedding"
) -> np.ndarray:
    """The JSON form (``(n_tokens, hidden)`` rows, or one flat row when ``n_tokens == 1``) as float32.

    Raises :class:`WireFormatError` for a ragged or non-numeric list, the wrong shape, NaN/Inf, or a
    value beyond the float32 range.
    """
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise WireFormatError(field, "must be a list of numbers or a list of equal-length rows") from None
    if arr.size > MAX_VALUES:
        raise WireFormatError(field, f"has {arr.size} values, more than {MAX_VALUES}")
    return check_f32(arr, shape, field)
