"""Retrieval layer of DeepRAG (veil.models.rag): corpus ingestion, BM25, MiniLM, fusion, collections."""

from __future__ import annotations

import json
import math
import os
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from veil.models.rag import (
    MODES,
    ChunkConfig,
    Collection,
    CollectionNameError,
    CorpusError,
    Document,
    DuplicateIdError,
    EmptyCorpusError,
    IndexConfig,
    IndexFormatError,
    MalformedRecordError,
    RagError,
    chunk_document,
    collection_dir,
    ingest,
    load_corpus,
    reciprocal_rank_fusion,
    tokenize,
    top_k,
)
from veil.models.rag.collection import _previous
from veil.models.rag.dense import DenseIndex
from veil.models.rag.markup import SECTION_BREAK, strip_markdown
from veil.models.rag.sparse import BM25Index

FACTS = [
    (
        "cats",
        "Cats",
        "The domestic cat is a small carnivorous mammal kept as a pet; kittens purr and chase mice.",
    ),
    (
        "volcano",
        "Volcano",
        "A volcano erupts molten lava, ash and gases from a magma chamber below the crust.",
    ),
    (
        "paris",
        "Paris",
        "Paris is the capital of France, on the Seine, home of the Eiffel Tower and the Louvre.",
    ),
    ("python", "Python", "Python is a programming language with dynamic typing and garbage collection."),
    ("tea", "Tea", "Tea is brewed by pouring hot water over cured leaves of the Camellia sinensis shrub."),
    (
        "piano",
        "Piano",
        "The piano is a keyboard instrument whose hammers strike strings when keys are pressed.",
    ),
    (
        "glacier",
        "Glacier",
        "A glacier is a persistent body of dense ice that moves slowly under its own weight.",
    ),
    ("bees", "Bees", "Honey bees collect nectar and pollen from flowers and store honey in wax combs."),
]


def fact_documents() -> list[Document]:
    return [Document(id=i, title=t, text=x) for i, t, x in FACTS]


