"""``run_personalization_experiment``: the result's structure, its JSON, the report, and the config checks.

The end-to-end run takes ~20 s on 2 CPU cores (tiny-llama, 4 users), so those tests are ``slow`` and share
one run; the unmarked tests check ``to_json`` and ``write_report`` on a hand-made result.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from veil.models.training import TrainConfig
from veil.simulation.codebook import CodebookConfig
from veil.simulation.data import PopulationConfig
from veil.simulation.devices import DeviceLearningConfig
from veil.simulation.experiments.personalization import (
    ExperimentConfig,
    ExperimentResult,
    MethodResult,
    run_personalization_experiment,
)
from veil.simulation.experiments.scoring import ScoringConfig
from veil.simulation.report import write_report

METHODS = {
    "none",
    "static",
    "oracle-type",
    "idfree-beta",
    "idfree-gaussian",
    "idfree-basis_mixture",
    "idfree-gaussian-gradient-return",
    "idfree-gaussian-gdp",
    "codebook",
    "codebook-mixing",
    "on-device-finetune",
}
NO_EMBEDDING = ("none", "on-device-finetune")
SPREADS = {"beta": (20.0,), "gaussian": (1.0,), "basis_mixture": (0.25,)}
DEFAULT_SPREAD = {"beta": 20.0, "gaussian": 1.0, "basis_mixture": 0.25}


def micro_config() -> ExperimentConfig:
    return ExperimentConfig(
        model="tiny-llama",
        population=PopulationConfig(
            task="next_word", n_users=4, n_types=2, train_per_user=8, test_per_user=4
        ),
        max_tokens=16,
        stage1=TrainConfig(epochs=1, lr=3e-3, batch_size=16),
        stage2=DeviceLearningConfig(epochs=1, batch_size=4, lr=0.5),
        stage3=TrainConfig(epochs=1, lr=3e-3, batch_size=16),
        ondevice=TrainConfig(epochs=1, lr=2e-3, batch_size=8),
        spreads=dict(SPREADS),
        default_spread=dict(DEFAULT_SPREAD),
        attribution_uploads=10,
        codebook=CodebookConfig(size=3, k_min=2, rounds=1, choice_examples=4),
        scoring=ScoringConfig(attack_uploads=4, max_linked=4, link_groups=2),
    )


def _row(method: str, family: str | None, spread: float | None, acc: float, attr: float) -> MethodResult:
    uploads = method not in NO_EMBEDDING
    chance = 0.25
    return MethodResult(
        method,
        family,
        spread,
        acc,
        attr if uploads else chance,
        (attr - 0.05, min(attr + 0.05, 1.0)) if uploads else (chance, chance),
        attr if uploads else chance,
        chance,
        uploads,
        0.1 if uploads else None,
        1.0,
    )


def handmade_result() -> ExperimentResult:
    methods = [
        _row("none", None, None, 0.2, 0.0),
        _row("static", None, None, 0.8, 1.0),
        _row("oracle-type", None, None, 0.75, 0.5),
        _row("idfree-beta", "beta", 20.0, 0.6, 0.5),
        _row("idfree-gaussian", "gaussian", 1.0, 0.7, 0.6),
        _row("idfree-basis_mixture", "basis_mixture", 0.25, 0.5, 0.3),
        _row("idfree-gaussian-gradient-return", "gaussian", 1.0, 0.65, 0.6),
        _row("idfree-gaussian-gdp", "gaussian", 1.0, 0.3, 0.3),
        _row("codebook", None, None, 0.74, 0.5),
        _row("codebook-mixing", None, None, 0.78, 0.5),
        _row("on-device-finetune", None, None, 0.4, 0.0),
    ]
    for m in methods:
        m.attribution_floor = 0.5
    frontier = [m for m in methods if m.family and "gradient" not in m.method and "gdp" not in m.method]
    frontier.append(_row("idfree-gaussian", "gaussian", 8.0, 0.3, 0.26))
    return ExperimentResult("next_word", "tiny-llama", 4, 16, methods, frontier, 12.0, {"seed": 0})


def check_json(result: ExperimentResult) -> dict:
    """The JSON contract of ``veil experiment personalization --json`` and summary.json."""
    out = json.loads(json.dumps(result.to_json()))  # must survive a round trip unchanged
    assert set(out["methods"]) == METHODS
    for name, m in out["methods"].items():
        assert m["method"] == name
        for key in ("accuracy", "attribution_accuracy", "chance"):
            assert isinstance(m[key], float) and 0.0 <= m[key] <= 1.0, (name, key, m[key])
    none_acc = out["methods"]["none"]["accuracy"]
    static_acc = out["methods"]["static"]["accuracy"]
    assert out["private_default"] == "codebook-mixing"
    for name, m in out["methods"].items():
        assert m["gain_retained"] == pytest.approx((m["accuracy"] - none_acc) / (static_acc - none_acc)), name
        if m["uploads_embedding"]:
            assert m["attribution_floor"] == pytest.approx(1.0 / (result.users / 2)), name  # 2 types
            lo, hi = m["attribution_ci"]
            assert lo <= m["attribution_accuracy"] <= hi
    assert len(out["frontier"]) >= 3
    for point in out["frontier"]:
        assert point["gain_over_none"] == pytest.approx(point["accuracy"] - none_acc)
        assert point["family"] in SPREADS
    return out


def check_report(result: ExperimentResult, out_dir: Path) -> None:
    report, summary = write_report(result, out_dir)
    assert report == out_dir / "report.html" and summary == out_dir / "summary.json"
    page = report.read_text(encoding="utf-8")
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(images) == 4  # accuracy, attribution, gain retained vs attribution, frontier
    assert all(base64.b64decode(b64).startswith(b"\x89PNG\r\n\x1a\n") for b64 in images)
    assert page.count("<tr>") == 1 + len(result.methods)  # header and one row per method
    for cell in ("IDfree-PL (Gaussian, gradient-return)", "on-device fine-tuning", "n/a (no embedding)"):
        assert cell in page
    assert f"{result.method('static').accuracy:.3f}" in page
    data = json.loads(summary.read_text(encoding="utf-8"))
    assert data["methods"] == json.loads(json.dumps(result.to_json()))["methods"]
    assert "machine" in data
    assert not list(out_dir.glob(".*"))  # no temporary files left behind


# -- fast: a hand-made result ---------------------------------------------------------------------


def test_to_json_contract_on_a_handmade_result() -> None:
    result = handmade_result()
    out = check_json(result)
    assert out["methods"]["static"]["attribution_ci"] == [0.95, 1.0]
    assert [p["gain_over_none"] for p in out["frontier"]] == pytest.approx([0.4, 0.5, 0.3, 0.1])
    with pytest.raises(KeyError):
        result.method("idfree-dirichlet")


def test_report_on_a_handmade_result(tmp_path: Path) -> None:
    check_report(handmade_result(), tmp_path / "nested" / "out")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"families": ("dirichlet",)}, "unknown families"),
        ({"default_spread": {**DEFAULT_SPREAD, "gaussian": 3.0}}, "default_spread"),
        ({"spreads": {"beta": (20.0,), "basis_mixture": (0.25,)}}, "needs spreads"),
        ({"families": ("beta",), "gradient_return_family": "gaussian"}, "gradient_return_family"),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    base = {"spreads": dict(SPREADS), "default_spread": dict(DEFAULT_SPREAD)}
    with pytest.raises(ValueError, match=match):
        ExperimentConfig(**{**base, **kwargs})


def test_quick_preset_is_valid_and_rejects_unknown_tasks() -> None:
    cfg = ExperimentConfig.quick("classification", seed=3)
    assert cfg.model == "tiny-llama" and cfg.population.task == "classification" and cfg.seed == 3
    with pytest.raises(ValueError, match="task"):
        ExperimentConfig.quick("nonsense")


# -- slow: one real run shared by the tests below --------------------------------------------------


@pytest.fixture(scope="module")
def real_result(data_dir: str) -> ExperimentResult:
    return run_personalization_experiment(micro_config())


@pytest.mark.slow
def test_real_run_has_every_method_with_sane_numbers(real_result: ExperimentResult) -> None:
    result = real_result
    assert {m.method for m in result.methods} == METHODS
    assert len(result.methods) == len(METHODS)
    assert result.users == 4 and result.test_examples == 16 and result.task == "next_word"
    chance = 1.0 / result.users
    for m in result.methods:
        assert 0.0 <= m.accuracy <= 1.0, m
        assert m.chance == pytest.approx(chance)
        if m.method in NO_EMBEDDING:
            assert not m.uploads_embedding
            assert m.attribution_accuracy == m.linkage_accuracy == pytest.approx(chance)
        else:
            assert m.uploads_embedding
            assert 0.0 <= m.attribution_accuracy <= 1.0
            assert m.attribution_ci[0] <= m.attribution_accuracy <= m.attribution_ci[1]
            if m.method != "codebook-mixing":  # mixing is served through prototypes: no cold start row
                assert m.cold_start_accuracy is not None and 0.0 <= m.cold_start_accuracy <= 1.0
    # a point mass per user is attributed every time: the static embedding is an identifier
    assert result.method("static").attribution_accuracy == 1.0
    assert {(m.family, m.spread) for m in result.frontier} == {(f, s[0]) for f, s in SPREADS.items()}


@pytest.mark.slow
def test_real_run_json_and_report(real_result: ExperimentResult, tmp_path: Path) -> None:
    out = check_json(real_result)
    assert out["config"]["model"] == "tiny-llama"
    assert out["config"]["population"]["n_users"] == 4
    check_report(real_result, tmp_path)
