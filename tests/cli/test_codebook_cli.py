"""``veil codebook init|retire|show`` and ``veil train personalized --codebook`` refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import assert_one_line_error, veil
from typer.testing import CliRunner

from veil.cli.errors import UserError
from veil.cli.main import app


@pytest.fixture()
def home(tmp_path: Path, data_dir: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    shared = Path(data_dir) / "models"
    shared.mkdir(parents=True, exist_ok=True)
    (tmp_path / "models").symlink_to(shared)  # reuse the converted tiny-llama
    monkeypatch.setenv("VEIL_DATA_DIR", str(tmp_path))
    return tmp_path


def _run(*args: str):  # -> click Result
    return CliRunner().invoke(app, list(args))


def test_init_retire_show(home: Path) -> None:
    made = _run("codebook", "init", "--size", "4", "--k-min", "3", "--model", "tiny-llama", "--json")
    assert made.exit_code == 0, made.output
    info = json.loads(made.stdout)
    assert info["embedding_shape"] == [1, 64] and info["usable"] == 4 and (home / "codebook.npz").exists()
    again = _run("codebook", "init", "--size", "4", "--k-min", "3", "--model", "tiny-llama")
    assert isinstance(again.exception, UserError) and "--overwrite" in str(again.exception)

    (home / "counts.json").write_text("[5, 0, 2, 4]")
    retired = json.loads(_run("codebook", "retire", "--counts", str(home / "counts.json"), "--json").stdout)
    assert retired["active"] == [True, False, False, True] and retired["version"] != info["version"]
    shown = json.loads(_run("codebook", "show", "--json").stdout)
    assert shown["version"] == retired["version"]
    (home / "counts.json").write_text('{"counts": [1]}')
    bad = _run("codebook", "retire", "--counts", str(home / "counts.json"))
    assert isinstance(bad.exception, UserError) and "list of integers" in str(bad.exception)


@pytest.mark.integration
def test_codebook_errors_are_one_line(home: Path) -> None:
    assert_one_line_error(veil(home, "codebook", "show"), "no codebook is published")


@pytest.mark.slow
def test_train_personalized_codebook_publishes_a_new_version(home: Path) -> None:
    import numpy as np

    from veil.client_sdk.distributions import PrototypeDistribution
    from veil.cloud_service.codebooks import CodebookStore
    from veil.cloud_service.store import UploadIn, add_upload, make_engine, migrate, session_factory

    made = _run("codebook", "init", "--size", "3", "--k-min", "1", "--model", "tiny-llama", "--json")
    assert made.exit_code == 0, made.output
    book = CodebookStore(home).current()
    engine = make_engine(None, home)
    migrate(engine)
    rng = np.random.default_rng(0)
    with session_factory(engine)() as s:
        for i in range(40):
            e = PrototypeDistribution(book, i % 2).sample(rng)
            add_upload(s, UploadIn(idempotency_key=f"cli-codebook-{i:06d}", task="next_word", model="tiny-llama",
                                   text=f"in the morning I drink {i}", label=("tea", "coffee")[i % 2], embedding=e))  # fmt: skip
    engine.dispose()
    out = _run("train", "personalized", "--codebook", "--base", "tiny-llama", "--epochs", "1", "--full",
               "--freeze-embeddings", "--json")  # fmt: skip
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["codebook_previous_version"] == book.version
    assert CodebookStore(home).current().version == report["codebook_version"] != book.version
