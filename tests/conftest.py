"""Shared test set-up: offline hub, one data dir per session, small deterministic models."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# The service defaults to production (generated secrets refused); tests, like `veil demo`, run as
# development, and the servers they start as subprocesses inherit it.
os.environ["VEIL_ENVIRONMENT"] = "development"
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest-xdist (`make test` runs one worker per core) each worker is one process on one core:
    # torch's intra-op threads would only contend with the other workers.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A session-wide VEIL_DATA_DIR (converted models are cached here between tests).

    Under pytest-xdist the workers share one, beside their own temp dirs, so the tiny models are built
    once per run (builds rename a finished directory into place, so concurrent ones are safe).
    """
    path = os.environ.get("VEIL_TEST_DATA_DIR")
    if not path and os.environ.get("PYTEST_XDIST_WORKER"):
        shared = tmp_path_factory.getbasetemp().parent / "veil-data"
        shared.mkdir(exist_ok=True)
        path = str(shared)
    path = path or str(tmp_path_factory.mktemp("veil-data"))
    os.environ["VEIL_DATA_DIR"] = path
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer(data_dir: str):
    """The SmolLM2 tokenizer (extracted from the shipped GGUF once per session)."""
    from veil.models.loading import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct", data_dir)


@pytest.fixture()
def tiny_base():
    """A random 2-layer Llama with a 128-token vocabulary."""
    import torch
    from transformers import AutoModelForCausalLM

    from veil.models.loading import tiny_llama_config

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_llama_config(vocab_size=128)).eval()


@pytest.fixture(scope="session")
def keyed_app(data_dir: str) -> Callable[..., tuple[Any, str]]:
    """``keyed_app(root, model="tiny-llama")``: a service app over a fresh store in ``root`` serving
    ``model`` (loaded from the session's data dir), and an API key for it; the loopback API tests start
    their servers from it."""
    from veil.cloud_service.app import create_app, load_served_model
    from veil.cloud_service.config import ServiceConfig
    from veil.cloud_service.store import create_api_key, make_engine, migrate, session_factory

    def make(root: Path, model: str = "tiny-llama") -> tuple[Any, str]:
        engine = make_engine(None, root)
        migrate(engine)
        key = create_api_key(session_factory(engine)(), "tests")
        served = load_served_model(ServiceConfig(data_dir=Path(data_dir), model=model))
        return create_app(ServiceConfig(data_dir=root, model=model), preloaded=served), key

    return make
