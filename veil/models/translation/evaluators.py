"""The evaluator of DRT-o1's loop: scores a translation of a source from 0 to 100, without a reference.

DRT-o1 (arXiv:2412.17498, §3.2) uses an LLM (Qwen2.5-72B-Instruct, unverified) that is asked for a score;
neither its prompt nor its scale is published. A 135M model asked the same gives the same number to
nearly every draft (SmolLM2-135M-Instruct answers about 89 whatever the translation), which stops a
threshold-and-accept loop at once or never. Veil's evaluators, one per :data:`EVALUATORS` name:

* ``rating`` (the paper's kind): the evaluator model's greedy reply to "rate this translation from 0 to
  100", its first number (:func:`~veil.models.translation.long_thought.parse_score`). Works over any
  :class:`~veil.models.rag.lm.TextLM`.
* ``expected_rating``: the same question on a 0-9 scale, scored by the *expected* digit under the
  model's next-token distribution after ``Score:`` (G-Eval, arXiv:2303.16634, §2.3: the probabilities of
  the rating tokens weight the ratings), times 100/9. A continuous score that moves when the model's
  preference moves, where the greedy digit does not. Needs the model's logits.
* ``likelihood``: GPTScore (arXiv:2302.04166, §3): the translation's mean per-token log-probability
  under the evaluator model asked to translate the source (the prompt of direct translation), as
  ``100 * exp(mean)``, the geometric mean of the token probabilities. Needs the model's logits. It
  rewards what the model itself would write, so with the translator as evaluator it prefers the
  translator's own draft: a self-preference bias to keep in mind when reading its gains.
* ``round_trip``: the other direction, BARTScore's *recall* (arXiv:2106.11520, §3.3: ``p(x | y)``, how
  much of the source the output lets the model recover): the *source's* mean per-token log-probability
  under the model asked to translate the translation back, as ``100 * exp(mean)``. The translator's
  greedy draft has no advantage here, so a revision that carries more of the source scores higher.
  A translation that merely echoes the source would score highest of all, so the source itself, and a
  translation less than ``min_target_share`` in the target language's script (:func:`target_share`),
  score 0. Between two languages of one script a partial echo is not caught: there, read its gains with
  the references' metrics beside them.

Where we depart from the paper: the paper's evaluator is a large LLM whose rating is its text; both
logit-based evaluators exist because a small offline model's text rating does not discriminate
(benchmarks/README.md reports each evaluator's pairwise accuracy, reference against a mismatched one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

from veil.models.rag.lm import TextLM
from veil.models.translation.languages import is_chinese, language_name
from veil.models.translation.long_thought import SCORE_HEADER, parse_score

__all__ = [
    "EVALUATORS",
    "ExpectedRatingScorer",
    "LikelihoodScorer",
    "RatingScorer",
    "Scorer",
    "RoundTripScorer",
    "make_scorer",
    "rating_prompt",
    "target_share",
]

EvaluatorName = Literal["rating", "expected_rating", "likelihood", "round_trip"]
EVALUATORS: tuple[str, ...] = get_args(EvaluatorName)


class Scorer(Protocol):
    """Scores translations of sources, 0-100, higher is better."""

    def score(self, sources: Sequence[str], translations: Sequence[str]) -> list[float]: ...


def rating_prompt(source: str, translation: str, source_language: str, target_language: str, top: int) -> str:
    """The evaluator's question, on a 0-``top`` scale."""
    src, tgt = language_name(source_language), language_name(target_language)
    return (
        f"{SCORE_HEADER} from {src} into {tgt} for faithfulness and fluency, from 0 to {top}.\n"
        f"Source: {source}\nTranslation: {translation}\nReply with the score only."
    )


@dataclass
class RatingScorer:
    """``rating``: the first number of the model's greedy reply, 0-100."""

    lm: TextLM
    source_language: str = "en"
    target_language: str = "zh"
    tokens: int = 8

    def score(self, sources: Sequence[str], translations: Sequence[str]) -> list[float]:
        if not sources:
            return []
        prompts = [
            self.lm.chat_prompt(
                rating_prompt(s, t, self.source_language, self.target_language, 100), "Score:"
            )
            for s, t in zip(sources, translations, strict=True)
        ]
        return [
            parse_score(c.text) for c in self.lm.complete(prompts, stop=["\n"], max_new_tokens=self.tokens)
        ]


def _chat(tokenizer: Any, user: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )


