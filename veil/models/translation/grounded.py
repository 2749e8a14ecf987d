"""A generated English-Chinese set for document-grounded translation, in RAGtrans's record format.

RAGtrans (arXiv:2412.04342) translates English Wikipedia lead paragraphs into Chinese with a document that
is either relevant (``clean``) or irrelevant (``noisy``). Offline there are no such references, so this set
is generated so that the one thing a translator cannot know, the Chinese rendering of a name, is stated
only in the documents:

* **Entities.** Invented names (syllables drawn at random, e.g. ``Tavreno``) of five kinds (river, company,
  town, festival, mineral), each with an arbitrary Chinese rendering: 2-3 characters drawn from a pool of
  characters used in transliteration, plus the kind's word (``河``, ``公司``, ``镇``, ``节``, ``石``). The
  characters are chosen at random, not by sound, so the rendering cannot be guessed from the English.
* **Sources and references.** Each example is one hand-written sentence template of the entity's kind
  (everyday vocabulary, e.g. ``Many farmers live along the Tavreno River.`` /
  ``许多农民住在<rendering>沿岸。``) with the entity filled in.
* **Documents,** in English or Chinese (alternating, or as configured); a Chinese document starts with a
  ``【title】`` as RAGtrans's do:

  - ``clean``: two sentences about the entity that state its rendering, e.g.
    ``Tavreno River (Chinese: 索卡河) is a river in the eastern plains. It is about 120 kilometres long.``;
  - ``irrelevant`` (RAGtrans's noisy kind): the clean document of another example's entity;
  - ``partial`` (partially wrong): the document of a *namesake*, an entity of another kind with the same
    English name but its own rendering (as Georgia the country is 格鲁吉亚 and the US state 佐治亚).
    It matches part of the source's name, so only reading the whole name tells that it is wrong for it.

Every example has one entity, and no two examples share one, so a split by example is a split by entity
(with a ``rendering_pool``, entities share renderings but not names).
The set is a pure function of :class:`GroundedSetConfig` (seeded).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal, get_args

from veil.models.translation.data import RagTransRecord
from veil.models.translation.languages import primary_subtag

__all__ = [
    "ENTITY_KINDS",
    "NOISE_KINDS",
    "Entity",
    "GroundedExample",
    "GroundedSetConfig",
    "grounded_records",
    "grounded_set",
]

EntityKind = Literal["river", "company", "town", "festival", "mineral"]
ENTITY_KINDS: tuple[str, ...] = get_args(EntityKind)
Noise = Literal["clean", "irrelevant", "partial"]
NOISE_KINDS: tuple[str, ...] = get_args(Noise)

_ONSETS = ("b", "d", "k", "l", "m", "n", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr", "th")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "", "n", "r", "s", "l")
# characters common in Chinese transliterations of foreign names
_CHARS = "阿巴达卡拉玛纳帕萨塔瓦泽贝德凯莱梅内佩瑟特维索托洛莫诺波罗科多伊尔恩斯加桑兰克林图鲁蒙"

# kind -> (English name pattern, Chinese suffix, English description, Chinese description, fact templates)
_KINDS: dict[str, tuple[str, str, str, str, tuple[str, str]]] = {
    "river": ("{} River", "河", "a river {region}", "{region}的一条河流",
              ("It is about {n}0 kilometres long.", "全长约{n}0公里。")),
    "company": ("{} Company", "公司", "a company based {region}", "总部位于{region}的一家公司",
                ("It was founded in {year}.", "它成立于{year}年。")),
    "town": ("{}", "镇", "a town {region}", "{region}的一座小镇",
             ("It was first recorded in {year}.", "它最早的记载见于{year}年。")),
    "festival": ("{} Festival", "节", "a traditional festival {region}", "{region}的一个传统节日",
                 ("It has been held every autumn since {year}.", "自{year}年起，它每年秋天举行。")),
    "mineral": ("{}ite", "石", "a mineral found {region}", "产于{region}的一种矿物",
                ("It was first described in {year}.", "它于{year}年首次被描述。")),
}  # fmt: skip
_REGIONS = (
    ("in the northern highlands", "北部高地"),
    ("in the eastern plains", "东部平原"),
    ("on the southern coast", "南部海岸"),
    ("in the western valleys", "西部山谷"),
)
# kind -> (English, Chinese) sentence templates; {E} is the English name, {Z} the Chinese rendering
_SENTENCES: dict[str, tuple[tuple[str, str], ...]] = {
    "river": (
        ("The {E} floods every spring.", "{Z}每年春天都会泛滥。"),
        ("Many farmers live along the {E}.", "许多农民住在{Z}沿岸。"),
        ("A new bridge was built across the {E} last year.", "去年，{Z}上建起了一座新桥。"),
    ),
    "company": (
        ("The {E} hired two hundred new workers.", "{Z}雇用了两百名新员工。"),
        ("Shares of the {E} rose sharply today.", "{Z}的股价今天大幅上涨。"),
        ("My sister works for the {E}.", "我姐姐在{Z}工作。"),
    ),
    "town": (
        ("The town of {E} is famous for its tea.", "{Z}以茶叶闻名。"),
        ("We spent the summer in {E}.", "我们在{Z}度过了夏天。"),
        ("The road to {E} was closed by snow.", "通往{Z}的道路因大雪而封闭。"),
    ),
    "festival": (
        ("The {E} begins next week.", "{Z}下周开始。"),
        ("Thousands of visitors came to the {E}.", "成千上万的游客来参加{Z}。"),
        ("Children love the lanterns of the {E}.", "孩子们喜欢{Z}的灯笼。"),
    ),
    "mineral": (
        ("Miners found a large deposit of {E}.", "矿工们发现了一大片{Z}矿藏。"),
        ("{E} is used to make strong glass.", "{Z}被用来制造坚固的玻璃。"),
        ("The ring was set with a piece of {E}.", "这枚戒指上镶着一块{Z}。"),
    ),
}


@dataclass(frozen=True)
class Entity:
    """An invented entity: its English ``name`` (as documents write it) and Chinese ``rendering``."""

    name: str
    rendering: str
    kind: str
    """One of :data:`ENTITY_KINDS`."""
    document_en: str
    document_zh: str

    @property
    def rendering_stem(self) -> str:
        """The rendering without its kind's word (``索卡`` of ``索卡河``)."""
        return self.rendering[: -len(_KINDS[self.kind][1])]

    def document(self, language: str) -> str:
        """The entity's clean document in ``"en"`` or ``"zh"``."""
        return self.document_zh if primary_subtag(language) == "zh" else self.document_en


