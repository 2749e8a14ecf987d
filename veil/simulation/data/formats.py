"""Loaders for the real data sets of IDfree-PL (arXiv:2501.06062, section 4).

Each loader reads the data set's published file layout and returns a :class:`Population` split in time
as the paper's released preprocessing does. The files themselves are not shipped (they cannot be
downloaded offline); the tests use small fixtures written in exactly these layouts.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from operator import attrgetter
from pathlib import Path
from typing import Any

from veil.simulation.data.types import DatasetFormatError, Example, Population, Task

__all__ = ["AMAZON_LABELS", "SENTIMENT140_LABELS", "load_amazon", "load_leaf_reddit", "load_sentiment140"]

SENTIMENT140_LABELS: dict[str, str] = {"0": "negative", "4": "positive"}
AMAZON_LABELS: list[str] = ["<=3", "4", "5"]
_TZ_HOURS = {"PDT": -7, "PST": -8, "UTC": 0, "GMT": 0}
_LEAF_MARKERS = frozenset({"<PAD>", "<BOS>", "<EOS>"})
_LEAF_MAX_TOKEN_CHARS = 40  # the released preprocessing drops LEAF rows with longer "words" (URL debris)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise DatasetFormatError(message)


def _by_time(
    name: str, task: Task, labels: list[str], train: list[Example], test: list[Example], meta: dict[str, Any]
) -> Population:
    by_time = attrgetter("time")
    return Population(name, task, labels, sorted(train, key=by_time), sorted(test, key=by_time), meta)


def _twitter_time(value: str) -> float:
    """``Mon Apr 06 22:19:45 PDT 2009`` -> seconds since the epoch (ValueError if malformed)."""
    parts = value.split()
    if len(parts) != 6 or parts[4] not in _TZ_HOURS:
        raise ValueError(f"expected a date like 'Mon Apr 06 22:19:45 PDT 2009', got {value!r}")
    naive = datetime.strptime(" ".join(parts[:4] + parts[5:]), "%a %b %d %H:%M:%S %Y")
    return naive.replace(tzinfo=timezone(timedelta(hours=_TZ_HOURS[parts[4]]))).timestamp()


def _sentiment140_rows(path: Path) -> Iterator[tuple[str, str, float, str]]:
    """Yield ``(polarity, user, time, text)`` for every non-neutral row, checking each row."""
    with path.open(encoding="latin-1", newline="") as handle:
        reader = csv.reader(handle)
        try:
            for row in reader:
                where = f"{path}, line {reader.line_num}"
                _require(len(row) == 6, f"{where}: expected 6 columns, got {len(row)}")
                polarity, _tweet_id, date, _query, user, text = row
                _require(
                    polarity in ("0", "2", "4"), f"{where}: polarity must be 0, 2 or 4, got {polarity!r}"
                )
                _require(bool(user), f"{where}: empty user column")
                try:
                    time = _twitter_time(date)
                except ValueError as err:
                    raise DatasetFormatError(f"{where}: {err}") from None
                if polarity != "2":  # neutral tweets occur only in the test file; the paper is binary
                    yield polarity, user, time, text
        except csv.Error as err:
            raise DatasetFormatError(f"{path}, line {reader.line_num}: unreadable CSV: {err}") from err


def load_sentiment140(
    path: str | Path, top_users: int = 163, split_time: str | float = "2009-06-06 23:53:52"
) -> Population:
    """Load ``training.1600000.processed.noemoticon.csv`` as the paper does.

    Parameters
    ----------
    path : str or Path
        The Sentiment140 CSV: no header, latin-1, six quoted columns (polarity 0/2/4, tweet id, date
        like ``Mon Apr 06 22:19:45 PDT 2009``, query, user, text). Text is kept verbatim (HTML
        entities such as ``&amp;`` included).
    top_users : int
        Keep the users with the most (non-neutral) tweets; ties go to the alphabetically first name.
    split_time : str or float
        Global time split: ``"%Y-%m-%d %H:%M:%S"`` on the file's own clock (PDT, UTC-7), or epoch
        seconds. Train holds tweets at or before it, test those after. (The released code sends a
        tweet at exactly this second to test; the paper's value is such a tweet's time.)

    Raises
    ------
    DatasetFormatError
        For a malformed row, naming the file and line.
    """
    path = Path(path)
    if top_users < 1:
        raise ValueError(f"top_users must be >= 1, got {top_users}")
    if isinstance(split_time, str):
        naive = datetime.strptime(split_time, "%Y-%m-%d %H:%M:%S")
        split = naive.replace(tzinfo=timezone(timedelta(hours=_TZ_HOURS["PDT"]))).timestamp()
    else:
        split = float(split_time)
    counts = Counter(user for _, user, _, _ in _sentiment140_rows(path))
    ranked = sorted(counts, key=lambda u: (-counts[u], u))[:top_users]
    keep = set(ranked)
    train: list[Example] = []
    test: list[Example] = []
    for polarity, user, time, text in _sentiment140_rows(path):
        if user in keep:
            example = Example(user=user, text=text, label=SENTIMENT140_LABELS[polarity], time=time)
            (train if time <= split else test).append(example)
    meta = {"source": "sentiment140", "file": path.name, "top_users": top_users, "split_time": split}
    meta |= {"clock": "PDT (UTC-7)", "tweets_per_user": {u: counts[u] for u in ranked}}
    return _by_time("sentiment140", "classification", list(SENTIMENT140_LABELS.values()), train, test, meta)


def _parse_json(text: str, path: Path, first_line: int = 1) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetFormatError(
            f"{path}, line {first_line + err.lineno - 1}: invalid JSON: {err.msg}"
        ) from None


def _amazon_records(path: Path) -> list[tuple[str, Any]]:
    """``(where, record)`` pairs from a JSON list or, as the released code reads it, JSON Lines."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return [(f"{path}, record {i}", r) for i, r in enumerate(_parse_json(text, path))]
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    return [(f"{path}, line {n}", _parse_json(line, path, n)) for n, line in lines]


