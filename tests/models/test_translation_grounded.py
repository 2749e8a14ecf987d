"""The generated document-grounded set: renderings only in documents, and the three kinds of document."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from veil.models.translation.data import load_ragtrans
from veil.models.translation.grounded import (
    NOISE_KINDS,
    GroundedSetConfig,
    grounded_records,
    grounded_set,
)


@pytest.fixture(scope="module")
def examples():
    return grounded_set(GroundedSetConfig(n_examples=60, seed=3))


def test_the_set_is_a_pure_function_of_its_config(examples) -> None:
    assert grounded_set(GroundedSetConfig(n_examples=60, seed=3)) == examples
    assert grounded_set(GroundedSetConfig(n_examples=60, seed=4)) != examples


def test_the_rendering_is_in_the_reference_and_the_clean_document_only(examples) -> None:
    for e in examples:
        rendering = e.entity.rendering
        assert rendering in e.tgt and rendering in e.documents["clean"]
        assert rendering not in e.src
        assert rendering not in e.documents["irrelevant"] and rendering not in e.documents["partial"]
        assert not re.search(r"[\u4e00-\u9fff]", e.src)  # the source is English


def test_every_example_has_its_own_entity(examples) -> None:
    assert len({e.entity.name for e in examples}) == len(examples)
    assert len({e.entity.rendering for e in examples}) == len(examples)


def test_a_partial_document_is_a_namesake_with_another_rendering(examples) -> None:
    for e in examples:
        stem = e.entity.name.split()[0].lower()
        stem = stem[: -len("ite")] if e.entity.kind == "mineral" else stem
        assert stem in e.documents["partial"].lower()
        assert e.documents["partial"] != e.documents["clean"]


def test_documents_alternate_languages_and_chinese_ones_start_with_a_title(examples) -> None:
    assert [e.doc_language for e in examples[:4]] == ["en", "zh", "en", "zh"]
    for e in examples:
        for doc in e.documents.values():
            if e.doc_language == "zh":
                assert doc.startswith("【") and "】" in doc
            else:
                assert "(Chinese: " in doc


def test_records_carry_ragtrans_tags_and_survive_a_file(examples, tmp_path: Path) -> None:
    import json

    for noise in NOISE_KINDS:
        records = grounded_records(examples, noise)
        assert all(r.is_clean == (noise == "clean") for r in records)
        assert [r.doc_language for r in records] == [e.doc_language for e in examples]
        path = tmp_path / f"{noise}.jsonl"
        path.write_text(
            "\n".join(json.dumps(r.to_json(), ensure_ascii=False) for r in records), encoding="utf-8"
        )
        assert load_ragtrans(path) == records
    with pytest.raises(ValueError, match="noise must be one of"):
        examples[0].record("noisy")


def test_english_documents_only_and_bad_configs() -> None:
    only_en = grounded_set(GroundedSetConfig(n_examples=5, doc_languages=("en",)))
    assert {e.doc_language for e in only_en} == {"en"}
    with pytest.raises(ValueError, match="n_examples"):
        GroundedSetConfig(n_examples=1)
    with pytest.raises(ValueError, match="doc_languages"):
        GroundedSetConfig(doc_languages=("de",))
    with pytest.raises(ValueError, match="kinds"):
        GroundedSetConfig(kinds=("river",))


def test_a_rendering_pool_shares_renderings_but_never_names_or_a_noise_rendering() -> None:
    from veil.models.translation.grounded import GroundedSetConfig, grounded_set

    examples = grounded_set(GroundedSetConfig(n_examples=200, rendering_pool=10, seed=1))
    renderings = [e.entity.rendering for e in examples]
    assert len(set(renderings)) <= 10 * 5 < len(renderings)  # 10 stems, each with a kind's word
    assert len({e.entity.name for e in examples}) == len(examples)
    for e in examples:
        assert e.entity.rendering in e.documents["clean"] and e.entity.rendering in e.tgt
        assert e.entity.rendering not in e.documents["irrelevant"]
    with pytest.raises(ValueError, match="rendering_pool"):
        GroundedSetConfig(rendering_pool=1)
