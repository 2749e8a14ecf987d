"""``veil rag build-default`` as users run it: bad input is one line and exit code 2; a build lands in the
data dir, is kept on a second run and replaced by ``--rebuild`` or by ``--dense`` over a BM25-only one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from veil.models.rag import Collection, collection_dir


def veil(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VEIL_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "veil.cli.main", "rag", "build-default", *args],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--limit", "0"), "--limit must be >= 1, got 0"),
        (("--limit", "x"), "'x' is not a valid integer"),
        (("--data-dir", "/proc/veil-nowhere"), "cannot write there"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path: Path, args: tuple[str, ...], fragment: str) -> None:
    proc = veil(tmp_path, *args)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("veil: error:"), proc.stderr
    assert fragment in proc.stderr and proc.stdout == ""


def test_a_build_is_kept_then_replaced_by_rebuild(tmp_path: Path) -> None:
    first = veil(tmp_path, "--limit", "2", "--json")
    assert first.returncode == 0, first.stderr
    out = json.loads(first.stdout)
    assert (out["name"], out["documents"], out["dense"], out["built"]) == ("wikipedia-sample-2", 2, False, True)  # fmt: skip
    target = collection_dir("wikipedia-sample-2", tmp_path)
    assert out["path"] == str(target) and out["passages"] == len(Collection.load(target))
    inode = target.stat().st_ino

    again = json.loads(veil(tmp_path, "--limit", "2", "--json").stdout)
    assert again["built"] is False and target.stat().st_ino == inode

    rebuilt = veil(tmp_path, "--limit", "2", "--rebuild")  # the table form, progress on stderr
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "wikipedia-sample-2: 2 articles" in rebuilt.stdout and "BM25 only; built in" in rebuilt.stdout
    assert target.stat().st_ino != inode and Collection.load(target).search("anarchism", 1, "bm25")


@pytest.mark.slow  # MiniLM embeds one article's passages: tens of seconds on 2 busy cores
def test_dense_replaces_a_bm25_only_collection(tmp_path: Path) -> None:
    assert json.loads(veil(tmp_path, "--limit", "1", "--json").stdout)["dense"] is False
    proc = veil(tmp_path, "--limit", "1", "--dense", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["dense"] is True and out["built"] is True
    hits = Collection.load(collection_dir("wikipedia-sample-1", tmp_path)).search("anarchism", 2, "hybrid")
    assert len(hits) == 2