class HashEncoder:
    """A deterministic bag-of-words encoder (hashed unigrams): fast, and semantically trivial."""

    name = "hash-bow"
    dim = 64

    def __init__(self, fail_on: str | None = None) -> None:
        self.fail_on = fail_on
        self.encoded = 0

    def encode(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            if self.fail_on and self.fail_on in text:
                raise RuntimeError(f"encoder failure injected on {self.fail_on!r}")
            for token in tokenize(text):
                out[row, zlib.crc32(token.encode()) % self.dim] += 1.0
        self.encoded += len(texts)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


# -- corpus -----------------------------------------------------------------------------------------


def test_markdown_is_stripped_to_text_with_one_section_per_heading():
    md = """---
title: ignored front matter
---
# Veil guide

Read **the [docs](https://example.org/docs)** and *then* ![a logo](logo.png) `veil demo`.
<!-- a comment -->

Setup
-----
> 1. Install with `pip`.
> 2. Run it.

| flag | meaning |
| ---- | ------- |
| `-q` | quiet_mode |

```bash
veil serve --port 8000
```
[docs]: https://example.org
"""
    text, title = strip_markdown(md)
    assert title == "Veil guide"
    sections = text.split(SECTION_BREAK)
    assert sections[0] == "Veil guide\nRead the docs and then a logo veil demo."
    assert sections[1].splitlines() == [
        "Setup",
        "Install with pip.",
        "Run it.",
        "flag   meaning",
        "-q   quiet_mode",
        "veil serve --port 8000",
    ]
    assert len(sections) == 2


def test_chunking_makes_100_word_windows_merges_short_tails_and_never_crosses_sections():
    words = [f"w{i}" for i in range(220)]
    doc = Document(id="d", text=" ".join(words[:210]) + SECTION_BREAK + " ".join(words[210:]))
    passages = chunk_document(doc, ChunkConfig(passage_words=100, min_tail_words=25))
    # section 2 (10 words) is short, so it joins section 1: 220 words -> [0:100] [100:200] [200:220], and
    # the 20-word tail joins the window before: [0:100] [100:220]
    assert [p.id for p in passages] == ["d#0", "d#1"]
    assert passages[0].text.split() == words[:100]
    assert passages[1].text.split() == words[100:220]
    crossing = Document(id="e", text=" ".join(words[:60]) + SECTION_BREAK + " ".join(words[60:120]))
    assert [p.text.split() for p in chunk_document(crossing, ChunkConfig(passage_words=100))] == [
        words[:60],
        words[60:120],
    ]
    assert chunk_document(Document(id="empty", text=" \n "), ChunkConfig()) == []
    with pytest.raises(ValueError, match="min_tail_words"):
        ChunkConfig(passage_words=10, min_tail_words=11)


def test_a_directory_is_ingested_and_binary_unreadable_and_unknown_files_are_skipped_and_reported(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("Plain text about volcanoes and lava.")
    (tmp_path / "notes" / "b.md").write_text("# Bees\n\nHoney **bees** make honey.")
    (tmp_path / "wiki.jsonl").write_text(
        json.dumps({"id": 7, "contents": '"Paris"\nParis is the capital of France.'})
        + "\n\n"
        + json.dumps({"id": "x1", "contents": "no title line here"})
        + "\n"
    )
    (tmp_path / "logo.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "empty.md").write_text("<!-- nothing -->\n")
    (tmp_path / "dangling.txt").symlink_to(tmp_path / "missing-target")
    os.mkfifo(tmp_path / "pipe.txt")  # reading it would block forever
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "secret.txt").write_text("never read")

    result = load_corpus(tmp_path)

    docs = {d.id: d for d in result.documents}
    assert sorted(docs) == ["7", "notes/a.txt", "notes/b.md", "x1"]
    assert (docs["7"].title, docs["7"].text) == ("Paris", "Paris is the capital of France.")
    assert (docs["x1"].title, docs["x1"].text) == ("", "no title line here")
    assert (docs["notes/b.md"].title, docs["notes/b.md"].text) == ("Bees", "Bees\nHoney bees make honey.")
    reasons = {Path(s.path).name: s.reason for s in result.skipped}
    assert reasons["logo.txt"].startswith("binary (NUL byte at offset 8)")
    assert reasons["latin1.txt"] == "not UTF-8 text (byte 0xe9 at offset 3)"
    assert reasons["image.png"].startswith("unsupported file type '.png'")
    assert reasons["empty.md"] == "no text"
    assert reasons["dangling.txt"] == "unreadable: No such file or directory"
    assert reasons["pipe.txt"] == "not a regular file"
    assert set(reasons) == {"logo.txt", "latin1.txt", "image.png", "empty.md", "dangling.txt", "pipe.txt"}


def test_a_malformed_jsonl_line_is_reported_with_its_line_number(tmp_path):
    good = json.dumps({"id": "1", "contents": "T\nbody"})
    cases = {
        "{not json": "not JSON",
        '["a list"]': "expected a JSON object, got list",
        '{"id": "2"}': '"contents" must be a string, got NoneType',
        '{"id": true, "contents": "x"}': '"id" must be a non-empty string or integer',
    }
    for bad, problem in cases.items():
        path = tmp_path / "corpus.jsonl"
        path.write_text(f"{good}\n\n{bad}\n{good}\n")
        with pytest.raises(MalformedRecordError, match=f"corpus.jsonl, line 3: {problem}") as info:
            load_corpus(path)
        assert info.value.line == 3
        assert isinstance(info.value, CorpusError) and isinstance(info.value, RagError)


def test_duplicate_ids_empty_corpora_and_missing_paths_raise_typed_errors(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"id": 1, "contents": "x\ny"}) + "\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"id": "1", "contents": "z\nw"}) + "\n")
    with pytest.raises(DuplicateIdError, match=r"duplicate document id '1': .*b\.jsonl:1 and .*a\.jsonl:1"):
        load_corpus(tmp_path)
    (tmp_path / "only.bin").write_bytes(b"\0\1")
    with pytest.raises(EmptyCorpusError, match="1 file.s. skipped, first: .*only.bin: unsupported"):
        load_corpus(tmp_path / "only.bin")
    with pytest.raises(CorpusError, match="no such file or directory"):
        load_corpus(tmp_path / "nope")
    with pytest.raises(EmptyCorpusError):
        Collection("c", encoder=HashEncoder()).add([Document(id="blank", text="  ")])


# -- ranking math -----------------------------------------------------------------------------------


def test_top_k_matches_a_full_stable_sort_including_ties():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 100):
        for k in (1, 3, n, n + 5):
            scores = rng.integers(0, 4, size=n).astype(np.float32)  # many ties
            naive = sorted(range(n), key=lambda i: (-scores[i], i))[:k]
            assert top_k(scores, k).tolist() == naive
    assert top_k(np.zeros(0), 3).tolist() == []


