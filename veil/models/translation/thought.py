"""DRT-o1's long-thought text format: the prompts, ``<thought>...</thought><output>...</output>`` and its
parser.

DRT-o1 (arXiv:2412.17498, §4) fine-tunes a model to answer the user prompt
``Please translate the following text from English to Chinese:\\n<text>`` (under the system prompt
:data:`DRT_SYSTEM_PROMPT`) with its thinking in ``<thought>`` and the translation in ``<output>``.

:func:`parse_long_thought` reads such an answer and never raises. A malformed answer (the model ran out of
tokens, forgot a tag, or wrote something else) falls back to the last complete translation it holds, in
this order (the paper does not say; these are Veil's choices):

1. ``output``: the content of the last complete ``<output>...</output>`` pair, when not blank;
2. ``thought``: the last complete ``Translation: ...`` line of the thought (:data:`TRANSLATION_CUE`, the
   form in which :mod:`~veil.models.translation.long_thought` writes every draft and revision). A line is
   complete when something follows it; a line that runs to the end of the text may be cut mid-sentence;
3. ``partial_output``: the non-blank text after an unclosed ``<output>`` (cut, but better than nothing);
4. ``plain``: the whole answer, stripped, when it names no tag and does not start with ``<`` (the model
   answered with a bare translation);
5. ``none``: the caller's ``default`` (``""`` unless given).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from veil.models.translation.languages import language_name

__all__ = [
    "DRT_SYSTEM_PROMPT",
    "TAGS",
    "TRANSLATION_CUE",
    "ParsedOutput",
    "drt_user_prompt",
    "parse_long_thought",
    "render_long_thought",
    "sft_example",
    "strip_tags",
]

DRT_SYSTEM_PROMPT = (
    "You are a philosopher skilled in deep thinking, accustomed to exploring complex problems with "
    "profound insight."
)
TRANSLATION_CUE = "Translation:"
TAGS = ("<thought>", "</thought>", "<output>", "</output>")
OutputSource = Literal["output", "thought", "partial_output", "plain", "none"]

_OUTPUT = re.compile(r"<output>(.*?)</output>", re.S)
_CUE_LINE = re.compile(rf"(?:^|(?<=<thought>))[ \t]*{re.escape(TRANSLATION_CUE)}[ \t]*(\S.*?)[ \t]*$", re.M)
_TAG_NAME = re.compile(r"</?(?:thought|output)>")


@dataclass(frozen=True)
class ParsedOutput:
    """A long-thought answer taken apart.

    Attributes
    ----------
    translation: the translation (see the module docstring for the fallbacks); may be ``""``.
    thought: the thought's text (after ``<thought>``, up to ``</thought>`` or the output); ``""`` if none.
    source: which rule gave ``translation``.
    """

    translation: str
    thought: str
    source: OutputSource

    @property
    def complete(self) -> bool:
        """Whether the answer had the full format (a complete, non-blank ``<output>``)."""
        return self.source == "output"


def drt_user_prompt(text: str, source_language: str = "en", target_language: str = "zh") -> str:
    """DRT-o1's user prompt for ``text``."""
    src, tgt = language_name(source_language), language_name(target_language)
    return f"Please translate the following text from {src} to {tgt}:\n{text}"


def strip_tags(text: str) -> str:
    """``text`` without the format's four tags, so it can sit inside a thought or an output.

    Removal repeats until none is left (``<out<output>put>`` would otherwise leave ``<output>``).

    >>> strip_tags("a<out<output>put>b</thought>")
    'ab'
    """
    while (stripped := _TAG_NAME.sub("", text)) != text:
        text = stripped
    return text


def render_long_thought(thought: str, translation: str) -> str:
    """The answer a DRT model is trained to give; tags inside the parts are removed first."""
    return f"<thought>{strip_tags(thought)}</thought><output>{strip_tags(translation)}</output>"


def _thought_of(text: str) -> str:
    start = text.find("<thought>")
    if start < 0:
        return ""
    body = text[start + len("<thought>") :]
    ends = [i for i in (body.find("</thought>"), body.find("<output>")) if i >= 0]
    return body[: min(ends)] if ends else body


def parse_long_thought(text: str, default: str = "") -> ParsedOutput:
    """The translation and thought of a model's answer; never raises (see the module docstring).

    >>> parse_long_thought("<thought>Translation: 他很能吃。\\nhmm</thought><output>他食量很大。</output>")
    ParsedOutput(translation='他食量很大。', thought='Translation: 他很能吃。\\nhmm', source='output')
    >>> parse_long_thought("<thought>Translation: 他很能吃。\\nLet me see, it").source
    'thought'
    """
    text = text if isinstance(text, str) else ""
    thought = _thought_of(text)
    outputs = [m.group(1).strip() for m in _OUTPUT.finditer(text)]
    if outputs and outputs[-1]:
        return ParsedOutput(outputs[-1], thought, "output")
    cues = (_TAG_NAME.split(m.group(1))[0].strip() for m in _CUE_LINE.finditer(text) if m.end() < len(text))
    complete = [c for c in cues if c]
    if complete:
        return ParsedOutput(complete[-1], thought, "thought")
    last_open = text.rfind("<output>")
    if last_open >= 0 and "</output>" not in text[last_open:]:
        partial = text[last_open + len("<output>") :].strip()
        if partial:
            return ParsedOutput(partial, thought, "partial_output")
    stripped = text.strip()
    if stripped and not stripped.startswith("<") and _TAG_NAME.search(text) is None:
        return ParsedOutput(stripped, "", "plain")
    return ParsedOutput(default, thought, "none")


def sft_example(
    text: str, translation: str, thought: str, source_language: str = "en", target_language: str = "zh"
) -> dict[str, Any]:
    """One supervised example in TRL's conversational prompt-completion form.

    ``{"prompt": [system, user], "completion": [assistant]}``, where the assistant's message is
    :func:`render_long_thought` of ``thought`` and ``translation``.
    """
    return {
        "prompt": [
            {"role": "system", "content": DRT_SYSTEM_PROMPT},
            {"role": "user", "content": drt_user_prompt(text, source_language, target_language)},
        ],
        "completion": [{"role": "assistant", "content": render_long_thought(thought, translation)}],
    }
