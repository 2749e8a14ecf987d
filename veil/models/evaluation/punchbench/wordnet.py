"""A reader for the Princeton WordNet 3.0 database files (Debian package ``wordnet-base``).

Only what the synthetic PunchBench rewrites need (arXiv:2412.11906, Sec. 3.2: synonymous and antonymous
caption rewrites): synonyms and direct antonyms of adjectives, read from ``index.adj``/``data.adj`` in
the format of the ``wndb(5WN)`` manual page. Parsing is lazy and per part of speech.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DEFAULT_WORDNET_DIR", "WordNet", "WordNetMissingError"]

DEFAULT_WORDNET_DIR = Path("/usr/share/wordnet")
_POS_FILES = {"a": "adj", "n": "noun", "v": "verb", "r": "adv"}
_MARKER = re.compile(r"\([a-z]+\)$")  # adjective syntactic markers such as "(p)"


class WordNetMissingError(FileNotFoundError):
    """The WordNet database files are absent; install Debian's ``wordnet-base``."""


@dataclass(frozen=True)
class _Synset:
    offset: int
    words: tuple[str, ...]
    # (symbol, target offset, source word number, target word number); 0 numbers = whole synset
    pointers: tuple[tuple[str, int, int, int], ...]


@dataclass
class WordNet:
    """Synonyms and antonyms from the WordNet database under ``root``.

    Parameters
    ----------
    root
        Directory holding ``index.adj`` and ``data.adj`` (Debian installs them in /usr/share/wordnet).
    """

    root: Path = DEFAULT_WORDNET_DIR
    _index: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict, repr=False)
    _data: dict[str, dict[int, _Synset]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        missing = [f"{kind}.adj" for kind in ("index", "data") if not (self.root / f"{kind}.adj").is_file()]
        if missing:
            raise WordNetMissingError(
                f"WordNet files {missing} not found under {self.root}; "
                "install them with `apt-get install -y wordnet-base` (Debian package wordnet-base)"
            )

    def _load(self, pos: str) -> None:
        if pos in self._index:
            return
        name = _POS_FILES[pos]
        index: dict[str, tuple[int, ...]] = {}
        for line in (self.root / f"index.{name}").read_text(encoding="latin-1").splitlines():
            if line.startswith(" "):  # licence header lines start with two spaces
                continue
            f = line.split()
            # lemma pos synset_cnt p_cnt [ptr_symbol...] sense_cnt tagsense_cnt synset_offset...
            p_cnt = int(f[3])
            synset_cnt = int(f[2])
            index[f[0]] = tuple(int(o) for o in f[6 + p_cnt : 6 + p_cnt + synset_cnt])
        data: dict[int, _Synset] = {}
        for line in (self.root / f"data.{name}").read_text(encoding="latin-1").splitlines():
            if line.startswith(" "):
                continue
            f = line.split(" | ")[0].split()
            # offset lex_filenum ss_type w_cnt(hex) [word lex_id]... p_cnt [sym offset pos src/tgt]...
            w_cnt = int(f[3], 16)
            words = tuple(_MARKER.sub("", f[4 + 2 * i]).lower() for i in range(w_cnt))
            at = 4 + 2 * w_cnt
            p_cnt = int(f[at])
            ptrs = []
            for k in range(p_cnt):
                sym, off, _pos, st = f[at + 1 + 4 * k : at + 5 + 4 * k]
                ptrs.append((sym, int(off), int(st[:2], 16), int(st[2:], 16)))
            data[int(f[0])] = _Synset(int(f[0]), words, tuple(ptrs))
        self._index[pos] = index
        self._data[pos] = data

    def senses(self, word: str, pos: str = "a") -> list[tuple[str, ...]]:
        """The synsets (as word tuples) of ``word``, most frequent sense first."""
        self._load(pos)
        return [self._data[pos][o].words for o in self._index[pos].get(word.lower(), ())]

    def synonyms(self, word: str, pos: str = "a") -> list[str]:
        """Words sharing a synset with ``word`` or in a synset linked by similar-to (``&``), in sense order."""
        self._load(pos)
        out: list[str] = []
        for off in self._index[pos].get(word.lower(), ()):
            syn = self._data[pos][off]
            linked = [
                self._data[pos][t].words for s, t, _, _ in syn.pointers if s == "&" and t in self._data[pos]
            ]
            for w in (*syn.words, *(w for ws in linked for w in ws)):
                if w != word.lower() and w not in out:
                    out.append(w)
        return out

    def antonyms(self, word: str, pos: str = "a") -> list[str]:
        """Direct antonyms of ``word``: lexical ``!`` pointers from its own lemma, in sense order."""
        self._load(pos)
        out: list[str] = []
        for off in self._index[pos].get(word.lower(), ()):
            syn = self._data[pos][off]
            for sym, target, src, tgt in syn.pointers:
                if sym != "!" or not src or syn.words[src - 1] != word.lower():
                    continue
                antonym = self._data[pos][target].words[tgt - 1]
                if antonym not in out:
                    out.append(antonym)
        return out
