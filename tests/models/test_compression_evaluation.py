"""The KV benchmark's bookkeeping: method specs, matched budgets, agreement, KL and the summary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from veil.models.compression.evaluation import (
    KVBenchConfig,
    SuiteRun,
    first_divergence,
    method_spec,
    next_token_kl,
    run_kv_benchmark,
    summarize,
)


def test_unknown_methods_and_thresholds_outside_the_open_interval_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown method"):
        KVBenchConfig(methods=("nope",))
    for t in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match=r"\(0, 1\)"):
            KVBenchConfig(threshold=t)
    with pytest.raises(ValueError, match="add dbudgetkv"):
        KVBenchConfig(methods=("snapkv",))
    with pytest.raises(ValueError, match="regime must be one of question_before, question_after"):
        KVBenchConfig(regime="sideways")  # type: ignore[arg-type]


def test_method_specs() -> None:
    assert method_spec("dbudgetkv_non_sink", 0.02, None) == {
        "method": "dbudgetkv", "threshold": 0.02, "norm_scope": "non_sink"
    }  # fmt: skip
    assert method_spec("h2o", 0.01, 0.6) == {"method": "h2o", "budget": 0.6}
    with pytest.raises(ValueError, match="needs a budget"):
        method_spec("snapkv", 0.01, None)


def test_summary_reports_agreement_accuracy_and_kept_quantiles_per_task() -> None:
    rows = [
        {"method": "m", "task": "a", "agree": True, "correct": False, "kept": 0.5},
        {"method": "m", "task": "b", "agree": False, "correct": True, "kept": 1.0},
    ]
    s = summarize(rows)["m"]
    assert (s["agreement"], s["accuracy"], s["kept_mean"], s["kept_p50"]) == (0.5, 0.5, 0.75, 0.75)
    assert s["per_task"]["a"]["kept_mean"] == 0.5 and s["per_task"]["b"]["n"] == 1


def test_a_tiny_run_matches_baselines_to_dbudgetkv_and_agrees_with_itself(data_dir) -> None:
    config = KVBenchConfig(
        "tiny-llama", 2, 256, ("dbudgetkv", "snapkv"), 0.01, 4, tasks=("passkey", "json_kv")
    )
    result = run_kv_benchmark(config, data_dir)
    by = {m: [r for r in result["rows"] if r["method"] == m] for m in ("full", "dbudgetkv", "snapkv")}
    assert all(len(v) == 2 for v in by.values())
    # 2 layers, both frozen by the paper's rule: nothing is pruned, outputs equal the full cache
    assert [r["kept"] for r in by["dbudgetkv"]] == [1.0, 1.0]
    assert result["matched_budget"] == 1.0 and all(r["budget"] == 1.0 for r in by["snapkv"])
    assert result["summary"]["dbudgetkv"]["agreement"] == 1.0


def test_the_question_after_regime_is_recorded_and_its_full_cache_agrees_with_itself(data_dir) -> None:
    config = KVBenchConfig("tiny-llama", 1, 256, ("dbudgetkv",), 0.01, 4, regime="question_after")
    result = run_kv_benchmark(config, data_dir)
    assert result["regime"] == "question_after"
    assert {r["regime"] for r in result["rows"]} == {"question_after"}
    # 2 layers, both frozen: nothing is pruned, so the two-part prefill equals the full cache's
    assert result["summary"]["dbudgetkv"]["agreement"] == 1.0
    before = run_kv_benchmark(KVBenchConfig("tiny-llama", 1, 256, ("dbudgetkv",), 0.01, 4), data_dir)
    outputs = [[r["output"] for r in res["rows"] if r["method"] == "full"] for res in (result, before)]
    assert outputs[0] == outputs[1]  # without compression the regimes differ only in how they prefill


def test_next_token_kl_is_the_naive_formula_and_zero_for_equal_logits() -> None:
    g = torch.Generator().manual_seed(0)
    p_logits, q_logits = torch.randn(5, 11, generator=g) * 3, torch.randn(5, 11, generator=g) * 3
    p = np.exp(p_logits.double().numpy()) / np.exp(p_logits.double().numpy()).sum(-1, keepdims=True)
    q = np.exp(q_logits.double().numpy()) / np.exp(q_logits.double().numpy()).sum(-1, keepdims=True)
    naive = [
        sum(pv * np.log(pv / qv) for pv, qv in zip(pr, qr, strict=True)) for pr, qr in zip(p, q, strict=True)
    ]
    np.testing.assert_allclose(next_token_kl(p_logits, q_logits).numpy(), naive, rtol=1e-10)
    assert torch.equal(next_token_kl(p_logits, p_logits), torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(T, V\)"):
        next_token_kl(p_logits, q_logits[:4])


def test_first_divergence_counts_a_missing_token() -> None:
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 9, 3]) == 1
    assert first_divergence([1, 2, 3], [1, 2]) == 2
    assert first_divergence([], [4]) == 0


def test_kl_is_zero_without_pruning_positive_with_it_and_deterministic(data_dir) -> None:
    run = SuiteRun(KVBenchConfig("tiny-llama", 1, 256, max_new_tokens=6, tasks=("passkey",)), data_dir)
    full = run.reference(0)
    assert (full["kl_mean"], full["first_divergence"], full["agree"]) == (0.0, None, True)
    # tiny-llama has 2 layers, both frozen by the paper's rule: nothing is pruned, the logits are equal
    same = run.run(0, "dbudgetkv", method_spec("dbudgetkv", 0.01, None))
    assert (same["kept"], same["kl_mean"], same["kl_max"], same["first_divergence"]) == (1.0, 0.0, 0.0, None)
    spec = {"method": "streaming_llm", "budget": 0.3}
    pruned = [run.run(0, "streaming_llm", spec, 0.3) for _ in range(2)]
    assert (
        pruned[0]["kept"] < 0.5 and pruned[0]["kl_mean"] > 0.0 and pruned[0]["kl_max"] >= pruned[0]["kl_mean"]
    )
    assert pruned[0]["kl_mean"] == pruned[1]["kl_mean"]
    assert pruned[0]["agree"] == (pruned[0]["first_divergence"] is None)
    assert summarize([full, *pruned])["streaming_llm"]["kl_mean"] == pruned[0]["kl_mean"]
