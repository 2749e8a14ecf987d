"""The DeepRAG experiment's pipeline end to end on a tiny world and a tiny model (it runs; the numbers of
so small a run mean nothing)."""

from __future__ import annotations

import random

import pytest
import torch

from veil.models.rag.experiment import BASELINES, RagExperimentConfig, decision_quality, run_rag_experiment
from veil.models.rag.protocol import INSTRUCTION
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
        threads=1,
    )  # fmt: skip
    threads = torch.get_num_threads()
    out = run_rag_experiment(cfg)
    assert set(out["methods"]) == {*BASELINES, "deeprag-imi", "deeprag"}
    for name, r in out["methods"].items():
        assert 0 <= r["em"] <= 1 and 0 <= r["f1"] <= 1 and r["retrievals"] >= 0, name
    assert out["methods"]["single-shot"]["retrievals"] == 1.0
    assert out["methods"]["no-retrieval"]["retrievals"] == 0.0
    assert out["training"]["stage1_questions"] > 0 and out["seconds"]["total_s"] > 0
    assert {"base_train_s", "stage1_search_s", "stage2_train_s"} <= set(out["seconds"])
    assert set(out["checks"]) == {
        "deeprag_retrieves_less_than_every_step", "deeprag_at_least_as_accurate_as_every_step",
        "decisions_better_than_chance", "calibration_improves_decisions",
    }  # fmt: skip
    assert torch.get_num_threads() == threads  # restored after the run's one thread


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
    # the per-question counts sum to the steps, and the paired bootstrap sees the oracle's whole gain
    from veil.models.rag.experiment import decision_counts, mcc_gain

    perfect, every = decision_counts(right, qs), decision_counts(always, qs)
    assert perfect.shape == (10, 4) and perfect.sum() == q_always["steps"] and perfect[:, [1, 3]].sum() == 0
    gain = mcc_gain(perfect, every)
    assert gain["gain"] == pytest.approx(1.0) and gain["low"] > 0.5 and gain["p_positive"] == 1.0
    assert mcc_gain(every, every) == {"gain": 0.0, "low": 0.0, "high": 0.0, "p_positive": 0.0}
    with pytest.raises(ValueError, match="one shape"):
        mcc_gain(perfect, every[:5])


def test_the_quick_preset_runs_on_one_thread_with_a_short_instruction() -> None:
    quick = RagExperimentConfig.quick()
    assert quick.threads == 1 and quick.instruction and len(quick.instruction) < len(INSTRUCTION)
    assert "every-step" in quick.baselines


