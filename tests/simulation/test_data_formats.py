"""Population container and the real-data loaders, on fixtures written in the published layouts."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from veil.simulation.data import (
    DatasetFormatError,
    Example,
    Population,
    load_amazon,
    load_leaf_reddit,
    load_sentiment140,
)

FIXTURES = Path(__file__).parent / "fixtures"
S140 = FIXTURES / "sentiment140_sample.csv"
REDDIT = FIXTURES / "leaf_reddit_sample.json"
SPLIT_PDT = datetime(2009, 6, 6, 23, 53, 52, tzinfo=timezone(timedelta(hours=-7))).timestamp()
AMAZON_SPLIT_MS = 1632712835970


def _population(**kw: object) -> Population:
    train = [Example("u1", "x", "a", 1.0), Example("u2", "y", "b", 2.0), Example("u1", "z", "b", 3.0)]
    args: dict = dict(name="toy", task="classification", labels=["a", "b"], train=train, meta={"k": 1})
    return Population(**(args | {"test": [Example("u3", "w", "a", 4.0)]} | kw))


# --- Population -------------------------------------------------------------------------------------
def test_population_accessors() -> None:
    pop = _population()
    assert pop.users == ["u1", "u2", "u3"]
    assert [e.text for e in pop.by_user("train")["u1"]] == ["x", "z"]
    assert list(pop.by_user("test")) == ["u3"]
    assert pop.label_index("b") == 1
    sub = pop.subset(["u1"])
    assert sub.users == ["u1"] and len(sub.train) == 2 and not sub.test
    assert sub.meta["subset_of"] == {"name": "toy", "n_users": 3} and "subset_of" not in pop.meta
    summary = pop.summary()
    assert summary["train"] == {"examples": 3, "users": 2, "labels": {"a": 1, "b": 2}}
    assert summary["test"]["examples"] == 1 and summary["users"] == 3
    json.dumps(summary)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"task": "regression"}, "task must be one of"),
        ({"labels": ["a"]}, "label 'b'"),
        ({"labels": []}, "no labels"),
        ({"labels": ["a", "b", "a"]}, "duplicates"),
        ({"train": [], "test": []}, "empty"),
        ({"meta": {"bad": object()}}, "JSON"),
    ],
)
def test_population_validation(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _population(**kw)


def test_population_bad_queries() -> None:
    pop = _population()
    with pytest.raises(ValueError, match="unknown label"):
        pop.label_index("c")
    with pytest.raises(ValueError, match="not in population"):
        pop.subset(["u1", "nobody"])
    with pytest.raises(ValueError, match="empty"):
        pop.subset([])
    with pytest.raises(ValueError, match="split must be"):
        pop.by_user("val")  # type: ignore[arg-type]


# --- Sentiment140 -----------------------------------------------------------------------------------
def test_sentiment140_top_users_labels_and_split() -> None:
    pop = load_sentiment140(S140, top_users=4)
    # 10, 8, 8 tweets, then dave_x and erin_m tie at 6: the alphabetically first name wins
    assert pop.users == ["alice_w", "bob_k", "carol99", "dave_x"]
    assert pop.meta["tweets_per_user"] == {"alice_w": 10, "bob_k": 8, "carol99": 8, "dave_x": 6}
    assert pop.labels == ["negative", "positive"] and pop.task == "classification"
    assert len(pop.train) + len(pop.test) == 32
    assert all(e.time <= SPLIT_PDT for e in pop.train) and all(e.time > SPLIT_PDT for e in pop.test)
    assert pop.meta["split_time"] == SPLIT_PDT
    at_split = [e for e in pop.train if e.time == SPLIT_PDT]
    assert [(e.user, e.label) for e in at_split] == [("alice_w", "negative")]  # boundary goes to train
    texts = {e.text for e in pop.train + pop.test}
    assert 'the "fast" train was an hour late' in texts  # CSV quote escaping undone
    assert "caf\xe9 on the corner has the best muffins" in texts  # latin-1 decoded
    assert [e.time for e in pop.train] == sorted(e.time for e in pop.train)


def test_sentiment140_all_users_neutral_skipped_and_float_split() -> None:
    pop = load_sentiment140(S140, top_users=1000, split_time=SPLIT_PDT)
    assert pop.users == ["alice_w", "bob_k", "carol99", "dave_x", "erin_m", "frank"]
    assert len(pop.train) + len(pop.test) == 40  # the neutral row of frank is skipped
    assert pop.meta["tweets_per_user"]["frank"] == 2
    assert pop.train == load_sentiment140(S140, top_users=1000).train
    with pytest.raises(ValueError, match="top_users"):
        load_sentiment140(S140, top_users=0)


@pytest.mark.parametrize(
    ("bad_row", "match"),
    [
        ('"0","1","Mon Apr 06 22:19:45 PDT 2009","NO_QUERY","zed"', "expected 6 columns, got 5"),
        ('"1","1","Mon Apr 06 22:19:45 PDT 2009","NO_QUERY","zed","hi"', "polarity must be"),
        ('"0","1","2009-04-06 22:19:45","NO_QUERY","zed","hi"', "expected a date"),
        ('"0","1","Mon Apr 06 22:19:45 CET 2009","NO_QUERY","zed","hi"', "expected a date"),
        ('"0","1","Mon Apr 36 22:19:45 PDT 2009","NO_QUERY","zed","hi"', "does not match|out of range"),
        ('"4","1","Mon Apr 06 22:19:45 PDT 2009","NO_QUERY","","hi"', "empty user"),
    ],
)
def test_sentiment140_malformed_row(tmp_path: Path, bad_row: str, match: str) -> None:
    lines = S140.read_text(encoding="latin-1").splitlines()
    lines.insert(7, bad_row)
    path = tmp_path / "broken.csv"
    path.write_text("\n".join(lines) + "\n", encoding="latin-1")
    with pytest.raises(DatasetFormatError, match=match) as info:
        load_sentiment140(path)
    assert "broken.csv, line 8" in str(info.value)


# --- Amazon -----------------------------------------------------------------------------------------
def test_amazon_labels_and_split() -> None:
    pop = load_amazon(FIXTURES / "amazon")
    assert pop.users == ["user1", "user2", "user3"] and pop.labels == ["<=3", "4", "5"]
    by_text = {e.text: e for e in pop.train + pop.test}
    assert by_text["It is fine. Nothing special."].label == "<=3"
    assert by_text["Arrived broken and support never answered."].label == "<=3"
    assert by_text["Good value, but the strap feels cheap."].label == "4"
    assert by_text["Best kettle I have owned."].label == "5"
    boundary = by_text["Stopped charging after a week."]
    assert boundary.time == AMAZON_SPLIT_MS / 1000 and boundary in pop.train
    assert by_text["Nice colour, fits well."] in pop.test  # one millisecond after the split
    assert (len(pop.train), len(pop.test)) == (6, 3)
    assert all(e.time * 1000 <= AMAZON_SPLIT_MS for e in pop.train)


def test_amazon_json_lines_and_other_files_ignored(tmp_path: Path) -> None:
    reviews = json.loads((FIXTURES / "amazon" / "user2.json").read_text())
    (tmp_path / "user7.json").write_text("\n".join(json.dumps(r) for r in reviews) + "\n\n")
    (tmp_path / "notes.txt").write_text("not a user file")
    (tmp_path / "userX.json").write_text("not json")
    pop = load_amazon(tmp_path, split_time_ms=0)
    assert pop.users == ["user7"] and not pop.train and len(pop.test) == 3


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('[{"rate": 5, "text": "ok", "time": 1}', "line 1: invalid JSON"),
        ('{"rate": 5, "text": "ok", "time": 1}\n{"rate": 5,', "line 2: invalid JSON"),
        ('[{"rate": 6, "text": "ok", "time": 1}]', "record 0: 'rate' must be"),
        ('[{"rate": 5, "text": "a", "time": 1}, {"rate": 4.5, "text": "b", "time": 1}]', "record 1: 'rate'"),
        ('[{"rate": true, "text": "ok", "time": 1}]', "'rate' must be"),
        ('[{"rate": 5, "time": 1}]', "expected an object"),
        ('["just text"]', "expected an object"),
        ('[{"rate": 5, "text": "ok", "time": "yesterday"}]', "'time' must be"),
        ('[{"rate": 5, "text": 3, "time": 1}]', "'text' must be"),
    ],
)
def test_amazon_malformed(tmp_path: Path, content: str, match: str) -> None:
    (tmp_path / "user1.json").write_text(content)
    with pytest.raises(DatasetFormatError, match=match) as info:
        load_amazon(tmp_path)
    assert "user1.json" in str(info.value)


def test_amazon_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(DatasetFormatError, match="no user"):
        load_amazon(tmp_path)


# --- LEAF Reddit ------------------------------------------------------------------------------------
def test_leaf_reddit_examples_and_user_filter() -> None:
    pop = load_leaf_reddit(REDDIT, min_samples=3)
    assert pop.task == "next_word" and pop.users == ["1", "2"]  # user 3 has only 2 comments
    assert load_leaf_reddit(REDDIT, min_samples=4).users == ["1"]  # strictly more than min_samples
    examples = pop.train + pop.test
    assert not any(m in e.text or m in e.label for e in examples for m in ("<PAD>", "<BOS>", "<EOS>"))
    assert set(pop.labels) == {e.label for e in examples}
    patch = [e for e in pop.train if e.text.startswith("the new patch")]
    assert [(e.text, e.label) for e in patch[:2]] == [
        ("the new patch", "broke"),
        ("the new patch broke", "my"),
    ]
    # a prompt runs across LEAF's 10-token rows of one comment
    assert Example("1", "thanks for the link , it helped a lot", "and", 1512200000.0) in pop.train
    # the row holding a 49-character URL is dropped and the next row starts a fresh prompt
    assert not any("http" in e.text or "check" in e.text for e in examples)
    assert Example("1", "then come", "back", 1512250000.0) in pop.train


def test_leaf_reddit_time_split_per_user() -> None:
    pop = load_leaf_reddit(REDDIT, min_samples=3)
    train, test = pop.by_user("train"), pop.by_user("test")
    for user in pop.users:
        assert max(e.time for e in train[user]) < min(e.time for e in test[user])
    # user 1: 5 comments -> last 1 (by created_utc, not file order) in test; user 2: 4 -> last 1
    assert {e.text for e in test["1"]} == {
        "see",
        "see you",
        "see you at",
        "see you at the",
        "see you at the meetup",
    }
    assert {e.label for e in test["2"]} == {"a", "match", "that", "was"}
    assert pop.meta["split"].startswith("per user")


def test_leaf_reddit_prompt_cap_and_raw_strings(tmp_path: Path) -> None:
    pop = load_leaf_reddit(REDDIT, min_samples=3, max_prompt_tokens=2)
    assert max(len(e.text.split()) for e in pop.train) == 2
    assert Example("1", "patch broke", "my", 1512090000.0) in pop.train
    raw = {
        "users": ["9"],
        "num_samples": [2],
        "user_data": {
            "9": {"x": ["hello there friend", "bye now"], "y": [{"created_utc": "20"}, {"created_utc": 10}]}
        },
    }
    (tmp_path / "raw.json").write_text(json.dumps(raw))
    pop = load_leaf_reddit(tmp_path / "raw.json", min_samples=1, test_fraction=0.5)
    assert [(e.text, e.label) for e in pop.train] == [("bye", "now")]
    assert [(e.text, e.label) for e in pop.test] == [("hello", "there"), ("hello there", "friend")]


def test_leaf_reddit_directory_merges_split_files(tmp_path: Path) -> None:
    data = json.loads(REDDIT.read_text())
    for part, keep in (("train", slice(0, 3)), ("test", slice(3, None))):
        piece = dict(
            data, user_data={u: {"x": d["x"][keep], "y": d["y"][keep]} for u, d in data["user_data"].items()}
        )
        (tmp_path / part).mkdir()
        (tmp_path / part / f"reddit_0_{part}.json").write_text(json.dumps(piece))
    merged = load_leaf_reddit(tmp_path, min_samples=3)
    single = load_leaf_reddit(REDDIT, min_samples=3)
    assert sorted(merged.train, key=repr) == sorted(single.train, key=repr)
    assert sorted(merged.test, key=repr) == sorted(single.test, key=repr)
    assert merged.meta["files"] == ["reddit_0_test.json", "reddit_0_train.json"]


def _reddit_variant(tmp_path: Path, edit) -> Path:  # noqa: ANN001
    data = json.loads(REDDIT.read_text())
    edit(data)
    path = tmp_path / "reddit_bad.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.pop("user_data"), "top-level"),
        (lambda d: d["num_samples"].pop(), "equal length"),
        (lambda d: d["user_data"].pop("2"), "user '2': user_data needs"),
        (lambda d: d["user_data"]["1"]["y"].pop(), "user '1': user_data needs"),
        (lambda d: d["user_data"]["1"]["y"][2].pop("created_utc"), "user '1', sample 2: y must be"),
        (lambda d: d["user_data"]["1"]["y"][2].update(created_utc="soon"), "sample 2: bad created_utc"),
        (lambda d: d["user_data"]["2"]["y"][1]["target_tokens"][0].pop(), "sample 1: x and y"),
        (lambda d: d["user_data"]["2"]["y"][1].pop("target_tokens"), "sample 1: x and y"),
        (lambda d: d["user_data"]["2"]["x"][0][0].__setitem__(3, 7), "sample 0: x and y"),
    ],
)
def test_leaf_reddit_malformed(tmp_path: Path, edit, match: str) -> None:  # noqa: ANN001
    with pytest.raises(DatasetFormatError, match=match) as info:
        load_leaf_reddit(_reddit_variant(tmp_path, edit), min_samples=3)
    assert "reddit_bad.json" in str(info.value)


def test_leaf_reddit_bad_inputs(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text('{"users": [')
    with pytest.raises(DatasetFormatError, match="broken.json, line 1: invalid JSON"):
        load_leaf_reddit(tmp_path / "broken.json")
    with pytest.raises(ValueError, match="more than min_samples=300"):
        load_leaf_reddit(REDDIT)
    with pytest.raises(ValueError, match="test_fraction"):
        load_leaf_reddit(REDDIT, test_fraction=1.0)
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(S140, empty / "not_json.csv")
    with pytest.raises(DatasetFormatError, match="no .json files"):
        load_leaf_reddit(empty)
