"""The phone's local language model on onnxruntime: load, verify, and generate with a KV cache.

:class:`OnnxLM` opens a folder written by ``veil.models.onnx.lm.export_lm`` (``manifest.json`` with an
entry named ``lm``, ``lm.onnx``, ``tokenizer.json``). Before use it checks, against that entry, the
sha256 of every file (graph, tokenizer), the graph's default-domain opset and its input
and output names, dtypes and fixed sizes, and that these agree with the sizes in the entry's ``extra``;
any difference raises :class:`~veil.client_sdk.runtime.manifest.ModelFileError`. It then runs the
reference generation loop that an app reimplements in Kotlin or Swift: one prefill call over the prompt
(with the user's soft tokens as ``prefix_embeds`` when personalised), then one call per new token
feeding back the ``present.*`` tensors as ``past_key_values.*``. Greedy decoding reproduces
``veil.models.generation.generate_batch`` token for token (the parity tests pin it).

Tokenisation: when the ``tokenizers`` package is importable (a dependency of ``transformers``; it does
not import torch), :meth:`OnnxLM.encode` and :meth:`OnnxLM.decode` use the shipped ``tokenizer.json``.
It is not a dependency of the client: on a phone the app tokenises with its platform's binding of the
same ``tokenizer.json`` and the loop works on token ids. Only numpy and onnxruntime are imported here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from veil.client_sdk.batching import left_pad
from veil.client_sdk.runtime.graphs import MAX_OPSET, MIN_OPSET, read_opsets
from veil.client_sdk.runtime.manifest import (
    ManifestEntry,
    ModelFileError,
    TensorSpec,
    read_manifest,
    sha256_file,
)
from veil.client_sdk.sampling import DecodingParams, decode_step

__all__ = [
    "LM_ENTRY",
    "LM_FORMAT",
    "LM_KIND",
    "LMSpec",
    "ModelFileError",
    "OnnxLM",
    "SamplingParams",
    "sample_next",
]

LM_ENTRY = "lm"  # the manifest entry written by veil.models.onnx.lm.export_causal_lm
LM_KIND = "lm"
LM_FORMAT = "veil-onnx-lm/1"  # the layout of the entry's ``extra``
_ORT_DTYPES = {"tensor(int64)": "int64", "tensor(float)": "float32"}
_SIZES = ("n_layers", "n_kv_heads", "head_dim", "hidden_size", "vocab_size", "max_position_embeddings")


@dataclass(frozen=True)
class LMSpec:
    """The language model's sizes and special tokens: the ``extra`` of its manifest entry.

    ``tokenizer`` is ``{"file", "sha256"}`` or ``None``; ``eos_token_ids`` end
    generation by default; ``pad_token_id`` fills left padding and finished rows.
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
            return cls(
                **{k: int(extra[k]) for k in _SIZES},
                bos_token_id=None if bos is None else int(bos),
                eos_token_ids=tuple(int(t) for t in extra["eos_token_ids"]),
                pad_token_id=int(extra["pad_token_id"]),
                tokenizer=extra.get("tokenizer"),
                chat_template=extra.get("chat_template"),
                source=str(extra.get("source", "model")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"manifest entry {entry.name!r}: malformed extra: {exc!r}") from exc

    @property
    def past_names(self) -> list[str]:
        return [f"past_key_values.{i}.{kv}" for i in range(self.n_layers) for kv in ("key", "value")]

    def expected_io(self) -> tuple[list[tuple[str, str, tuple]], list[tuple[str, str, tuple]]]:
        """``(name, dtype, fixed sizes by axis, None = symbolic)`` of every input and output."""
        kv = (None, self.n_kv_heads, None, self.head_dim)
        inputs = [
            ("input_ids", "int64", (None, None)),
            ("prefix_embeds", "float32", (None, None, self.hidden_size)),
            ("attention_mask", "int64", (None, None)),
            ("position_ids", "int64", (None, None)),
        ] + [(name, "float32", kv) for name in self.past_names]
        present = [f"present.{i}.{kv_}" for i in range(self.n_layers) for kv_ in ("key", "value")]
        outputs = [("logits", "float32", (None, self.vocab_size))] + [(n, "float32", kv) for n in present]
        return inputs, outputs


@dataclass(frozen=True)
class SamplingParams(DecodingParams):
    """How one row is decoded on the phone: the shared fields and limits of
    :class:`~veil.client_sdk.sampling.DecodingParams` (``seed`` seeds a numpy generator; ``None`` draws
    fresh OS entropy), and

    Attributes
    ----------
    stop_token_ids: ids that end the row (reason ``"stop"``), not emitted; ``None`` = the model's EOS.
    """

    stop_token_ids: tuple[int, ...] | None = None


def sample_next(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """One token id from next-token ``logits`` ``(vocab,)``: argmax, or inverse-CDF sampling after
    temperature and nucleus (top-p) filtering; ``rng`` supplies the one uniform draw."""
    if params.temperature == 0.0:
        return int(np.argmax(logits))  # first maximum on ties, like torch.argmax
    # Shifted before the division, as in the torch twin: a tiny temperature must not overflow to inf - inf.
    z = logits.astype(np.float64)
    with np.errstate(over="ignore"):  # -x / 1e-320 is -inf, and exp(-inf) the 0 it should be
        probs = np.exp((z - z.max()) / params.temperature)
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        sorted_p = probs[order]
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        keep = (np.cumsum(sorted_p) - sorted_p) < params.top_p
        probs = np.zeros_like(probs)
        probs[order[keep]] = sorted_p[keep]
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(cdf) - 1))


