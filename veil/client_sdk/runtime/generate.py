"""The phone's local language model on onnxruntime: load, verify, and generate with a KV cache.

:class:`OnnxLM` opens a directory written by ``veil.models.onnx.lm.export_lm`` (``lm.json``,
``lm.onnx``, ``tokenizer.json``), checks every file's sha256 and the graph's inputs and outputs against
``lm.json`` before use, and runs the reference generation loop that an app reimplements in Kotlin or
Swift: one prefill call over the prompt (with the user's soft tokens as ``prefix_embeds`` when
personalised), then one call per new token feeding back the ``present.*`` tensors as
``past_key_values.*``. Greedy decoding reproduces ``veil.models.generation.generate_batch`` token for
token (the parity tests pin it).

Tokenisation: when the ``tokenizers`` package is importable (a dependency of ``transformers``; it does
not import torch), :meth:`OnnxLM.encode` and :meth:`OnnxLM.decode` use the shipped ``tokenizer.json``.
It is not a dependency of the client: on a phone the app tokenises with its platform's binding of the
same ``tokenizer.json`` and the loop works on token ids. Only numpy and onnxruntime are imported here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "LM_SPEC_FILE",
    "LMFileError",
    "LMSpec",
    "OnnxLM",
    "SamplingParams",
    "sample_next",
]

LM_SPEC_FILE = "lm.json"  # written by veil.models.onnx.lm.export_causal_lm
SPEC_FORMAT = "veil-onnx-lm/1"
_NP_DTYPES = {"int64": np.int64, "float32": np.float32}
_ORT_DTYPES = {"tensor(int64)": "int64", "tensor(float)": "float32"}


class LMFileError(ValueError):
    """A model directory that is missing, corrupt, or does not match its ``lm.json``."""


@dataclass(frozen=True)
class LMSpec:
    """What ``lm.json`` promises about the graph beside it (field meanings as in the exporter)."""

    graph: dict[str, str]
    external_data: list[dict[str, str]]
    opset: int
    n_layers: int
    n_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    max_position_embeddings: int
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    tokenizer: dict[str, str] | None
    chat_template: str | None
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    source: str = "model"

    @classmethod
    def load(cls, directory: Path) -> LMSpec:
        path = directory / LM_SPEC_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise LMFileError(f"{str(directory)!r} is not an exported LM: it has no {LM_SPEC_FILE}") from exc
        except (OSError, ValueError) as exc:
            raise LMFileError(f"cannot read {str(path)!r}: {exc}") from exc
        if not isinstance(raw, dict) or raw.get("format") != SPEC_FORMAT:
            got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
            raise LMFileError(f"{str(path)!r} has format {got!r}, this client reads {SPEC_FORMAT!r}")
        fields = {name: raw[name] for name in cls.__dataclass_fields__ if name in raw}
        fields["eos_token_ids"] = tuple(int(t) for t in raw.get("eos_token_ids", ()))
        try:
            return cls(**fields)
        except TypeError as exc:
            raise LMFileError(f"{str(path)!r} lacks fields: {exc}") from exc

    @property
    def past_names(self) -> list[str]:
        return [f"past_key_values.{i}.{kv}" for i in range(self.n_layers) for kv in ("key", "value")]


@dataclass(frozen=True)
class SamplingParams:
    """How one row is decoded (the same fields and rules as ``veil.models.generation.SamplingParams``).

    Attributes
    ----------
    max_new_tokens: upper bound on generated tokens (the row finishes with reason ``"length"``).
    temperature: 0 means greedy; otherwise logits are divided by it before sampling.
    top_p: nucleus sampling mass in (0, 1]; 1 keeps the whole distribution.
    seed: seeds this row's own numpy generator; ``None`` draws fresh OS entropy.
    stop_token_ids: ids that end the row (reason ``"stop"``), not emitted; ``None`` = the model's EOS.
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def sample_next(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """One token id from next-token ``logits`` ``(vocab,)``: argmax, or inverse-CDF sampling after
    temperature and nucleus (top-p) filtering; ``rng`` supplies the one uniform draw."""
    if params.temperature == 0.0:
        return int(np.argmax(logits))  # first maximum on ties, like torch.argmax
    z = logits.astype(np.float64) / params.temperature
    probs = np.exp(z - z.max())
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_file(directory: Path, entry: dict[str, str], what: str) -> Path:
    path = directory / entry["file"]
    if not path.is_file():
        raise LMFileError(f"{what} file {str(path)!r} is missing")
    digest = _sha256(path)
    if digest != entry["sha256"]:
        raise LMFileError(
            f"{what} file {str(path)!r} is corrupt or was replaced: sha256 {digest[:16]}..., "
            f"{LM_SPEC_FILE} expects {entry['sha256'][:16]}..."
        )
    return path


class OnnxLM:
    """The exported causal LM on onnxruntime.

    Parameters
    ----------
    directory: a folder written by ``export_lm``.
    threads: onnxruntime intra-op threads; ``None`` lets onnxruntime choose (all cores).
    verify: check sha256 of every file (turn off only for files verified once already).
    """

    def __init__(self, directory: str | Path, threads: int | None = None, verify: bool = True) -> None:
        import onnxruntime as ort

        self.directory = Path(directory)
        self.spec = LMSpec.load(self.directory)
        if verify:
            graph = _check_file(self.directory, self.spec.graph, "graph")
            for entry in self.spec.external_data:
                _check_file(self.directory, entry, "external data")
        else:
            graph = self.directory / self.spec.graph["file"]
        options = ort.SessionOptions()
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be >= 1 or None, got {threads}")
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise LMFileError(f"onnxruntime cannot load {str(graph)!r}: {first}") from exc
        self._check_signature()
        self._tokenizer: Any = None

    def _check_signature(self) -> None:
        meta = self.session.get_modelmeta().custom_metadata_map
        for key, want in (("opset", self.spec.opset), ("n_layers", self.spec.n_layers)):
            got = meta.get(f"veil.{key}")
            if got != str(want):
                raise LMFileError(f"graph was exported with {key}={got}, {LM_SPEC_FILE} says {want}")
        for side, actual, promised in (
            ("input", self.session.get_inputs(), self.spec.inputs),
            ("output", self.session.get_outputs(), self.spec.outputs),
        ):
            got = [
                (
                    a.name,
                    _ORT_DTYPES.get(a.type, a.type),
                    [d if isinstance(d, int) else None for d in a.shape],
                )
                for a in actual
            ]
            want = [
                (p["name"], p["dtype"], [d if isinstance(d, int) else None for d in p["shape"]])
                for p in promised
            ]
            if got != want:
                raise LMFileError(f"graph {side}s {got} do not match {LM_SPEC_FILE}: {want}")

    # ----------------------------------------------------------------------------------------- tokens
    def _tokenizer_or_raise(self) -> Any:
        if self._tokenizer is None:
            if self.spec.tokenizer is None:
                raise LMFileError(f"{str(self.directory)!r} was exported without a tokenizer")
            try:
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
        pad, width = self.spec.pad_token_id, max(len(p) for p in prompts)
        ids = np.full((n, width), pad, dtype=np.int64)
        text_mask = np.zeros((n, width), dtype=np.int64)
        for r, toks in enumerate(prompts):
            ids[r, width - len(toks) :] = toks  # left padding, as generate_batch
            text_mask[r, width - len(toks) :] = 1
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
            step: list[int | None] = [None] * n
            for r in range(n):
                if reasons[r] is not None:
                    continue
                tok = sample_next(logits[r], rows[r], rngs[r])
                if tok in stops[r]:
                    reasons[r] = "stop"
                    continue
                tokens[r].append(tok)
                step[r] = tok
                if len(tokens[r]) >= rows[r].max_new_tokens:
                    reasons[r] = "length"
            if on_step is not None:
                for r in on_step(step) or ():
                    if reasons[r] is None or reasons[r] == "length":
                        reasons[r] = "stop"
            if all(reason is not None for reason in reasons):
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
