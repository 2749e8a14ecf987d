"""A generated multi-hop world whose facts are split between the LM's memory and a retrieval corpus.

DeepRAG (Guan et al., arXiv:2502.01142) decides per subquery whether to answer from parametric memory or
to retrieve; judging that decision offline needs questions whose hops are known to be answerable one way
or the other. This module builds such a world from a seed:

- **Entities** of four types (films, people, cities, countries) with names made of random syllables, so
  no real-world knowledge helps. Every word of every entity name is used once in the world.
- **Relations**, a chain from films to languages::

      film --directed_by--> person --born_in--> city --located_in--> country --official_language--> lang
      film --country_of--> country             person --birth_year--> year

  No two relations link the same pair of values, in either direction, so a fact cannot be inferred
  from another one; languages are drawn apart from country names for the same reason.
- **The split.** Within each relation, a fraction of the facts (chosen by the seed) is *external*: it
  is stated only in the retrieval corpus (:meth:`World.corpus`). The others are *parametric*: they are
  stated only in the LM's training text (:meth:`World.training_text`), in several phrasings.
- **The corpus** holds one short article per entity (a type sentence plus its external facts) and, per
  entity, distractor articles about entities whose last name word differs by one vowel, stating
  different facts for every relation of the type. Records are FlashRAG-style
  ``{"id", "contents": "title\\ntext"}``.
- **Questions** of 2 and 3 hops follow relation chains; each hop carries its subquery, its fact (and
  so its answer) and ``needs_retrieval`` (the fact is external). Questions are shuffled by the seed and
  split into train / dev / test by fraction.

Choices the paper leaves open (it uses HotpotQA and 2WikiMultihopQA): the relation set, the sentence
templates, one article per entity rather than 100-word passages, and distractors by near-homonyms.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal, get_args

__all__ = [
    "ENTITY_TYPES",
    "QUESTION_TEMPLATES",
    "RELATIONS",
    "SPLITS",
    "Entity",
    "Fact",
    "Hop",
    "World",
    "WorldConfig",
    "WorldQuestion",
    "build_world",
]

EntityType = Literal["film", "person", "city", "country"]
ENTITY_TYPES: tuple[str, ...] = get_args(EntityType)
Split = Literal["train", "dev", "test"]
SPLITS: tuple[str, ...] = get_args(Split)


@dataclass(frozen=True)
class _Relation:
    subject: EntityType
    target: str  # an entity type, or "year" / "language" for literal values
    phrasings: tuple[str, ...]  # the first one is the corpus sentence
    subquery: str


RELATIONS: dict[str, _Relation] = {
    "directed_by": _Relation(
        "film",
        "person",
        ("{s} was directed by {o}.", "{o} directed {s}.", "The director of {s} is {o}."),
        "Who directed {s}?",
    ),
    "country_of": _Relation(
        "film",
        "country",
        ("{s} was produced in {o}.", "{s} is a film from {o}.", "The country of origin of {s} is {o}."),
        "Which country produced {s}?",
    ),
    "born_in": _Relation(
        "person",
        "city",
        ("{s} was born in {o}.", "The birthplace of {s} is {o}.", "{o} is where {s} was born."),
        "Where was {s} born?",
    ),
    "birth_year": _Relation(
        "person",
        "year",
        ("{s} was born in the year {o}.", "The birth year of {s} is {o}.", "In {o}, {s} was born."),
        "In which year was {s} born?",
    ),
    "located_in": _Relation(
        "city",
        "country",
        ("{s} is located in {o}.", "{s} is a city in {o}.", "{o} contains the city of {s}."),
        "In which country is {s}?",
    ),
    "official_language": _Relation(
        "country",
        "language",
        (
            "The official language of {s} is {o}.",
            "People in {s} speak {o}.",
            "{o} is the official language of {s}.",
        ),
        "What is the official language of {s}?",
    ),
}

# relation chain -> question; the chain's first relation fixes the type of the question's entity
QUESTION_TEMPLATES: dict[tuple[str, ...], str] = {
    ("directed_by", "born_in"): "In which city was the director of {s} born?",
    ("directed_by", "birth_year"): "In which year was the director of {s} born?",
    ("born_in", "located_in"): "In which country was {s} born?",
    ("country_of", "official_language"): "What is the official language of the country that produced {s}?",
    ("located_in", "official_language"): "What is the official language of the country where {s} is?",
    ("directed_by", "born_in", "located_in"): "In which country was the director of {s} born?",
    ("born_in", "located_in", "official_language"): (
        "What is the official language of the country where {s} was born?"
    ),
}

_TYPE_SENTENCE = {t: "{s} is a " + t + "." for t in ENTITY_TYPES}
_SIZE_FIELD = {"film": "films", "person": "people", "city": "cities", "country": "countries"}
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kl", "st", "tr")
_VOWELS = "aeiou"
_CODAS = ("", "", "", "", "n", "r", "l", "s", "m")
_SUFFIX = {"country": ("ia", "and", "ar"), "language": ("ish", "ese", "ic"), "city": ("", "dor", "ham")}


@dataclass
class WorldConfig:
    """Sizes and seed of a generated world (:func:`build_world`); about 200 entities by default."""

    seed: int = 0
    """Seeds every random choice: the same config builds the same world."""
    films: int = 80
    """Number of films; each has a director and a country of origin."""
    people: int = 60
    """Number of people; each has a birthplace and a birth year. Directors are drawn from them."""
    cities: int = 45
    """Number of cities; each lies in one country."""
    countries: int = 15
    """Number of countries; each has its own official language."""
    external_fraction: float = 0.5
    """Fraction of each relation's facts stated only in the corpus (rounded to a whole count)."""
    distractors_per_entity: int = 1
    """Distractor articles per entity: a near-homonym with different facts."""
    phrasings: int = 3
    """Sentences per parametric fact in the training text (1 to 3)."""
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """Fractions of the questions in train, dev and test."""
    first_year: int = 1900
    """Birth years are drawn from ``[first_year, last_year]``."""
    last_year: int = 1990

    def __post_init__(self) -> None:
        for name in ("films", "people", "cities", "countries"):
            if getattr(self, name) < 2:
                raise ValueError(
                    f"{name} must be >= 2 (distractors need another value), got {getattr(self, name)}"
                )
        if not 0.0 <= self.external_fraction <= 1.0:
            raise ValueError(f"external_fraction must be in [0, 1], got {self.external_fraction}")
        if self.distractors_per_entity < 0:
            raise ValueError(f"distractors_per_entity must be >= 0, got {self.distractors_per_entity}")
        if not 1 <= self.phrasings <= 3:
            raise ValueError(f"phrasings must be in [1, 3], got {self.phrasings}")
        if (
            len(self.split_fractions) != 3
            or min(self.split_fractions) < 0
            or abs(sum(self.split_fractions) - 1) > 1e-9
        ):
            raise ValueError(
                f"split_fractions must be 3 non-negative numbers summing to 1, got {self.split_fractions}"
            )
        if self.last_year <= self.first_year:
            raise ValueError(f"last_year must be > first_year, got {self.first_year}..{self.last_year}")


