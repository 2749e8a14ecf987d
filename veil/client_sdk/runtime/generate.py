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

Phones hold long chats in little memory: ``generate_batch(..., compression=...)`` prunes the prompt's
KV cache once after prefill with the cloud's methods (:mod:`veil.client_sdk.runtime.compression`:
DBudgetKV, arXiv:2502.16886, and its fixed-budget baselines), keeping the same positions as
``veil.models.compression`` on the same weights. Methods that score with queries need a graph exported
with ``query_window > 0`` (:mod:`veil.client_sdk.runtime.lm_spec`); StreamingLLM runs on any.

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
from veil.client_sdk.runtime.compression import Compression, KVKept, compress_prefill, per_row, query_window
from veil.client_sdk.runtime.graphs import MAX_OPSET, MIN_OPSET, read_opsets
from veil.client_sdk.runtime.lm_spec import LM_ENTRY, LM_FORMAT, LM_KIND, LMSpec, check_file, check_io
from veil.client_sdk.runtime.manifest import ModelFileError, read_manifest
from veil.client_sdk.sampling import DecodingParams, decode_step

__all__ = [
    "LM_ENTRY",
    "LM_FORMAT",
    "LM_KIND",
    "LMSpec",
    "LMStep",
    "ModelFileError",
    "OnnxLM",
    "SamplingParams",
    "sample_next",
]


