"""Deterministic synthetic populations on real English text, with a known personalisation gap.

Sentences come from the Lee news corpus shipped with gensim (300 Australian news articles, 2001;
the gensim test corpus). Users belong to latent types, and what differs between types is the *label
of the same kind of text*, the situation IDfree-PL (arXiv:2501.06062) targets:

- ``classification``: each sentence has a topic decided by keywords (:func:`topic_of`; sentences with
  no topic or a tie are not used); a user labels it ``"like"`` or ``"dislike"`` by its type's taste for
  the topic. Every topic is liked by half of the types, so a model without personalisation stays near
  50 % while one that knows the user reaches ~1 - noise.
- ``next_word``: a sentence is followed by a cue such as ``"See you"``; each type prefers one of four
  common completions (``soon``/``later``/``tomorrow``/``tonight``), spread evenly over the types.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np

from veil.simulation.data.types import TASKS, Example, Population, Task

__all__ = [
    "CUE_SLOTS",
    "MAX_TYPES",
    "TOPIC_KEYWORDS",
    "PopulationConfig",
    "lee_sentences",
    "make_population",
    "topic_of",
]

SOURCE_FILE = "lee_background.cor"
MAX_TYPES = 16  # both tasks give up to 16 types distinct preferences (see _type_preferences)
_T0 = 1_000_000_000.0  # 2001-09-09, the corpus's era; examples are one minute apart

# Topics come in complementary pairs (0,1), (2,3), ...: every type likes exactly one topic of each pair.
TOPIC_KEYWORDS: dict[str, frozenset[str]] = {
    name: frozenset(words.split())
    for name, words in {
        "politics": "government minister ministers howard labor opposition election parliament senate policy "
        "crean premier liberal liberals political politics cabinet beazley democrats",
        "sport": "cricket wicket wickets innings batting bowler bowling bowled tennis cup captain squad coach "
        "player players match matches tournament rugby football stumps selectors test tests series",
        "economy": "economy economic company companies shares market markets dollar interest rates qantas "
        "ansett airline profit business industry prices sales investment jobs unemployment",
        "health": "hospital hospitals doctors doctor health disease patients medical virus infected treatment "
        "drug drugs cancer",
        "conflict": "taliban afghanistan afghan qaeda laden osama kandahar tora bora troops military marines "
        "bombing fighters militia pentagon war soldiers",
        "crime": "police court courts charged arrested accused trial jail prison murder sentence sentenced "
        "guilty magistrate charges detectives crime",
        "middle_east": "israel israeli israelis palestinian palestinians arafat sharon hamas gaza jerusalem "
        "jihad settlement",
        "disaster": "fire fires bushfire bushfires blaze blazes firefighters burning rain winds wind weather "
        "storm storms flood floods flooding temperatures meteorology",
    }.items()
}

# Each cue has four completions, all common lowercase words, none shared between cues.
CUE_SLOTS: dict[str, tuple[str, str, str, str]] = {
    "Sounds good,": ("okay", "sure", "great", "cool"),
    "See you": ("soon", "later", "tomorrow", "tonight"),
    "Thanks for the": ("help", "update", "news", "reminder"),
    "Have a nice": ("day", "weekend", "trip", "evening"),
    "I am": ("home", "ready", "busy", "outside"),
    "That was": ("fun", "amazing", "funny", "weird"),
}


@dataclass(frozen=True)
class PopulationConfig:
    """Size, noise and seed of a synthetic population; raises ``ValueError`` on bad values.

    Not a data set of IDfree-PL (arXiv:2501.06062): a small stand-in for its per-user data with known
    ground truth. The defaults are this module's choice (about 2.5k examples, four types).
    """

    task: Task = "classification"
    """``"classification"`` (like/dislike by topic) or ``"next_word"`` (completion after a cue)."""
    n_users: int = 40
    """Number of simulated devices."""
    train_per_user: int = 48
    """Train examples per user (exact); items (topics or cues) are spread evenly over them."""
    test_per_user: int = 16
    """Test examples per user (exact); no sentence is in both splits of one user."""
    n_types: int = 4
    """Latent user types, assigned round-robin (user i has type i mod n_types), at most 16."""
    type_noise: float = 0.1
    """Probability that a user's preference for one item differs from its type's."""
    label_noise: float = 0.05
    """Probability that an example's label differs from the user's preference."""
    seed: int = 0
    """Seed of every random choice; the same config gives the same population."""
    max_words: int = 24
    """``next_word``: words of the sentence kept before the cue. Classification keeps whole sentences
    (6-30 words) so that the topic keyword is never cut off."""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        for name in ("n_users", "train_per_user", "test_per_user", "n_types", "max_words"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.n_types > MAX_TYPES:
            raise ValueError(f"n_types must be at most {MAX_TYPES}, got {self.n_types}")
        for name in ("type_noise", "label_noise"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")


def _split_sentences(document: str) -> list[str]:
    pieces = re.split(r"(?:(?<=[.!?])|(?<=[.!?][\"']))\s+(?=[\"'A-Z])", document.strip())
    out: list[str] = []
    for piece in pieces:
        # A split after "Dr." or an initial ("J.") is not a sentence end: glue the pieces back.
        if out and re.search(
            r"(?:\b(?:Mr|Mrs|Ms|Dr|St|Mt|Gen|Lt|Col|Sgt|Capt|Prof|Rev|No|Co|Inc|Ltd)|\b[A-Z])\.$", out[-1]
        ):
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    return out


@lru_cache(maxsize=4)
def lee_sentences(min_words: int = 6, max_words: int = 30) -> tuple[str, ...]:
    """Deduplicated sentences of ``min_words``-``max_words`` words from the gensim Lee corpus, in order.

    Raises
    ------
    ImportError
        If gensim, which ships the corpus, is not installed.
    """
    try:
        # lazy: optional dependency (gensim ships the Lee corpus)
        from gensim.test.utils import datapath
    except ImportError as err:
        raise ImportError(
            "synthetic populations read the Lee corpus shipped with gensim: pip install gensim"
        ) from err
    sentences: dict[str, None] = {}
    for document in Path(datapath(SOURCE_FILE)).read_text(encoding="utf-8").splitlines():
        for sentence in _split_sentences(document):
            if sentence.count('"') % 2:  # part of a quotation spanning sentences: drop its marks
                sentence = sentence.replace('"', "")
            words = sentence.split()
            if min_words <= len(words) <= max_words:
                sentences.setdefault(" ".join(words), None)
    return tuple(sentences)


def topic_of(sentence: str) -> str | None:
    """The topic whose keywords occur most often in ``sentence``; ``None`` for no hit or a tie."""
    words = [w.lower().strip(".,;:!?\"'()[]") for w in sentence.split()]
    words = [w[:-2] if w.endswith("'s") else w for w in words]
    scores = {topic: sum(w in keys for w in words) for topic, keys in TOPIC_KEYWORDS.items()}
    best = max(scores.values())
    winners = [topic for topic, score in scores.items() if score == best]
    return winners[0] if best > 0 and len(winners) == 1 else None


@lru_cache(maxsize=1)
def _topic_pools() -> tuple[tuple[str, ...], ...]:
    """Corpus sentences of each topic (in ``TOPIC_KEYWORDS`` order); sentences without one are unused."""
    topics = [topic_of(s) for s in lee_sentences()]
    return tuple(
        tuple(s for s, t in zip(lee_sentences(), topics, strict=True) if t == name) for name in TOPIC_KEYWORDS
    )


def _type_preferences(task: Task, n_types: int, rng: np.random.Generator) -> np.ndarray:
    """Preferred alternative per type and item, shape (n_types, n_items).

    Classification (alternatives 0 = dislike, 1 = like): a type is a 4-bit code, bit k saying which
    topic of pair k it likes. Codes are drawn as complement pairs (c, 15 - c), so every bit, hence every
    topic, is liked by exactly half of the types (odd n_types: off by one). ``next_word``: type
    t = 4q + r prefers alternative (r + j q) mod 4 of slot j, each slot's alternatives shuffled, so every
    block of four types uses each alternative once and types differ for q < 4.
    """
    if task == "classification":
        n_pairs = len(TOPIC_KEYWORDS) // 2
        half = rng.permutation(2 ** (n_pairs - 1))[: (n_types + 1) // 2]
        codes = np.stack([half, 2**n_pairs - 1 - half], axis=1).reshape(-1)[:n_types]  # (n_types,)
        codes = codes[rng.permutation(n_types)]
        bits = (codes[:, None] >> np.arange(n_pairs)[None, :]) & 1  # (n_types, n_pairs)
        return np.stack([bits, 1 - bits], axis=2).reshape(n_types, 2 * n_pairs)  # topics 2k, 2k+1
    n_alt = 4
    t = np.arange(n_types)
    idx = (t[:, None] % n_alt + np.arange(len(CUE_SLOTS))[None, :] * (t[:, None] // n_alt)) % n_alt
    shuffles = np.stack([rng.permutation(n_alt) for _ in CUE_SLOTS], axis=1)  # (n_alt, n_slots)
    return np.take_along_axis(shuffles, idx, axis=0)  # (n_types, n_slots)


def _perturb(values: np.ndarray, p: float, n_alt: int, rng: np.random.Generator) -> np.ndarray:
    """With probability ``p`` per entry, replace it by a uniformly chosen *different* alternative."""
    change = rng.random(values.shape) < p
    return np.where(change, (values + rng.integers(1, n_alt, size=values.shape)) % n_alt, values)


def _sample(pool: Sequence[str], n: int, what: str, rng: np.random.Generator) -> list[str]:
    """``n`` distinct sentences of ``pool``; ``ValueError`` if it is too small."""
    if n > len(pool):
        raise ValueError(
            f"{what} has {len(pool)} sentences, a user needs {n}: lower train_per_user/test_per_user"
        )
    return [pool[int(i)] for i in rng.choice(len(pool), int(n), replace=False)]


def _prompt(sentence: str, cue: str, max_words: int) -> str:
    """The sentence cut to ``max_words`` words (marked with "..."), a space, then the cue."""
    words = sentence.split()
    return " ".join(words[:max_words]) + ("..." if len(words) > max_words else "") + " " + cue


def make_population(config: PopulationConfig | None = None, /, **overrides: Any) -> Population:
    """Build a synthetic population: ``make_population(task="next_word", seed=1)`` or from a config.

    Parameters
    ----------
    config : PopulationConfig, optional
        Defaults to ``PopulationConfig()``; keyword ``overrides`` replace its fields.

    Returns
    -------
    Population
        Examples sorted by time; each user's train examples precede its test examples and every
        train example precedes every test example (``meta["split_time"]``). ``meta`` records the
        generator config, each user's type and preferences, and (classification) each text's topic.

    Raises
    ------
    ValueError
        For invalid settings, or if the corpus has too few sentences of a topic for one user.
    """
    cfg = dataclasses.replace(config or PopulationConfig(), **overrides)
    rng = np.random.default_rng(cfg.seed)
    classification = cfg.task == "classification"
    items = list(TOPIC_KEYWORDS) if classification else list(CUE_SLOTS)
    alternatives = (
        [["dislike", "like"]] * len(items) if classification else [list(v) for v in CUE_SLOTS.values()]
    )
    n_alt = len(alternatives[0])
    users = [f"user{u:0{len(str(cfg.n_users - 1))}d}" for u in range(cfg.n_users)]
    types = np.arange(cfg.n_users) % cfg.n_types
    type_prefs = _type_preferences(cfg.task, cfg.n_types, rng)  # (n_types, n_items)
    user_prefs = _perturb(type_prefs[types], cfg.type_noise, n_alt, rng)  # (n_users, n_items)

    splits: tuple[list[Example], list[Example]] = ([], [])
    text_topic: dict[str, str] = {}
    for u, user in enumerate(users):
        order = rng.permutation(len(items))
        split_items = [order[np.arange(n) % len(items)] for n in (cfg.train_per_user, cfg.test_per_user)]
        needed = np.bincount(np.concatenate(split_items), minlength=len(items))  # (n_items,)
        if classification:
            triples = zip(_topic_pools(), needed, items, strict=True)
            drawn = [_sample(pool, n, f"topic {topic!r}", rng) for pool, n, topic in triples]
        else:  # all cues share one pool: draw once so that no sentence repeats within a user
            flat, ends = _sample(lee_sentences(), needed.sum(), "the corpus", rng), np.cumsum(needed)
            drawn = [flat[a:b] for a, b in zip(ends - needed, ends, strict=True)]
        for s, (examples, item_ids) in enumerate(zip(splits, split_items, strict=True)):
            for k, j in enumerate(item_ids):
                sentence = drawn[j].pop()
                label = alternatives[j][
                    int(_perturb(user_prefs[u, j : j + 1], cfg.label_noise, n_alt, rng)[0])
                ]
                text = sentence if classification else _prompt(sentence, items[j], cfg.max_words)
                if classification:
                    text_topic[text] = items[j]
                time = _T0 + 60.0 * ((s * cfg.train_per_user + k) * cfg.n_users + u)
                examples.append(Example(user, text, label, time))

    def named(prefs: np.ndarray) -> dict[str, str]:
        return {item: alternatives[j][int(prefs[j])] for j, item in enumerate(items)}

    generator = {"function": f"{__name__}.make_population", "config": dataclasses.asdict(cfg)}
    generator |= {"source_file": SOURCE_FILE, "sentences": len(lee_sentences())}
    meta: dict[str, Any] = {"generator": generator, "items": dict(zip(items, alternatives, strict=True))}
    meta["user_types"] = {user: int(types[u]) for u, user in enumerate(users)}
    meta["type_preferences"] = [named(p) for p in type_prefs]
    meta["user_preferences"] = {user: named(user_prefs[u]) for u, user in enumerate(users)}
    meta["split_time"] = _T0 + 60.0 * (cfg.train_per_user * cfg.n_users - 0.5)
    if classification:
        meta["text_topic"] = text_topic
    labels = [w for alts in alternatives[: 1 if classification else None] for w in alts]
    train, test = (sorted(examples, key=attrgetter("time")) for examples in splits)
    return Population(f"synthetic-{cfg.task}", cfg.task, labels, train, test, meta)
