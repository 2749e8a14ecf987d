"""DRT-o1's multi-agent refinement loop and the rewrite of its rounds into one long thought.

DRT-o1 (arXiv:2412.17498, §3.2) synthesises long thoughts for literary translation with three agents:

1. the *translator* lists the source's key words and phrases, renders them as bilingual keyword pairs,
   and writes a first draft ``t0`` with them;
2. the *advisor* critiques the current translation (semantic and cultural fidelity), giving ``f_k``;
3. the translator revises with the feedback into ``t_k``; the *evaluator* scores it (``s_k``);

repeating 2-3 until a score reaches a threshold or a round cap. GPT-4o then rewrites the rounds as one
first-person thought (§3.3), and the model is fine-tuned to answer with
``<thought>...</thought><output>...</output>`` (:mod:`~veil.models.translation.thought`).

The paper publishes neither the prompts, the score scale, the threshold, the cap nor the rewrite prompt.
Veil's choices (each a field of :class:`LongThoughtConfig` where it is a number):

* Scores are 0-100 (the evaluator is asked for one number; the first number of its reply is read and
  clipped to [0, 100]; a reply without a number scores 0). Following the paper's v2, every round is scored,
  the draft included.
* A revision is *accepted* only if it scores strictly higher than the best translation so far; otherwise
  the loop goes on from the best one, so accepted scores never decrease. The final translation is the best.
* The loop stops once the best score reaches ``score_threshold`` (90) or after ``max_rounds`` (3)
  revisions. Items run in lockstep, so each agent call is one batch over the items still running.
* A round may draw several revisions (``revision_samples``) from a *sampling* translator (``sampler``):
  each is scored, and the best of them is the round's revision (then accepted or not as above). The
  paper's loop makes one revision per round; a small model's greedy revision mostly restates the
  translation it was given, and sampling several is the cheapest way to give the advice a chance to
  change something.
* The rewrite is a fixed first-person template instead of an LM (:func:`render_thought`): keyword pairs,
  the draft, then per round the advice as a reflection, the revision, and whether it is better; finally
  ``Finally, I settle on:`` and the final translation. Every translation sits on its own
  ``Translation: ...`` line, which the output parser can fall back to.
* A trace becomes a MetaphorTrans record only if the final score beats the draft's
  (``require_improvement``): a sample whose thinking changed nothing teaches no reflection.

The agents are any :class:`~veil.models.rag.lm.TextLM` (one model may play all three), so the loop runs
the same over the service's personalised model, a scripted stand-in in tests, or three different models.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from veil.models.rag.lm import TextLM
from veil.models.translation.data import MetaphorTransRecord
from veil.models.translation.languages import language_name
from veil.models.translation.thought import TRANSLATION_CUE, sft_example, strip_tags

if TYPE_CHECKING:
    from veil.models.translation.evaluators import Scorer

__all__ = [
    "ADVICE_HEADER",
    "DRAFT_HEADER",
    "KEYWORDS_HEADER",
    "REVISE_HEADER",
    "SCORE_HEADER",
    "KeywordPair",
    "LongThoughtConfig",
    "LongThoughtLoop",
    "LongThoughtTrace",
    "Round",
    "clean_translation",
    "parse_keyword_pairs",
    "parse_score",
    "render_thought",
    "to_record",
    "training_example",
]

KeywordPair = tuple[str, str]
StopReason = Literal["threshold", "cap"]

# each agent prompt starts with its own header, so a scripted stand-in can tell the roles apart
KEYWORDS_HEADER = "Find the key words and phrases"
DRAFT_HEADER = "Translate this"
REVISE_HEADER = "Improve this translation"
ADVICE_HEADER = "You review translations"
SCORE_HEADER = "Rate this translation"


@dataclass(frozen=True)
class LongThoughtConfig:
    """The loop's settings; DRT-o1 (arXiv:2412.17498) publishes none of the numbers (see the module
    docstring for what each choice means).

    Attributes
    ----------
    source_language, target_language: BCP 47 codes (DRT-o1 translates English into Chinese).
    max_rounds: revisions after the draft (the round cap), >= 1.
    score_threshold: stop once the best translation scores at least this (0-100).
    max_keywords: keyword pairs kept from the translator's list.
    keyword_tokens, translation_tokens, advice_tokens, score_tokens: generation budgets per agent call.
    require_improvement: keep only traces whose final score beats the draft's as training records.
    revision_samples: revisions drawn per round (the best-scored one is the round's); above 1 the loop
        needs a ``sampler``.
    """

    source_language: str = "en"
    target_language: str = "zh"
    max_rounds: int = 3
    score_threshold: float = 90.0
    max_keywords: int = 5
    keyword_tokens: int = 96
    translation_tokens: int = 128
    advice_tokens: int = 128
    score_tokens: int = 8
    require_improvement: bool = True
    revision_samples: int = 1

    def __post_init__(self) -> None:
        if self.revision_samples < 1:
            raise ValueError(f"revision_samples must be >= 1, got {self.revision_samples}")
        language_name(self.source_language), language_name(self.target_language)  # raise if unsupported
        if self.max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1, got {self.max_rounds}")
        if not 0.0 <= self.score_threshold <= 100.0:
            raise ValueError(f"score_threshold must be in [0, 100], got {self.score_threshold}")
        if self.max_keywords < 0:
            raise ValueError(f"max_keywords must be >= 0, got {self.max_keywords}")
        budgets = (self.keyword_tokens, self.translation_tokens, self.advice_tokens, self.score_tokens)
        if min(budgets) < 1:
            raise ValueError(f"token budgets must be >= 1, got {budgets}")


@dataclass(frozen=True)
class Round:
    """One translation of the loop: the draft (``feedback`` is ``None``) or a revision."""

    translation: str
    score: float
    feedback: str | None
    """The advisor's critique of the previous best translation, which this revision answers."""
    accepted: bool
    """Whether it became the best translation (the draft always does)."""


@dataclass(frozen=True)
class LongThoughtTrace:
    """Everything one source went through."""

    source: str
    keywords: tuple[KeywordPair, ...]
    rounds: tuple[Round, ...]
    stopped: StopReason

    @property
    def best(self) -> Round:
        """The last accepted round (the best-scoring translation)."""
        return [r for r in self.rounds if r.accepted][-1]

    @property
    def final(self) -> str:
        return self.best.translation

    @property
    def improved(self) -> bool:
        """Whether a revision beat the draft."""
        return self.best.score > self.rounds[0].score


def clean_translation(text: str) -> str:
    """The first non-blank line of an agent's reply, without a leading ``Translation:`` label, quotes or a
    trailing half character.

    >>> clean_translation('\\nTranslation: "他食量很大。"\\nThis keeps the meaning.')
    '他食量很大。'
    """
    for line in text.splitlines():
        line = re.sub(rf"^\s*(?:{re.escape(TRANSLATION_CUE)}|Revised translation:)\s*", "", line, flags=re.I)
        # a reply cut at the token limit can end in half a character, decoded as U+FFFD
        line = line.strip().rstrip("\ufffd").strip("\"'“”「」").strip()
        if line:
            return strip_tags(line)
    return ""


def parse_keyword_pairs(text: str, limit: int) -> tuple[KeywordPair, ...]:
    """``source = target`` lines (also ``->``, ``→`` or ``:``), bullets and numbering ignored, deduplicated.

    >>> parse_keyword_pairs("1. like a horse = 食量很大\\n- eats -> 吃\\nnoise", 5)
    (('like a horse', '食量很大'), ('eats', '吃'))
    """
    pairs: list[KeywordPair] = []
    for line in text.splitlines():
        line = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line)
        m = re.fullmatch(r"(.+?)\s*(?:=|->|→|:)\s*(.+)", line.strip())
        if m is None:
            continue
        src, tgt = (strip_tags(g.strip().strip("\"'“”")) for g in m.groups())
        if src and tgt and src not in {p[0] for p in pairs}:
            pairs.append((src, tgt))
        if len(pairs) >= limit:
            break
    return tuple(pairs)


