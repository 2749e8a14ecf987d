"""Loading PunchBench's published layout (arXiv:2412.11906; Hugging Face ``RUBBISHLIKE/PunchBench``).

The release holds ``<split>/{Perception,Reasoning}/<Format>.jsonl`` (e.g. ``dev0610/Perception/Matching.jsonl``).
Its field names are not documented outside the files, which are not reachable here, so the mapping from
a file's record to an :class:`Item` is a config (:class:`PublishedFields`) whose defaults are our guess;
a file whose records lack a mapped field fails with an :class:`ItemError` naming file, line and field.
The level comes from the folder and the format from the file name. Options given as a dict
(``{"A": ..., "B": ...}``) or a list are both read; a gold given as a letter is resolved to its option.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from veil.models.evaluation.punchbench.schema import Item, ItemError, read_record

__all__ = ["FORMAT_FILES", "PublishedFields", "load_published"]

FORMAT_FILES = {
    "yes_no": "yes-no",
    "yesno": "yes-no",
    "yes-no": "yes-no",
    "matching": "matching",
    "multi_option": "multiple-choice",
    "multi-option": "multiple-choice",
    "multiple_choice": "multiple-choice",
    "generation": "generation",
}
LEVEL_DIRS = {"perception": "perception", "reasoning": "reasoning"}


@dataclass(frozen=True)
class PublishedFields:
    """Record keys in the published files (our guesses; override to match the real files)."""

    item_id: str = "id"
    pair_id: str = "pair_id"
    variant: str = "caption_type"
    caption: str = "caption"
    statement: str = "explanation"
    options: str = "options"
    gold: str = "answer"
    image: str = "image"
    variant_names: tuple[tuple[str, str], ...] = (
        ("original", "original"),
        ("ori", "original"),
        ("synonymous", "synonymous"),
        ("syn", "synonymous"),
        ("antonymous", "antonymous"),
        ("ant", "antonymous"),
    )
    """Spellings of the caption variant in the files, mapped to ours."""


def load_published(root: Path, split: str = "dev0610", fields: PublishedFields | None = None) -> list[Item]:
    """Every item under ``root/split/{Perception,Reasoning}/*.jsonl``, validated."""
    fields = fields or PublishedFields()
    base = Path(root) / split
    if not base.is_dir():
        raise FileNotFoundError(f"no PunchBench split at {base} (expected {split}/Perception/*.jsonl)")
    items: list[Item] = []
    for level_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        level = LEVEL_DIRS.get(level_dir.name.lower())
        if level is None:
            continue
        for path in sorted(level_dir.glob("*.jsonl")):
            fmt = FORMAT_FILES.get(path.stem.lower())
            if fmt is None:
                raise ValueError(f"{path}: unknown format file; known stems: {sorted(FORMAT_FILES)}")
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    items.append(_record(read_record(line, f"{path}:{n}"), level, fmt, fields, f"{path}:{n}"))
    if not items:
        raise FileNotFoundError(f"no items under {base}/{{Perception,Reasoning}}/*.jsonl")
    return items


def _record(raw: dict, level: str, fmt: str, f: PublishedFields, where: str) -> Item:
    def need(key: str) -> object:
        if key not in raw:
            raise ItemError(where, key, f"missing from the record (keys: {sorted(raw)})")
        return raw[key]

    options = raw.get(f.options, ())
    letters: dict[str, str] = {}
    if isinstance(options, dict):
        letters = {str(k).strip().upper(): str(v) for k, v in options.items()}
        options = tuple(letters.values())
    gold = str(need(f.gold)).strip()
    if fmt == "yes-no":
        options, gold = ("yes", "no"), gold.lower()
    elif gold.upper() in letters:
        gold = letters[gold.upper()]
    elif len(gold) == 1 and gold.upper() in "ABCD" and options and "ABCD".index(gold.upper()) < len(options):
        gold = list(options)[("ABCD".index(gold.upper()))]
    variants = dict(f.variant_names)
    variant = variants.get(str(raw.get(f.variant, "original")).lower(), str(raw.get(f.variant)))
    item_id, caption = str(need(f.item_id)), str(need(f.caption))
    try:
        return Item(
            item_id=f"{level}-{fmt}-{item_id}",
            pair_id=str(raw.get(f.pair_id, item_id)),
            variant=variant,  # type: ignore[arg-type]  # validated by Item
            level=level,  # type: ignore[arg-type]
            format=fmt,  # type: ignore[arg-type]
            caption=caption,
            statement=str(raw.get(f.statement, "")),
            options=tuple(str(o) for o in options),
            gold=gold,
            image=raw.get(f.image),
        )
    except ItemError as exc:  # the file and line find the record; the item id alone may not
        raise ItemError(where, exc.field, exc.reason) from exc