@pytest.mark.parametrize(
    ("bad", "message"),
    [({"threads": 0}, "threads must be >= 1 or None, got 0"), ({"n_search": 0}, "n_search must be >= 1"),
     ({"facts_per_example": 0}, "facts_per_example must be >= 1, got 0"),
     ({"baselines": ("no-retrieval",)}, "compare with every-step"),
     ({"baselines": ("every-step", "oracle")}, "unknown baseline.*oracle")],
)  # fmt: skip
def test_a_bad_config_is_refused_with_the_value(bad: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RagExperimentConfig(**bad)


def test_the_short_instruction_replaces_the_protocols_in_every_user_turn() -> None:
    from veil.models.rag.experiment import _Instructed
    from veil.models.rag.protocol import render_prompt

    class Echo:
        def chat_prompt(self, user: str, assistant_prefix: str = "") -> str:
            return f"<u>{user}</u>{assistant_prefix}"

        def complete(self, prompts, stop, max_new_tokens):  # noqa: ANN001, ANN201
            return list(prompts)

    lm = _Instructed(Echo(), "Be brief.")
    assert (
        lm.chat_prompt(render_prompt("Who?"), "Follow up:") == "<u>Be brief.\n\nQuestion: Who?</u>Follow up:"
    )
    assert lm.complete(["a"], [], 1) == ["a"]


def test_fact_sequences_hold_every_sentence_once_and_end_with_eos() -> None:
    from veil.models.rag.experiment import _fact_examples

    class Tok:
        eos_token = "<e>"

        def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
            return {"input_ids": [hash(w) % 97 for w in text.split()], "text": text}

    sentences = [f"s{i} x." for i in range(10)]
    out = _fact_examples(Tok(), sentences, 4, random.Random(0))
    assert [len(e["input_ids"]) for e in out] == [8, 8, 4]  # 4 + 4 + 2 sentences of two words
    assert all(e["completion_mask"] == [1] * len(e["input_ids"]) for e in out)


def _method(em: float, retrievals: float, mcc: float) -> dict:
    return {"em": em, "retrievals": retrievals, "decisions": {"mcc": mcc}}


def test_the_checks_compare_deeprag_with_every_step_and_with_stage_one() -> None:
    from veil.models.rag.experiment import _checks

    methods = {"every-step": _method(0.5, 2.4, 0.0), "deeprag-imi": _method(0.5, 1.0, 0.3),
               "deeprag": _method(0.5, 1.1, 0.4)}  # fmt: skip
    assert all(_checks(methods).values())
    methods["deeprag"] = _method(0.4, 2.4, 0.3)
    assert _checks(methods) == {
        "deeprag_retrieves_less_than_every_step": False,
        "deeprag_at_least_as_accurate_as_every_step": False,
        "decisions_better_than_chance": True,
        "calibration_improves_decisions": False,
    }


def test_every_entity_name_is_one_token_and_text_round_trips() -> None:
    from veil.models.rag.experiment import _names, _tokenizer
    from veil.models.rag.world import build_world

    world = build_world(WorldConfig(seed=3, films=6, people=5, cities=4, countries=3))
    plain = _tokenizer(world, 400, "Be brief.")
    tok = _tokenizer(world, 400, "Be brief.", entity_tokens=True)
    names = _names(world)
    assert len(tok) == len(plain) + len(names)  # the names' pieces are not learned as merges
    for name in names:
        pieces = tok.convert_ids_to_tokens(
            tok(f"Who directed {name}?", add_special_tokens=False)["input_ids"]
        )
        assert pieces[-2:] == ["\u2581" + name.replace(" ", "\u2582"), "?"], name
    q = world.split("test")[0]
    for text in [q.text, *(h.subquery for h in q.hops), *world.training_text()]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    article = world.corpus()[0]["contents"]
    title = article.split("\n")[0]
    pieces = tok.convert_ids_to_tokens(tok(article, add_special_tokens=False)["input_ids"])
    assert pieces[:2] == ["\u2581" + title.replace(" ", "\u2582"), "\n"]


def test_a_first_step_drill_learns_only_the_first_follow_up_line() -> None:
    from veil.models.rag.experiment import _drill, _Instructed, _tokenizer
    from veil.models.rag.world import build_world

    world = build_world(WorldConfig(seed=3, films=6, people=5, cities=4, countries=3))
    tok = _tokenizer(world, 400, "Be brief.", entity_tokens=True)

    class Chat:
        def chat_prompt(self, user: str, assistant_prefix: str = "") -> str:
            return f"<u>{user}</u>\n{assistant_prefix}"

    q = world.split("train")[0]
    drill = _drill(_Instructed(Chat(), "Be brief."), tok, q)
    learned = [i for i, m in zip(drill["input_ids"], drill["completion_mask"], strict=True) if m]
    assert tok.decode(learned) == f"Follow up: {q.hops[0].subquery}\n"
    assert tok.decode(drill["input_ids"]).startswith("<u>Be brief.")


def test_the_base_model_is_cached_by_its_key_and_reloaded_without_training(tmp_path) -> None:
    from veil.models.rag.experiment import _base_model, _tokenizer
    from veil.models.rag.world import build_world

    cfg = RagExperimentConfig(
        world=WorldConfig(seed=1, films=12, people=10, cities=8, countries=4), vocab_size=400, hidden=32,
        layers=1, base_epochs=1.0,
    )  # fmt: skip
    world = build_world(cfg.world)
    tokenizer = _tokenizer(world, cfg.vocab_size, INSTRUCTION, cfg.entity_tokens)
    ids = tokenizer(" ".join(world.training_text()[:8]), add_special_tokens=False)["input_ids"]
    calls: list[int] = []

    def data() -> list[dict[str, list[int]]]:
        calls.append(1)
        return [{"input_ids": ids, "completion_mask": [1] * len(ids)}] * 8

    cache = tmp_path / cfg.base_key()
    trained, first = _base_model(cfg, tokenizer, data, cache)
    loaded, second = _base_model(cfg, tokenizer, data, cache)
    assert (first["cached"], second["cached"], len(calls)) == (False, True, 1)
    assert second["train_loss"] == first["train_loss"]
    for (name, a), (_, b) in zip(trained.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    # what the base model does not depend on leaves the key alone; what it does changes it
    later = RagExperimentConfig(world=cfg.world, vocab_size=400, hidden=32, layers=1, base_epochs=1.0, n_eval=3,
                                calibration=CalibrationConfig(beta=0.1))  # fmt: skip
    assert later.base_key() == cfg.base_key()
    assert (
        RagExperimentConfig(world=cfg.world, vocab_size=400, hidden=32, layers=1, base_epochs=2.0).base_key()
        != cfg.base_key()
    )