@dataclass(frozen=True)
class GroundedExample:
    """An English source whose Chinese reference needs ``entity.rendering``, with three documents."""

    id: str
    src: str
    tgt: str
    entity: Entity
    doc_language: str
    """The language of all three documents (``"en"`` or ``"zh"``)."""
    documents: dict[str, str]
    """Noise kind (:data:`NOISE_KINDS`) -> document."""
    namesake: Entity | None = None
    """The entity of the ``partial`` document (same English stem, another kind and rendering)."""

    def record(self, noise: str) -> RagTransRecord:
        """The example with one of its documents, as a RAGtrans record (``partial`` and ``irrelevant``
        are both RAGtrans's ``noisy``)."""
        if noise not in NOISE_KINDS:
            raise ValueError(f"noise must be one of {NOISE_KINDS}, got {noise!r}")
        tag = f"{'clean' if noise == 'clean' else 'noisy'}_{self.doc_language}"
        return RagTransRecord(self.src, self.tgt, self.documents[noise], tag)


@dataclass(frozen=True)
class GroundedSetConfig:
    """How many examples to generate and how.

    Attributes
    ----------
    n_examples: examples (one entity each), 2 to 5000.
    seed: the random seed; the set is a pure function of the config.
    doc_languages: the documents' languages, used in turn (example ``i`` gets ``doc_languages[i % len]``);
        ``"en"`` and ``"zh"`` are supported.
    kinds: the entity kinds to draw from.
    rendering_pool: ``0``: every entity gets a rendering of its own. ``k > 0``: renderings' characters
        are drawn from a pool of ``k`` stems that entities share (each still ends in its kind's word), so
        every held-out entity's rendering is one that training examples wrote for other entities; the
        name-to-rendering pairing is still stated only in the entity's documents. A small model trained
        from scratch can only write a token it has been trained to write; real transliterations reuse
        a few hundred characters the same way.
    """

    n_examples: int = 200
    seed: int = 0
    doc_languages: tuple[str, ...] = ("en", "zh")
    kinds: tuple[str, ...] = field(default=ENTITY_KINDS)
    rendering_pool: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.n_examples <= 5000:
            raise ValueError(f"n_examples must be in [2, 5000], got {self.n_examples}")
        if not self.doc_languages or any(lang not in ("en", "zh") for lang in self.doc_languages):
            raise ValueError(
                f"doc_languages must be a non-empty tuple of 'en'/'zh', got {self.doc_languages}"
            )
        if self.rendering_pool < 0 or self.rendering_pool == 1:
            raise ValueError(f"rendering_pool must be 0 or >= 2, got {self.rendering_pool}")
        if len(set(self.kinds)) < 2 or not set(self.kinds) <= set(ENTITY_KINDS):
            raise ValueError(f"kinds must be at least two of {ENTITY_KINDS}, got {self.kinds}")