def test_reciprocal_rank_fusion_matches_the_formula_written_out():
    rng = np.random.default_rng(1)
    for _ in range(20):
        lists = [rng.permutation(30)[: rng.integers(1, 30)] for _ in range(rng.integers(1, 4))]
        weights = rng.uniform(0, 2, size=len(lists)).tolist()
        expected: Counter[int] = Counter()
        for ranking, w in zip(lists, weights, strict=True):
            for rank, item in enumerate(ranking.tolist(), start=1):
                expected[item] += w / (60 + rank)
        ids, scores = reciprocal_rank_fusion(lists, weights, k=60)
        assert sorted(ids.tolist()) == sorted(expected)
        np.testing.assert_allclose(scores, [expected[i] for i in ids.tolist()], rtol=1e-12)
        assert all(np.diff(scores) <= 0)
    with pytest.raises(ValueError, match="one weight per ranking"):
        reciprocal_rank_fusion([np.array([1])], [1.0, 2.0])


def lucene_bm25(corpus: list[list[str]], query: list[str], k1: float = 1.2, b: float = 0.75) -> list[float]:
    """Lucene's BM25 (Elasticsearch 7's default similarity), written out term by term.

    Lucene 8 dropped the constant ``(k1 + 1)`` factor from the numerator; rankings are unchanged.
    """
    n = len(corpus)
    avgdl = sum(map(len, corpus)) / n
    df = Counter(t for doc in corpus for t in set(doc))
    out = []
    for doc in corpus:
        tf = Counter(doc)
        score = 0.0
        for t in query:
            if tf[t]:
                idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
                score += idf * tf[t] / (tf[t] + k1 * (1 - b + b * len(doc) / avgdl))
        out.append(score)
    return out


def test_bm25_scores_equal_lucene_bm25_written_out_and_an_unknown_query_scores_zero():
    texts = [f"{t}\n{x}" for _, t, x in FACTS]
    index = BM25Index()
    index.add(texts[:5])
    index.add(texts[5:])  # a rebuild over all eight
    for query in ("capital of France", "the honey bees", "ice that moves slowly the the"):
        expected = lucene_bm25([tokenize(t) for t in texts], tokenize(query))
        np.testing.assert_allclose(index.scores(query), expected, rtol=1e-5)
    assert index.scores("zzz qqq").tolist() == [0.0] * 8


# -- collections ------------------------------------------------------------------------------------


def assert_same_hits(
    a: Collection, b: Collection, queries=("capital of France", "bees honey", "molten lava")
):
    for mode in MODES:
        for query in queries:
            ha, hb = a.search(query, k=3, mode=mode), b.search(query, k=3, mode=mode)
            assert [h.id for h in ha] == [h.id for h in hb], (mode, query)
            np.testing.assert_allclose([h.score for h in ha], [h.score for h in hb], rtol=1e-4)


def test_search_returns_ids_scores_and_text_in_every_mode():
    collection = Collection("facts", encoder=HashEncoder())
    collection.add(fact_documents())
    for mode in MODES:
        hits = collection.search("the capital of France", k=2, mode=mode)
        assert hits[0].id == "paris#0" and hits[0].doc_id == "paris"
        assert hits[0].title == "Paris" and hits[0].text.startswith("Paris is the capital")
        assert len(hits) == 2 and hits[0].score >= hits[1].score
    assert collection.search("zzz", k=3, mode="bm25") == []  # BM25 returns only passages sharing a term
    with pytest.raises(ValueError, match="mode must be one of hybrid, bm25, dense, got 'fuzzy'"):
        collection.search("x", mode="fuzzy")  # type: ignore[arg-type]