def _amazon_label(where: str, rate: Any) -> str:
    if isinstance(rate, bool) or not isinstance(rate, int | float) or rate != int(rate) or not 1 <= rate <= 5:
        raise DatasetFormatError(f"{where}: 'rate' must be a whole number from 1 to 5, got {rate!r}")
    return "<=3" if rate <= 3 else str(int(rate))


def load_amazon(directory: str | Path, split_time_ms: int = 1632712835970) -> Population:
    """Load the paper's Amazon reviews: one ``user{n}.json`` per user.

    Each file is a JSON list of reviews ``{"rate": 1..5, "text": str, "time": ms since epoch}``;
    JSON Lines (one review per line, how the released code reads these files) is accepted too.
    Ratings map to three classes ``"<=3"``, ``"4"``, ``"5"``; reviews at or before ``split_time_ms``
    are train, later ones test. The user key is the file stem (``"user12"``).

    Raises
    ------
    DatasetFormatError
        For a directory without ``user{n}.json`` files or a malformed review (file and record named).
    """
    directory = Path(directory)
    files = sorted(
        (int(m.group(1)), p) for p in directory.iterdir() if (m := re.fullmatch(r"user(\d+)\.json", p.name))
    )
    _require(bool(files), f"{directory}: no user{{n}}.json files")
    train: list[Example] = []
    test: list[Example] = []
    for _, path in files:
        for where, record in _amazon_records(path):
            ok = isinstance(record, dict) and {"rate", "text", "time"} <= record.keys()
            _require(ok, f"{where}: expected an object with 'rate', 'text' and 'time'")
            label = _amazon_label(where, record["rate"])
            time_ms = record["time"]
            ok = isinstance(time_ms, int | float) and not isinstance(time_ms, bool)
            _require(ok, f"{where}: 'time' must be milliseconds since the epoch, got {time_ms!r}")
            _require(isinstance(record["text"], str), f"{where}: 'text' must be a string")
            example = Example(user=path.stem, text=record["text"], label=label, time=time_ms / 1000.0)
            (train if time_ms <= split_time_ms else test).append(example)
    meta = dict(source="amazon", directory=directory.name, split_time_ms=split_time_ms, files=len(files))
    return _by_time("amazon", "classification", list(AMAZON_LABELS), train, test, meta)


def _row_lengths(value: Any) -> list[int] | None:
    """Row lengths of a list of token lists; ``None`` for anything else."""
    if not isinstance(value, list) or not all(isinstance(r, list) for r in value):
        return None
    return [len(r) for r in value] if all(isinstance(t, str) for r in value for t in r) else None


def _leaf_rows(where: str, x: Any, y: Any) -> tuple[float, list[list[str]], list[list[str]]]:
    """Check one LEAF sample; return its time, input token rows and target token rows."""
    _require(isinstance(y, dict) and "created_utc" in y, f"{where}: y must be an object with 'created_utc'")
    try:
        created = float(y["created_utc"])
    except (TypeError, ValueError):
        raise DatasetFormatError(f"{where}: bad created_utc {y['created_utc']!r}") from None
    if isinstance(x, str):  # LEAF's intermediate reddit_json layout: the raw comment
        tokens = x.split()
        return created, [["<BOS>", *tokens]], [[*tokens, "<EOS>"]]
    targets = y.get("target_tokens")
    shape_ok = _row_lengths(x) is not None and _row_lengths(x) == _row_lengths(targets)
    _require(shape_ok, f"{where}: x and y['target_tokens'] must be token rows of equal shape")
    return created, x, targets


