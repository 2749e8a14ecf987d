"""Request and response bodies of ``POST /v1/translations``.

Three modes (:mod:`veil.models.translation`): ``direct`` (one prompt), ``long_thought`` (DRT-o1's
translator/advisor/evaluator loop, arXiv:2412.17498, whose rounds come back as one ``thought``) and
``document`` (RAGtrans, arXiv:2412.04342: each document judged for relevance, the irrelevant ones
dropped, the rest placed before the text; ``documents_used`` says which were kept). Languages are BCP 47
codes whose primary subtag is one of :data:`~veil.models.translation.languages.LANGUAGE_NAMES`.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from veil.client_sdk.constants import MAX_TEXT_CHARS
from veil.cloud_service.schemas import PersonalisedRequest
from veil.models.translation.languages import language_name

__all__ = [
    "MAX_DOCUMENT_CHARS",
    "MAX_TRANSLATION_DOCUMENTS",
    "MODES",
    "TranslationRequest",
    "TranslationResponse",
]

Mode = Literal["direct", "long_thought", "document"]
MODES: tuple[str, ...] = get_args(Mode)
MAX_TRANSLATION_DOCUMENTS = 8
"""Most documents one request may carry (each is judged, then the kept ones share the prompt)."""
MAX_DOCUMENT_CHARS = 4000
"""Longest document, in characters (a few hundred tokens: several must fit the model's context)."""


class TranslationRequest(PersonalisedRequest):
    """One text to translate."""

    model_config = ConfigDict(extra="forbid")

    text: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
    source_language: str
    """BCP 47 code of the text's language, e.g. ``en``."""
    target_language: str
    """BCP 47 code of the translation's language, e.g. ``zh``; not the source's."""
    mode: Mode = "direct"
    documents: (
        Annotated[
            list[Annotated[str, Field(min_length=1, max_length=MAX_DOCUMENT_CHARS)]],
            Field(min_length=1, max_length=MAX_TRANSLATION_DOCUMENTS),
        ]
        | None
    ) = None
    """Documents about the text, in any supported language (mode ``document`` only, and needed there;
    the route checks that the mode and the arguments fit, so its ``400`` names the field)."""
    model: str | None = None
    """The served model's id, if given (``404`` for any other)."""
    stream: bool = False
    """Server-sent events: the whole answer as one event, then ``data: [DONE]``."""

    @field_validator("text")
    @classmethod
    def _not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("must not be empty or only whitespace")
        return text

    @field_validator("source_language", "target_language")
    @classmethod
    def _supported(cls, code: str) -> str:
        language_name(code)  # ValueError naming the supported codes
        return code

    @field_validator("documents")
    @classmethod
    def _documents_not_blank(cls, documents: list[str] | None) -> list[str] | None:
        if documents is not None and any(not d.strip() for d in documents):
            raise ValueError("every document must be non-empty text")
        return documents


class TranslationResponse(BaseModel):
    translation: str
    mode: Mode
    thought: str | None = None
    """Mode ``long_thought``: the rounds (key phrases, draft, each critique and revision) as one
    first-person thought; ``null`` otherwise."""
    documents_used: list[int] | None = None
    """Mode ``document``: 0-based indices of the documents judged relevant and used; ``null`` otherwise."""