def test_hybrid_is_reciprocal_rank_fusion_of_the_two_rankings_with_the_configured_weights():
    cfg = IndexConfig(rrf_k=10, bm25_weight=2.0, dense_weight=0.5, fusion_depth=8)
    collection = Collection("facts", cfg, encoder=HashEncoder())
    collection.add(fact_documents())
    query = "water and ice"
    bm25 = [h.id for h in collection.search(query, k=8, mode="bm25")]
    dense = [h.id for h in collection.search(query, k=8, mode="dense")]
    expected: Counter[str] = Counter()
    for ranking, w in ((bm25, 2.0), (dense, 0.5)):
        for rank, pid in enumerate(ranking, start=1):
            expected[pid] += w / (10 + rank)
    hits = collection.search(query, k=8, mode="hybrid")
    assert {h.id: h.score for h in hits} == pytest.approx(dict(expected))


def test_adding_in_two_steps_equals_building_at_once_without_re_embedding_old_passages():
    docs = fact_documents()
    at_once = Collection("facts", encoder=HashEncoder())
    at_once.add(docs)
    encoder = HashEncoder()
    stepwise = Collection("facts", encoder=encoder)
    stepwise.add(docs[:3])
    stepwise.add(docs[3:])
    assert encoder.encoded == len(docs)  # each passage embedded once (one passage per fact)
    assert [p.id for p in stepwise.passages] == [p.id for p in at_once.passages]
    assert_same_hits(stepwise, at_once)
    with pytest.raises(DuplicateIdError, match="duplicate document id 'cats'"):
        stepwise.add([Document(id="new", text="fresh"), Document(id="cats", text="again")])
    assert len(stepwise) == len(docs)  # the failed add changed nothing


