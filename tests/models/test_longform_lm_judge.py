"""The seven-principle LM judge on a real model (SmolLM2-135M-Instruct): soft scores in 1-5, a yes/no
contradiction check, and the 2.5 fallback when the model does not answer with a digit."""

from __future__ import annotations

import pytest

from veil.models.longform.data import LongformPrompt
from veil.models.longform.facts import Fact
from veil.models.longform.judge import PRINCIPLES, HFChoiceScorer, LMJudge


@pytest.fixture(scope="module")
def smol(data_dir):
    from veil.models.loading import load_model
    from veil.models.rag.lm import HFTextLM

    loaded = load_model("smollm2-135m-instruct", data_dir)
    return HFChoiceScorer(loaded.model, loaded.tokenizer), HFTextLM(loaded.model, loaded.tokenizer)


@pytest.mark.slow  # loads SmolLM2 and runs it on CPU
def test_the_lm_judge_scores_each_principle_softly_and_checks_contradictions(smol) -> None:
    scorer, lm = smol
    judge = LMJudge(scorer, lm)
    task = LongformPrompt("Write about the sea in about 40 words.", 40)
    q = judge.quality(
        task, "The sea covers most of the Earth. Its tides follow the moon, and its life is rich."
    )
    assert set(q.scores) == set(PRINCIPLES)
    parsed = [s for s in q.scores.values() if s != 2.5]
    assert len(parsed) == 7 - q.unparsable and all(1.0 <= s <= 5.0 for s in parsed)
    probs, _ = scorer.choice_probs(lm.chat_prompt("Is the sky green? Answer Yes or No."), ("Yes", "No"))
    assert 0.0 <= probs[0] <= 1.0 and 0.0 <= probs[1] <= 1.0 and sum(probs) > 0.3
    assert isinstance(judge.contradicts(Fact("The sea", "colour", "blue"), "The sea is red."), bool)
    # a scorer whose prompts end mid-word never starts a digit: every principle falls back to 2.5
    odd = LMJudge(_NoDigit(scorer), lm, principles=("accuracy", "insight")).quality(task, "The sea.")
    assert odd.unparsable == 2 and odd.mean == 2.5


class _NoDigit:
    def __init__(self, inner) -> None:
        self.inner = inner

    def choice_probs(self, prompt, options):
        probs, _ = self.inner.choice_probs(prompt + " The answer, in words, is", options)
        return probs, False