@dataclass(frozen=True)
class Entity:
    name: str
    type: EntityType


@dataclass(frozen=True)
class Fact:
    """``subject --relation--> object``; ``external`` facts live only in the corpus."""

    subject: str
    relation: str
    object: str
    external: bool

    def sentence(self, phrasing: int = 0) -> str:
        return RELATIONS[self.relation].phrasings[phrasing].format(s=self.subject, o=self.object)


@dataclass(frozen=True)
class Hop:
    """One step of a question's gold decomposition."""

    subquery: str
    fact: Fact

    @property
    def answer(self) -> str:
        return self.fact.object

    @property
    def needs_retrieval(self) -> bool:
        return self.fact.external


@dataclass(frozen=True)
class WorldQuestion:
    id: str
    text: str
    answer: str
    hops: tuple[Hop, ...]
    split: Split

    @property
    def relations(self) -> tuple[str, ...]:
        return tuple(h.fact.relation for h in self.hops)


@dataclass
class World:
    """A built world (:func:`build_world`); read it through the methods."""

    config: WorldConfig
    entities: tuple[Entity, ...]
    facts: tuple[Fact, ...]
    questions: tuple[WorldQuestion, ...]
    _corpus: tuple[dict[str, str], ...] = field(repr=False)

    def parametric_facts(self) -> list[Fact]:
        return [f for f in self.facts if not f.external]

    def external_facts(self) -> list[Fact]:
        return [f for f in self.facts if f.external]

    def fact(self, subject: str, relation: str) -> Fact | None:
        """The world's fact about ``subject`` for ``relation``, or ``None``."""
        return next((f for f in self.facts if f.subject == subject and f.relation == relation), None)

    def training_text(self) -> list[str]:
        """One sentence per parametric fact and phrasing, shuffled by the seed."""
        out = [f.sentence(p) for f in self.parametric_facts() for p in range(self.config.phrasings)]
        random.Random(self.config.seed + 1).shuffle(out)
        return out

    def corpus(self) -> list[dict[str, str]]:
        """FlashRAG-style records ``{"id", "contents": "title\\ntext"}`` (a fresh copy)."""
        return [dict(r) for r in self._corpus]

    def article(self, title: str) -> dict[str, str] | None:
        """The corpus record whose title is ``title`` (an entity's own article), or ``None``."""
        return next((dict(r) for r in self._corpus if r["contents"].split("\n", 1)[0] == title), None)

    def split(self, name: str) -> list[WorldQuestion]:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return [q for q in self.questions if q.split == name]


