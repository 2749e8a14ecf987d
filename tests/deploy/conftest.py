"""Fixtures for the deployment files: bootstrap's output once per module, the parsed files."""

from __future__ import annotations

from pathlib import Path

import pytest
from deploy_files import compose, k8s_documents, load_bootstrap


@pytest.fixture(scope="session")
def bootstrap_module():
    return load_bootstrap()


@pytest.fixture(scope="session")
def local(tmp_path_factory: pytest.TempPathFactory, bootstrap_module) -> Path:
    """What ``python deploy/bootstrap.py`` writes into deploy/local, made in a temporary folder."""
    out = tmp_path_factory.mktemp("deploy") / "local"
    bootstrap_module.bootstrap(out)
    return out


@pytest.fixture(scope="session")
def compose_doc() -> dict:
    return compose()


@pytest.fixture(scope="session")
def k8s_docs() -> list[tuple[str, dict]]:
    return k8s_documents()
