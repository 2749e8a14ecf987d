"""The DeepRAG experiment's pipeline end to end on a tiny world and a tiny model (it runs; the numbers of
so small a run mean nothing)."""

from __future__ import annotations

import pytest

from veil.models.rag.experiment import BASELINES, RagExperimentConfig, decision_quality, run_rag_experiment
from veil.models.rag.search import SearchConfig
from veil.models.rag.train import CalibrationConfig, ImitationConfig
from veil.models.rag.world import WorldConfig


@pytest.mark.slow  # about 3 minutes on 2 cores
def test_the_pipeline_runs_every_method_end_to_end() -> None:
    cfg = RagExperimentConfig(
        world=WorldConfig(seed=1, films=12, people=10, cities=8, countries=4), vocab_size=400, hidden=32,
        layers=1, base_epochs=1.0, n_eval=4, search=SearchConfig(max_expansions=4),
        imitation=ImitationConfig(lr=1e-3, epochs=1, batch_size=8, grad_accum=1, max_length=1024),
        calibration=CalibrationConfig(lr=1e-4, epochs=1, batch_size=8, grad_accum=1, max_length=1024),
    )  # fmt: skip
    out = run_rag_experiment(cfg)
    assert set(out["methods"]) == {*BASELINES, "deeprag-imi", "deeprag"}
    for name, r in out["methods"].items():
        assert 0 <= r["em"] <= 1 and 0 <= r["f1"] <= 1 and r["retrievals"] >= 0, name
    assert out["methods"]["single-shot"]["retrievals"] == 1.0
    assert out["methods"]["no-retrieval"]["retrievals"] == 0.0
    assert out["training"]["stage1_questions"] > 0 and out["seconds"]["total_s"] > 0


def test_decision_quality_is_matthews_correlation_over_gold_hops() -> None:
    from rag_world_reader import WorldReader

    from veil.models.rag.deeprag import LoopConfig, answer_questions
    from veil.models.rag.experiment import bm25_retriever
    from veil.models.rag.world import build_world

    world = build_world(WorldConfig(seed=2))
    qs = world.split("test")[:10]
    retrieve = bm25_retriever(world)
    right = answer_questions(WorldReader(world), [q.text for q in qs], retrieve)
    assert decision_quality(right, qs)["mcc"] == pytest.approx(1.0)
    always = answer_questions(WorldReader(world), [q.text for q in qs], retrieve, LoopConfig(policy="always"))
    q_always = decision_quality(always, qs)
    assert q_always["mcc"] == 0.0 and q_always["f1"] > 0 and q_always["steps"] == sum(len(q.hops) for q in qs)
