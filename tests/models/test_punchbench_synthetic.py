"""Synthetic PunchBench: WordNet rewrites, label rules verified by code, images beside the text."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest

from veil.models.evaluation.punchbench import (
    LabelRuleError,
    SyntheticConfig,
    WordNet,
    WordNetMissingError,
    build_synthetic,
    load_synthetic,
    verify_items,
)
from veil.models.evaluation.punchbench.synthetic import NEGATIVE_SEEDS, POSITIVE_SEEDS, WEATHER

pytestmark = pytest.mark.skipif(
    not Path("/usr/share/wordnet/data.adj").is_file(),
    reason="needs Debian wordnet-base (.ci/run installs it)",
)


@pytest.fixture(scope="module")
def wn() -> WordNet:
    return WordNet()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, wn: WordNet):
    root = tmp_path_factory.mktemp("punchbench")
    return root, build_synthetic(root, SyntheticConfig(pairs=24, seed=3), wn)


def test_wordnet_gives_the_textbook_antonyms_and_synonyms(wn: WordNet) -> None:
    assert wn.antonyms("good")[0] == "bad" and wn.antonyms("pleasant") == ["unpleasant"]
    assert "beautiful" in wn.antonyms("ugly")
    assert "enjoyable" in wn.synonyms("pleasant") and "pleasant" not in wn.synonyms("pleasant")
    for seed in (*POSITIVE_SEEDS, *NEGATIVE_SEEDS):  # every caption seed can be rewritten both ways
        assert wn.antonyms(seed) and wn.synonyms(seed), seed


def test_missing_wordnet_files_name_the_debian_package(tmp_path: Path) -> None:
    with pytest.raises(WordNetMissingError, match="wordnet-base"):
        WordNet(tmp_path)


def test_the_set_covers_every_level_format_and_variant_with_images_beside(built) -> None:
    root, items = built
    cells = Counter((it.level, it.format, it.variant) for it in items)
    assert {(lv, f) for lv, f, _ in cells} == {
        ("perception", "yes-no"),
        ("perception", "matching"),
        ("perception", "multiple-choice"),
        ("reasoning", "yes-no"),
        ("reasoning", "matching"),
        ("reasoning", "generation"),
    }
    assert {v for _, _, v in cells} == {"original", "synonymous", "antonymous"}
    assert load_synthetic(root) == items
    from PIL import Image

    for it in items:
        assert it.image and (root / it.image).is_file()
    with Image.open(root / items[0].image) as img:
        assert img.size == (96, 96)


def test_labels_follow_the_irony_rule_and_flip_only_under_antonyms(built, wn: WordNet) -> None:
    root, items = built
    pairs = {p["pair_id"]: p for p in map(json.loads, (root / "pairs.jsonl").read_text().splitlines())}
    yn = {
        (it.pair_id, it.variant): it.gold
        for it in items
        if it.level == "perception" and it.format == "yes-no"
    }
    for pid, p in pairs.items():
        ironic = p["positive"] != WEATHER[p["weather"]][0]
        assert yn[(pid, "original")] == ("yes" if ironic else "no")
        assert yn[(pid, "synonymous")] == yn[(pid, "original")]
        assert yn[(pid, "antonymous")] != yn[(pid, "original")]
    golds = Counter(yn.values())
    assert golds["yes"] > 10 and golds["no"] > 10  # both labels well represented
    for it in items:  # reasoning questions exist exactly for captions with a punchline
        if it.level == "reasoning":
            assert yn[(it.pair_id, it.variant)] == "yes"


def test_verification_catches_a_wrong_label_and_a_fake_rewrite(built, wn: WordNet) -> None:
    root, items = built
    pairs = [json.loads(line) for line in (root / "pairs.jsonl").read_text().splitlines()]
    verify_items(items, pairs, wn)
    yn = next(it for it in items if it.format == "yes-no" and it.level == "perception")
    flipped = dataclasses.replace(yn, gold="no" if yn.gold == "yes" else "yes")
    with pytest.raises(LabelRuleError, match="irony rule"):
        verify_items([flipped], pairs, wn)
    ant = next(it for it in items if it.variant == "antonymous")
    p = next(p for p in pairs if p["pair_id"] == ant.pair_id)
    fake = dataclasses.replace(
        ant, caption=ant.caption.replace(wn.antonyms(p["adjective"])[0], p["adjective"])
    )
    with pytest.raises(LabelRuleError, match="antonymous rewrite"):
        verify_items([fake], pairs, wn)


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="pairs"):
        SyntheticConfig(pairs=0)
    with pytest.raises(ValueError, match="ironic_fraction"):
        SyntheticConfig(ironic_fraction=1.5)
