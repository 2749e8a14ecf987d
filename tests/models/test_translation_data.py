"""Translation data: the HSK pairs and the MetaphorTrans / RAGtrans readers with their typed errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from veil.models.translation.data import (
    MetaphorTransRecord,
    RagTransRecord,
    hsk_pairs,
    load_metaphortrans,
    load_ragtrans,
)
from veil.models.translation.errors import (
    AssetNotInstalledError,
    MalformedRecordError,
    TranslationDataError,
)


def _jsonl(path: Path, lines: list[object | str]) -> Path:
    path.write_text(
        "\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in lines) + "\n",
        encoding="utf-8",
    )
    return path


def test_hsk_pairs_are_the_distinct_chinese_sentences_with_their_english() -> None:
    pairs = hsk_pairs()
    assert len(pairs) == 4349  # 4,354 records, 4,349 distinct Chinese texts
    first = pairs[0]
    assert (first.id, first.source, first.target) == ("hsk1-0001", "老师，您好！", "Hello, teacher!")
    assert (first.source_language, first.target_language) == ("zh", "en")
    assert len({p.source for p in pairs}) == len(pairs)


def test_hsk_pairs_swap_direction_and_filter_levels() -> None:
    level1 = hsk_pairs("en", "zh", levels=[1])
    assert level1[0].source == "Hello, teacher!" and level1[0].target == "老师，您好！"
    assert all(p.id.startswith("hsk1-") for p in level1) and 250 < len(level1) <= 281
    with pytest.raises(ValueError, match="Chinese-English"):
        hsk_pairs("zh", "de")
    with pytest.raises(ValueError, match="HSK levels"):
        hsk_pairs(levels=[7])


def test_hsk_pairs_without_the_package_say_how_to_install_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "hsk_sentences_audio", None)
    with pytest.raises(AssetNotInstalledError, match="pip install hsk-sentences-audio"):
        hsk_pairs()


def test_metaphortrans_reads_json_lines_and_json_arrays(tmp_path: Path) -> None:
    rec = {"text": "He eats like a horse.", "trans": "他食量很大。", "thought": "First, ..."}
    lines = _jsonl(tmp_path / "m.jsonl", [rec, "", rec | {"text": "She sings like a bird."}])
    got = load_metaphortrans(lines)
    assert got[0] == MetaphorTransRecord(**rec) and got[1].text == "She sings like a bird."
    array = tmp_path / "m.json"
    array.write_text(json.dumps([rec], ensure_ascii=False), encoding="utf-8")
    assert load_metaphortrans(array) == [MetaphorTransRecord(**rec)]
    assert got[0].to_json() == rec


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"text": "a", "trans": "b"', "not valid JSON"),
        ('["a", "b", "c"]', "expected a JSON object, got list"),
        ({"text": "a", "trans": "b"}, "missing field 'thought'"),
        ({"text": "a", "trans": 3, "thought": "c"}, "field 'trans' must be a string, got int"),
        ({"text": " ", "trans": "b", "thought": "c"}, "field 'text' is empty"),
    ],
)
def test_malformed_metaphortrans_records_name_file_and_line(tmp_path: Path, line, problem: str) -> None:
    good = {"text": "a", "trans": "b", "thought": "c"}
    path = _jsonl(tmp_path / "m.jsonl", [good, line])
    with pytest.raises(MalformedRecordError, match=problem) as info:
        load_metaphortrans(path)
    assert info.value.line == 2 and info.value.path == str(path)


def test_an_empty_or_unreadable_file_is_a_data_error(tmp_path: Path) -> None:
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(TranslationDataError, match="no records"):
        load_ragtrans(empty)
    with pytest.raises(TranslationDataError, match="cannot read"):
        load_metaphortrans(tmp_path / "missing.jsonl")
    broken = tmp_path / "b.json"
    broken.write_text("[{", encoding="utf-8")
    with pytest.raises(TranslationDataError, match="not valid JSON"):
        load_ragtrans(broken)


def test_ragtrans_reads_train_lines_and_expands_test_lines(tmp_path: Path) -> None:
    train = {
        "src": "Tavreno is a town.",
        "tgt": "索卡镇是一座小镇。",
        "doc": "【索卡镇】...",
        "tag": "clean_zh",
    }
    noisy = train | {"doc": "Another page.", "tag": "noisy_en"}
    test = {"src": "s", "tgt": "t", "en_doc": "English page", "zh_doc": "【标题】中文", "de_doc": "Deutsch"}
    got = load_ragtrans(_jsonl(tmp_path / "r.jsonl", [train, noisy, test]))
    assert got[0] == RagTransRecord(**train) and got[0].is_clean and got[0].doc_language == "zh"
    assert not got[1].is_clean and got[1].doc_language == "en"
    assert [(r.tag, r.doc) for r in got[2:]] == [
        ("clean_en", "English page"),
        ("clean_zh", "【标题】中文"),
        ("clean_de", "Deutsch"),
    ]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ({"src": "a", "tgt": "b", "doc": "c", "tag": "relevant"}, "tag must be clean_<lang> or noisy_<lang>"),
        ({"src": "a", "tgt": "b", "doc": "c"}, "missing field 'tag'"),
        ({"src": "a", "tgt": "b", "doc": None, "tag": "clean_en"}, "field 'doc' must be a string"),
        ({"src": "a", "tgt": "b", "english_doc": "c"}, "does not name a language"),
        ({"src": "a", "tgt": "b", "en_doc": 1}, "field 'en_doc' must be a string"),
        (7, "expected a JSON object, got int"),
    ],
)
def test_malformed_ragtrans_records_are_typed_errors(tmp_path: Path, line, problem: str) -> None:
    with pytest.raises(MalformedRecordError, match=problem) as info:
        load_ragtrans(_jsonl(tmp_path / "r.jsonl", [line]))
    assert info.value.line == 1


def test_a_record_refuses_a_tag_outside_the_format() -> None:
    with pytest.raises(ValueError, match="tag must be"):
        RagTransRecord("a", "b", "c", "clean")
