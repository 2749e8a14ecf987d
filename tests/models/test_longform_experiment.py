"""The LongDPO experiment end to end on a tiny configuration, and its command's argument checks."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
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
    assert set(result["paired"]) == {"step-dpo_vs_sft", "step-dpo_vs_outcome-dpo"}
    speed = result["throughput"]
    assert (
        speed["device"] == "cpu" and speed["pairs_per_wall_minute"] > 0 and speed["pairs_per_cpu_minute"] > 0
    )
    assert all(c["pairs"] == 2 * 12 for c in result["paired"].values())  # 2 seeds x 4 topics x 3 lengths
    assert any("base model: 20 drafts" in m for m in messages)
    from veil.models.loading import load_model

    saved = load_model(tmp_path / "saved")  # what veil serve --model loads
    assert saved.model.config.hidden_size == 32 and saved.tokenizer.eos_token == "</s>"
    again: list[str] = []
    step_only = dataclasses.replace(cfg.dpo, loss_type="sigmoid_norm", beta=2.0)
    capped = run_longform_experiment(
        dataclasses.replace(cfg, seeds=(0,), cap_first_step_pairs=True, step_dpo=step_only, pool_seeds=(3, 4)),
        progress=again.append, data_dir=tmp_path,
    )  # fmt: skip
    assert any("cached" in m for m in again)
    by_depth = capped["data"]["step_pairs_by_depth"]
    later = sum(n for d, n in by_depth.items() if d != "0")
    assert capped["data"]["step_pairs_trained"] == later + min(by_depth.get("0", 0), later)
    assert (capped["config"]["step_dpo_loss"], capped["config"]["dpo_loss"]) == ("sigmoid_norm", "sigmoid")
    pool = capped["memory_pool"]  # 4 held-out topics at 3 lengths, searched at 2 seeds (4 by default)
    assert pool["responses"] == 24 and pool["seeds"] == [3, 4] and result["memory_pool"]["responses"] == 48
    assert pool["only_without"] + pool["only_with"] <= 24 and 0.0 <= pool["mcnemar_p"] <= 1.0


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


def test_the_base_models_drafts_follow_the_required_length_unless_told_not_to() -> None:
    import random

    from veil.models.longform.experiment import base_drafts, experiment_tasks
    from veil.models.longform.length import count_words

    def words(cfg: LongformExperimentConfig) -> dict[int, float]:
        rng = random.Random(cfg.seed)
        topics, _, _ = experiment_tasks(cfg, rng)
        by: dict[int, list[int]] = {}
        for p, d in base_drafts(topics, rng, cfg):
            assert d.strip() and p.target_words in cfg.lengths and f"{p.target_words} words" in p.prompt
            by.setdefault(p.target_words, []).append(count_words(d))
        return {n: sum(w) / len(w) for n, w in by.items()}

    blind = words(LongformExperimentConfig(n_topics=40, n_eval=4, draft_words=None))
    assert max(blind.values()) < 1.3 * min(blind.values())  # 1-4 paragraphs whatever L
    reads = words(LongformExperimentConfig(n_topics=40, n_eval=4, draft_words=(0.8, 1.25)))
    for n, w in reads.items():
        assert 0.7 * n <= w <= 1.4 * n, (n, w)  # a draft ends at the paragraph closest to its aim
    with pytest.raises(ValueError, match="draft_words"):
        LongformExperimentConfig(draft_words=(1.5, 0.5))


def test_a_config_is_overridden_from_json_fields() -> None:
    quick = LongformExperimentConfig.quick()
    cfg = quick.overridden(
        json.loads('{"draft_words": [0.5, 1.5], "search": {"mode": "mcts"}, "step_dpo": {"beta": 2.0}}')
    )
    assert cfg.draft_words == (0.5, 1.5) and cfg.search.mode == "mcts"
    assert cfg.search.step_value == quick.search.step_value  # the rest of the preset's search stays
    assert cfg.step_dpo is not None and cfg.step_dpo.beta == 2.0 and cfg.step_dpo.lr == quick.dpo.lr
    with pytest.raises(ValueError, match="not fields"):
        quick.overridden({"draft_wrds": [0.5, 1.5]})
    deep = quick.overridden({"search": {"critique": {"top_k": 20}}, "eval_repetition_penalty": 1.0})
    assert deep.search.critique is not None and deep.search.critique.top_k == 20
    assert deep.search.critique.top_p == quick.search.critique.top_p and deep.eval_repetition_penalty == 1.0
    assert (quick.search.critique.top_k, quick.eval_repetition_penalty) == (50, 1.1)  # the paper's
    with pytest.raises(ValueError, match="not fields of CritiqueConfig"):
        quick.overridden({"search": {"critique": {"topk": 50}}})
    with pytest.raises(ValueError, match="eval_repetition_penalty"):
        quick.overridden({"eval_repetition_penalty": 0})
    with pytest.raises(ValueError, match="drift_p"):
        quick.overridden({"drift_p": 3})


def test_paired_length_scores_pair_each_seeds_runs_prompt_by_prompt() -> None:
    from veil.models.longform.experiment import paired_length_scores

    rng = np.random.default_rng(0)
    base = rng.uniform(40, 90, size=(2, 27))
    better = [{"length_scores": list(b + 5 + rng.normal(0, 1, 27))} for b in base]
    same = [{"length_scores": list(b)} for b in base]
    cmp = paired_length_scores(better, same)
    assert cmp["pairs"] == 54 and cmp["wins"] == 54 and cmp["losses"] == cmp["ties"] == 0
    assert 4.5 < cmp["mean_diff"] < 5.5 and cmp["ci95"][0] < cmp["mean_diff"] < cmp["ci95"][1]
    assert cmp["wilcoxon_p"] < 1e-6
    # by prompt: the two seeds' differences averaged, 27 prompts
    assert cmp["by_prompt"]["prompts"] == 27 and cmp["by_prompt"]["wilcoxon_p"] < 1e-4
    assert cmp["by_prompt"]["ci95"][0] < cmp["mean_diff"] < cmp["by_prompt"]["ci95"][1]
    # the same runs against themselves: no difference at all, nothing to test
    assert paired_length_scores(same, same) == {
        "pairs": 54,
        "mean_diff": 0.0,
        "wins": 0,
        "losses": 0,
        "ties": 54,
        "ci95": None,
        "wilcoxon_p": 1.0,
        "by_prompt": {"prompts": 27, "ci95": None, "wilcoxon_p": 1.0},
    }
    noise = [{"length_scores": list(b + rng.normal(0, 5, 27))} for b in base]
    assert paired_length_scores(noise, same)["wilcoxon_p"] > 0.01
    with pytest.raises(ValueError):
        paired_length_scores(better, same[:1])  # a seed missing on one side
