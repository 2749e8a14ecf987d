"""``veil keys``, ``veil train personalized``, ``veil serve`` and ``veil relay`` as users run them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_cli import assert_one_line_error, veil

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory, data_dir: str) -> Path:
    """A data dir whose SQLite store holds 80 next-word uploads for tiny-llama (hidden size 64)."""
    from veil.cloud_service.store import UploadIn, add_upload, make_engine, migrate, session_factory

    root = tmp_path_factory.mktemp("veil-cli-store")
    shared = Path(data_dir) / "models"
    shared.mkdir(parents=True, exist_ok=True)
    (root / "models").symlink_to(shared)  # reuse the converted tokenizer and models
    engine = make_engine(None, root)
    migrate(engine)
    rng = np.random.default_rng(0)
    words = ["tea", "coffee"]
    with session_factory(engine)() as s:
        for i in range(80):
            kind = i % 2
            emb = rng.normal(loc=3.0 if kind else -3.0, size=(1, 64)).astype(np.float32)
            add_upload(
                s,
                UploadIn(
                    idempotency_key=f"cli-upload-{i:08d}",
                    task="next_word",
                    text=f"in the morning I always drink some {i}",
                    label=words[kind],
                    embedding=emb,
                    model="tiny-llama",
                ),
            )
    engine.dispose()
    return root


def test_keys_create_list_revoke(store_dir: Path) -> None:
    created = veil(store_dir, "keys", "create", "--label", "analytics")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("veil_sk_") and len(key) > 40
    listed = json.loads(veil(store_dir, "keys", "list", "--json").stdout)["keys"]
    mine = [k for k in listed if k["label"] == "analytics"]
    assert mine and key not in json.dumps(listed)  # only the prefix is ever shown
    prefix = mine[0]["prefix"]
    assert key.startswith("veil_sk_" + prefix)
    assert veil(store_dir, "keys", "revoke", prefix).returncode == 0
    assert json.loads(veil(store_dir, "keys", "list", "--json").stdout)["keys"][-1]["revoked"] is True
    assert_one_line_error(veil(store_dir, "keys", "revoke", "nosuchkey"), "nosuchkey")


def test_keys_create_operator_makes_a_key_that_may_publish_the_codebook(store_dir: Path) -> None:
    plain = veil(store_dir, "keys", "create", "--label", "consumer")
    created = veil(store_dir, "keys", "create", "--label", "flower server", "--operator")
    assert created.returncode == 0, created.stderr
    assert "operator key" in created.stderr
    key = created.stdout.strip().splitlines()[-1]
    listed = json.loads(veil(store_dir, "keys", "list", "--json").stdout)["keys"]
    flags = {k["label"]: k["operator"] for k in listed}
    assert flags["flower server"] is True and flags["consumer"] is False
    assert key.startswith("veil_sk_" + next(k["prefix"] for k in listed if k["label"] == "flower server"))
    assert plain.stdout.strip().splitlines()[-1] not in json.dumps(listed)
    table = veil(store_dir, "keys", "list").stdout.splitlines()
    assert any("label=flower server" in row and "operator=True" in row for row in table)
    assert any("label=consumer" in row and "operator=False" in row for row in table)


def test_train_personalized_with_and_without_dp(store_dir: Path) -> None:
    common = [
        "train",
        "personalized",
        "--task",
        "next_word",
        "--base",
        "tiny-llama",
        "--epochs",
        "1",
        "--json",
    ]
    plain = veil(store_dir, *common, "--batch-size", "16", "--lr", "0.003")
    assert plain.returncode == 0, plain.stderr[-2000:]
    report = json.loads(plain.stdout.strip().splitlines()[-1])
    assert report["n_uploads"] == 80 and report["epsilon"] is None
    assert Path(report["checkpoint"]).is_dir()
    private = veil(
        store_dir,
        *common,
        "--dp",
        "--noise-multiplier",
        "1.0",
        "--full",
        "--freeze-embeddings",
        "--out",
        str(store_dir / "dp-ckpt"),
    )
    assert private.returncode == 0, private.stderr[-2000:]
    dp = json.loads(private.stdout.strip().splitlines()[-1])
    assert 0 < dp["epsilon"] < float("inf") and 0 < dp["delta"] < 1 / 80
    assert Path(dp["checkpoint"]) == store_dir / "dp-ckpt"


def test_train_refuses_bad_input(store_dir: Path) -> None:
    assert_one_line_error(veil(store_dir, "train", "personalized", "--task", "poetry"), "poetry")
    empty = veil(store_dir, "train", "personalized", "--task", "classification", "--base", "tiny-llama")
    assert_one_line_error(empty, "uploads")


def test_serve_and_relay_refuse_bad_options(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert_one_line_error(veil(store_dir, "serve", "--port", "70000"), "port")
    assert_one_line_error(
        veil(store_dir, "serve", "--port", "8000", "--metrics-port", "8000"), "--metrics-port"
    )
    assert_one_line_error(veil(store_dir, "relay", "--gateway", "ftp://x"), "--gateway")
    batch = veil(store_dir, "relay", "--gateway", "http://127.0.0.1:9", "--min-batch", "4")
    assert_one_line_error(batch, "min_batch", "hold_window_s")
    monkeypatch.setenv("VEIL_ENVIRONMENT", "production")
    monkeypatch.delenv("VEIL_RELAY_SECRET", raising=False)
    assert_one_line_error(veil(store_dir, "relay", "--gateway", "http://127.0.0.1:9"), "VEIL_RELAY_SECRET")


def test_serve_refuses_bad_worker_counts(store_dir: Path) -> None:
    assert_one_line_error(veil(store_dir, "serve", "--workers", "0"), "--workers")
    metrics = veil(store_dir, "serve", "--workers", "2", "--metrics-port", "9100")
    assert_one_line_error(metrics, "--metrics-port", "--workers 1")


def test_unreachable_database_is_one_line_error(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEIL_DATABASE_URL", "postgresql://veil:secret-pw@127.0.0.1:1/veil")
    proc = veil(store_dir, "keys", "list")
    assert_one_line_error(proc, "127.0.0.1")
    assert "secret-pw" not in proc.stderr
