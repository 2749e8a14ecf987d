"""The translation experiment end to end with a scripted model: every method and set is scored, the checks
are computed, and noise dropped by the relevance judge costs no generation."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import pytest

from veil.models.rag.lm import Completion
from veil.models.translation.experiment import TranslationExperimentConfig, run_translation_experiment
from veil.models.translation.grounded import GroundedSetConfig
from veil.models.translation.long_thought import (
    ADVICE_HEADER,
    DRAFT_HEADER,
    KEYWORDS_HEADER,
    REVISE_HEADER,
    SCORE_HEADER,
    LongThoughtConfig,
)

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


def _config(**kw) -> TranslationExperimentConfig:
    fields = dict(
        grounded_set=GroundedSetConfig(n_examples=10, seed=2),
        test_examples=6, hsk_examples=2, simile_examples=2,
        long_thought=LongThoughtConfig(max_rounds=2), train_examples=0,
    )  # fmt: skip
    return TranslationExperimentConfig(**(fields | kw))


@pytest.fixture(scope="module")
def result():
    lm = Scripted()
    out = run_translation_experiment(_config(), lm=lm)
    out["_prompts"] = lm.prompts
    return out


def test_every_method_is_scored_on_its_sets(result) -> None:
    methods = result["methods"]
    assert set(methods) == {
        "direct", "document_clean", "document_irrelevant", "document_partial",
        "document_irrelevant_all", "document_partial_all", "long_thought",
    }  # fmt: skip
    for r in methods.values():
        assert {"bleu", "chrf", "term_accuracy"} <= set(r["generated"])
    assert set(methods["direct"]) == set(methods["long_thought"]) == {"generated", "hsk"}
    assert methods["document_clean"]["generated"]["term_accuracy"] == 1.0
    assert methods["direct"]["generated"]["term_accuracy"] == 0.0
    assert methods["document_partial"]["generated"]["documents_kept"] == 0.0
    assert methods["document_partial_all"]["generated"]["documents_kept"] == 1.0
    json.dumps({k: v for k, v in result.items() if k != "_prompts"})


def test_the_checks_are_computed(result) -> None:
    assert result["checks"] == {
        "clean_document_beats_none": True,
        "noisy_document_costs_little": True,
        "long_thought_improves_on_similes": True,
    }
    s = result["similes"]
    assert s["sentences"] == 2 and s["final_score"] > s["draft_score"] and s["mean_rounds"] == 2


def test_a_dropped_document_reuses_the_direct_translation(result) -> None:
    generated = result["_prompts"]
    assert len(generated) == len(set(generated)) == result["generated_prompts"]
    translations = [p for p in generated if p.startswith(("Translate the following", "Documents:"))]
    # direct, clean, irrelevant kept, partial kept (6 each) and HSK direct (2); the dropped noisy
    # documents leave the direct prompt, answered from memory
    assert len(translations) == 4 * 6 + 2


def test_the_config_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="test_examples"):
        _config(test_examples=11)
    with pytest.raises(ValueError, match="noisy_tolerance_bleu"):
        _config(noisy_tolerance_bleu=-1.0)
    with pytest.raises(ValueError, match="English to Chinese"):
        _config(long_thought=LongThoughtConfig(target_language="de"))


@pytest.mark.slow  # loads the tiny Llama (49k vocabulary) and fine-tunes it with TRL: about a minute
def test_the_training_path_fine_tunes_the_named_model_first(data_dir) -> None:
    from veil.models.translation.grounded_translate import GroundedConfig
    from veil.models.translation.sft import TranslationSFTConfig

    cfg = _config(
        model="tiny-llama", hsk_examples=1, simile_examples=1, train_examples=6,
        long_thought=LongThoughtConfig(max_rounds=1, keyword_tokens=4, translation_tokens=4, advice_tokens=4),
        grounded=GroundedConfig(translation_tokens=4), unfiltered=False,
        sft=TranslationSFTConfig(lr=1e-4, epochs=1, grad_accum=2, max_length=512),
    )  # fmt: skip
    result = run_translation_experiment(cfg, data_dir=data_dir)
    assert result["training"]["examples"] == 6 and result["training"]["train_loss"] > 0
    assert set(result["methods"]) == {
        "direct", "document_clean", "document_irrelevant", "document_partial", "long_thought"
    }  # fmt: skip
    assert set(result["checks"]) == {
        "clean_document_beats_none", "noisy_document_costs_little", "long_thought_improves_on_similes"
    }  # fmt: skip