class _Namer:
    """Syllable names; every word is new to the world, so no name is a word-bounded part of another."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.words: set[str] = set()

    def _syllable(self) -> str:
        return self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + self.rng.choice(_CODAS)

    def word(self, kind: str = "") -> str:
        while True:
            w = self._syllable() + self._syllable()
            w = (w + self.rng.choice(_SUFFIX.get(kind, ("",)))).capitalize()
            if w not in self.words:
                self.words.add(w)
                return w

    def name(self, type_: str) -> str:
        if type_ == "person":
            return f"{self.word()} {self.word()}"
        if type_ == "film":
            return f"The {self.word()}" if self.rng.random() < 0.5 else f"{self.word()} {self.word()}"
        return self.word(type_)

    def near(self, name: str) -> str:
        """``name`` with one vowel of its last word changed (a new word)."""
        head, _, last = name.rpartition(" ")
        while True:
            i = self.rng.choice([j for j, c in enumerate(last) if c.lower() in _VOWELS])
            v = self.rng.choice([c for c in _VOWELS if c != last[i].lower()])
            w = (last[:i] + v + last[i + 1 :]).capitalize()
            if w not in self.words:
                self.words.add(w)
                return f"{head} {w}" if head else w


def build_world(config: WorldConfig | None = None) -> World:
    """Build the world of ``config`` (deterministic per seed)."""
    config = config or WorldConfig()
    rng = random.Random(config.seed)
    namer = _Namer(rng)
    names = {t: [namer.name(t) for _ in range(getattr(config, _SIZE_FIELD[t]))] for t in ENTITY_TYPES}
    languages = [namer.word("language") for _ in names["country"]]
    years = [str(y) for y in range(config.first_year, config.last_year + 1)]
    values = {**names, "language": languages, "year": years}

    objects: dict[tuple[str, str], str] = {}
    for c, lang in zip(names["country"], languages, strict=True):
        objects[(c, "official_language")] = lang
    for city in names["city"]:
        objects[(city, "located_in")] = rng.choice(names["country"])
    for p in names["person"]:
        objects[(p, "born_in")] = rng.choice(names["city"])
        objects[(p, "birth_year")] = rng.choice(years)
    for f in names["film"]:
        objects[(f, "directed_by")] = rng.choice(names["person"])
        objects[(f, "country_of")] = rng.choice(names["country"])

    facts: list[Fact] = []
    for rel in RELATIONS:
        keys = sorted(k for k in objects if k[1] == rel)
        external = set(rng.sample(range(len(keys)), round(config.external_fraction * len(keys))))
        facts += [Fact(s, r, objects[(s, r)], i in external) for i, (s, r) in enumerate(keys)]

    entities = tuple(Entity(n, t) for t in ENTITY_TYPES for n in names[t])  # type: ignore[arg-type]
    corpus = _corpus(entities, facts, values, config, rng, namer)
    questions = _questions(entities, {(f.subject, f.relation): f for f in facts}, config, rng)
    return World(config, entities, tuple(facts), questions, corpus)


def _article(title: str, type_: str, facts: list[Fact]) -> str:
    sentences = [_TYPE_SENTENCE[type_].format(s=title)] + [f.sentence(0) for f in facts]
    return f"{title}\n{' '.join(sentences)}"


def _corpus(
    entities: tuple[Entity, ...],
    facts: list[Fact],
    values: dict[str, list[str]],
    config: WorldConfig,
    rng: random.Random,
    namer: _Namer,
) -> tuple[dict[str, str], ...]:
    by_subject: dict[str, list[Fact]] = {}
    for f in facts:
        by_subject.setdefault(f.subject, []).append(f)
    docs = []
    for e in entities:
        docs.append(_article(e.name, e.type, [f for f in by_subject[e.name] if f.external]))
        for _ in range(config.distractors_per_entity):
            twin = namer.near(e.name)
            fake = [
                Fact(
                    twin,
                    f.relation,
                    rng.choice([v for v in values[RELATIONS[f.relation].target] if v != f.object]),
                    True,
                )
                for f in by_subject[e.name]
            ]
            docs.append(_article(twin, e.type, fake))
    rng.shuffle(docs)
    return tuple({"id": f"doc{i:05d}", "contents": d} for i, d in enumerate(docs))


def _questions(
    entities: tuple[Entity, ...], facts: dict[tuple[str, str], Fact], config: WorldConfig, rng: random.Random
) -> tuple[WorldQuestion, ...]:
    drafts: list[tuple[str, tuple[Hop, ...]]] = []
    for chain, template in QUESTION_TEMPLATES.items():
        for e in entities:
            if e.type != RELATIONS[chain[0]].subject:
                continue
            hops, subject = [], e.name
            for rel in chain:
                fact = facts[(subject, rel)]
                hops.append(Hop(RELATIONS[rel].subquery.format(s=subject), fact))
                subject = fact.object
            drafts.append((template.format(s=e.name), tuple(hops)))
    rng.shuffle(drafts)
    n_train = round(config.split_fractions[0] * len(drafts))
    n_dev = round(config.split_fractions[1] * len(drafts))
    splits = ["train"] * n_train + ["dev"] * n_dev + ["test"] * (len(drafts) - n_train - n_dev)
    return tuple(
        WorldQuestion(f"q{i:04d}", text, hops[-1].answer, hops, split)  # type: ignore[arg-type]
        for i, ((text, hops), split) in enumerate(zip(drafts, splits, strict=True))
    )
