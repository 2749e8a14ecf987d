"""Export a causal LM to one ONNX graph with an explicit KV cache: the phone's local language model.

The graph (float32; ``L`` layers; every named axis is dynamic)::

  in   input_ids                  int64    (batch, seq)                            text tokens of this call
       prefix_embeds              float32  (batch, prefix, hidden)                 soft tokens before text
       attention_mask             int64    (batch, total_seq)                      1 = attend, 0 = padding
       position_ids               int64    (batch, query_seq)                      query_seq = prefix + seq
       past_key_values.{i}.key    float32  (batch, kv_heads, past_seq, head_dim)   past_seq may be 0
       past_key_values.{i}.value  float32  (batch, kv_heads, past_seq, head_dim)   i = 0 .. L-1
  out  logits                     float32  (batch, vocab)                          next token only
       present.{i}.key            float32  (batch, kv_heads, total_seq, head_dim)  the cache to feed back
       present.{i}.value          float32  (batch, kv_heads, total_seq, head_dim)

with ``total_seq = past_seq + prefix + seq``. Choices, and why:

- **Token ids plus an optional embedding prefix** rather than ``inputs_embeds`` alone. The user
  embedding of the ID-free personalised LM (``PersonalizedLM``, placement ``"prefix"``) enters as soft
  tokens, so the graph must accept vectors; but an ``inputs_embeds``-only graph would make the app
  look up token embeddings itself, i.e. ship the embedding table a second time (it is tied to the
  output head: 28M of SmolLM2's 135M parameters). ``prefix`` is simply 0 when there is no user
  embedding and on every decoding step. In a batch, rows without an embedding pass zeros there with
  ``attention_mask`` 0; masked positions change nothing, so this equals ``PersonalizedLM.pack``'s layout.
- **Logits of the last position only**: a prefill of ``n`` tokens would otherwise compute ``n x vocab``
  logits that generation throws away.
- **Positions and mask are inputs**, so left padding and soft tokens are the caller's business, exactly
  as in :func:`veil.models.generation.generate_batch`. Keys are cached after RoPE, so a pruned cache
  keeps its tokens' positions and new tokens continue from the prompt's length.
- **A compressible variant** (``query_window=W``, off by default: plain graphs and their manifests are
  unchanged) lets the phone prune its own cache after prefill with DBudgetKV (arXiv:2502.16886) or a
  fixed-budget baseline: ``attention_mask`` becomes ``attention_mask.{i}`` ``(batch, total_seq.i)``, one
  per layer, so layers may keep different tokens (``past_seq.i`` is per layer too), and outputs
  ``query.{i}`` ``(batch, heads, W, head_dim)`` carry the last ``W`` post-RoPE queries the selection
  scores with (:mod:`veil.models.onnx.layer_masks`). Computing the attention row from the queries in
  numpy costs one decode step's worth of work; exporting attention rows instead would fix ``k`` and
  the scoring inside the graph.

Beside the graph, ``out_dir`` receives ``tokenizer.json`` (for the ``tokenizers`` package) and the
``lm`` entry of ``manifest.json`` (:mod:`veil.models.onnx.manifest`), whose ``extra`` holds the sizes,
special tokens and the tokenizer's sha256. The graph is one file (weights inside, no external data).
:class:`veil.client_sdk.runtime.generate.OnnxLM` reads exactly these. Before the entry is written, the
graph is checked against the torch model with onnxruntime.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from veil.client_sdk.runtime.graphs import MAX_OPSET, MIN_OPSET
from veil.models.loading import load_model
from veil.models.onnx.layer_masks import MASKS_KWARG, QUERIES_KWARG, layer_masked_attention
from veil.models.onnx.manifest import ManifestEntry, add_entries, describe_model, sha256_file

__all__ = [
    "DEFAULT_OPSET",
    "LM_GRAPH_FILE",
    "LM_ENTRY",
    "LM_FORMAT",
    "LM_KIND",
    "LM_TOKENIZER_FILE",
    "LMExportError",
    "export_causal_lm",
    "export_lm",
]

DEFAULT_OPSET = 18  # onnxruntime >= 1.14, i.e. every mobile build of the last years
LM_GRAPH_FILE = "lm.onnx"
LM_TOKENIZER_FILE = "tokenizer.json"
# the manifest entry that veil.client_sdk.runtime.generate.OnnxLM looks up
LM_ENTRY = "lm"
LM_KIND = "lm"
LM_FORMAT = "veil-onnx-lm/1"  # the layout of the entry's ``extra``
# protobuf refuses messages over 2 GiB, and no phone runs a float32 model of that size: one file it is
_MAX_WEIGHT_BYTES = 1_800_000_000
# export-time check: max |onnx - torch| / max |torch|, for the logits and for each cache tensor
_VERIFY_RTOL = 1e-4


class LMExportError(ValueError):
    """The model cannot be exported, or its export does not reproduce the torch model."""


def _cache_keyword(base: nn.Module) -> str:
    # transformers 5.2x renamed ``past_key_values`` to ``cache``
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


class _CachedLM(nn.Module):
    """The exported function: flat tensors in, last-position logits and the grown cache out.

    With ``query_window > 0`` (a compressible graph, :mod:`veil.models.onnx.layer_masks`) the attention
    mask is a list, one per layer, and the last ``query_window`` queries of every layer come out last;
    the model must then run inside :func:`layer_masked_attention`.
    """

    def __init__(self, lm: nn.Module, query_window: int = 0) -> None:
        super().__init__()
        self.lm = lm
        self.n_layers = int(lm.config.num_hidden_layers)
        self.cache_kw = _cache_keyword(lm.base_model)
        self.query_window = query_window

    def forward(
        self,
        input_ids: Tensor,
        prefix_embeds: Tensor,
        attention_mask: Tensor | list[Tensor],
        position_ids: Tensor,
        past: list[Tensor],
    ) -> tuple[Tensor, ...]:
        # lazy: transformers, onnx and onnxruntime load only when exporting
        from transformers import DynamicCache

        text = self.lm.get_input_embeddings()(input_ids)  # (B, T, H)
        embeds = torch.cat([prefix_embeds.to(text.dtype), text], dim=1)  # (B, S + T, H)
        cache = DynamicCache(config=self.lm.config)
        for i in range(self.n_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        queries: dict[int, Tensor] = {}
        extra: dict[str, Any] = {}
        if self.query_window:
            # each layer masks by its own mask; transformers' one mask (sized by layer 0) goes unused
            extra = {MASKS_KWARG: attention_mask, QUERIES_KWARG: (self.query_window, queries)}
            attention_mask = None  # type: ignore[assignment]
        hidden = self.lm.base_model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **{self.cache_kw: cache},
            **extra,
        ).last_hidden_state
        logits = self.lm.get_output_embeddings()(hidden[:, -1, :])  # (B, V)
        presents = [t for layer in cache.layers for t in (layer.keys, layer.values)]
        return (logits, *presents, *(queries[i] for i in sorted(queries)))


def _sizes(lm: nn.Module) -> dict[str, int]:
    cfg = lm.config
    heads = int(cfg.num_attention_heads)
    return {
        "n_layers": int(cfg.num_hidden_layers),
        "n_kv_heads": int(getattr(cfg, "num_key_value_heads", None) or heads),
        "head_dim": int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads),
        "hidden_size": int(lm.get_input_embeddings().weight.shape[1]),
        "vocab_size": int(lm.get_output_embeddings().weight.shape[0]),
        "max_position_embeddings": int(getattr(cfg, "max_position_embeddings", 0) or 0),
    }


def _compression_fields(lm: nn.Module, query_window: int) -> dict[str, Any]:
    """The ``extra`` fields of a compressible graph: what the phone needs to score its queries."""
    attention = [m for name, m in lm.named_modules() if name.endswith("self_attn")]
    if not attention or not hasattr(attention[0], "head_dim"):
        raise LMExportError(f"{type(lm).__name__} has no Llama-like attention modules to export queries from")
    first = attention[0]
    return {
        "query_window": query_window,
        "n_heads": int(lm.config.num_attention_heads),
        "attention_scaling": float(getattr(first, "scaling", first.head_dim**-0.5)),
    }


def _check_exportable(lm: nn.Module) -> None:
    # lazy: transformers, onnx and onnxruntime load only when exporting
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    if getattr(lm.config, "is_encoder_decoder", False):
        raise LMExportError("only decoder-only causal LMs can be exported, got an encoder-decoder")
    if lm.get_output_embeddings() is None:
        raise LMExportError(f"{type(lm).__name__} has no language-model head")
    dtype = lm.get_input_embeddings().weight.dtype
    if dtype != torch.float32:
        raise LMExportError(f"export a float32 model (load it with dtype=torch.float32), got {dtype}")
    weight_bytes = sum(p.numel() * p.element_size() for p in lm.parameters())
    if weight_bytes > _MAX_WEIGHT_BYTES:
        raise LMExportError(
            f"the model has {weight_bytes / 1e9:.1f} GB of weights; at most 1.8 GB fit one file"
        )
    kinds = sorted({type(layer).__name__ for layer in DynamicCache(config=lm.config).layers})
    if kinds != [DynamicLayer.__name__]:
        # sliding-window and hybrid caches drop old entries: the graph's contract (present = past + new)
        # would no longer hold
        raise LMExportError(f"only full-attention KV caches can be exported, this model uses {kinds}")


def _io_names(n_layers: int, query_window: int = 0) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    masks = [f"attention_mask.{i}" for i in range(n_layers)] if query_window else ["attention_mask"]
    queries = [f"query.{i}" for i in range(n_layers)] if query_window else []
    return ["input_ids", "prefix_embeds", *masks, "position_ids", *past], ["logits", *present, *queries]


def _example(
    sizes: dict[str, int],
    batch: int,
    prefix: int,
    seq: int,
    past: int,
    seed: int = 0,
    soft_std: float = 0.05,
    per_layer: int | None = None,
) -> tuple:
    """Example inputs; ``per_layer`` (a compressible graph) gives layer ``i`` ``past + per_layer * i``
    cached positions and its own mask, a list."""
    g = torch.Generator().manual_seed(seed)
    n, h = sizes["n_layers"], sizes["hidden_size"]
    ids = torch.randint(0, sizes["vocab_size"], (batch, seq), generator=g)
    soft = torch.randn(batch, prefix, h, generator=g) * soft_std
    lengths = [past + (per_layer or 0) * i for i in range(n)]
    masks = [torch.ones(batch, p + prefix + seq, dtype=torch.long) for p in lengths]
    for mask in masks:
        if batch > 1 and mask.shape[1] > 2:
            mask[0, :2] = 0  # row 0 is left-padded: the mask path must be traced, not assumed all-ones
    pos = (masks[0].cumsum(1) - 1).clamp(min=0)[:, lengths[0] :]  # (B, prefix + seq)
    kv = [(batch, sizes["n_kv_heads"], p, sizes["head_dim"]) for p in lengths for _ in range(2)]
    cache = [torch.randn(*shape, generator=g) * 0.5 for shape in kv]
    return ids, soft, (masks[0] if per_layer is None else masks), pos, cache


# the named axes of each input/output, in _io_names order; None = a fixed size
def _axis_names(
    n_layers: int, query_window: int = 0
) -> tuple[list[list[str | None]], list[list[str | None]]]:
    if not query_window:
        kv_in = ["batch", None, "past_seq", None]
        kv_out = ["batch", None, "total_seq", None]
        inputs = [["batch", "seq"], ["batch", "prefix", None], ["batch", "total_seq"], ["batch", "query_seq"]]
        return inputs + [kv_in] * (2 * n_layers), [["batch", None]] + [kv_out] * (2 * n_layers)
    layers = range(n_layers)
    masks = [["batch", f"total_seq.{i}"] for i in layers]
    kv_in = [["batch", None, f"past_seq.{i}", None] for i in layers for _ in range(2)]
    kv_out = [["batch", None, f"total_seq.{i}", None] for i in layers for _ in range(2)]
    inputs = [["batch", "seq"], ["batch", "prefix", None], *masks, ["batch", "query_seq"], *kv_in]
    return inputs, [["batch", None], *kv_out] + [["batch", None, None, None]] * n_layers


def _finish_graph(path: Path, sizes: dict[str, int], opset: int, source: str, query_window: int = 0) -> None:
    """Name the dynamic axes readably and stamp the sizes into the model's metadata."""
    # lazy: transformers, onnx and onnxruntime load only when exporting
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ins, outs = _axis_names(sizes["n_layers"], query_window)
    for values, names in ((model.graph.input, ins), (model.graph.output, outs)):
        for value, axes in zip(values, names, strict=True):
            for dim, name in zip(value.type.tensor_type.shape.dim, axes, strict=True):
                if name is not None:
                    dim.dim_param = name
    meta = {"veil.kind": LM_KIND, "veil.opset": str(opset), "veil.source": source}
    meta.update({f"veil.{k}": str(v) for k, v in sizes.items()})
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.save(model, str(path))


