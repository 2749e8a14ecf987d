"""The translation experiment end to end at toy size: two from-scratch models trained at the same budget
and scored with every kind of document, a scripted long-thought model through the loop, and the checks
computed from the numbers."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import pytest

from veil.models.rag.lm import Completion
from veil.models.translation.experiment import TranslationExperimentConfig, run_translation_experiment
from veil.models.translation.grounded import GroundedSetConfig
from veil.models.translation.grounded_experiment import GroundedExperimentConfig, training_sets
from veil.models.translation.grounded_translate import GroundedConfig
from veil.models.translation.long_thought import (
    ADVICE_HEADER,
    DRAFT_HEADER,
    KEYWORDS_HEADER,
    REVISE_HEADER,
    SCORE_HEADER,
    LongThoughtConfig,
)
from veil.models.translation.scratch import ScratchConfig
from veil.models.translation.sft import TranslationSFTConfig
from veil.models.translation.thought_experiment import LongThoughtExperimentConfig

_RENDERING = re.compile(r"\(Chinese: (\S+?)\)|【(.+?)】")


class Scripted:
    """Copies a rendering from a document into its translation; revisions grow, and score by length."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def chat_prompt(self, user: str, assistant_prefix: str = "") -> str:
        return f"{user}\n>>{assistant_prefix}"

    def complete(self, prompts: Sequence[str], stop: Sequence[str], max_new_tokens: int) -> list[Completion]:
        self.prompts += prompts
        return [Completion(self._one(p.split("\n>>")[0]), None) for p in prompts]

    @staticmethod
    def _one(user: str) -> str:
        if user.startswith(KEYWORDS_HEADER):
            return "None."
        if user.startswith(DRAFT_HEADER):
            return "Translation: 草稿。"
        if user.startswith(ADVICE_HEADER):
            return "Say more."
        if user.startswith(REVISE_HEADER):
            return re.search(r"^Translation: (.*)$", user, re.M).group(1) + "好"  # type: ignore[union-attr]
        if user.startswith(SCORE_HEADER):
            return str(10 * len(re.search(r"^Translation: (.*)$", user, re.M).group(1)))  # type: ignore[union-attr]
        m = _RENDERING.search(user.split("Text:")[0])
        return f"{(m.group(1) or m.group(2)) if m else '那个'}很好。"


def _grounded(**kw) -> GroundedExperimentConfig:
    fields = dict(
        grounded_set=GroundedSetConfig(n_examples=12, seed=2), test_examples=4, hsk_pairs=2, train_examples=16,
        scratch=ScratchConfig(vocab_size=320, hidden=32, layers=1, sft=TranslationSFTConfig(
            lr=1e-3, epochs=1, batch_size=8, grad_accum=1, max_length=384)),
        grounded=GroundedConfig(translation_tokens=6, judge_prefix=""),
    )  # fmt: skip
    return GroundedExperimentConfig(**(fields | kw))


def _config(**kw) -> TranslationExperimentConfig:
    thought = LongThoughtExperimentConfig(
        simile_examples=2, hsk_examples=2, discrimination_examples=3, evaluator="rating",
        long_thought=LongThoughtConfig(max_rounds=2), drt_records=0,
    )  # fmt: skip
    return TranslationExperimentConfig(**({"grounded": _grounded(), "long_thought": thought} | kw))


@pytest.fixture(scope="module")
def result():
    lm = Scripted()
    out = run_translation_experiment(_config(), lm=lm)
    out["_prompts"] = lm.prompts
    return out


@pytest.mark.slow  # trains two toy models with TRL and builds two tokenizers: about half a minute
def test_both_models_are_scored_with_every_kind_of_document(result) -> None:
    g = result["document_grounded"]
    assert set(g["models"]) == {"served", "multitask", "translation_only"}
    rows = {"no_document", "document_clean", "document_irrelevant", "document_partial",
            "document_irrelevant_all", "document_partial_all"}  # fmt: skip
    assert set(g["models"]["served"]) == rows
    assert set(g["models"]["translation_only"]) == rows | {"train_loss"}
    assert set(g["models"]["multitask"]) == rows | {"train_loss"} | {
        f"document_{n}_lm" for n in ("clean", "irrelevant", "partial")
    }
    for r in g["models"]["multitask"].values():
        if isinstance(r, dict):
            assert {"bleu", "chrf", "term_accuracy"} <= set(r)
    # the name judge keeps exactly the clean documents of the generated set
    assert g["judges"]["names"]["accuracy"] == 1.0 and g["judges"]["names"]["majority_accuracy"] == 0.6667
    assert g["models"]["multitask"]["document_partial"]["documents_kept"] == 0.0
    assert g["models"]["multitask"]["document_partial_all"]["documents_kept"] == 1.0
    assert g["sets"]["train_examples"] == {"multitask": 16, "translation_only": 16}
    json.dumps({k: v for k, v in result.items() if k != "_prompts"})


@pytest.mark.slow  # the same run
def test_the_checks_are_computed_from_the_numbers(result) -> None:
    checks, g = result["checks"], result["document_grounded"]["models"]["multitask"]
    assert checks["clean_document_beats_none"] == (
        g["document_clean"]["bleu"] > g["no_document"]["bleu"]
        and g["document_clean"]["term_accuracy"] > g["no_document"]["term_accuracy"]
    )
    served = result["document_grounded"]["models"]["served"]
    # the scripted model copies a document's rendering: with the clean one every term is right
    assert served["document_clean"]["term_accuracy"] == 1.0 and served["no_document"]["term_accuracy"] == 0.0
    assert checks["served_clean_document_beats_none"] is True
    assert checks["served_noisy_document_costs_little"] is True  # the name judge drops both kinds
    s = result["long_thought"]["similes"]
    # the scripted evaluator scores by length and every revision grows: each one is accepted
    assert s["sentences"] == 2 and s["final_score"] > s["draft_score"] and s["revision_win_rate"] == 1.0
    assert checks["long_thought_improves_on_similes"] is True
    assert checks["drt_answers_parse_complete"] is None  # no model to fine-tune behind a scripted one
    assert set(result["long_thought"]["discrimination"]) == {"rating"}


def test_the_multitask_model_gets_the_same_budget_with_part_of_it_auxiliary() -> None:
    from veil.models.translation.data import hsk_pairs
    from veil.models.translation.grounded import grounded_set

    cfg = _grounded(train_examples=40, translation_share=0.25)
    examples = grounded_set(cfg.grounded_set)
    sets = training_sets(cfg, examples[:-4], hsk_pairs("en", "zh")[:2])
    assert len(sets["multitask"]) == len(sets["translation_only"]) == 40
    assert {e["objective"] for e in sets["translation_only"]} == {"translation"}
    assert sum(e["objective"] == "translation" for e in sets["multitask"]) == 10
    assert {e["objective"] for e in sets["multitask"]} == {
        "translation",
        "completion",
        "self_knowledge",
        "relevance",
    }


def test_the_config_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="test_examples"):
        _grounded(test_examples=12)
    with pytest.raises(ValueError, match="translation_share"):
        _grounded(translation_share=0.0)
    with pytest.raises(ValueError, match="English to Chinese"):
        _grounded(grounded=GroundedConfig(target_language="de"))
    with pytest.raises(ValueError, match="evaluator"):
        LongThoughtExperimentConfig(evaluator="bleu")
    with pytest.raises(ValueError, match="nothing to run"):
        TranslationExperimentConfig(grounded=None, long_thought=None)