def parse_score(text: str) -> float:
    """The first number in the evaluator's reply, clipped to [0, 100]; 0 when there is none.

    >>> parse_score(" 85/100"), parse_score("about 120"), parse_score("good")
    (85.0, 100.0, 0.0)
    """
    m = re.search(r"\d+(?:\.\d+)?", text)
    return min(100.0, max(0.0, float(m.group(0)))) if m else 0.0


@dataclass
class LongThoughtLoop:
    """The translator-advisor-evaluator loop over text LMs.

    Parameters
    ----------
    translator: proposes keyword pairs, the draft and the revisions.
    advisor: critiques; the translator when ``None``.
    evaluator: scores by its text reply; the translator when ``None``.
    config: the loop's settings.
    scorer: scores instead of ``evaluator`` when given (any of
        :mod:`~veil.models.translation.evaluators`, e.g. the expected rating under the model's logits).
    sampler: draws the revisions when ``config.revision_samples > 1`` (a sampling
        :class:`~veil.models.rag.lm.TextLM`, e.g. the translator's model at a temperature above 0).
    """

    translator: TextLM
    advisor: TextLM | None = None
    evaluator: TextLM | None = None
    config: LongThoughtConfig = field(default_factory=LongThoughtConfig)
    scorer: Scorer | None = None
    sampler: TextLM | None = None

    def __post_init__(self) -> None:
        if self.config.revision_samples > 1 and self.sampler is None:
            raise ValueError("revision_samples > 1 needs a sampler (a TextLM that samples)")

    def _names(self) -> tuple[str, str]:
        return language_name(self.config.source_language), language_name(self.config.target_language)

    def _ask(
        self, lm: TextLM, users: Sequence[str], stop: Sequence[str], tokens: int, prefix: str = ""
    ) -> list[str]:
        if not users:
            return []
        prompts = [lm.chat_prompt(u, prefix) for u in users]
        return [c.text for c in lm.complete(prompts, stop=list(stop), max_new_tokens=tokens)]

    def _keywords(self, sources: Sequence[str]) -> list[tuple[KeywordPair, ...]]:
        src, tgt = self._names()
        users = [
            f"{KEYWORDS_HEADER} of this {src} text whose {tgt} translation needs care (similes, metaphors, "
            f"idioms, names). List at most {self.config.max_keywords}, one per line, as: "
            f"{src} phrase = {tgt} rendering\n\nText: {s}"
            for s in sources
        ]
        replies = self._ask(self.translator, users, ("\n\n",), self.config.keyword_tokens)
        return [parse_keyword_pairs(r, self.config.max_keywords) for r in replies]

    @staticmethod
    def _pairs_text(pairs: tuple[KeywordPair, ...]) -> str:
        return "\n".join(f"{a} = {b}" for a, b in pairs) if pairs else "(none)"

    def _drafts(self, sources: Sequence[str], keywords: Sequence[tuple[KeywordPair, ...]]) -> list[str]:
        src, tgt = self._names()
        users = [
            f"{DRAFT_HEADER} {src} text into {tgt}, using these renderings of its key phrases:\n"
            f"{self._pairs_text(k)}\n\nText: {s}\nReply with the {tgt} translation only."
            for s, k in zip(sources, keywords, strict=True)
        ]
        replies = self._ask(self.translator, users, ("\n\n",), self.config.translation_tokens)
        return [clean_translation(r) for r in replies]

    def _advice(self, sources: Sequence[str], translations: Sequence[str]) -> list[str]:
        src, tgt = self._names()
        users = [
            f"{ADVICE_HEADER} from {src} into {tgt}.\nSource: {s}\nTranslation: {t}\nGive brief advice that "
            f"makes the translation more faithful to the meaning and more natural to {tgt} readers, "
            "especially its figurative language. Reply in one paragraph."
            for s, t in zip(sources, translations, strict=True)
        ]
        lm = self.advisor or self.translator
        return [
            " ".join(strip_tags(r).split())
            for r in self._ask(lm, users, ("\n\n",), self.config.advice_tokens)
        ]

    def _revisions(
        self,
        sources: Sequence[str],
        keywords: Sequence[tuple[KeywordPair, ...]],
        best: Sequence[str],
        advice: Sequence[str],
    ) -> tuple[list[str], list[float]]:
        """Each source's revision and its score (the best-scored of ``revision_samples`` candidates)."""
        src, tgt = self._names()
        users = [
            f"{REVISE_HEADER} from {src} into {tgt}.\nText: {s}\nKey phrases:\n{self._pairs_text(k)}\n"
            f"Translation: {t}\nAdvice: {a}\nReply with the improved {tgt} translation only."
            for s, k, t, a in zip(sources, keywords, best, advice, strict=True)
        ]
        n = self.config.revision_samples
        lm = self.translator if n == 1 else self.sampler
        assert lm is not None  # a sampler is checked at construction
        # the candidates of source i are replies[i * n : (i + 1) * n]
        replies = self._ask(
            lm, [u for u in users for _ in range(n)], ("\n\n",), self.config.translation_tokens
        )
        candidates = [clean_translation(r) for r in replies]
        scores = self._scores([s for s in sources for _ in range(n)], candidates)
        picks = [max(range(i * n, (i + 1) * n), key=lambda j: scores[j]) for i in range(len(sources))]
        return [candidates[j] for j in picks], [scores[j] for j in picks]

    def _scores(self, sources: Sequence[str], translations: Sequence[str]) -> list[float]:
        if self.scorer is not None:
            return self.scorer.score(sources, translations) if sources else []
        src, tgt = self._names()
        users = [
            f"{SCORE_HEADER} from {src} into {tgt} for faithfulness and fluency, from 0 to 100.\n"
            f"Source: {s}\nTranslation: {t}\nReply with the score only."
            for s, t in zip(sources, translations, strict=True)
        ]
        lm = self.evaluator or self.translator
        return [parse_score(r) for r in self._ask(lm, users, ("\n",), self.config.score_tokens, "Score:")]

    def run(
        self, sources: Sequence[str], on_round: Callable[[int, int, Round], None] | None = None
    ) -> list[LongThoughtTrace]:
        """One trace per source, in order.

        ``on_round(i, k, round)`` is called as soon as source ``i``'s round ``k`` is scored (``k = 0``: the
        draft), e.g. to stream the rounds of one request.
        """
        report = on_round or (lambda i, k, r: None)
        if isinstance(sources, str):
            raise ValueError("sources must be a sequence of strings, not one string")
        if any(not s.strip() for s in sources):
            raise ValueError("every source must be non-empty text")
        keywords = self._keywords(sources)
        drafts = self._drafts(sources, keywords)
        scores = self._scores(sources, drafts)
        rounds = [[Round(d, s, None, True)] for d, s in zip(drafts, scores, strict=True)]
        for i, r in enumerate(rounds):
            report(i, 0, r[0])
        best = list(zip(drafts, scores, strict=True))
        cap = self.config.max_rounds
        for _ in range(cap):
            active = [i for i in range(len(sources)) if best[i][1] < self.config.score_threshold]
            if not active:
                break
            src = [sources[i] for i in active]
            advice = self._advice(src, [best[i][0] for i in active])
            revised, revised_scores = self._revisions(
                src, [keywords[i] for i in active], [best[i][0] for i in active], advice
            )
            for i, a, t, s in zip(active, advice, revised, revised_scores, strict=True):
                accepted = s > best[i][1]
                rounds[i].append(Round(t, s, a, accepted))
                report(i, len(rounds[i]) - 1, rounds[i][-1])
                if accepted:
                    best[i] = (t, s)
        return [
            LongThoughtTrace(s, k, tuple(r), "threshold" if b[1] >= self.config.score_threshold else "cap")
            for s, k, r, b in zip(sources, keywords, rounds, best, strict=True)
        ]


