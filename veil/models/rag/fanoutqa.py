"""FanOutQA's questions and gold decompositions as DeepRAG traces, read from the package's JSON by path.

FanOutQA (Zhu et al., arXiv:2402.14116) ships its dev and test splits inside the ``fanoutqa`` wheel
(``fanoutqa/data/fanout-final-{dev,test}.json``). Importing the package pulls in spacy, httpx, markdownify
and ftfy, so this module only locates it (``importlib.util.find_spec``) and reads the JSON; install it
with ``pip install --no-deps fanoutqa==1.1.1``. No Wikipedia text is included: the loader gives
questions, answers and decompositions, not passages.

Mapping onto :class:`~veil.models.rag.protocol.Trace` (choices of this module):

- A decomposition is a tree of sub-questions (``decomposition`` inside a sub-question answers that
  sub-question). Steps list it depth first, children before their parent, so every step comes after
  the steps it builds on; ``depends_on`` links between siblings already point backwards in the files.
- ``retrieved`` is ``None`` on every step (FanOutQA does not say what a model knows) and ``passages`` is
  empty; the evidence page titles are kept in :attr:`FanOutQuestion.evidence`.
- Answers that are lists, dicts, numbers or booleans become one line (:func:`answer_text`):
  ``"a, b"``, ``"k: v; k2: v2"``, ``"12"``, ``"yes"``.
- The test split has no answers nor decompositions: ``answer`` is ``None`` and ``trace`` is ``None``.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from veil.models.rag.protocol import Step, Trace

__all__ = [
    "FANOUTQA_SPLITS",
    "FanOutQAFormatError",
    "FanOutQANotInstalledError",
    "FanOutQuestion",
    "answer_text",
    "fanoutqa_path",
    "load_fanoutqa",
]

FanOutSplit = Literal["dev", "test"]
FANOUTQA_SPLITS: tuple[str, ...] = get_args(FanOutSplit)
_INSTALL_HINT = "pip install --no-deps fanoutqa==1.1.1"


class FanOutQANotInstalledError(ModuleNotFoundError):
    """The ``fanoutqa`` package (which holds the data) is not installed."""


class FanOutQAFormatError(ValueError):
    """The JSON is not FanOutQA's: a list of ``{"id", "question", ...}`` objects."""


@dataclass(frozen=True)
class FanOutQuestion:
    id: str
    question: str
    answer: Any
    """The gold answer as in the file (string, number, list or dict); ``None`` in the test split."""
    trace: Trace | None
    """The gold decomposition as steps with unknown decisions; ``None`` without a decomposition."""
    evidence: tuple[str, ...]
    """Wikipedia titles: per step in trace order, or the test split's ``necessary_evidence``."""
    categories: tuple[str, ...] = ()


def fanoutqa_path(split: str = "dev") -> Path:
    """Where the installed ``fanoutqa`` package keeps ``split``'s JSON (the package is not imported)."""
    if split not in FANOUTQA_SPLITS:
        raise ValueError(f"split must be one of {FANOUTQA_SPLITS}, got {split!r}")
    spec = importlib.util.find_spec("fanoutqa")
    if spec is None or not spec.submodule_search_locations:
        raise FanOutQANotInstalledError(f"the fanoutqa package is not installed; {_INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / f"fanout-final-{split}.json"


def answer_text(answer: Any) -> str:
    """One line for any FanOutQA answer.

    >>> answer_text({"Pat Burrell": "Right", "JD Drew": ["Left", 2]})
    'Pat Burrell: Right; JD Drew: Left, 2'
    """
    if isinstance(answer, bool):
        return "yes" if answer else "no"
    if isinstance(answer, dict):
        return "; ".join(f"{k}: {answer_text(v)}" for k, v in answer.items())
    if isinstance(answer, list):
        return ", ".join(answer_text(a) for a in answer)
    return " ".join(str(answer).split())


def _flatten(nodes: list[Any], where: str, steps: list[Step], evidence: list[str]) -> None:
    for k, node in enumerate(nodes):
        here = f"{where}.decomposition[{k}]"
        if not isinstance(node, dict) or not isinstance(node.get("question"), str):
            raise FanOutQAFormatError(f"{here} is not a sub-question object with a 'question' string")
        _flatten(node.get("decomposition") or [], here, steps, evidence)
        steps.append(Step(" ".join(node["question"].split()), None, [], answer_text(node.get("answer", ""))))
        evidence.append(str((node.get("evidence") or {}).get("title", "")))


def _question(record: Any, index: int) -> FanOutQuestion:
    where = f"question {index}"
    if not isinstance(record, dict) or not isinstance(record.get("question"), str) or "id" not in record:
        raise FanOutQAFormatError(f"{where} is not an object with 'id' and a 'question' string")
    decomposition = record.get("decomposition")
    trace, evidence = None, []
    if decomposition is not None:
        if not isinstance(decomposition, list):
            raise FanOutQAFormatError(
                f"{where}: 'decomposition' must be a list, got {type(decomposition).__name__}"
            )
        steps: list[Step] = []
        _flatten(decomposition, where, steps, evidence)
        trace = Trace(record["question"], steps, answer_text(record.get("answer", "")))
    else:
        evidence = [
            str(e.get("title", "")) for e in record.get("necessary_evidence", []) if isinstance(e, dict)
        ]
    return FanOutQuestion(
        str(record["id"]),
        record["question"],
        record.get("answer"),
        trace,
        tuple(evidence),
        tuple(record.get("categories") or ()),
    )


def load_fanoutqa(split: str = "dev", path: str | Path | None = None) -> list[FanOutQuestion]:
    """FanOutQA's ``split`` ("dev": 310 questions with answers; "test": 725 without).

    Parameters
    ----------
    split: which split of the installed package to read; checked even when ``path`` is given.
    path: a FanOutQA-format JSON file to read instead of the installed package's.

    Raises
    ------
    ValueError: unknown split. FanOutQANotInstalledError: no ``path`` and no package.
    FanOutQAFormatError: the file is not valid JSON or not FanOutQA's shape.
    """
    if split not in FANOUTQA_SPLITS:
        raise ValueError(f"split must be one of {FANOUTQA_SPLITS}, got {split!r}")
    file = fanoutqa_path(split) if path is None else Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise FanOutQAFormatError(f"{file}: not valid JSON ({e})") from e
    if not isinstance(data, list):
        raise FanOutQAFormatError(f"{file}: expected a list of questions, got {type(data).__name__}")
    return [_question(r, i) for i, r in enumerate(data)]