def _check_file(directory: Path, item: dict[str, str], what: str) -> Path:
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


def _check_io(where: str, specs: tuple[TensorSpec, ...], actual: list[Any], expected: list[tuple]) -> None:
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


class OnnxLM:
    """The exported causal LM on onnxruntime.

    Parameters
    ----------
    directory: a folder written by ``export_lm`` (with ``manifest.json``).
    threads: onnxruntime intra-op threads; ``None`` lets onnxruntime choose (all cores).
    verify: check the sha256 of every file (opset, inputs and outputs are always checked).
    name: the manifest entry of the model.

    Raises
    ------
    ModelFileError
        No manifest or entry, or files that differ from it (see the module docstring).
    """

    def __init__(
        self, directory: str | Path, threads: int | None = None, verify: bool = True, name: str = LM_ENTRY
    ) -> None:
        # lazy: onnxruntime costs ~0.2 s at import; only running a graph needs it
        import onnxruntime as ort

        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {threads}")
        self.directory = Path(directory)
        manifest = read_manifest(self.directory)
        try:
            self.entry = manifest.entry(name)
        except KeyError as exc:
            raise ModelFileError(f"{self.directory}: {exc.args[0]}") from exc
        self.spec = LMSpec.from_entry(self.entry)
        path = self.directory / self.entry.file
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelFileError(f"{path}: cannot read the language model: {exc}") from exc
        if verify:
            digest = hashlib.sha256(data).hexdigest()
            if digest != self.entry.sha256:
                raise ModelFileError(
                    f"{path}: sha256 {digest} differs from the manifest's {self.entry.sha256} "
                    "(corrupt or replaced)"
                )
        try:
            opset = read_opsets(data).get("")
        except ModelFileError as exc:
            raise ModelFileError(f"{path}: not an ONNX model: {exc}") from exc
        if opset != self.entry.opset or not MIN_OPSET <= opset <= MAX_OPSET:
            raise ModelFileError(
                f"{path}: opset {opset}; the manifest says {self.entry.opset}, "
                f"this client runs {MIN_OPSET}..{MAX_OPSET}"
            )
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            # the very bytes that were hashed: nothing can swap the file between check and use
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelFileError(f"{path}: onnxruntime cannot load it: {first}") from exc
        del data
        want_in, want_out = self.spec.expected_io()
        _check_io(f"{path}: input", self.entry.inputs, self.session.get_inputs(), want_in)
        _check_io(f"{path}: output", self.entry.outputs, self.session.get_outputs(), want_out)
        self._tokenizer: Any = None

    # ----------------------------------------------------------------------------------------- tokens
    def _tokenizer_or_raise(self) -> Any:
        if self._tokenizer is None:
            if self.spec.tokenizer is None:
                raise ModelFileError(f"{str(self.directory)!r} was exported without a tokenizer")
            try:  # lazy: optional dependency (not in the phone's base set)
                from tokenizers import Tokenizer
            except ImportError as exc:
                raise ImportError(
                    "text in/out needs the tokenizers package (pip install tokenizers); "
                    "otherwise tokenise in the app and pass token ids"
                ) from exc
            path = _check_file(self.directory, self.spec.tokenizer, "tokenizer")
            self._tokenizer = Tokenizer.from_file(str(path))
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        return list(self._tokenizer_or_raise().encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer_or_raise().decode(list(ids), skip_special_tokens=True))

    # ------------------------------------------------------------------------------------------ model
    def empty_cache(self, batch: int) -> list[np.ndarray]:
        """The cache of the first call: ``2 * n_layers`` arrays ``(batch, kv_heads, 0, head_dim)``."""
        shape = (batch, self.spec.n_kv_heads, 0, self.spec.head_dim)
        return [np.zeros(shape, dtype=np.float32) for _ in range(2 * self.spec.n_layers)]

    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past: Sequence[np.ndarray] | None = None,
        prefix_embeds: np.ndarray | None = None,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One graph call; returns next-token logits ``(B, vocab)`` and the grown cache.

        Parameters
        ----------
        input_ids: ``(B, T)`` int64.
        attention_mask: ``(B, P + S + T)`` over cache, prefix and new tokens.
        position_ids: ``(B, S + T)``.
        past: ``2 * n_layers`` arrays ``(B, kv_heads, P, head_dim)``; ``None`` = empty.
        prefix_embeds: ``(B, S, hidden)`` soft tokens placed before ``input_ids``; ``None`` = none.
        """
        ids = np.asarray(input_ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[1] < 1:
            raise ValueError(f"input_ids must be (batch, seq>=1), got shape {ids.shape}")
        batch, h = ids.shape[0], self.spec.hidden_size
        soft = np.zeros((batch, 0, h), np.float32) if prefix_embeds is None else prefix_embeds
        soft = np.asarray(soft, dtype=np.float32)
        if soft.ndim != 3 or soft.shape[0] != batch or soft.shape[2] != h:
            raise ValueError(f"prefix_embeds must be ({batch}, n, {h}), got shape {soft.shape}")
        cache = self.empty_cache(batch) if past is None else list(past)
        if len(cache) != 2 * self.spec.n_layers:
            raise ValueError(f"past must hold {2 * self.spec.n_layers} arrays, got {len(cache)}")
        kv_shape = (batch, self.spec.n_kv_heads, cache[0].shape[2], self.spec.head_dim)
        if any(c.shape != kv_shape for c in cache):
            raise ValueError(f"every past array must have shape {kv_shape}, got {[c.shape for c in cache]}")
        query = soft.shape[1] + ids.shape[1]
        mask = np.asarray(attention_mask, dtype=np.int64)
        pos = np.asarray(position_ids, dtype=np.int64)
        if mask.shape != (batch, kv_shape[2] + query) or pos.shape != (batch, query):
            raise ValueError(
                f"attention_mask must be {(batch, kv_shape[2] + query)} and position_ids {(batch, query)}, "
                f"got {mask.shape} and {pos.shape}"
            )
        if int(ids.min()) < 0 or int(ids.max()) >= self.spec.vocab_size:
            raise ValueError(
                f"token ids must be in [0, {self.spec.vocab_size}), got {ids.min()}..{ids.max()}"
            )
        feed = {"input_ids": ids, "prefix_embeds": soft, "attention_mask": mask, "position_ids": pos}
        feed.update(zip(self.spec.past_names, cache, strict=True))
        logits, *present = self.session.run(None, feed)
        return logits, present

    def generate_batch(
        self,
        prompts: Sequence[Sequence[int]],
        prefixes: Sequence[np.ndarray | None] | None = None,
        params: Sequence[SamplingParams] | SamplingParams | None = None,
        on_step: Callable[[list[int | None]], set[int] | None] | None = None,
    ) -> list[tuple[list[int], str]]:
        """Generate for a batch; returns ``(token_ids, finish_reason)`` per row.

        Parameters
        ----------
        prompts: token ids of each row (not padded, not empty).
        prefixes: per row, soft tokens ``(n_tokens, hidden)`` (the user embedding) or ``None``; all
            given prefixes must have the same ``n_tokens``.
        params: one :class:`SamplingParams` for all rows, or one per row; ``None`` = the defaults.
        on_step: called with each step's new tokens (``None`` for finished rows); may return rows to stop.
        """
        n = len(prompts)
        params = SamplingParams() if params is None else params
        rows = [params] * n if isinstance(params, SamplingParams) else list(params)
        soft_rows = [None] * n if prefixes is None else list(prefixes)
        if n == 0 or not n == len(rows) == len(soft_rows):
            raise ValueError(f"need equal, non-zero numbers of prompts/prefixes/params, got {n}")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        pad = self.spec.pad_token_id
        ids, text_mask = left_pad(prompts, pad)  # (B, W), as generate_batch
        soft, soft_mask = self._stack_prefixes(soft_rows)
        mask = np.concatenate([soft_mask, text_mask], axis=1)  # (B, S + W)
        pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)  # positions count attended tokens only
        logits, cache = self.forward(ids, mask, pos, None, soft)
        rngs = [np.random.default_rng(p.seed) for p in rows]
        stops = [set(self.spec.eos_token_ids if p.stop_token_ids is None else p.stop_token_ids) for p in rows]
        pos = pos[:, -1:]
        tokens: list[list[int]] = [[] for _ in range(n)]
        reasons: list[str | None] = [None] * n
        while True:
            step = decode_step(
                lambda r, lg=logits: sample_next(lg[r], rows[r], rngs[r]),
                stops, [p.max_new_tokens for p in rows], tokens, reasons, on_step,
            )  # fmt: skip
            if step is None:
                break
            feed = np.array([[t if t is not None else pad] for t in step], dtype=np.int64)  # (B, 1)
            mask = np.concatenate([mask, np.ones((n, 1), np.int64)], axis=1)
            pos = pos + 1
            logits, cache = self.forward(feed, mask, pos, cache)
        return [(tokens[r], reasons[r] or "length") for r in range(n)]

    def _stack_prefixes(self, soft_rows: list[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
        """``(B, S, hidden)`` soft tokens and their ``(B, S)`` mask; rows without one get zeros, mask 0."""
        n, h = len(soft_rows), self.spec.hidden_size
        given = [np.asarray(s, dtype=np.float32) for s in soft_rows if s is not None]
        width = given[0].shape[0] if given else 0
        for s in given:
            if s.shape != (width, h):
                raise ValueError(f"every prefix must have shape ({width}, {h}), got {s.shape}")
            if not np.isfinite(s).all():
                raise ValueError("a prefix contains NaN or Inf")
        soft = np.zeros((n, width, h), dtype=np.float32)
        soft_mask = np.zeros((n, width), dtype=np.int64)
        for r, s in enumerate(soft_rows):
            if s is not None:
                soft[r], soft_mask[r] = s, 1
        return soft, soft_mask

    def generate(
        self,
        prompt: Sequence[int] | str,
        prefix: np.ndarray | None = None,
        params: SamplingParams | None = None,
    ) -> tuple[list[int], str]:
        """One row: token ids (or text, with the tokenizer) in, ``(new_token_ids, finish_reason)`` out."""
        ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        return self.generate_batch([ids], [prefix], params)[0]