def test_save_and_load_round_trip_gives_the_same_answers_and_incremental_add_after_load(tmp_path):
    collection = Collection("facts", encoder=HashEncoder())
    collection.add(fact_documents()[:6])
    path = collection.save(tmp_path / "facts")
    loaded = Collection.load(path, encoder=HashEncoder())
    assert loaded.passages == collection.passages and loaded.config == collection.config
    assert_same_hits(loaded, collection)
    loaded.add(fact_documents()[6:])  # the loaded BM25 index re-tokenises its texts to rebuild
    collection.add(fact_documents()[6:])
    assert_same_hits(loaded, collection, queries=("glacier ice", "bees", "the capital"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["facts"]  # no temporary left behind


def test_a_failed_ingestion_or_a_crash_mid_save_leaves_the_previous_index_loadable(tmp_path, monkeypatch):
    (tmp_path / "v1").mkdir()
    for doc_id, title, text in FACTS[:4]:
        (tmp_path / "v1" / f"{doc_id}.txt").write_text(f"{title}. {text}")
    first = ingest("facts", tmp_path / "v1", encoder=HashEncoder(), data_dir=tmp_path / "data")
    target = collection_dir("facts", tmp_path / "data")
    assert first.path == target and len(first.collection) == 4
    before = [h.id for h in Collection.load(target, HashEncoder()).search("capital of France", k=2)]

    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "poison.txt").write_text("this document makes the encoder raise POISON")
    with pytest.raises(RuntimeError, match="encoder failure injected"):
        ingest("facts", tmp_path / "v2", encoder=HashEncoder(fail_on="POISON"), data_dir=tmp_path / "data")
    assert len(Collection.load(target, HashEncoder())) == 4

    def crash(self, directory):
        raise OSError("disk full (injected)")

    (tmp_path / "v3").mkdir()
    (tmp_path / "v3" / "tea.txt").write_text(FACTS[4][2])
    monkeypatch.setattr(DenseIndex, "save", crash)
    with pytest.raises(OSError, match="injected"):
        ingest("facts", tmp_path / "v3", encoder=HashEncoder(), data_dir=tmp_path / "data")
    monkeypatch.undo()
    survivor = Collection.load(target, HashEncoder())
    assert len(survivor) == 4
    assert [h.id for h in survivor.search("capital of France", k=2)] == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["facts"]

    # a crash between moving the old copy aside and renaming the new one in: the old copy still loads
    os.rename(target, _previous(target))
    assert len(Collection.load(target, HashEncoder())) == 4
    again = ingest("facts", tmp_path / "v3", encoder=HashEncoder(), data_dir=tmp_path / "data")
    assert len(again.collection) == 5 and sorted(p.name for p in target.parent.iterdir()) == ["facts"]


def test_collection_names_are_validated_and_a_foreign_directory_is_never_replaced(tmp_path):
    for bad in ("", "Upper", "a/b", "..", "x" * 65, "sp ace", "é"):
        with pytest.raises(CollectionNameError, match="1-64 characters"):
            Collection(bad)
    assert collection_dir("ok-name_1", tmp_path) == tmp_path / "rag" / "ok-name_1"
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("years of work")
    collection = Collection("facts", encoder=HashEncoder())
    collection.add(fact_documents())
    with pytest.raises(IndexFormatError, match="not a saved collection"):
        collection.save(tmp_path / "precious")
    assert (tmp_path / "precious" / "thesis.tex").read_text() == "years of work"
    with pytest.raises(IndexFormatError, match="no readable collection"):
        Collection.load(tmp_path / "precious")
    path = collection.save(tmp_path / "facts")
    with pytest.raises(IndexFormatError, match="embedded with hash-bow"):
        Collection.load(path, encoder=type("Other", (HashEncoder,), {"name": "other"})())


def test_a_bm25_only_collection_needs_no_encoder():
    collection = Collection("sparse", IndexConfig(dense=False))
    collection.add(fact_documents())
    assert collection.search("Eiffel Tower", k=1, mode="bm25")[0].id == "paris#0"
    with pytest.raises(RagError, match="no dense index"):
        collection.search("Eiffel Tower", mode="hybrid")


# -- the real MiniLM --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    from veil.models.rag import load_minilm

    return load_minilm()


def test_minilm_from_the_wheel_gives_unit_vectors_that_rank_by_meaning(minilm):
    vectors = minilm.encode(["a kitten is a young feline", "young cats are called kittens", "lava flows"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
    # batching and padding do not change a passage's vector
    np.testing.assert_allclose(minilm.encode(["lava flows"])[0], vectors[2], atol=1e-5)

    collection = Collection("facts", encoder=minilm)
    collection.add(fact_documents())
    assert collection.search("feline companion animal", k=1, mode="dense")[0].doc_id == "cats"
    assert (
        collection.search("frozen river of ice in the mountains", k=1, mode="hybrid")[0].doc_id == "glacier"
    )
    assert collection.search("French capital city", k=1, mode="bm25")[0].doc_id == "paris"


@pytest.mark.slow
def test_with_minilm_two_adds_and_a_save_load_round_trip_answer_as_one_build(minilm, tmp_path):
    docs = fact_documents()
    at_once = Collection("facts", encoder=minilm)
    at_once.add(docs)
    stepwise = Collection("facts", encoder=minilm)
    stepwise.add(docs[:5])
    stepwise.add(docs[5:])
    assert_same_hits(stepwise, at_once)  # batches pad differently: vectors agree to ~1e-6
    assert_same_hits(Collection.load(stepwise.save(tmp_path / "facts"), encoder=minilm), at_once)


@pytest.mark.slow
def test_minilm_matches_the_sentence_transformers_pipeline(minilm):
    st = pytest.importorskip("sentence_transformers")
    from veil.models.rag.dense import minilm_dir

    reference = st.SentenceTransformer(str(minilm_dir()), device="cpu")
    texts = [x for _, _, x in FACTS] + ["short", "word " * 400]  # the last is truncated at 256 tokens
    np.testing.assert_allclose(
        minilm.encode(texts), reference.encode(texts, normalize_embeddings=True), atol=1e-5
    )


@pytest.mark.slow
def test_default_collection_is_built_from_the_wikipedia_sample_then_loaded_from_the_data_dir(
    tmp_path, minilm
):
    from veil.models.rag import default_collection

    built = default_collection(tmp_path, encoder=minilm, limit=2)
    assert (tmp_path / "rag" / "wikipedia-sample-2" / "manifest.json").is_file()
    titles = {p.title for p in built.passages}
    assert titles == {"Anarchism", "Autism"}
    assert all("'''" not in p.text and "[[" not in p.text for p in built.passages)
    assert len(built) > 20
    cached = default_collection(tmp_path, encoder=minilm, limit=2)
    assert cached.passages == built.passages
    hit = cached.search("neurodevelopmental disorder in early childhood", k=1)[0]
    assert hit.doc_id == "wiki-25" and hit.title == "Autism"