@dataclass(frozen=True)
class LMStep:
    """What one graph call returns.

    Attributes
    ----------
    logits: next-token logits ``(B, vocab)``.
    present: the grown cache, ``2 * n_layers`` arrays ``(B, kv_heads, P_l + S + T, head_dim)``.
    queries: per layer, the post-RoPE queries of the call's last ``query_window`` positions
        ``(B, heads, query_window, head_dim)`` (zeros in front for shorter calls); ``None`` for a plain graph.
    """

    logits: np.ndarray
    present: list[np.ndarray]
    queries: list[np.ndarray] | None


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
        check_io(f"{path}: input", self.entry.inputs, self.session.get_inputs(), want_in)
        check_io(f"{path}: output", self.entry.outputs, self.session.get_outputs(), want_out)
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
            path = check_file(self.directory, self.spec.tokenizer, "tokenizer")
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
        attention_mask: np.ndarray | Sequence[np.ndarray],
        position_ids: np.ndarray,
        past: Sequence[np.ndarray] | None = None,
        prefix_embeds: np.ndarray | None = None,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One graph call; returns next-token logits ``(B, vocab)`` and the grown cache (see :meth:`step`)."""
        out = self.step(input_ids, attention_mask, position_ids, past, prefix_embeds)
        return out.logits, out.present

    def step(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray | Sequence[np.ndarray],
        position_ids: np.ndarray,
        past: Sequence[np.ndarray] | None = None,
        prefix_embeds: np.ndarray | None = None,
    ) -> LMStep:
        """One graph call, with the queries of a compressible graph.

        Parameters
        ----------
        input_ids: ``(B, T)`` int64.
        attention_mask: ``(B, P + S + T)`` over cache, prefix and new tokens; or one such mask per layer,
            ``(B, P_l + S + T)``, for a cache whose layers hold different slots (a compressible graph; a
            plain graph takes a list only when all its masks are equal).
        position_ids: ``(B, S + T)``.
        past: ``2 * n_layers`` arrays ``(B, kv_heads, P_l, head_dim)``; ``None`` = empty. ``P_l`` is
            the same for every layer unless the graph is compressible.
        prefix_embeds: ``(B, S, hidden)`` soft tokens placed before ``input_ids``; ``None`` = none.
        """
        ids = np.asarray(input_ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[1] < 1:
            raise ValueError(f"input_ids must be (batch, seq>=1), got shape {ids.shape}")
        batch, h, n_layers = ids.shape[0], self.spec.hidden_size, self.spec.n_layers
        soft = np.zeros((batch, 0, h), np.float32) if prefix_embeds is None else prefix_embeds
        soft = np.asarray(soft, dtype=np.float32)
        if soft.ndim != 3 or soft.shape[0] != batch or soft.shape[2] != h:
            raise ValueError(f"prefix_embeds must be ({batch}, n, {h}), got shape {soft.shape}")
        cache = self.empty_cache(batch) if past is None else list(past)
        if len(cache) != 2 * n_layers:
            raise ValueError(f"past must hold {2 * n_layers} arrays, got {len(cache)}")
        lengths = [c.shape[2] if c.ndim == 4 else -1 for c in cache[::2]]
        shapes = [(batch, self.spec.n_kv_heads, p, self.spec.head_dim) for p in lengths for _ in range(2)]
        if any(c.shape != s for c, s in zip(cache, shapes, strict=True)) or (
            not self.spec.compressible and len(set(lengths)) > 1
        ):
            same = "" if self.spec.compressible else ", the same length in every layer"
            raise ValueError(
                f"past arrays must be ({batch}, {self.spec.n_kv_heads}, P, {self.spec.head_dim}), key and "
                f"value alike{same}; got {[c.shape for c in cache]}"
            )
        query = soft.shape[1] + ids.shape[1]
        masks = self._layer_masks(attention_mask, batch, [p + query for p in lengths])
        pos = np.asarray(position_ids, dtype=np.int64)
        if pos.shape != (batch, query):
            raise ValueError(f"position_ids must be {(batch, query)}, got {pos.shape}")
        if int(ids.min()) < 0 or int(ids.max()) >= self.spec.vocab_size:
            raise ValueError(
                f"token ids must be in [0, {self.spec.vocab_size}), got {ids.min()}..{ids.max()}"
            )
        feed = {"input_ids": ids, "prefix_embeds": soft, "position_ids": pos}
        feed.update(zip(self.spec.mask_names, masks, strict=True))
        feed.update(zip(self.spec.past_names, cache, strict=True))
        logits, *rest = self.session.run(None, feed)
        present = rest[: 2 * n_layers]
        return LMStep(logits, present, rest[2 * n_layers :] if self.spec.compressible else None)

    def _layer_masks(
        self, attention_mask: np.ndarray | Sequence[np.ndarray], batch: int, widths: list[int]
    ) -> list[np.ndarray]:
        """The graph's mask inputs: one per layer (compressible) or the one mask (plain)."""
        given = (
            attention_mask if isinstance(attention_mask, (list, tuple)) else [attention_mask] * len(widths)
        )
        masks = [np.asarray(m, dtype=np.int64) for m in given]
        if len(masks) != len(widths) or any(
            m.shape != (batch, w) for m, w in zip(masks, widths, strict=False)
        ):
            raise ValueError(
                f"attention_mask must be one (batch, past + query) array or one per layer, shapes "
                f"{[(batch, w) for w in widths]}; got {[m.shape for m in masks]}"
            )
        if self.spec.compressible:
            return masks
        if any(not np.array_equal(m, masks[0]) for m in masks[1:]):
            raise ValueError(
                "this graph takes one attention mask for all layers; per-layer masks need a compressible "
                "export (export_causal_lm(..., query_window=...))"
            )
        return masks[:1]

    def generate_batch(
        self,
        prompts: Sequence[Sequence[int]],
        prefixes: Sequence[np.ndarray | None] | None = None,
        params: Sequence[SamplingParams] | SamplingParams | None = None,
        on_step: Callable[[list[int | None]], set[int] | None] | None = None,
        compression: Compression | Sequence[Compression | None] | None = None,
        on_kv_kept: Callable[[list[KVKept | None]], None] | None = None,
    ) -> list[tuple[list[int], str]]:
        """Generate for a batch; returns ``(token_ids, finish_reason)`` per row.

        Parameters
        ----------
        prompts: token ids of each row (not padded, not empty).
        prefixes: per row, soft tokens ``(n_tokens, hidden)`` (the user embedding) or ``None``; all
            given prefixes must have the same ``n_tokens``.
        params: one :class:`SamplingParams` for all rows, or one per row; ``None`` = the defaults.
        on_step: called with each step's new tokens (``None`` for finished rows); may return rows to stop.
        compression: a KV-cache compression config or ``{"method": ...}`` spec
            (:mod:`veil.client_sdk.runtime.compression`) for every row, or one per row (``None``: that
            row keeps its full cache); applied once, after the prefill call. Soft tokens are never
            pruned, and positions stay the original ones. Methods that score with queries need a
            compressible graph; StreamingLLM runs on any.
        on_kv_kept: called once after compression with each row's kept fractions (``None`` for rows
            without compression), mean and per layer.

        Raises
        ------
        ValueError
            Bad prompts, params or compression (unknown method or field, a bad value, or a method that
            needs more queries than the graph gives).
        """
        n = len(prompts)
        params = SamplingParams() if params is None else params
        rows = [params] * n if isinstance(params, SamplingParams) else list(params)
        soft_rows = [None] * n if prefixes is None else list(prefixes)
        if n == 0 or not n == len(rows) == len(soft_rows):
            raise ValueError(f"need equal, non-zero numbers of prompts/prefixes/params, got {n}")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        configs = per_row(compression, n)
        pad = self.spec.pad_token_id
        ids, text_mask = left_pad(prompts, pad)  # (B, W), as generate_batch
        soft, soft_mask = self._stack_prefixes(soft_rows)
        mask = np.concatenate([soft_mask, text_mask], axis=1)  # (B, S + W)
        if query_window(configs, mask.shape[1]) > min(self.spec.query_window, mask.shape[1]):
            raise ValueError(
                f"the compression needs the last {query_window(configs, mask.shape[1])} prompt queries; this "
                f"model's graph gives {self.spec.query_window} (export_causal_lm(..., query_window=...))"
            )
        pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)  # positions count attended tokens only
        out = self.step(ids, mask, pos, None, soft)
        logits, cache, masks = out.logits, out.present, [mask] * self.spec.n_layers
        if any(c is not None for c in configs):
            protected = np.concatenate([soft_mask, np.zeros_like(text_mask)], axis=1).astype(bool)
            cache, masks, kept = compress_prefill(
                configs, cache, out.queries, mask.astype(bool), protected, self.spec.attention_scaling
            )
            if on_kv_kept is not None:
                on_kv_kept(kept)
        rngs = [np.random.default_rng(p.seed) for p in rows]
        stops = [set(self.spec.eos_token_ids if p.stop_token_ids is None else p.stop_token_ids) for p in rows]
        pos = pos[:, -1:]  # pruning keeps positions: the next token of every row follows its prompt
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
            masks = [np.concatenate([m, np.ones((n, 1), np.int64)], axis=1) for m in masks]
            pos = pos + 1
            logits, cache = self.forward(feed, masks, pos, cache)
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
        compression: Compression | None = None,
        on_kv_kept: Callable[[list[KVKept | None]], None] | None = None,
    ) -> tuple[list[int], str]:
        """One row: token ids (or text, with the tokenizer) in, ``(new_token_ids, finish_reason)`` out."""
        ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        return self.generate_batch([ids], [prefix], params, compression=compression, on_kv_kept=on_kv_kept)[0]
