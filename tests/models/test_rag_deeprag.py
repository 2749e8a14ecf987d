"""The DeepRAG loop and its baseline policies on the generated world, with real BM25 over its corpus.

The model here is a scripted reader of the world (the testing approach DeepRAG's algorithms allow before
a trained model exists): it decomposes by the question's gold hops, knows exactly the parametric facts,
asks to search for the others, reads a fact only when a retrieved passage states it, and is unsure
(a low token probability) when it guesses. The loop's bookkeeping is what is under test; a real
transformers model runs the same loop in the last test.
"""

from __future__ import annotations

import numpy as np
import pytest
from rag_world_reader import WorldReader

from veil.models.rag.deeprag import POLICIES, LoopConfig, answer_questions
from veil.models.rag.experiment import bm25_retriever
from veil.models.rag.protocol import is_correct, parse_trace
from veil.models.rag.world import World, WorldConfig, build_world


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(WorldConfig(seed=3))


@pytest.fixture(scope="module")
def retrieve(world: World):
    return bm25_retriever(world)


def test_deeprag_retrieves_exactly_on_external_hops_and_answers(world: World, retrieve) -> None:
    questions = world.split("test")[:12]
    reader = WorldReader(world)
    answers = answer_questions(reader, [q.text for q in questions], retrieve)
    for q, a in zip(questions, answers, strict=True):
        assert a.ended == "final"
        assert [s.retrieved for s in a.trace.steps] == [h.needs_retrieval for h in q.hops]
        assert a.retrievals == sum(h.needs_retrieval for h in q.hops)
        assert [s.subquery for s in a.trace.steps] == [h.subquery for h in q.hops]
        assert all(len(s.passages) == 3 for s in a.trace.steps if s.retrieved)
        assert is_correct(a.answer, q.answer), (q.text, a.text)
        assert parse_trace(a.text).final_answer == a.answer  # the generated turn follows the protocol
    # questions advance together: one call per phase and step, not per question
    assert reader.calls <= 2 * max(len(q.hops) for q in questions) + 2


def test_the_baselines_retrieve_as_their_policy_says(world: World, retrieve) -> None:
    questions = world.split("test")[:12]
    hops = [len(q.hops) for q in questions]
    external = [sum(h.needs_retrieval for h in q.hops) for q in questions]
    runs = {
        p: answer_questions(WorldReader(world), [q.text for q in questions], retrieve, LoopConfig(policy=p))
        for p in POLICIES
    }
    assert [a.retrievals for a in runs["never"]] == [0] * 12
    assert [a.retrievals for a in runs["always"]] == hops
    assert [a.retrievals for a in runs["single"]] == [1] * 12
    assert all(len(a.question_passages) == 3 for a in runs["single"])
    # the scripted reader guesses (probability e^-3) exactly when it lacks an external fact
    assert [a.retrievals for a in runs["confidence"]] == external
    accuracy = {
        p: np.mean([is_correct(a.answer, q.answer) for a, q in zip(runs[p], questions, strict=True)])
        for p in POLICIES
    }
    assert accuracy["deeprag"] == accuracy["always"] == accuracy["confidence"] == 1.0
    assert accuracy["never"] < 1.0  # some final hop is external


def test_the_step_cap_asks_for_the_final_answer(world: World, retrieve) -> None:
    q = next(q for q in world.split("test") if len(q.hops) == 3)
    (a,) = answer_questions(WorldReader(world), [q.text], retrieve, LoopConfig(max_steps=1))
    assert a.ended == "step_cap" and len(a.trace.steps) == 1 and a.answer == q.hops[0].answer


def test_bad_configs_and_questions_are_refused(retrieve, world: World) -> None:
    with pytest.raises(ValueError, match="unknown policy"):
        LoopConfig(policy="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_steps"):
        LoopConfig(max_steps=0)
    with pytest.raises(ValueError, match="confidence_threshold"):
        LoopConfig(confidence_threshold=1.0)
    with pytest.raises(ValueError, match="non-empty"):
        answer_questions(WorldReader(world), ["  "], retrieve)


def test_a_real_model_runs_the_loop_and_malformed_output_ends_a_question(
    world: World, retrieve, data_dir
) -> None:
    from veil.models.loading import load_model
    from veil.models.rag.lm import HFTextLM

    loaded = load_model("tiny-llama", data_dir)
    lm = HFTextLM(loaded.model, loaded.tokenizer)
    questions = [q.text for q in world.split("test")[:2]]
    config = LoopConfig(max_steps=2, follow_up_tokens=8, answer_tokens=4, final_tokens=4)
    for a in answer_questions(lm, questions, retrieve, config):
        # a random model does not follow the protocol: each question still ends, none raises
        assert a.ended in ("final", "step_cap", "malformed")
        assert a.retrievals <= 2 and a.text.startswith("So the final") == (
            a.ended == "malformed" and not a.trace.steps
        )


def test_each_step_is_reported_as_soon_as_it_is_complete(world: World, retrieve) -> None:
    questions = world.split("test")[:4]
    seen: list[tuple[int, str]] = []
    answers = answer_questions(
        WorldReader(world),
        [q.text for q in questions],
        retrieve,
        on_step=lambda i, s: seen.append((i, s.subquery)),
    )
    assert sorted(seen) == sorted((i, s.subquery) for i, a in enumerate(answers) for s in a.trace.steps)
    assert [i for i, _ in seen[:4]] == [0, 1, 2, 3]  # every question's first step before any second one