def render_thought(trace: LongThoughtTrace) -> str:
    """The rounds rewritten as one first-person thought (see the module docstring)."""

    def line(text: str) -> str:
        return " ".join(strip_tags(text).split())

    parts = []
    if trace.keywords:
        parts.append("First, I pick out the key phrases and how to render them:")
        parts += [f'- "{line(a)}" → "{line(b)}"' for a, b in trace.keywords]
    else:
        parts.append("First, I look for phrases that need special care, and find none that stand out.")
    parts += ["My first draft:", f"{TRANSLATION_CUE} {line(trace.rounds[0].translation)}"]
    for r in trace.rounds[1:]:
        parts.append(f"Let me reflect on it. {line(r.feedback or '')}".rstrip())
        parts += ["So I revise it:", f"{TRANSLATION_CUE} {line(r.translation)}"]
        parts.append(
            "This reads better than before."
            if r.accepted
            else "This is no better than before, so I keep the previous version."
        )
    parts += ["Finally, I settle on:", f"{TRANSLATION_CUE} {line(trace.final)}"]
    return "\n".join(parts)


def to_record(trace: LongThoughtTrace, require_improvement: bool = True) -> MetaphorTransRecord | None:
    """The trace as a MetaphorTrans record, or ``None`` when it is filtered out (no final translation,
    or no improvement over the draft while ``require_improvement``)."""
    if not trace.final.strip() or (require_improvement and not trace.improved):
        return None
    return MetaphorTransRecord(trace.source, trace.final, render_thought(trace))


def training_example(
    record: MetaphorTransRecord, source_language: str = "en", target_language: str = "zh"
) -> dict[str, object]:
    """A MetaphorTrans record as one SFT example (DRT-o1's prompts, ``<thought>/<output>`` answer)."""
    return sft_example(record.text, record.trans, record.thought, source_language, target_language)
