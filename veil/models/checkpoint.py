"""Save and load a trained :class:`~veil.models.personalization.PersonalizedLM` as one directory.

Layout of a checkpoint directory::

    config.json, model.safetensors, generation_config.json   the base LM (transformers save_pretrained)
    tokenizer.json, tokenizer_config.json, ...                the tokenizer
    veil-head.safetensors                                     classification head (``weight``, ``bias``)
    veil-checkpoint.json                                      format version, personalisation config,
                                                              classes, embedding shape, metadata
    .veil-complete                                            written last: the directory is whole

LoRA adapters injected with peft's ``inject_adapter_in_model`` are *merged* into the base weights before
saving (``W + B A * scaling``), so the base LM loads with plain ``transformers`` and the adapters can be
injected afresh for a further round of training. The model in memory is not modified.

Writing is atomic: everything goes to a temporary sibling directory that is renamed into place, so a
reader never sees a half-written checkpoint at ``out_dir``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from veil.models.loading import ModelLoadError, load_model
from veil.models.personalization import PersonalizationConfig, PersonalizedLM

__all__ = [
    "CHECKPOINT_FILE",
    "FORMAT_VERSION",
    "HEAD_FILE",
    "is_personalized_checkpoint",
    "load_personalized",
    "merged_state_dict",
    "save_personalized",
]

CHECKPOINT_FILE = "veil-checkpoint.json"
HEAD_FILE = "veil-head.safetensors"
FORMAT = "veil-personalized-lm"
FORMAT_VERSION = 1
_COMPLETE = ".veil-complete"  # the same marker as veil.models.loading: written last


def merged_state_dict(base: torch.nn.Module) -> dict[str, Tensor]:
    """The base LM's state dict with every peft LoRA layer folded into its base weight.

    Keys are those of the model without adapters (``...q_proj.weight``, not ``...q_proj.base_layer.weight``);
    adapter tensors are dropped. Tensors that need no merge are returned as they are (not copied).

    Raises
    ------
    ValueError
        For adapter types other than plain LoRA (for example DoRA), whose merge this does not implement.
    """
    deltas: dict[str, Tensor] = {}
    try:
        # lazy: peft and safetensors load only to save or load a checkpoint
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # without peft there can be no injected adapters
        BaseTunerLayer = ()  # type: ignore[assignment,misc]  # noqa: N806
    for name, module in base.named_modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        if any(getattr(module, "use_dora", {}).get(a, False) for a in module.active_adapters):
            raise ValueError(f"cannot merge DoRA adapters of {name!r}; only plain LoRA is supported")
        if module.merged or module.disable_adapters:
            continue  # merged: the base weight already holds the delta; disabled: no delta applies
        weight = module.get_base_layer().weight
        delta = torch.zeros_like(weight)
        for adapter in module.active_adapters:
            if adapter in getattr(module, "lora_A", {}):
                delta = delta + module.get_delta_weight(adapter).to(weight.dtype)
        deltas[name] = delta
    out: dict[str, Tensor] = {}
    for key, value in base.state_dict().items():
        parts = key.split(".")
        if any(p.startswith("lora_") for p in parts):
            continue
        if "base_layer" in parts:
            i = parts.index("base_layer")
            owner, key = ".".join(parts[:i]), ".".join(parts[:i] + parts[i + 1 :])
            if parts[-1] == "weight" and owner in deltas:
                value = value + deltas[owner]
        out[key] = value
    return out


def _json_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(metadata, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint metadata must be JSON-serialisable (no NaN/Inf): {err}") from err


def save_personalized(
    model: PersonalizedLM,
    tokenizer: Any,
    out_dir: str | Path,
    metadata: dict[str, Any] | None = None,
    classes: list[str] | tuple[str, ...] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` (LoRA merged), ``tokenizer`` and ``metadata`` to ``out_dir`` atomically.

    Parameters
    ----------
    model:
        The personalised LM; it is not modified (adapters stay injected).
    tokenizer:
        A ``transformers`` tokenizer (``save_pretrained``).
    out_dir:
        Target directory; created with its parents. It must not exist unless ``overwrite``.
    metadata:
        JSON-serialisable facts about the run (config, epsilon/delta, ...), stored as they are.
    classes:
        Class names in head order; required when the model has a classification head.
    overwrite:
        Replace an existing ``out_dir``. The old directory is moved aside first and removed after the
        new one is in place, so ``out_dir`` is never half-written (it is briefly absent).

    Returns
    -------
    Path
        ``out_dir``.

    Raises
    ------
    FileExistsError
        If ``out_dir`` exists and ``overwrite`` is False.
    ValueError
        On classes that do not match the head, or metadata that JSON cannot encode.
    """
    # lazy: peft and safetensors load only to save or load a checkpoint
    from safetensors.torch import save_file

    target = Path(out_dir).expanduser()
    cfg = model.config
    if cfg.num_labels is not None:
        if classes is None or len(classes) != cfg.num_labels:
            got = None if classes is None else len(classes)
            raise ValueError(f"a model with {cfg.num_labels} labels needs as many class names, got {got}")
        if len(set(classes)) != len(classes):
            raise ValueError(f"class names must be unique, got {list(classes)}")
    elif classes is not None:
        raise ValueError("classes given, but the model has no classification head (num_labels=None)")
    if target.exists() and not overwrite:
        raise FileExistsError(f"{str(target)!r} exists; pass overwrite=True to replace it")
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "personalization": {
            "n_tokens": cfg.n_tokens,
            "placement": cfg.placement,
            "num_labels": cfg.num_labels,
        },
        "embedding_shape": list(model.embedding_shape),
        "classes": None if classes is None else list(classes),
        "metadata": _json_metadata(metadata or {}),
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    old: Path | None = None
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in merged_state_dict(model.base).items()}
        model.base.save_pretrained(tmp, state_dict=state)
        tokenizer.save_pretrained(tmp)
        if model.head is not None:
            head = {k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}
            save_file(head, str(tmp / HEAD_FILE))
        (tmp / CHECKPOINT_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        (tmp / _COMPLETE).write_text("ok\n")
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
            os.rename(target, old / "previous")
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return target


def is_personalized_checkpoint(path: str | Path) -> bool:
    """True for a complete directory written by :func:`save_personalized`."""
    p = Path(path).expanduser()
    return p.is_dir() and (p / CHECKPOINT_FILE).is_file() and (p / _COMPLETE).is_file()


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise ModelLoadError(f"no personalized checkpoint at {str(path)!r}: not a directory")
    if not (path / CHECKPOINT_FILE).is_file():
        raise ModelLoadError(f"{str(path)!r} is not a personalized checkpoint: it has no {CHECKPOINT_FILE}")
    if not (path / _COMPLETE).is_file():
        raise ModelLoadError(f"checkpoint {str(path)!r} is incomplete (no {_COMPLETE} marker)")
    try:
        manifest = json.loads((path / CHECKPOINT_FILE).read_text())
        version = manifest["format_version"]
        pers = manifest["personalization"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelLoadError(
            f"checkpoint {str(path)!r} has an unreadable {CHECKPOINT_FILE}: {err!r}"
        ) from err
    if manifest.get("format") != FORMAT or version != FORMAT_VERSION:
        raise ModelLoadError(
            f"checkpoint {str(path)!r} has format {manifest.get('format')!r} version {version!r}; "
            f"this Veil reads {FORMAT!r} version {FORMAT_VERSION}"
        )
    if not isinstance(pers, dict):
        raise ModelLoadError(f"checkpoint {str(path)!r}: 'personalization' must be an object")
    return manifest


def load_personalized(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[PersonalizedLM, Any, dict]:
    """Load a checkpoint written by :func:`save_personalized`.

    Returns
    -------
    (PersonalizedLM, tokenizer, metadata)
        The model in eval mode on ``device`` (no adapters: they were merged), the tokenizer (left
        padding, pad token set) and the checkpoint's metadata, with ``"classes"`` added (``None`` for a
        model without a classification head).

    Raises
    ------
    ModelLoadError
        For a missing or incomplete directory, an unknown format version, or missing/corrupt weights,
        head or manifest; the message is one line.
    """
    # lazy: peft and safetensors load only to save or load a checkpoint
    from safetensors.torch import load_file

    root = Path(path).expanduser()
    manifest = _read_manifest(root)
    try:
        config = PersonalizationConfig(**manifest["personalization"])
    except (TypeError, ValueError) as err:
        raise ModelLoadError(
            f"checkpoint {str(root)!r} has an invalid personalization config: {err}"
        ) from err
    try:
        loaded = load_model(root.resolve(), data_dir=root.parent)
    except ModelLoadError:
        raise
    except Exception as err:  # noqa: BLE001 - corrupt weights surface as many exception types
        raise ModelLoadError(f"cannot load the base LM of checkpoint {str(root)!r}: {err!r}") from err
    model = PersonalizedLM(loaded.model, config)
    if model.head is not None:
        try:
            model.head.load_state_dict(load_file(str(root / HEAD_FILE)))
        except Exception as err:  # noqa: BLE001 - missing file, bad header or wrong shapes
            raise ModelLoadError(f"checkpoint {str(root)!r} has a missing or corrupt head: {err!r}") from err
    classes = manifest.get("classes")
    if config.num_labels is not None and (not isinstance(classes, list) or len(classes) != config.num_labels):
        raise ModelLoadError(
            f"checkpoint {str(root)!r} must list {config.num_labels} classes, got {classes!r}"
        )
    want = tuple(manifest.get("embedding_shape") or model.embedding_shape)
    if want != model.embedding_shape:
        raise ModelLoadError(
            f"checkpoint {str(root)!r} declares embeddings of shape {want} but its model takes "
            f"{model.embedding_shape}"
        )
    model.to(device).eval()
    metadata = dict(manifest.get("metadata") or {})
    metadata["classes"] = classes
    return model, loaded.tokenizer, metadata
