"""Synthetic PunchBench: image-caption pairs with known labels, in the published schema.

The real pairs (arXiv:2412.11906, Sec. 3.1) are not reachable offline, so scenes are drawn from known
attributes (weather, object, activity), rendered with PIL and described in words (the text stands in for
the image for text-only models). A caption praises or complains about the day with a key adjective; it
carries a punchline (irony) exactly when its polarity disagrees with the weather's valence ("What a
pleasant day for a picnic!" under rain). Synonymous rewrites replace the key adjective with a WordNet
synonym (label kept) and antonymous rewrites with its WordNet direct antonym (label flipped), the paper's
Sec. 3.2 rule; :func:`verify_items` re-derives every label from the attributes and checks each rewrite
against WordNet.

Every pair yields up to seven items: perception yes-no, matching, multiple-choice; and, when the variant's
caption has a punchline, reasoning yes-no, matching and generation.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from veil.models.evaluation.punchbench.schema import Item, ItemError, item_from_dict, read_record
from veil.models.evaluation.punchbench.wordnet import WordNet

__all__ = [
    "NEGATIVE_SEEDS",
    "POSITIVE_SEEDS",
    "WEATHER",
    "LabelRuleError",
    "Pair",
    "Scene",
    "SyntheticConfig",
    "build_synthetic",
    "load_synthetic",
    "render_scene",
    "verify_items",
]

# weather -> (valence, description); valence True = pleasant
WEATHER: dict[str, tuple[bool, str]] = {
    "sunny": (True, "bright sunshine and a clear blue sky"),
    "rainy": (False, "heavy rain pouring from dark clouds"),
    "stormy": (False, "a thunderstorm with lightning over grey clouds"),
    "foggy": (False, "thick grey fog hiding everything"),
}
OBJECTS = ("umbrella", "kite", "bicycle", "picnic basket", "dog")
ACTIVITIES = ("having a picnic", "flying a kite", "cycling", "walking the dog", "playing football")
# key adjectives with a direct WordNet antonym (checked at build time); polarity True = praise
POSITIVE_SEEDS = ("good", "pleasant", "beautiful", "nice", "happy")
NEGATIVE_SEEDS = ("bad", "unpleasant", "ugly", "nasty", "unhappy")
CAPTIONS = (
    "What {adj} weather for {activity}!",
    "Such {adj} weather for {activity} today.",
    "Honestly, {activity} out here feels so {adj}.",
    "This afternoon of {activity} is {adj}.",
)
EXPLANATION = (
    "The caption calls the day {adj} while the image shows {weather} weather, so the {tone} is ironic."
)
DISTRACTORS = (
    "The caption is funny because the {obj} in the image is drawn upside down.",
    "The caption mocks {activity} as an expensive hobby that nobody can afford.",
    "The joke is that the {obj} is missing from the image although the caption mentions it.",
)


class LabelRuleError(ValueError):
    """A synthetic item whose label does not follow from its scene and caption rewrite."""


@dataclass(frozen=True)
class Scene:
    """The known attributes of one synthetic image."""

    weather: str
    obj: str
    activity: str

    @property
    def pleasant(self) -> bool:
        return WEATHER[self.weather][0]

    def describe(self) -> str:
        return (
            f"Outdoors, with {WEATHER[self.weather][1]}. A person is {self.activity}; a {self.obj} is nearby."
        )


@dataclass(frozen=True)
class Pair:
    """An image-caption pair: the scene, the caption template and its key adjective (original form)."""

    pair_id: str
    scene: Scene
    template: int
    adjective: str
    positive: bool  # polarity of the original adjective

    def caption(self, adjective: str) -> str:
        return CAPTIONS[self.template].format(adj=adjective, activity=self.scene.activity)


@dataclass(frozen=True)
class SyntheticConfig:
    """What :func:`build_synthetic` makes.

    ``ironic_fraction`` and the attribute tables are our choices: the paper's real set is about half
    with and half without a punchline (Sec. 3.1), which the default mirrors.
    """

    pairs: int = 60
    """Number of image-caption pairs (each gives up to 7 items per caption variant)."""
    seed: int = 0
    """Seed for scenes, captions, synonym choice and distractors."""
    ironic_fraction: float = 0.5
    """Fraction of pairs whose original caption has a punchline."""
    image_size: int = 96
    """Side of the rendered PNG in pixels."""

    def __post_init__(self) -> None:
        if self.pairs < 1:
            raise ValueError(f"pairs must be >= 1, got {self.pairs}")
        if not 0.0 <= self.ironic_fraction <= 1.0:
            raise ValueError(f"ironic_fraction must be in [0, 1], got {self.ironic_fraction}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")


def render_scene(scene: Scene, size: int) -> object:
    """A PIL image of ``scene``: sky colour and marks for the weather, a labelled object, a stick figure."""
    from PIL import Image, ImageDraw

    sky = {
        "sunny": (120, 180, 250),
        "rainy": (90, 100, 120),
        "stormy": (60, 60, 80),
        "foggy": (190, 190, 190),
    }
    img = Image.new("RGB", (size, size), sky[scene.weather])
    d = ImageDraw.Draw(img)
    s = size / 96
    d.rectangle([0, int(70 * s), size, size], fill=(80, 160, 80))
    if scene.weather == "sunny":
        d.ellipse([int(70 * s), int(6 * s), int(90 * s), int(26 * s)], fill=(255, 220, 0))
    else:
        d.ellipse([int(10 * s), int(5 * s), int(60 * s), int(25 * s)], fill=(70, 70, 90))
        for x in range(5, size, max(1, int(9 * s))):
            if scene.weather in ("rainy", "stormy"):
                d.line([x, int(28 * s), x - int(4 * s), int(60 * s)], fill=(40, 40, 200))
        if scene.weather == "stormy":
            d.line(
                [int(40 * s), int(25 * s), int(32 * s), int(45 * s), int(44 * s), int(50 * s)], fill="yellow"
            )
    d.line([int(30 * s), int(55 * s), int(30 * s), int(75 * s)], fill="black")  # a person
    d.ellipse([int(26 * s), int(47 * s), int(34 * s), int(55 * s)], outline="black")
    d.rectangle([int(55 * s), int(60 * s), int(75 * s), int(78 * s)], fill=(160, 80, 40))
    d.text((int(4 * s), int(80 * s)), scene.obj, fill="black")
    return img


def _is_ironic(scene: Scene, positive: bool) -> bool:
    # The label rule: a punchline exactly when the caption's polarity disagrees with the weather.
    return positive != scene.pleasant


def _variant_adjective(pair: Pair, variant: str, wn: WordNet, rng: random.Random) -> tuple[str, bool]:
    """The key adjective and its polarity in ``variant`` (synonym keeps polarity; antonym flips it)."""
    if variant == "original":
        return pair.adjective, pair.positive
    if variant == "synonymous":
        choices = [w for w in wn.synonyms(pair.adjective) if w.isalpha()][:8]
        if not choices:
            raise LabelRuleError(f"WordNet has no one-word synonym of {pair.adjective!r}")
        return rng.choice(choices), pair.positive
    antonyms = wn.antonyms(pair.adjective)
    if not antonyms:
        raise LabelRuleError(f"WordNet has no direct antonym of {pair.adjective!r}")
    return antonyms[0], not pair.positive


def _pair_items(pair: Pair, variant: str, wn: WordNet, rng: random.Random, image: str) -> list[Item]:
    adj, positive = _variant_adjective(pair, variant, wn, rng)
    scene = pair.scene
    caption = pair.caption(adj)
    ironic = _is_ironic(scene, positive)
    common = {"pair_id": pair.pair_id, "variant": variant, "context": scene.describe(), "image": image}
    pid = f"{pair.pair_id}-{variant}"
    # foils are original-form captions on other templates, with the polarity that gives the wanted label
    seeds = {True: POSITIVE_SEEDS, False: NEGATIVE_SEEDS}
    others = [t for t in range(len(CAPTIONS)) if t != pair.template]

    def foil(template: int, with_punchline: bool) -> str:
        polarity = scene.pleasant != with_punchline
        return CAPTIONS[template].format(adj=rng.choice(seeds[polarity]), activity=scene.activity)

    match_foil = foil(others[0], not ironic)
    mc_labels = [False, False, not ironic]  # exactly one of the four options has a punchline
    mc = [caption] + [foil(t, lab) for t, lab in zip(others, mc_labels, strict=True)]
    mc_gold = caption if ironic else mc[3]
    items = [
        Item(f"{pid}-p-yn", level="perception", format="yes-no", caption=caption,
             options=("yes", "no"), gold="yes" if ironic else "no", **common),
        Item(f"{pid}-p-match", level="perception", format="matching", caption=caption,
             options=(caption, match_foil), gold=caption if ironic else match_foil, **common),
        Item(f"{pid}-p-mc", level="perception", format="multiple-choice", caption=caption,
             options=tuple(mc), gold=mc_gold, **common),
    ]  # fmt: skip
    if ironic:
        tone = "praise" if positive else "complaint"
        right = EXPLANATION.format(adj=adj, weather=scene.weather, tone=tone)
        wrong = rng.choice(DISTRACTORS).format(obj=scene.obj, activity=scene.activity)
        asked = rng.choice((right, wrong))
        items += [
            Item(f"{pid}-r-yn", level="reasoning", format="yes-no", caption=caption, statement=asked,
                 options=("yes", "no"), gold="yes" if asked == right else "no", **common),
            Item(f"{pid}-r-match", level="reasoning", format="matching", caption=caption,
                 options=(right, wrong), gold=right, **common),
            Item(f"{pid}-r-gen", level="reasoning", format="generation", caption=caption, gold=right, **common),
        ]  # fmt: skip
    return items


def build_synthetic(
    root: Path, config: SyntheticConfig | None = None, wordnet: WordNet | None = None
) -> list[Item]:
    """Write ``root/items.jsonl``, ``root/pairs.jsonl`` and ``root/images/<pair>.png``; return the items."""
    config = config or SyntheticConfig()
    wn = wordnet or WordNet()
    rng = random.Random(config.seed)
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    items: list[Item] = []
    pairs_meta = []
    for i in range(config.pairs):
        scene = Scene(rng.choice(tuple(WEATHER)), rng.choice(OBJECTS), rng.choice(ACTIVITIES))
        want_ironic = rng.random() < config.ironic_fraction
        positive = scene.pleasant != want_ironic
        adjective = rng.choice(POSITIVE_SEEDS if positive else NEGATIVE_SEEDS)
        pair = Pair(f"syn{i:04d}", scene, rng.randrange(len(CAPTIONS)), adjective, positive)
        image = f"images/{pair.pair_id}.png"
        render_scene(scene, config.image_size).save(root / image)
        for variant in ("original", "synonymous", "antonymous"):
            items += _pair_items(pair, variant, wn, rng, image)
        pairs_meta.append({"pair_id": pair.pair_id, "weather": scene.weather, "object": scene.obj,
                           "activity": scene.activity, "template": pair.template,
                           "adjective": adjective, "positive": positive})  # fmt: skip
    verify_items(items, pairs_meta, wn)
    _write_jsonl(root / "pairs.jsonl", pairs_meta)
    _write_jsonl(root / "items.jsonl", [it.to_dict() for it in items])
    return items


def verify_items(items: Sequence[Item], pairs: Sequence[dict], wordnet: WordNet) -> None:
    """Re-derive every label from the pair's attributes; raise :class:`LabelRuleError` on any mismatch.

    Checks: the caption's key adjective is the original, a WordNet synonym (same polarity) or a WordNet
    direct antonym (flipped polarity) per the variant; perception yes-no gold equals the irony rule;
    option formats hold exactly one option with a punchline and gold is it; reasoning items exist exactly
    for ironic captions.
    """
    by_pair = {p["pair_id"]: p for p in pairs}
    seeds = {w: True for w in POSITIVE_SEEDS} | {w: False for w in NEGATIVE_SEEDS}
    for it in items:
        p = by_pair[it.pair_id]
        scene = Scene(p["weather"], p["object"], p["activity"])
        adj = _adjective_in(it.caption, p["template"], scene.activity)
        if it.variant == "original":
            ok, positive = adj == p["adjective"], p["positive"]
        elif it.variant == "synonymous":
            ok, positive = adj in wordnet.synonyms(p["adjective"]), p["positive"]
        else:
            ok, positive = adj in wordnet.antonyms(p["adjective"]), not p["positive"]
        if not ok:
            raise LabelRuleError(
                f"{it.item_id}: {adj!r} is not a valid {it.variant} rewrite of {p['adjective']!r}"
            )
        ironic = _is_ironic(scene, positive)
        if it.level == "reasoning" and not ironic:
            raise LabelRuleError(f"{it.item_id}: a reasoning item on a caption without a punchline")
        if it.level == "perception" and it.format == "yes-no" and it.gold != ("yes" if ironic else "no"):
            raise LabelRuleError(f"{it.item_id}: gold {it.gold!r} but the irony rule says ironic={ironic}")
        if it.level == "perception" and it.format in ("matching", "multiple-choice"):
            labels = {}
            for option in it.options:
                if option == it.caption:
                    labels[option] = ironic
                    continue
                t = next(
                    t for t in range(len(CAPTIONS)) if _adjective_in(option, t, scene.activity) is not None
                )
                labels[option] = _is_ironic(scene, seeds[_adjective_in(option, t, scene.activity)])
            if sum(labels.values()) != 1 or not labels[it.gold]:
                raise LabelRuleError(
                    f"{it.item_id}: options must hold exactly one punchline, the gold; got {labels}"
                )


def _adjective_in(caption: str, template: int, activity: str) -> str | None:
    head, tail = CAPTIONS[template].format(adj="\0", activity=activity).split("\0")
    if caption.startswith(head) and caption.endswith(tail) and len(caption) > len(head) + len(tail):
        return caption[len(head) : len(caption) - len(tail)]
    return None


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


def load_synthetic(root: Path) -> list[Item]:
    """Read ``root/items.jsonl`` as written by :func:`build_synthetic`."""
    path = Path(root) / "items.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no synthetic PunchBench at {path}; build it with build_synthetic")
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                items.append(item_from_dict(read_record(line, f"{path}:{n}")))
            except ItemError as exc:
                raise ItemError(f"{path}:{n}", exc.field, exc.reason) from exc
    return items