def _verify(lm: nn.Module, path: Path, sizes: dict[str, int], query_window: int = 0) -> float:
    """Largest relative error (over logits, cache and queries) of the graph against torch, on odd shapes.

    Realistic inputs: a prefill from an empty cache (left padding, soft tokens at the scale of the
    token embeddings), then a decoding step on the cache the graph itself returned. Random caches
    are off-distribution and inflate float noise through deep models (1.7e-4 on SmolLM2's 30 layers).
    A compressible graph is compared with the plain torch model (its per-layer masks all the one
    mask), and its decoding step also runs on a cache whose layers keep different slots.
    """
    # lazy: transformers, onnx and onnxruntime load only when exporting
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    scale = float(lm.get_input_embeddings().weight.detach().std())
    n_layers = sizes["n_layers"]
    plain, masked = _CachedLM(lm), _CachedLM(lm, query_window)
    worst = 0.0

    def compare(args: tuple, layer_masks: list[Tensor] | None = None) -> list[np.ndarray]:
        nonlocal worst
        ids, soft, mask, pos, kv = args
        masks = [mask] * n_layers if layer_masks is None else layer_masks
        feed = [ids, soft, *(masks if query_window else [mask]), pos, *kv]
        got = sess.run(None, dict(zip(names, [t.numpy() for t in feed], strict=True)))
        with torch.no_grad():
            if query_window:
                with layer_masked_attention(lm):
                    ref = list(masked(ids, soft, masks, pos, kv))
                if layer_masks is None:  # the masked route is the plain model
                    ref[: 1 + 2 * n_layers] = plain(ids, soft, mask, pos, kv)
            else:
                ref = list(plain(ids, soft, mask, pos, kv))
        for k, (a, b) in enumerate(zip(got, ref, strict=True)):
            if a.shape != tuple(b.shape):
                raise LMExportError(f"exported graph returns shape {a.shape}, torch {tuple(b.shape)}")
            b = b.numpy()
            if 0 < k <= 2 * n_layers:
                # cache entries of padding positions are never attended to, and implementation-defined
                keep = masks[(k - 1) // 2].numpy()[:, None, :, None].astype(np.float32)
                a, b = a * keep, b * keep
            worst = max(worst, float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-6)))
        return got

    for batch, prefix, seq in ((1, 0, 1), (2, 2, 5), (3, 0, 4)):
        ids, soft, mask, pos, kv = _example(sizes, batch, prefix, seq, past=0, seed=batch, soft_std=scale)
        present = compare((ids, soft, mask, pos, kv))[1 : 1 + 2 * n_layers]
        step = torch.randint(0, sizes["vocab_size"], (batch, 1), generator=torch.Generator().manual_seed(seq))
        mask = torch.cat([mask, torch.ones_like(step)], dim=1)
        past = [torch.from_numpy(t) for t in present]
        compare((step, soft[:, :0], mask, pos[:, -1:] + 1, past))
        if query_window and mask.shape[1] > 2:
            # layer i keeps all but its first min(i, n - 1) slots, hidden by its mask: lengths differ
            cut = [min(i, mask.shape[1] - 2) for i in range(n_layers)]
            pruned = [t[:, :, cut[i // 2] :] for i, t in enumerate(past)]
            masks = [mask[:, c:] for c in cut]
            masks[-1] = masks[-1].clone()
            masks[-1][:, 0] = 0  # a hole: a dropped key still in its slot
            compare((step, soft[:, :0], mask, pos[:, -1:] + 1, pruned), masks)
    return worst


def _export_graph(
    lm: nn.Module, path: Path, sizes: dict[str, int], opset: int, query_window: int = 0
) -> None:
    # lazy: transformers, onnx and onnxruntime load only when exporting
    from torch.export import Dim

    n_layers = sizes["n_layers"]
    in_names, out_names = _io_names(n_layers, query_window)
    # distinct sizes >= 2: torch.export gives equal example sizes one symbol and specialises 0 and 1;
    # per layer (a compressible graph), pasts 100 + 3i and totals 108 + 3i never coincide
    per_layer = 3 if query_window else None
    args = _example(sizes, batch=2, prefix=3, seq=5, past=100 if query_window else 7, per_layer=per_layer)
    auto = Dim.AUTO
    masks_dyn = [{0: auto, 1: auto}] * n_layers if query_window else {0: auto, 1: auto}
    dyn = ({0: auto, 1: auto}, {0: auto, 1: auto}, masks_dyn, {0: auto, 1: auto})
    dyn = (*dyn, [{0: auto, 2: auto}] * (2 * n_layers))
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed" and similar noise
    attention = layer_masked_attention(lm) if query_window else contextlib.nullcontext()
    try:
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), attention:
            warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecations
            torch.onnx.export(
                _CachedLM(lm, query_window).eval(),
                args,
                str(path),
                input_names=in_names,
                output_names=out_names,
                dynamic_shapes=dyn,
                opset_version=opset,
                dynamo=True,
                external_data=False,
            )
    except ImportError as exc:
        raise LMExportError(f"ONNX export needs onnxscript: pip install onnxscript ({exc})") from exc
    except Exception as exc:  # torch.export raises many types; one line for the CLI
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LMExportError(f"torch.onnx.export failed for {type(lm).__name__}: {first}") from exc
    finally:
        quiet.setLevel(level)


def _tokenizer_fields(tokenizer: Any, out_dir: Path) -> dict[str, Any]:
    fields: dict[str, Any] = {"tokenizer": None, "chat_template": None}
    if tokenizer is None:
        return fields
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend.save(str(out_dir / LM_TOKENIZER_FILE))
        fields["tokenizer"] = {"file": LM_TOKENIZER_FILE, "sha256": sha256_file(out_dir / LM_TOKENIZER_FILE)}
    template = getattr(tokenizer, "chat_template", None)
    fields["chat_template"] = template if isinstance(template, str) else None
    return fields


def _special_ids(lm: nn.Module, tokenizer: Any) -> dict[str, Any]:
    cfg = getattr(lm, "generation_config", None) or lm.config
    eos = getattr(cfg, "eos_token_id", None)
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    eos_ids = [] if eos is None else [int(e) for e in (eos if isinstance(eos, list | tuple) else [eos])]
    pad = getattr(cfg, "pad_token_id", None)
    if pad is None and tokenizer is not None:
        pad = tokenizer.pad_token_id
    bos = getattr(cfg, "bos_token_id", None)
    return {
        "bos_token_id": None if bos is None else int(bos),
        "eos_token_ids": eos_ids,
        "pad_token_id": int(pad) if pad is not None else (eos_ids[0] if eos_ids else 0),
    }


def export_causal_lm(
    lm: nn.Module,
    out_dir: str | Path,
    tokenizer: Any = None,
    opset: int = DEFAULT_OPSET,
    source: str = "model",
    query_window: int = 0,
) -> list[ManifestEntry]:
    """Export an in-memory ``transformers`` causal LM (see the module docstring for the graph).

    Parameters
    ----------
    lm: a float32 decoder-only causal LM with a full-attention cache (Llama, SmolLM2, ...).
    out_dir: created if missing; ``lm.onnx`` and ``tokenizer.json`` are replaced and the ``lm`` entry
        of ``manifest.json`` is added or replaced (other entries stay).
    tokenizer: its ``tokenizer.json`` and special tokens go beside the graph; ``None`` skips them.
    opset: ONNX opset of the default domain.
    source: a name recorded in the entry (a registry name or a path).
    query_window: ``0`` exports the plain graph; ``W >= 1`` a compressible one, whose cache the phone
        can prune after prefill (:mod:`veil.models.onnx.layer_masks`: one attention mask per layer and
        the last ``W`` post-RoPE queries of every layer as outputs ``query.{i}``). ``W`` bounds the
        query window of the methods the phone can run: 1 is enough for DBudgetKV's paper setting,
        SnapKV's observation window is 32. The entry's ``extra`` then also holds ``query_window``,
        ``n_heads`` and ``attention_scaling``.

    Returns
    -------
    list of ManifestEntry
        The one entry written (``name="lm"``, ``kind="lm"``; sizes and special tokens in ``extra``).

    Raises
    ------
    LMExportError
        Unsupported model, exporter failure, or an export whose outputs differ from torch's.
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be in [{MIN_OPSET}, {MAX_OPSET}], got {opset}")
    if isinstance(query_window, bool) or not isinstance(query_window, int) or query_window < 0:
        raise ValueError(f"query_window must be an int >= 0, got {query_window!r}")
    lm = lm.eval()
    _check_exportable(lm)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sizes = _sizes(lm)
    compressible = _compression_fields(lm, query_window) if query_window else {}
    # export into a scratch folder and move in at the end: a failed export leaves no half-written graph
    with tempfile.TemporaryDirectory(prefix=".lm-export-", dir=out) as tmp:
        scratch = Path(tmp) / LM_GRAPH_FILE
        _export_graph(lm, scratch, sizes, opset, query_window)
        _finish_graph(scratch, sizes, opset, source, query_window)
        error = _verify(lm, scratch, sizes, query_window)
        if error > _VERIFY_RTOL:
            raise LMExportError(f"exported graph differs from torch: relative error {error:.2e}")
        files = sorted(p.name for p in Path(tmp).iterdir())
        for name in files:
            os.replace(Path(tmp) / name, out / name)
    extra: dict[str, Any] = {
        "format": LM_FORMAT,
        "source": source,
        **sizes,
        **_special_ids(lm, tokenizer),
        **_tokenizer_fields(tokenizer, out),
        **compressible,
        "export_max_rel_error": error,
    }
    entry = describe_model(out / LM_GRAPH_FILE, name=LM_ENTRY, kind=LM_KIND, extra=extra)
    add_entries(out, [entry])
    return [entry]


def export_lm(
    model_name_or_path: str | Path,
    out_dir: str | Path,
    data_dir: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    query_window: int = 0,
) -> list[ManifestEntry]:
    """Load a registered model (``tiny-llama``, ``smollm2-135m-instruct``) or a model directory and
    export it with its tokenizer; see :func:`export_causal_lm`."""
    loaded = load_model(model_name_or_path, data_dir)
    return export_causal_lm(
        loaded.model, out_dir, loaded.tokenizer, opset=opset, source=loaded.name, query_window=query_window
    )
