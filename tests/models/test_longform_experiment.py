"""The LongDPO experiment end to end on a tiny configuration, and its command's argument checks."""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from veil.cli.main import app
from veil.models.longform.experiment import LongformExperimentConfig, run_longform_experiment
from veil.models.longform.search import StepSearchConfig


@pytest.mark.slow  # a base model, three searches and six trainings: about a minute of one core
def test_the_experiment_reports_every_method_and_caches_its_base_model(tmp_path) -> None:
    cfg = LongformExperimentConfig(
        n_topics=10, n_eval=4, search_per_topic=1, drafts_per_topic=2, hidden=32,
        base_epochs=1.0, vocab_size=600, seeds=(0, 1), eval_tokens=48,
        search=StepSearchConfig(width=2, depth=2, separator="\n", step_tokens=24),
    )  # fmt: skip
    cfg = dataclasses.replace(
        cfg, dpo=dataclasses.replace(cfg.dpo, epochs=1), sft=dataclasses.replace(cfg.sft, epochs=1)
    )
    messages: list[str] = []
    result = run_longform_experiment(
        cfg, progress=messages.append, data_dir=tmp_path, save_dir=tmp_path / "saved"
    )
    json.dumps(result)
    assert set(result["methods"]) == {"base", "sft", "outcome-dpo", "step-dpo"}
    for r in result["methods"].values():
        assert (
            0.0 <= r["length_score"] <= 100.0
            and 1.0 <= r["quality"] <= 5.0
            and 0.0 <= r["contradiction_rate"] <= 1.0
        )
    assert all(len(result["per_seed"][m]) == 2 for m in ("sft", "outcome-dpo", "step-dpo"))
    assert result["data"]["step_pairs"] >= result["data"]["sft_paths"] > 0 and not result["data"]["cut_short"]
    assert sum(result["data"]["step_pair_kinds"].values()) == result["data"]["step_pairs"]
    assert result["config"]["budget_steps"] >= 1 and set(result["checks"]) >= {"pool_lowers_contradictions"}
    assert any("base model: 20 drafts" in m for m in messages)
    from veil.models.loading import load_model

    saved = load_model(tmp_path / "saved")  # what veil serve --model loads
    assert saved.model.config.hidden_size == 32 and saved.tokenizer.eos_token == "</s>"
    again: list[str] = []
    run_longform_experiment(dataclasses.replace(cfg, seeds=(0,)), progress=again.append, data_dir=tmp_path)
    assert any("cached" in m for m in again)


def test_the_command_refuses_bad_arguments() -> None:
    runner = CliRunner()
    for args in (["--mode", "beam"], ["--seed", "-1"]):
        r = runner.invoke(app, ["experiment", "longform", "--quick", *args])
        assert r.exit_code != 0 and (
            "mode" in str(r.exception) + r.output or "seed" in str(r.exception) + r.output
        )
    with pytest.raises(ValueError, match="n_eval"):
        LongformExperimentConfig(n_eval=0)
    with pytest.raises(ValueError, match="drift_p"):
        LongformExperimentConfig(drift_p=2.0)
