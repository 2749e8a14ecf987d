"""``veil bench kv`` as users run it: bad input is one line and exit code 2; a quick run prints JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def veil(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VEIL_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "veil.cli.main", "bench", "kv", *args],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--methods", "dbudgetkv,nope"), "unknown method(s) nope"),
        (("--threshold", "0"), "threshold must be in (0, 1)"),
        (("--threshold", "1.5"), "threshold must be in (0, 1)"),
        (("--methods", "snapkv"), "add dbudgetkv"),
        (("--regime", "sideways"), "regime must be one of question_before, question_after"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path: Path, args: tuple[str, ...], fragment: str) -> None:
    proc = veil(tmp_path, "--quick", *args)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("veil: error:"), proc.stderr
    assert fragment in proc.stderr and proc.stdout == ""


def test_quick_run_prints_one_json_object_with_every_method(data_dir: str) -> None:
    proc = veil(Path(data_dir), "--quick", "--json", "--examples", "1", "--max-new-tokens", "3")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result["summary"]) == {
        "full", "dbudgetkv", "dbudgetkv_non_sink", "streaming_llm", "snapkv", "h2o", "pyramidkv"
    }  # fmt: skip
    assert result["model"] == "tiny-llama" and result["matched_budget"] == 1.0
    assert all(0.0 < s["kept_mean"] <= 1.0 for s in result["summary"].values())
    # tiny-llama's 2 layers are both frozen and the baselines get budget 1.0: nothing is pruned
    assert all(s["kl_mean"] == 0.0 and s["first_divergence_p50"] is None for s in result["summary"].values())