def _leaf_examples(
    user: str, created: float, rows: list[list[str]], targets: list[list[str]], max_prompt_tokens: int
) -> list[Example]:
    out: list[Example] = []
    context: list[str] = []
    for row, target in zip(rows, targets, strict=True):
        if any(len(tok) > _LEAF_MAX_TOKEN_CHARS for tok in row):
            context = []  # the row is dropped; do not let a prompt run across the gap
            continue
        for token, nxt in zip(row, target, strict=True):
            if token in _LEAF_MARKERS:
                continue
            context.append(token)
            if nxt in _LEAF_MARKERS or len(nxt) > _LEAF_MAX_TOKEN_CHARS:
                continue
            out.append(
                Example(user=user, text=" ".join(context[-max_prompt_tokens:]), label=nxt, time=created)
            )
    return out


def load_leaf_reddit(
    path: str | Path, min_samples: int = 300, max_prompt_tokens: int = 64, test_fraction: float = 0.2
) -> Population:
    """Load LEAF Reddit JSON (a file, or a directory searched recursively) as next-word examples.

    LEAF layout: ``{"users": [...], "num_samples": [...], "user_data": {user: {"x": [...], "y": [...]}}}``.
    A sample is one comment: ``x`` is its token rows (``<BOS>`` first, ``<EOS>`` last, ``<PAD>`` fill)
    and ``y`` holds ``target_tokens`` (the rows shifted by one token), ``count_tokens``, ``subreddit``,
    ``created_utc`` and ``score``. A raw-string ``x`` (LEAF's intermediate layout) is accepted too.

    Choices (the released code's ``generation/data/data_preprocess.py`` in brackets):

    - a user is kept when its ``num_samples`` (largest over files) exceeds ``min_samples`` [same];
    - files are merged per user, so pointing at LEAF's ``train``/``val``/``test`` folders together
      rebuilds each user's full history; then each user's comments are sorted by ``created_utc`` and
      the last ``test_fraction`` go to test [LEAF's own 60/20/20 split, val unused];
    - one example per token whose next token is a word: the prompt is the comment's preceding tokens,
      markers dropped, at most ``max_prompt_tokens`` of them [prompt limited to the 10-token LEAF row];
    - rows with a token over 40 characters are dropped [same] and prompts do not span them.

    Raises
    ------
    DatasetFormatError
        For a malformed file, naming the file, user and sample.
    """
    path = Path(path)
    if max_prompt_tokens < 1:
        raise ValueError(f"max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    files = sorted(path.rglob("*.json")) if path.is_dir() else [path]
    _require(bool(files), f"{path}: no .json files")
    declared: dict[str, int] = {}
    comments: dict[str, list[tuple[float, list[list[str]], list[list[str]]]]] = {}
    for file in files:
        data = _parse_json(file.read_text(encoding="utf-8"), file)
        ok = isinstance(data, dict) and {"users", "num_samples", "user_data"} <= data.keys()
        _require(ok, f"{file}: expected top-level 'users', 'num_samples' and 'user_data'")
        users, sizes, user_data = data["users"], data["num_samples"], data["user_data"]
        ok = isinstance(users, list) and isinstance(sizes, list) and isinstance(user_data, dict)
        ok = ok and len(users) == len(sizes) and all(type(n) is int for n in sizes)
        _require(ok, f"{file}: need lists 'users', 'num_samples' (ints) of equal length, object 'user_data'")
        for user, n in zip(users, sizes, strict=True):
            record = user_data.get(str(user))
            xs, ys = (record.get("x"), record.get("y")) if isinstance(record, dict) else (None, None)
            ok = isinstance(xs, list) and isinstance(ys, list) and len(xs) == len(ys)
            _require(ok, f"{file}, user {user!r}: user_data needs lists 'x' and 'y' of equal length")
            declared[str(user)] = max(declared.get(str(user), 0), n)
            samples = enumerate(zip(xs, ys, strict=True))
            comments.setdefault(str(user), []).extend(
                _leaf_rows(f"{file}, user {user!r}, sample {i}", x, y) for i, (x, y) in samples
            )
    kept = sorted(u for u in comments if declared[u] > min_samples)
    if not kept:
        raise ValueError(f"no user in {path} has more than min_samples={min_samples} samples")
    train: list[Example] = []
    test: list[Example] = []
    for user in kept:
        ordered = sorted(comments[user], key=lambda c: c[0])  # stable: file order breaks ties
        n_train = int((1.0 - test_fraction) * len(ordered))
        for i, (created, rows, targets) in enumerate(ordered):
            (train if i < n_train else test).extend(
                _leaf_examples(user, created, rows, targets, max_prompt_tokens)
            )
    labels = sorted({e.label for e in train} | {e.label for e in test})
    meta = {"source": "leaf-reddit", "files": [f.name for f in files], "users_in_files": len(comments)}
    meta |= {
        "min_samples": min_samples,
        "max_prompt_tokens": max_prompt_tokens,
        "test_fraction": test_fraction,
    }
    meta["split"] = "per user: last test_fraction of comments by created_utc"
    return _by_time("leaf-reddit", "next_word", labels, train, test, meta)
