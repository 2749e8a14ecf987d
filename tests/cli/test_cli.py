"""The ``veil`` command as users run it: a subprocess with its own data dir, exit codes, stdout/stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def cli_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One fresh data dir for this module: the first command that needs tiny-llama builds it here."""
    return tmp_path_factory.mktemp("veil-cli-data")


def veil(data_dir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VEIL_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "veil.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("veil: error:"), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert proc.stdout == ""


def test_help_lists_the_commands(cli_data_dir: Path) -> None:
    proc = veil(cli_data_dir, "--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("experiment", "bench", "demo"):
        assert command in proc.stdout
    sub = veil(cli_data_dir, "experiment", "personalization", "--help")
    assert sub.returncode == 0, sub.stderr
    for option in ("--quick", "--json", "--task", "--seed"):
        assert option in sub.stdout


def test_unknown_task_is_one_line_error(cli_data_dir: Path) -> None:
    proc = veil(cli_data_dir, "experiment", "personalization", "--task", "nonsense", "--quick")
    assert_one_line_error(proc, "task", "nonsense")


def test_unknown_option_is_one_line_error(cli_data_dir: Path) -> None:
    proc = veil(cli_data_dir, "experiment", "personalization", "--no-such-option")
    assert_one_line_error(proc, "--no-such-option")


@pytest.mark.parametrize("flag", ["--repeats", "--batch"])
def test_bench_rejects_non_positive_sizes(cli_data_dir: Path, flag: str) -> None:
    proc = veil(cli_data_dir, "bench", "latency", "--quick", flag, "0")
    assert_one_line_error(proc, ">= 1")


def test_bench_latency_json(cli_data_dir: Path) -> None:
    proc = veil(
        cli_data_dir,
        "bench",
        "latency",
        "--quick",
        "--json",
        "--repeats",
        "3",
        "--batch",
        "2",
        "--tokens",
        "8",
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    result = json.loads(lines[0])
    assert isinstance(result, dict)
    assert result["ratio"] > 0
    for path in ("personalised", "unpersonalised"):
        assert result[path]["median_ms"] > 0, result[path]
    assert result["ratio"] == pytest.approx(
        result["personalised"]["median_ms"] / result["unpersonalised"]["median_ms"], rel=1e-3
    )
    assert (cli_data_dir / "models" / "tiny-llama" / "config.json").is_file()  # built in this data dir


@pytest.mark.slow
def test_quick_experiment_json_end_to_end(cli_data_dir: Path) -> None:
    proc = veil(cli_data_dir, "experiment", "personalization", "--quick", "--json", timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout[-2000:]
    out = json.loads(lines[0])
    assert out["model"] == "tiny-llama" and out["task"] == "next_word"
    assert {"none", "static", "on-device-finetune", "idfree-gaussian"} <= set(out["methods"])
    for name, m in out["methods"].items():
        for key in ("accuracy", "attribution_accuracy", "chance"):
            assert 0.0 <= m[key] <= 1.0, (name, key, m[key])
    assert out["methods"]["static"]["attribution_accuracy"] >= 0.99
    assert out["methods"]["none"]["attribution_accuracy"] == pytest.approx(out["methods"]["none"]["chance"])


@pytest.mark.slow
def test_demo_through_the_service_json(cli_data_dir: Path, tmp_path: Path) -> None:
    """The default mechanism, the codebook: phones choose, re-choose on new versions, upload; the
    cloud trains model and prototypes."""
    proc = veil(cli_data_dir, "demo", "--json", "--out", str(tmp_path), timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    service = out["service"]
    runs = service["training"].values()
    assert service["uploads_stored"] == sum(r["n_uploads"] for r in runs) > 0
    assert all(r["codebook_version"] != r["codebook_previous_version"] for r in runs)
    book = service["codebook"]
    assert book["smallest_group"] >= book["k_min"] and book["version_mismatches_caught"] > 0
    assert service["requests_through_relay"] > service["uploads_stored"]
    cb = out["methods"]["codebook-service"]
    assert cb["accuracy"] > out["methods"]["none"]["accuracy"]
    assert cb["attribution_accuracy"] <= 1.0 / book["k_min"] + 0.1  # a group of >= k_min shares each upload
    assert (tmp_path / "report.html").is_file() and (tmp_path / "summary.json").is_file()


@pytest.mark.slow
def test_demo_gaussian_mechanism_json(cli_data_dir: Path, tmp_path: Path) -> None:
    proc = veil(
        cli_data_dir, "demo", "--mechanism", "gaussian", "--json", "--out", str(tmp_path), timeout=1800
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    service = out["service"]
    assert service["uploads_stored"] == service["training"]["stage3"]["n_uploads"] > 0
    assert service["requests_through_relay"] > service["uploads_stored"]
    methods = out["methods"]
    assert methods["idfree-gaussian-service"]["accuracy"] > methods["none"]["accuracy"]
    bad = veil(cli_data_dir, "demo", "--mechanism", "dirichlet")
    assert bad.returncode == 2 and "mechanism" in bad.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--users", "4", "--types", "5"), "cannot exceed --users"),
        (("--users", "0"), "--users must be >= 1"),
        (("--users", "-3"), "--users must be >= 1"),
        (("--types", "0"), "--types must be >= 1"),
        (("--methods", "none,codebook,telepathy"), "unknown method(s) telepathy"),
        (("--methods", ","), "unknown method(s)"),
        (("--users", "40", "--types", "17"), "n_types must be at most 16"),
    ],
)
def test_experiment_rejects_bad_sizes_and_methods(
    cli_data_dir: Path, veil_here, args: tuple[str, ...], fragment: str
) -> None:
    # In process: the tests around it show a real `veil` process turning such errors into one line.
    proc = veil_here(cli_data_dir, "experiment", "personalization", "--quick", *args)
    assert_one_line_error(proc, fragment)


def test_experiment_rejects_an_unwritable_export_dir_before_any_work(
    cli_data_dir: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proc = veil(
        cli_data_dir,
        "experiment",
        "personalization",
        "--quick",
        "--export-uploads",
        str(blocker / "sub"),
        timeout=60,
    )
    assert_one_line_error(proc, "--export-uploads", "cannot write there")
    assert blocker.read_text() == "not a directory"


def test_experiment_rejects_a_type_noise_outside_zero_one(cli_data_dir: Path) -> None:
    proc = veil(cli_data_dir, "experiment", "personalization", "--quick", "--type-noise", "1.5", timeout=60)
    assert_one_line_error(proc, "type_noise must be in [0, 1)")
