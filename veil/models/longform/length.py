"""LongBench-Write's length score S_l (Bai et al., LongWriter, arXiv:2408.07055, §2; LongDPO,
arXiv:2502.02095, §3.1 scores search candidates with it on their cumulative length).

Length is counted as LongWriter's evaluation counts it: English words (runs of Latin letters and
digits) plus CJK characters, one each. With ``x`` the counted length and ``y`` the required one::

    S_l = 100 * max(0, 1 - (y / x - 1) / 3)   if x < y   (too short)
    S_l = 100 * max(0, 1 - (x / y - 1) / 2)   otherwise  (on length or too long)

so a text half as long as required scores 66.7, one twice as long 50, an empty one 0.
"""

from __future__ import annotations

import re

__all__ = ["LENGTH_BUCKETS", "count_words", "length_bucket", "length_score", "reachable_length_score"]

LENGTH_BUCKETS = ((0, 500), (500, 2000), (2000, 4000), (4000, 20000))
"""LongBench-Write's required-length buckets ``[lo, hi)`` in words (arXiv:2408.07055, Table 1)."""

_WORD = re.compile(
    r"[A-Za-z0-9]+(?:['\u2019][A-Za-z]+)?|[\u4e00-\u9fff\u3400-\u4dbf\u3040-\u30ff\uac00-\ud7af]"
)


def count_words(text: str) -> int:
    """English words plus CJK characters (each kana, hangul or han character counts as one).

    >>> count_words("Anarchism isn't new: since 1840, 无政府 ideas spread.")
    10
    """
    return len(_WORD.findall(text))


def length_score(words: int, target: int) -> float:
    """S_l in [0, 100] for a text of ``words`` counted words when ``target`` were required.

    >>> length_score(40, 40), round(length_score(20, 40), 1), length_score(80, 40), length_score(0, 40)
    (100.0, 66.7, 50.0, 0.0)
    """
    if target < 1:
        raise ValueError(f"the required length must be >= 1 word, got {target}")
    if words < 0:
        raise ValueError(f"a word count must be >= 0, got {words}")
    if words == 0:
        return 0.0
    if words < target:
        return 100.0 * max(0.0, 1.0 - (target / words - 1.0) / 3.0)
    return 100.0 * max(0.0, 1.0 - (words / target - 1.0) / 2.0)


def reachable_length_score(words: int, target: int, final: bool) -> float:
    """The best S_l a response of ``words`` words so far can still reach: its own S_l if it has ended,
    otherwise the best over every longer length (it gains at least one more word).

    A look-ahead value for a step that does not end the response: scoring it on the words so far (as
    if it ended there) makes continuing look worse than ending whenever the target is still ahead.

    >>> round(reachable_length_score(14, 20, final=True), 1), reachable_length_score(14, 20, final=False)
    (85.7, 100.0)
    >>> reachable_length_score(40, 40, final=True), reachable_length_score(40, 40, final=False)
    (100.0, 98.75)
    """
    return length_score(words if final else max(words + 1, target), target)


def length_bucket(target: int, buckets: tuple[tuple[int, int], ...] = LENGTH_BUCKETS) -> int:
    """The index of the bucket ``[lo, hi)`` holding ``target``.

    >>> length_bucket(300), length_bucket(2000)
    (0, 2)
    """
    for i, (lo, hi) in enumerate(buckets):
        if lo <= target < hi:
            return i
    raise ValueError(f"required length {target} is in no bucket of {buckets}")
