"""Request and response bodies of the retrieval-augmented routes (``/v1/rag/...``), apart from chat's.

``POST /v1/rag/answers`` runs DeepRAG's loop (arXiv:2502.01142) or one of its baselines over a
collection; it personalises the model with ``user_embedding`` exactly as chat completions do. Collections
take documents in FlashRAG's corpus record shape, ``{"id", "contents": "title\\ntext"}``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from veil.client_sdk.constants import MAX_TEXT_CHARS
from veil.cloud_service.schemas import PersonalisedRequest
from veil.models.rag import DEFAULT_COLLECTION, validate_collection_name
from veil.models.rag.deeprag import LoopConfig, Policy

__all__ = [
    "MAX_DOCUMENTS",
    "MAX_RAG_STEPS",
    "MAX_TOP_K",
    "CollectionCreate",
    "CollectionInfoBody",
    "CollectionList",
    "DocumentRecord",
    "DocumentsAdded",
    "DocumentsBody",
    "RagAnswerRequest",
    "RagAnswerResponse",
    "RagStepBody",
]

MAX_RAG_STEPS = 16
"""Most steps one question may take (the paper caps at 6 for HotpotQA, 10 elsewhere)."""
MAX_TOP_K = 20
"""Most passages per retrieval (the paper retrieves 3)."""
MAX_DOCUMENTS = 1000
"""Most documents one ``POST .../documents`` may add (send more in several requests)."""


def _collection_name(name: str) -> str:
    return validate_collection_name(name)


class RagAnswerRequest(PersonalisedRequest):
    """One question, answered by the served model with retrieval from one collection."""

    model_config = ConfigDict(extra="forbid")

    question: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
    collection: str = DEFAULT_COLLECTION
    """The collection to retrieve from: 1-64 characters of ``a-z``, ``0-9``, ``-``, ``_``."""
    model: str | None = None
    """The served model's id, if given (``404`` for any other)."""
    policy: Policy = "deeprag"
    """Who decides retrieval: ``deeprag`` (the model), ``never``, ``always``, ``single`` (once, with the
    whole question, before the first step) or ``confidence`` (when an answer's least likely token is
    unlikely)."""
    max_steps: Annotated[int, Field(ge=1, le=MAX_RAG_STEPS)] = LoopConfig.max_steps
    """The step cap; the final answer is asked for after it."""
    top_k: Annotated[int, Field(ge=1, le=MAX_TOP_K)] = LoopConfig.top_k
    """Passages per retrieval."""
    stream: bool = False
    """Server-sent events: one per step, then the whole answer, then ``[DONE]``."""

    _check_collection = field_validator("collection")(_collection_name)

    @field_validator("question")
    @classmethod
    def _not_blank(cls, question: str) -> str:
        if not question.strip():
            raise ValueError("must not be empty or only whitespace")
        return question


class RagStepBody(BaseModel):
    """One step of the trace: a subquery, whether it searched, what it found, its answer."""

    subquery: str
    retrieved: bool
    passages: list[str]
    """Ids (``<document id>#<k>``) of the passages retrieved for this step, best first."""
    intermediate_answer: str


class RagAnswerResponse(BaseModel):
    object: Literal["rag.answer"] = "rag.answer"
    model: str
    collection: str
    policy: str
    answer: str
    """The short final answer."""
    trace: list[RagStepBody]
    question_passages: list[str]
    """Ids of the passages retrieved up front with the whole question (policy ``single``), else empty."""
    retrievals: int
    """Searches made, the ``single`` policy's up-front one included."""
    ended: Literal["final", "step_cap", "malformed"]
    """``final``: the model gave its final answer; ``step_cap``: it was asked for one after
    ``max_steps``; ``malformed``: a step broke the protocol and the final answer was asked for at once."""


class CollectionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    """1-64 characters of ``a-z``, ``0-9``, ``-``, ``_``."""
    dense: bool = True
    """Embed passages with MiniLM and search BM25 and dense rankings fused; ``false``: BM25 alone
    (faster ingestion, lexical matching only)."""

    _check_name = field_validator("name")(_collection_name)


class DocumentRecord(BaseModel):
    """FlashRAG's corpus record: ``contents`` is ``"title\\ntext"`` (no newline: untitled text)."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(min_length=1, max_length=256)] | int
    contents: Annotated[str, Field(max_length=MAX_TEXT_CHARS * 4)]


class DocumentsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: Annotated[list[DocumentRecord], Field(min_length=1, max_length=MAX_DOCUMENTS)]


class CollectionInfoBody(BaseModel):
    object: Literal["rag.collection"] = "rag.collection"
    name: str
    passages: int
    documents: int
    dense: bool


class CollectionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[CollectionInfoBody]


class DocumentsAdded(CollectionInfoBody):
    """The collection after an ingestion, and how many passages the documents became."""

    added_documents: int
    added_passages: int
