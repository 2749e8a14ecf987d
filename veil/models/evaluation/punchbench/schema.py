"""PunchBench's item schema (arXiv:2412.11906, Sec. 3): one question about one image-caption pair.

A pair is asked about at two levels (perception: "is there a punchline?"; reasoning: "why is it funny
or sarcastic?") in four formats, and each caption comes in three variants (original, synonymous rewrite
that keeps the label, antonymous rewrite that flips it; Sec. 3.2).

Gold answers are stored as option *text*, not letters, so that options can be shuffled at rendering
time without touching the item (the paper shuffles option order, Sec. 3.3).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

__all__ = [
    "FORMATS",
    "FORMAT_OPTION_COUNTS",
    "LEVELS",
    "VARIANTS",
    "Format",
    "Item",
    "ItemError",
    "Level",
    "Variant",
    "item_from_dict",
    "read_record",
]

Variant = Literal["original", "synonymous", "antonymous"]
Level = Literal["perception", "reasoning"]
Format = Literal["yes-no", "matching", "multiple-choice", "generation"]
VARIANTS: tuple[str, ...] = get_args(Variant)
LEVELS: tuple[str, ...] = get_args(Level)
FORMATS: tuple[str, ...] = get_args(Format)
# yes-no items carry ("yes", "no"); matching pits two captions/explanations; multi-option has four (Sec. 3.3)
FORMAT_OPTION_COUNTS: dict[str, int] = {"yes-no": 2, "matching": 2, "multiple-choice": 4, "generation": 0}
_YES_NO = ("yes", "no")


class ItemError(ValueError):
    """A malformed PunchBench item; ``field`` names the offending field, ``item_id`` the item."""

    def __init__(self, item_id: str, field: str, message: str) -> None:
        super().__init__(f"item {item_id!r}: {field}: {message}")
        self.item_id = item_id
        self.field = field
        self.reason = message


@dataclass(frozen=True)
class Item:
    """One PunchBench question.

    Attributes
    ----------
    item_id, pair_id
        Unique id of the question, and of the image-caption pair it asks about (several items share a pair).
    variant
        Which rewrite of the pair's caption the item uses.
    level, format
        Perception or reasoning; yes-no, matching, multiple-choice or generation.
    caption
        The caption (in this variant) that the question is about.
    context
        Text standing in for the image (a scene description) for text-only models; may be empty.
    statement
        For reasoning yes-no: the explanation whose correctness is asked; empty otherwise.
    options
        ``("yes", "no")`` for yes-no; the candidate captions or explanations for matching (2) and
        multiple-choice (4); empty for generation.
    gold
        ``"yes"``/``"no"``, the correct option's text, or the reference explanation for generation.
    image
        Path of the image relative to the data set's root, if any.
    """

    item_id: str
    pair_id: str
    variant: Variant
    level: Level
    format: Format
    caption: str
    gold: str
    options: tuple[str, ...] = ()
    context: str = ""
    statement: str = ""
    image: str | None = None

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that :func:`item_from_dict` reads back."""
        d = asdict(self)
        d["options"] = list(self.options)
        return d


def _validate(item: Item) -> None:
    iid = item.item_id if isinstance(item.item_id, str) else repr(item.item_id)
    for name in ("item_id", "pair_id", "caption", "gold"):
        value = getattr(item, name)
        if not isinstance(value, str) or not value.strip():
            raise ItemError(iid, name, f"must be a non-empty string, got {value!r}")
    for name, value, allowed in (
        ("variant", item.variant, VARIANTS),
        ("level", item.level, LEVELS),
        ("format", item.format, FORMATS),
    ):
        if value not in allowed:
            raise ItemError(iid, name, f"must be one of {list(allowed)}, got {value!r}")
    want = FORMAT_OPTION_COUNTS[item.format]
    if len(item.options) != want:
        raise ItemError(iid, "options", f"{item.format} needs {want} options, got {len(item.options)}")
    if any(not isinstance(o, str) or not o.strip() for o in item.options):
        raise ItemError(
            iid, "options", f"every option must be a non-empty string, got {list(item.options)!r}"
        )
    if len(set(item.options)) != len(item.options):
        raise ItemError(iid, "options", f"options must be distinct, got {list(item.options)!r}")
    if item.format == "yes-no" and tuple(item.options) != _YES_NO:
        raise ItemError(iid, "options", f"yes-no options must be ('yes', 'no'), got {list(item.options)!r}")
    if item.options and item.gold not in item.options:
        raise ItemError(iid, "gold", f"must be one of the options {list(item.options)!r}, got {item.gold!r}")
    if item.level == "reasoning" and item.format == "yes-no" and not item.statement.strip():
        raise ItemError(iid, "statement", "a reasoning yes-no item needs the explanation to judge")


def item_from_dict(raw: Any) -> Item:
    """Build and validate an :class:`Item` from a JSON object; raises :class:`ItemError` when malformed."""
    if not isinstance(raw, dict):
        raise ItemError("?", "item", f"must be a JSON object, got {type(raw).__name__}")
    iid = str(raw.get("item_id", "?"))
    known = set(Item.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ItemError(iid, unknown[0], f"unknown field (known: {sorted(known)})")
    missing = [
        k for k in ("item_id", "pair_id", "variant", "level", "format", "caption", "gold") if k not in raw
    ]
    if missing:
        raise ItemError(iid, missing[0], "missing")
    options = raw.get("options", ())
    if not isinstance(options, (list, tuple)):
        raise ItemError(iid, "options", f"must be a list, got {type(options).__name__}")
    return Item(**{**raw, "options": tuple(options)})


def read_record(line: str, where: str) -> dict:
    """One JSONL line as a JSON object; anything else is an :class:`ItemError` naming ``where``."""
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ItemError(where, "record", f"not JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(raw, dict):
        raise ItemError(where, "record", f"must be a JSON object, got {type(raw).__name__}")
    return raw
