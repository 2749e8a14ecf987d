"""``veil audit`` as users run it: inputs, --json keys, the report, and exit codes 0 / 1 / 2.

Most cases call the console entry point ``veil.cli.main.main`` in-process (same code path, exit codes
and one-line errors as the installed ``veil`` script, without a Python start-up per case); one test runs
it as a real subprocess.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from veil.client_sdk.distributions import GaussianDistribution

SPEC = """
family: gaussian
users:
  - {mean: [0.0, 0.0], std: [1.0, 1.0]}
  - {mean: [3.0, 0.0], std: [1.0, 1.0]}
  - {mean: [0.0, 3.0], std: 1.0}
"""
KEYS = {
    "users",
    "chance",
    "bayes_attribution_accuracy",
    "bayes_ci",
    "upper_bound",
    "linked",
    "identifiable",
    "attacks",
}
QUICK = ("--uploads", "40", "--linked", "1,2")


def run_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    from veil.cli.main import main

    monkeypatch.setattr(sys, "argv", ["veil", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture()
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "population.yaml"
    path.write_text(SPEC)
    return path


def test_json_output_and_exit_zero(monkeypatch, capsys, spec_file: Path) -> None:
    code, out, _ = run_cli(
        monkeypatch, capsys, "audit", "--population", str(spec_file), "--json", *QUICK, "--seed", "3"
    )
    assert code == 0
    summary = json.loads(out)
    assert set(summary) >= KEYS
    assert summary["users"] == 3 and summary["chance"] == pytest.approx(1 / 3)
    assert set(summary["linked"]) == {"1", "2"}
    assert summary["bayes_ci"][0] <= summary["bayes_attribution_accuracy"] <= summary["bayes_ci"][1]
    assert summary["policy"]["ok"] is True
    assert {a["name"] for a in summary["attacks"]} >= {"bayes_known_parameters", "linkage_kmeans"}


def test_table_output(monkeypatch, capsys, spec_file: Path) -> None:
    code, out, _ = run_cli(
        monkeypatch, capsys, "audit", "--population", str(spec_file), "--no-attacks", *QUICK
    )
    assert code == 0
    assert "Bayes attribution" in out and "policy" in out


def test_policy_violation_exits_one_and_still_reports(
    monkeypatch, capsys, spec_file: Path, tmp_path: Path
) -> None:
    report = tmp_path / "report"
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "audit",
        "--population",
        str(spec_file),
        "--json",
        "--no-attacks",
        *QUICK,
        "--max-attribution",
        "0.4",
        "--max-linked-attribution",
        "1.0",
        "--linked-at",
        "2",
        "--report",
        str(report),
    )
    assert code == 1
    summary = json.loads(out)
    assert [v["rule"] for v in summary["policy"]["violations"]] == ["max_bayes_attribution"]
    assert "report.html" in err
    assert (report / "report.html").exists() and json.loads((report / "audit.json").read_text())["users"] == 3


def test_spec_policy_section_and_flag_override(monkeypatch, capsys, tmp_path: Path) -> None:
    path = tmp_path / "strict.yaml"
    path.write_text(SPEC + "policy: {max_bayes_attribution: 0.4}\n")
    assert run_cli(monkeypatch, capsys, "audit", "--population", str(path), "--no-attacks", *QUICK)[0] == 1
    code = run_cli(
        monkeypatch,
        capsys,
        "audit",
        "--population",
        str(path),
        "--no-attacks",
        *QUICK,
        "--max-attribution",
        "1.0",
    )[0]
    assert code == 0


def test_params_folder_of_device_files(monkeypatch, capsys, tmp_path: Path) -> None:
    folder = tmp_path / "devices"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        GaussianDistribution(rng.normal(size=(1, 3)), np.ones((1, 3))).save(folder / f"user{i}.npz")
    code, out, _ = run_cli(
        monkeypatch, capsys, "audit", "--params", str(folder), "--json", "--no-attacks", *QUICK
    )
    assert code == 0 and json.loads(out)["users"] == 4
    (folder / "user9.npz").write_bytes(b"not a zip file")
    code, out, err = run_cli(monkeypatch, capsys, "audit", "--params", str(folder), "--json", *QUICK)
    assert code == 2 and out == "" and err.startswith("veil: error: ") and "user9.npz" in err


BAD = [
    (
        "family: gaussian\nusers:\n  - {mean: [0.0], std: [-1.0]}\n  - {mean: [1.0], std: [1.0]}\n",
        "users[0].std",
    ),
    ("family: gaussian\nusers:\n  - {mean: [0.0, 1.0], std: 1.0}\n  - {mean: [1.0], std: 1.0}\n", "users[1]"),
    (
        "family: beta\nusers:\n  - {alpha: [0.0], beta: [1.0]}\n  - {alpha: [1.0], beta: [1.0]}\n",
        "users[0].alpha",
    ),
    ("family: gaussian\nusers: []\n", "empty"),
    ("family: gaussian\ngenerator: {users: 0, dim: 4, spread: 1.0}\n", "empty"),
    ("family: gaussian\nusers: [ {mean: [0.0]\n", "invalid YAML"),
    (
        "family: gaussian\nusers: [{mean: [0.0], std: 1.0}, {mean: [1.0], std: 1.0}]\n"
        "policy: {max_bayes: 0.1}\n",
        "policy",
    ),
]


@pytest.mark.parametrize(("text", "fragment"), BAD)
def test_bad_specs_give_one_line_and_exit_two(
    monkeypatch, capsys, tmp_path: Path, text: str, fragment: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, out, err = run_cli(monkeypatch, capsys, "audit", "--population", str(path), "--json")
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("veil: error: ") and fragment in lines[0], err


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("audit",), "nothing to audit"),
        (("audit", "--population", "/no/such/population.yaml"), "cannot read"),
        (("audit", "--params", "/no/such/folder"), "no such file"),
        (("audit", "--population", "x.yaml", "--params", "y"), "not both"),
        (("audit", "--db", "mysql://u@h/db"), "unsupported database"),
        (("audit", "--population", "x.yaml", "--linked", "1,two"), "--linked"),
        (("audit", "--population", "x.yaml", "--uploads", "0"), "--uploads"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_two(
    monkeypatch, capsys, args: tuple[str, ...], fragment: str
) -> None:
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("veil: error: ") and fragment in lines[0], err


def test_bad_policy_flag_gives_one_line(monkeypatch, capsys, spec_file: Path) -> None:
    code, _, err = run_cli(
        monkeypatch, capsys, "audit", "--population", str(spec_file), "--max-attribution", "1.5"
    )
    assert code == 2 and len(err.splitlines()) == 1 and "max_bayes_attribution" in err


def _store_with_uploads(tmp_path: Path, embeddings: list[np.ndarray]) -> str:
    from veil.cloud_service.store import UploadIn, add_upload, make_engine, migrate, session_factory

    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    engine = make_engine(url, tmp_path)
    migrate(engine)
    with session_factory(engine)() as session:
        for i, emb in enumerate(embeddings):
            upload = UploadIn(
                idempotency_key=secrets.token_hex(12),
                task="next_word",
                text=f"text {i}",
                model="m",
                embedding=emb,
            )
            add_upload(session, upload)
    engine.dispose()
    return url


def test_live_store_stream_audit(monkeypatch, capsys, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 1, 5)) * 3
    url = _store_with_uploads(tmp_path, [centres[i % 4] for i in range(60)])  # static embeddings
    code, out, _ = run_cli(monkeypatch, capsys, "audit", "--db", url, "--json")
    assert code == 0
    summary = json.loads(out)
    assert set(summary) >= KEYS and summary["users"] is None
    stream = summary["stream"]
    assert stream["n_uploads"] == 60 and stream["duplicate_fraction"] == 1.0
    # A per-user limit cannot be checked on the pooled stream alone: fail closed.
    code, out, _ = run_cli(monkeypatch, capsys, "audit", "--db", url, "--json", "--max-attribution", "0.5")
    assert code == 1 and "not measurable" in json.loads(out)["policy"]["violations"][0]["message"]
    # With the users' parameters: full audit plus the expected Bayes accuracy on the stored uploads.
    folder = tmp_path / "devices"
    folder.mkdir()
    for i in range(4):
        GaussianDistribution(centres[i], np.full((1, 5), 0.01)).save(folder / f"u{i}.npz")
    code, out, _ = run_cli(
        monkeypatch, capsys, "audit", "--db", url, "--params", str(folder), "--json", "--no-attacks", *QUICK
    )
    summary = json.loads(out)
    assert code == 0 and summary["users"] == 4
    assert summary["stream"]["expected_bayes_accuracy"] == pytest.approx(1.0)


@pytest.mark.integration
def test_installed_entry_point_exit_codes(spec_file: Path, tmp_path: Path) -> None:
    env = {**os.environ, "VEIL_DATA_DIR": str(tmp_path)}

    def veil(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "veil.cli.main", "audit", *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)

    ok = veil("--population", str(spec_file), "--json", "--no-attacks", *QUICK)
    assert ok.returncode == 0, ok.stderr
    assert set(json.loads(ok.stdout)) >= KEYS
    violated = veil("--population", str(spec_file), "--no-attacks", *QUICK, "--max-attribution", "0.4")
    assert violated.returncode == 1 and "policy violated" in violated.stdout
    bad = veil("--population", str(tmp_path / "missing.yaml"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and bad.stderr.startswith("veil: error:")


UPLOAD_KEYS = {
    "file",
    "seed",
    "users",
    "uploads",
    "types",
    "train_fraction",
    "chance",
    "group_floor",
    "attacks",
    "skipped",
}


def _write_uploads(path: Path, *, text: bool = True, **override: np.ndarray) -> Path:
    """6 users in 3 types of 2, 20 uploads each, well apart: every attack should find them."""
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(6), 20)
    emb = (rng.normal(size=(6, 1, 4)) * 4.0)[users] + 0.2 * rng.normal(size=(120, 1, 4))
    arrays = {"embedding": emb.astype(np.float32), "user": users, "type": users // 2}
    if text:
        arrays["text"] = np.array([f"note {i % 3}" for i in range(120)])
    np.savez(path, **{**arrays, **override})
    return path


def test_uploads_file_json_has_every_attack_against_chance_and_floor(
    monkeypatch, capsys, tmp_path: Path
) -> None:
    path = _write_uploads(tmp_path / "method.npz")
    code, out, err = run_cli(monkeypatch, capsys, "audit", "--uploads", str(path), "--json", "--seed", "1")
    assert code == 0, err
    summary = json.loads(out)
    assert set(summary) == UPLOAD_KEYS and summary["skipped"] == {}
    assert (summary["users"], summary["uploads"], summary["types"], summary["seed"]) == (6, 120, 3, 1)
    assert summary["chance"] == pytest.approx(1 / 6) and summary["group_floor"] == pytest.approx(0.5)
    names = [a["name"] for a in summary["attacks"]]
    assert names == [
        "knn",
        "gaussian_fit",
        "learned_attributor",
        "linkage_kmeans",
        "linkage_gmm",
        "stylometric",
    ]
    for attack in summary["attacks"]:
        assert set(attack) == {"name", "accuracy", "ci", "chance", "details"}
        assert {"n_eval", "group_floor", "users", "sampled"} <= set(attack["details"])
        assert attack["ci"][0] <= attack["accuracy"] <= attack["ci"][1] + 1e-12
        assert attack["details"]["group_floor"] == pytest.approx(0.5) and attack["chance"] == pytest.approx(
            1 / 6
        )
    assert summary["attacks"][0]["accuracy"] > 0.9
    assert run_cli(monkeypatch, capsys, "audit", "--uploads", str(path), "--json", "--seed", "1")[1] == out


def test_uploads_file_table_and_a_file_without_text(monkeypatch, capsys, tmp_path: Path) -> None:
    path = _write_uploads(tmp_path / "method.npz", text=False)
    code, out, _ = run_cli(monkeypatch, capsys, "audit", "--uploads", str(path))
    assert code == 0
    assert "6 users, 120 uploads, 3 types" in out and "95% interval" in out and "floor" in out
    assert "gaussian_fit" in out and "skipped stylometric: the file has no text" in out


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: p, "no such file"),
        (lambda p: p.write_bytes(b"junk") and p, "not a readable .npz"),
        (
            lambda p: _write_uploads(p, type=np.zeros(3, dtype=np.int64)),
            "'type' must be integers of shape (120,)",
        ),
        (lambda p: _write_uploads(p, embedding=np.zeros((120, 4), dtype=np.float32)), "n_tokens"),
        (lambda p: _write_uploads(p, user=np.r_[np.zeros(119, dtype=np.int64), 1]), "user 1 with 1"),
        (
            lambda p: np.savez(p, embedding=np.zeros((4, 1, 2), np.float32), users=np.arange(4)) or p,
            "missing",
        ),
    ],
)
def test_bad_uploads_files_give_one_line_and_exit_two(
    monkeypatch, capsys, tmp_path: Path, make, fragment
) -> None:
    path = tmp_path / "bad.npz"
    make(path)
    code, out, err = run_cli(monkeypatch, capsys, "audit", "--uploads", str(path), "--json")
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("veil: error: ") and fragment in lines[0], err


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (("--population", "x.yaml"), "not with --population"),
        (("--db", "sqlite:///x.sqlite3"), "not with --population, --params or --db"),
        (("--report", "out"), "--report: not used by --uploads FILE"),
        (("--no-attacks", "--linked", "1,2"), "--linked, --attacks: not used"),
        (("--max-attack-accuracy", "0.5"), "--max-attack-accuracy"),
    ],
)
def test_uploads_file_refuses_population_inputs_and_options(
    monkeypatch, capsys, tmp_path: Path, extra: tuple[str, ...], fragment: str
) -> None:
    path = _write_uploads(tmp_path / "method.npz")
    code, out, err = run_cli(monkeypatch, capsys, "audit", "--uploads", str(path), *extra)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and fragment in err, err