def _log_probs(model: Any, rows: Sequence[list[int]], positions: Sequence[list[int]]) -> list[Any]:
    """Log-softmax of the next-token logits at ``positions[i]`` of each row (right-padded, one batch)."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    return [torch.log_softmax(logits[i, p].float(), dim=-1).cpu() for i, p in enumerate(positions)]


@dataclass
class ExpectedRatingScorer:
    """``expected_rating``: 100/9 times the expected digit after ``Score:`` on a 0-9 scale.

    When the most likely next token is only whitespace (a tokenizer that writes `` 7`` as a space and a
    digit), that token is appended once and the digits are read after it.
    """

    model: Any
    tokenizer: Any
    source_language: str = "en"
    target_language: str = "zh"
    batch_size: int = 8

    def __post_init__(self) -> None:
        # each digit's token, bare and after a space: the last token of its encoding, when that token
        # is the digit alone (a tokenizer may write " 7" as a space token, then "7")
        self._digits: dict[int, int] = {}
        for d in range(10):
            for form in (str(d), f" {d}"):
                ids = self.tokenizer(form, add_special_tokens=False)["input_ids"]
                if ids and self.tokenizer.decode(ids[-1:]).strip() == str(d):
                    self._digits.setdefault(ids[-1], d)
        if not self._digits:
            raise ValueError("the tokenizer has no token for a bare digit: no rating can be read")

    def _expected(self, lp: Any) -> float:
        import torch

        ids = torch.tensor(list(self._digits))
        p = lp[ids].exp()
        values = torch.tensor(list(self._digits.values()), dtype=p.dtype)
        return float((p * values).sum() / p.sum().clamp_min(1e-12)) * 100.0 / 9.0

    def score(self, sources: Sequence[str], translations: Sequence[str]) -> list[float]:
        out: list[float] = []
        pairs = list(zip(sources, translations, strict=True))
        for start in range(0, len(pairs), self.batch_size):
            rows = [
                self.tokenizer(
                    _chat(self.tokenizer, rating_prompt(s, t, self.source_language, self.target_language, 9))
                    + "Score:",
                    add_special_tokens=False,
                )["input_ids"]
                for s, t in pairs[start : start + self.batch_size]
            ]
            lps = _log_probs(self.model, rows, [[len(r) - 1] for r in rows])
            for k, lp in enumerate(lps):
                top = int(lp[0].argmax())
                if top not in self._digits and not self.tokenizer.decode([top]).strip():
                    lp = _log_probs(self.model, [rows[k] + [top]], [[len(rows[k])]])[0]
                out.append(self._expected(lp[0]))
        return out


def _answer_likelihoods(
    model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], batch_size: int
) -> list[float]:
    """``100 * exp(mean log p(answer | chat(user)))`` for each ``(user, answer)``; 0 for an empty answer."""
    import math

    out: list[float] = []
    for start in range(0, len(pairs), batch_size):
        rows, spans = [], []
        for user, answer_text in pairs[start : start + batch_size]:
            prompt = tokenizer(_chat(tokenizer, user), add_special_tokens=False)["input_ids"]
            answer = (
                tokenizer(answer_text.strip(), add_special_tokens=False)["input_ids"]
                if answer_text.strip()
                else []
            )
            rows.append(prompt + answer)
            spans.append((len(prompt), answer))
        # the distribution at position j predicts token j + 1
        lps = _log_probs(model, rows, [list(range(n - 1, n - 1 + len(a))) for n, a in spans])
        for lp, (_, answer) in zip(lps, spans, strict=True):
            out.append(100.0 * math.exp(float(lp[range(len(answer)), answer].mean())) if answer else 0.0)
    return out


@dataclass
class LikelihoodScorer:
    """``likelihood``: ``100 * exp(mean log p(translation | direct-translation prompt))``; 0 when empty."""

    model: Any
    tokenizer: Any
    source_language: str = "en"
    target_language: str = "zh"
    batch_size: int = 8

    def score(self, sources: Sequence[str], translations: Sequence[str]) -> list[float]:
        from veil.models.translation.grounded_translate import translation_prompt

        pairs = [
            (translation_prompt(s, [], self.source_language, self.target_language), t)
            for s, t in zip(sources, translations, strict=True)
        ]
        return _answer_likelihoods(self.model, self.tokenizer, pairs, self.batch_size)


def target_share(text: str, language: str) -> float:
    """The share of ``text``'s letters written in ``language``'s script: CJK ideographs for Chinese,
    Latin letters otherwise (1.0 for a text without letters).

    >>> target_share("许多农民 live", "zh"), target_share("许多农民 live", "en")
    (0.5, 0.5)
    """
    cjk = sum("\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf" for c in text)
    latin = sum(c.isascii() and c.isalpha() for c in text)
    if not cjk + latin:
        return 1.0
    return (cjk if is_chinese(language) else latin) / (cjk + latin)


@dataclass
class RoundTripScorer:
    """``round_trip``: ``100 * exp(mean log p(source | prompt to translate the translation back))``; 0
    when the translation is empty, is the source, or is less than ``min_target_share`` in the target
    script."""

    model: Any
    tokenizer: Any
    source_language: str = "en"
    target_language: str = "zh"
    batch_size: int = 8
    min_target_share: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_target_share <= 1.0:
            raise ValueError(f"min_target_share must be in [0, 1], got {self.min_target_share}")

    def score(self, sources: Sequence[str], translations: Sequence[str]) -> list[float]:
        from veil.models.translation.grounded_translate import translation_prompt

        pairs = list(zip(sources, translations, strict=True))
        valid = [
            bool(t.strip())
            and " ".join(t.casefold().split()) != " ".join(s.casefold().split())
            and target_share(t, self.target_language) >= self.min_target_share
            for s, t in pairs
        ]
        asked = [
            (translation_prompt(t, [], self.target_language, self.source_language), s)
            for (s, t), ok in zip(pairs, valid, strict=True)
            if ok
        ]
        scores = iter(_answer_likelihoods(self.model, self.tokenizer, asked, self.batch_size))
        return [next(scores) if ok else 0.0 for ok in valid]


def make_scorer(
    name: str,
    lm: TextLM,
    model: Any = None,
    tokenizer: Any = None,
    source_language: str = "en",
    target_language: str = "zh",
) -> Scorer:
    """The evaluator ``name`` (:data:`EVALUATORS`); the logit-based ones need ``model`` and ``tokenizer``."""
    if name not in EVALUATORS:
        raise ValueError(f"evaluator must be one of {EVALUATORS}, got {name!r}")
    if name == "rating":
        return RatingScorer(lm, source_language, target_language)
    if model is None or tokenizer is None:
        raise ValueError(f"the {name!r} evaluator reads the model's logits: give model and tokenizer")
    classes = {
        "expected_rating": ExpectedRatingScorer,
        "likelihood": LikelihoodScorer,
        "round_trip": RoundTripScorer,
    }
    return classes[name](model, tokenizer, source_language, target_language)