def _stem(rng: random.Random) -> str:
    syllables = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.choice((2, 3))))
    return (syllables + rng.choice(_CODAS)).capitalize()


def _entity(stem: str, rendering_stem: str, kind: str, rng: random.Random) -> Entity:
    name_pattern, suffix, desc_en, desc_zh, (fact_en, fact_zh) = _KINDS[kind]
    name = name_pattern.format(stem.lower() if kind == "mineral" else stem)
    if kind == "mineral":
        name = name.capitalize()
    rendering = rendering_stem + suffix
    region_en, region_zh = rng.choice(_REGIONS)
    n, year = rng.randint(3, 60), rng.randint(1700, 1990)
    doc_en = (
        f"{name} (Chinese: {rendering}) is {desc_en.format(region=region_en)}. "
        f"{fact_en.format(n=n, year=year)}"
    )
    doc_zh = f"【{rendering}】{rendering}（{name}）是{desc_zh.format(region=region_zh)}。{fact_zh.format(n=n, year=year)}"
    return Entity(name, rendering, kind, doc_en, doc_zh)


def _fill(template: str, english: str, chinese: str) -> str:
    text = template.format(E=english, Z=chinese)
    return text[:1].upper() + text[1:]


def grounded_set(config: GroundedSetConfig | None = None) -> list[GroundedExample]:
    """The generated examples (see the module docstring)."""
    config = config or GroundedSetConfig()
    rng = random.Random(config.seed)
    stems: set[str] = set()
    renderings: set[str] = set()

    def fresh(draw, used: set[str]) -> str:
        while (value := draw()) in used:
            pass
        used.add(value)
        return value

    def draw_rendering() -> str:
        return "".join(rng.choice(_CHARS) for _ in range(rng.choice((2, 3))))

    pool = [fresh(draw_rendering, set(renderings)) for _ in range(config.rendering_pool)]
    pool = list(dict.fromkeys(pool))

    def rendering() -> str:
        return rng.choice(pool) if pool else fresh(draw_rendering, renderings)

    entities, namesakes = [], []
    for _ in range(config.n_examples):
        stem = fresh(lambda: _stem(rng), stems)
        kind, other = rng.sample(config.kinds, 2)
        entities.append(_entity(stem, rendering(), kind, rng))
        namesakes.append(_entity(stem, rendering(), other, rng))
    examples = []
    for i, (entity, namesake) in enumerate(zip(entities, namesakes, strict=True)):
        en, zh = rng.choice(_SENTENCES[entity.kind])
        mention = entity.name.lower() if entity.kind == "mineral" else entity.name
        lang = config.doc_languages[i % len(config.doc_languages)]
        # another example's entity: a shift in 1..n-1, so never the example's own (nor, with a pool, one
        # that happens to share its rendering, unless every other entity does)
        for _ in range(100):
            irrelevant = entities[(i + rng.randint(1, config.n_examples - 1)) % config.n_examples]
            if irrelevant.rendering != entity.rendering:
                break
        docs = {
            "clean": entity.document(lang),
            "irrelevant": irrelevant.document(lang),
            "partial": namesake.document(lang),
        }
        src, tgt = _fill(en, mention, entity.rendering), _fill(zh, mention, entity.rendering)
        examples.append(GroundedExample(f"grounded-{i}", src, tgt, entity, lang, docs, namesake))
    return examples


def grounded_records(examples: list[GroundedExample], noise: str) -> list[RagTransRecord]:
    """Every example with its ``noise`` document, as RAGtrans records."""
    return [e.record(noise) for e in examples]
