"""The on-device language model's manifest entry: its sizes, special tokens and graph inputs/outputs.

``veil.models.onnx.lm.export_causal_lm`` writes the entry; :class:`~veil.client_sdk.runtime.generate.
OnnxLM` reads it with :meth:`LMSpec.from_entry` and checks the graph against :meth:`LMSpec.expected_io`.
A *compressible* export (``query_window > 0``) has one attention mask per layer, so that every layer's
cache may keep its own tokens, and the last ``query_window`` post-RoPE queries of every layer as extra
outputs, which KV-cache compression scores with (:mod:`veil.client_sdk.runtime.compression`). Entries
without those fields are plain graphs, as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veil.client_sdk.runtime.manifest import ManifestEntry, ModelFileError, TensorSpec, sha256_file

__all__ = ["LM_ENTRY", "LM_FORMAT", "LM_KIND", "LMSpec", "check_file", "check_io"]

LM_ENTRY = "lm"  # the manifest entry written by veil.models.onnx.lm.export_causal_lm
LM_KIND = "lm"
LM_FORMAT = "veil-onnx-lm/1"  # the layout of the entry's ``extra``
_ORT_DTYPES = {"tensor(int64)": "int64", "tensor(float)": "float32"}
_SIZES = ("n_layers", "n_kv_heads", "head_dim", "hidden_size", "vocab_size", "max_position_embeddings")


@dataclass(frozen=True)
class LMSpec:
    """The language model's sizes and special tokens: the ``extra`` of its manifest entry.

    ``tokenizer`` is ``{"file", "sha256"}`` or ``None``; ``eos_token_ids`` end
    generation by default; ``pad_token_id`` fills left padding and finished rows. ``query_window``
    (0: a plain graph), ``n_heads`` (query heads) and ``attention_scaling`` (the softmax scale) describe
    a compressible graph's query outputs.
    """

    n_layers: int
    n_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    max_position_embeddings: int
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    tokenizer: dict[str, str] | None = None
    chat_template: str | None = None
    source: str = "model"
    query_window: int = 0
    n_heads: int = 0
    attention_scaling: float = 0.0

    @classmethod
    def from_entry(cls, entry: ManifestEntry) -> LMSpec:
        """Read and check the entry's ``extra``.

        Raises
        ------
        ModelFileError
            Not a language-model entry, another ``extra`` format, or missing or malformed fields.
        """
        extra = entry.extra
        if entry.kind != LM_KIND or extra.get("format") != LM_FORMAT:
            raise ModelFileError(
                f"manifest entry {entry.name!r} is kind {entry.kind!r} with format {extra.get('format')!r}, "
                f"not a language model ({LM_KIND!r}, {LM_FORMAT!r})"
            )
        try:
            bos = extra.get("bos_token_id")
            window = int(extra.get("query_window", 0))
            spec = cls(
                **{k: int(extra[k]) for k in _SIZES},
                bos_token_id=None if bos is None else int(bos),
                eos_token_ids=tuple(int(t) for t in extra["eos_token_ids"]),
                pad_token_id=int(extra["pad_token_id"]),
                tokenizer=extra.get("tokenizer"),
                chat_template=extra.get("chat_template"),
                source=str(extra.get("source", "model")),
                query_window=window,
                n_heads=int(extra["n_heads"]) if window else 0,
                attention_scaling=float(extra["attention_scaling"]) if window else 0.0,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"manifest entry {entry.name!r}: malformed extra: {exc!r}") from exc
        if window < 0 or (window and (spec.n_heads < 1 or spec.n_heads % spec.n_kv_heads)):
            raise ModelFileError(
                f"manifest entry {entry.name!r}: query_window {window} with {spec.n_heads} query heads for "
                f"{spec.n_kv_heads} key-value heads (want a window >= 0 and a multiple of the kv heads)"
            )
        return spec

    @property
    def compressible(self) -> bool:
        """Whether the graph has per-layer masks and query outputs (its cache can be compressed)."""
        return self.query_window > 0

    @property
    def past_names(self) -> list[str]:
        return [f"past_key_values.{i}.{kv}" for i in range(self.n_layers) for kv in ("key", "value")]

    @property
    def mask_names(self) -> list[str]:
        """``attention_mask`` of a plain graph; ``attention_mask.{i}`` per layer of a compressible one."""
        if not self.compressible:
            return ["attention_mask"]
        return [f"attention_mask.{i}" for i in range(self.n_layers)]

    def expected_io(self) -> tuple[list[tuple[str, str, tuple]], list[tuple[str, str, tuple]]]:
        """``(name, dtype, fixed sizes by axis, None = symbolic)`` of every input and output."""
        kv = (None, self.n_kv_heads, None, self.head_dim)
        inputs = [
            ("input_ids", "int64", (None, None)),
            ("prefix_embeds", "float32", (None, None, self.hidden_size)),
            *[(name, "int64", (None, None)) for name in self.mask_names],
            ("position_ids", "int64", (None, None)),
        ] + [(name, "float32", kv) for name in self.past_names]
        present = [f"present.{i}.{kv_}" for i in range(self.n_layers) for kv_ in ("key", "value")]
        outputs = [("logits", "float32", (None, self.vocab_size))] + [(n, "float32", kv) for n in present]
        if self.compressible:
            query = (None, self.n_heads, self.query_window, self.head_dim)
            outputs += [(f"query.{i}", "float32", query) for i in range(self.n_layers)]
        return inputs, outputs


def check_file(directory: Path, item: dict[str, str], what: str) -> Path:
    """The file ``item`` (``{"file", "sha256"}``) names in ``directory``, if its sha256 matches."""
    path = directory / Path(str(item["file"])).name  # never a path outside the folder
    if not path.is_file():
        raise ModelFileError(f"{path}: {what} file is missing")
    digest = sha256_file(path)
    if digest != item["sha256"]:
        raise ModelFileError(
            f"{path}: sha256 {digest} differs from the manifest's {item['sha256']} (corrupt or replaced)"
        )
    return path


def _first_difference(a: list[tuple], b: list[tuple]) -> str:
    for x, y in zip(a, b, strict=False):
        if x != y:
            return f"{x} vs {y}"
    return f"{len(a)} vs {len(b)} tensors"


def check_io(where: str, specs: tuple[TensorSpec, ...], actual: list[Any], expected: list[tuple]) -> None:
    """The session's tensors must be the manifest's, and the manifest's what the sizes imply.

    Tensors compare as ``(name, dtype, sizes)`` with symbolic sizes as ``None``.
    """
    promised = [(s.name, s.dtype, tuple(d if isinstance(d, int) else None for d in s.shape)) for s in specs]
    got = [
        (a.name, _ORT_DTYPES.get(a.type, a.type), tuple(d if isinstance(d, int) else None for d in a.shape))
        for a in actual
    ]
    if got != promised:
        raise ModelFileError(f"{where}s differ from the manifest's: {_first_difference(got, promised)}")
    if promised != expected:
        diff = _first_difference(promised, expected)
        raise ModelFileError(f"{where}s do not fit the manifest's sizes (manifest vs sizes): {diff}")
