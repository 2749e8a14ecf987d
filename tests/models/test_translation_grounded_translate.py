"""Document-grounded translation: the relevance judges, the prompt, and that an irrelevant or partially
wrong document cannot change the translation, with a scripted translator that knows every word but the
names."""

from __future__ import annotations

import doctest
import re
from collections.abc import Sequence

import pytest

from veil.models.rag.lm import Completion
from veil.models.translation import grounded_translate
from veil.models.translation.errors import TranslationError
from veil.models.translation.grounded import GroundedSetConfig, grounded_set
from veil.models.translation.grounded_translate import (
    GroundedConfig,
    GroundedTranslator,
    name_matches,
    translation_prompt,
)
from veil.models.translation.metrics import corpus_bleu, term_accuracy

EXAMPLES = grounded_set(GroundedSetConfig(n_examples=40, seed=11))
_RENDERING = re.compile(r"\(Chinese: (\S+?)\)|【(.+?)】")


class NameBlindTranslator:
    """Translates a generated source word for word except its name: the rendering of the first document
    in the prompt that states one, else the English name as it stands. Judges relevance as an oracle:
    ``yes`` when the document states the entity's rendering."""

    def __init__(self) -> None:
        self.by_source = {e.src: e for e in EXAMPLES}
        self.prompts: list[str] = []

    def chat_prompt(self, user: str, assistant_prefix: str = "") -> str:
        return f"<user>{user}</user>{assistant_prefix}"

    def complete(self, prompts: Sequence[str], stop: Sequence[str], max_new_tokens: int) -> list[Completion]:
        self.prompts += prompts
        return [Completion(self._one(p), None) for p in prompts]

    def _one(self, prompt: str) -> str:
        user = prompt.removeprefix("<user>").split("</user>")[0]
        if user.endswith("Answer yes or no."):
            doc = re.search(r"^Document: (.*)$", user, re.M).group(1)  # type: ignore[union-attr]
            text = re.search(r"text: (.*)$", user, re.M).group(1)  # type: ignore[union-attr]
            return " yes" if self.by_source[text].entity.rendering in doc else " no"
        text = re.search(r"^Text: (.*)$", user, re.M).group(1)  # type: ignore[union-attr]
        e = self.by_source[text]
        m = _RENDERING.search(user.split("Text:")[0])
        name = (m.group(1) or m.group(2)) if m else e.entity.name
        return e.tgt.replace(e.entity.rendering, name) + "\nThat is the translation."


def _run(noise: str | None, relevance: str = "names") -> tuple[list, NameBlindTranslator]:
    lm = NameBlindTranslator()
    docs = [[e.documents[noise]] if noise else [] for e in EXAMPLES]
    out = GroundedTranslator(lm, GroundedConfig(relevance=relevance)).translate(
        [e.src for e in EXAMPLES], docs
    )
    return out, lm


def test_doctests() -> None:
    assert doctest.testmod(grounded_translate).failed == 0


def test_the_names_judge_keeps_exactly_the_clean_documents_of_the_generated_set() -> None:
    many = grounded_set(GroundedSetConfig(n_examples=300, seed=2))
    for e in many:
        assert name_matches(e.src, e.documents["clean"]) >= 1
        assert name_matches(e.src, e.documents["irrelevant"]) == 0
        assert name_matches(e.src, e.documents["partial"]) == 0


def test_a_namesake_of_another_kind_is_not_the_source_entity() -> None:
    assert name_matches("The Tavreno River floods.", "Tavreno Company (Chinese: 索卡公司) is a company.") == 0
    assert (
        name_matches("We spent the summer in Tavreno.", "【索卡河】索卡河（Tavreno River）是一条河流。") == 0
    )
    assert name_matches("We spent the summer in Tavreno.", "【索卡镇】索卡镇（Tavreno）是一座小镇。") == 1


@pytest.mark.parametrize("relevance", ["names", "lm"])
def test_a_clean_document_gives_the_rendering_and_noise_changes_nothing(relevance: str) -> None:
    refs, terms = [e.tgt for e in EXAMPLES], [e.entity.rendering for e in EXAMPLES]
    none, _ = _run(None, relevance)
    clean, _ = _run("clean", relevance)
    assert term_accuracy([t.translation for t in clean], terms) == 1.0
    assert term_accuracy([t.translation for t in none], terms) == 0.0
    hyps = {"none": none, "clean": clean}
    assert corpus_bleu([t.translation for t in clean], refs, "zh").score == pytest.approx(100.0)
    assert (
        corpus_bleu([t.translation for t in clean], refs, "zh").score
        > corpus_bleu([t.translation for t in hyps["none"]], refs, "zh").score
    )
    for noise in ("irrelevant", "partial"):
        noisy, _ = _run(noise, relevance)
        assert [t.translation for t in noisy] == [t.translation for t in none]
        assert all(t.documents_used == () for t in noisy)
    assert all(t.documents_used == (0,) for t in clean)


def test_keeping_every_document_lets_a_namesake_mislead() -> None:
    partial, _ = _run("partial", relevance="all")
    assert term_accuracy([t.translation for t in partial], [e.entity.rendering for e in EXAMPLES]) == 0.0
    assert all(t.documents_used == (0,) for t in partial)
    assert any(t.translation != e.tgt.replace(e.entity.rendering, e.entity.name)
               for t, e in zip(partial, EXAMPLES, strict=True))  # fmt: skip


def test_documents_come_before_the_source_and_only_the_relevant_ones() -> None:
    e = EXAMPLES[0]
    lm = NameBlindTranslator()
    docs = [e.documents["irrelevant"], e.documents["clean"], e.documents["partial"]]
    (out,) = GroundedTranslator(lm).translate([e.src], [docs])
    assert out.documents_used == (1,) and out.relevance[1] >= 1.0 and out.relevance[0] == 0.0
    prompt = lm.prompts[-1]
    assert prompt.index(" ".join(e.documents["clean"].split())) < prompt.index(f"Text: {e.src}")
    assert e.documents["irrelevant"] not in prompt and e.documents["partial"] not in prompt
    assert out.translation == e.tgt  # the first line of the reply


def test_no_document_prompt_is_plain_translation() -> None:
    assert translation_prompt("Hi.", [], "en", "zh") == (
        "Translate the following text from English to Chinese.\nText: Hi.\nReply with the Chinese translation only."
    )


@pytest.mark.parametrize(
    ("text", "docs", "match"),
    [
        ("  ", [], "non-empty"),
        ("Hi.", ["x" * 4001], "4001 characters"),
        ("Hi.", ["a"] * 9, "at most 8 documents"),
        ("Hi.", [""], "document 0"),
        ("Hi.", "a document", "not one string"),
    ],
)
def test_bad_input_is_a_translation_error(text, docs, match) -> None:
    with pytest.raises(TranslationError, match=match):
        GroundedTranslator(NameBlindTranslator()).translate([text], [docs])


@pytest.mark.parametrize(
    "kwargs",
    [{"relevance": "bm25"}, {"min_name_matches": 0}, {"max_documents": 0}, {"target_language": "xx"}],
)
def test_the_config_refuses_bad_settings(kwargs) -> None:
    with pytest.raises(ValueError):
        GroundedConfig(**kwargs)
