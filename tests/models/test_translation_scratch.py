"""The from-scratch translator's tokenizer and model: every entity name and every rendering is one token,
the same in English and Chinese documents and in the translation, and text round-trips."""

from __future__ import annotations

import pytest

from veil.models.translation.grounded import GroundedSetConfig, grounded_set
from veil.models.translation.scratch import ScratchConfig, build_model, build_tokenizer


@pytest.fixture(scope="module")
def world():
    examples = grounded_set(GroundedSetConfig(n_examples=12, seed=4))
    texts = [t for e in examples for t in (e.src, e.tgt, *e.documents.values())]
    names = [e.entity.name for e in examples] + [e.namesake.name for e in examples]
    renderings = [e.entity.rendering for e in examples] + [e.namesake.rendering for e in examples]
    return examples, build_tokenizer(texts, names, ScratchConfig(vocab_size=320), renderings)


def _pieces(tok, text: str) -> list[str]:
    return tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])


def test_names_and_renderings_are_single_tokens_wherever_they_occur(world) -> None:
    examples, tok = world
    for e in examples:
        name = "\u2581" + e.entity.name.replace(" ", "\u2582")
        assert name in _pieces(tok, e.src) or "\u2581" + e.src.split(" of ")[-1].rstrip(".") in _pieces(
            tok, e.src
        )
        assert e.entity.rendering in _pieces(tok, e.tgt)
        doc = e.documents["clean"]
        assert e.entity.rendering in _pieces(tok, doc)
        assert name in _pieces(tok, doc)  # in a Chinese document too, between full-width parentheses


def test_chinese_characters_are_single_tokens_and_text_round_trips(world) -> None:
    examples, tok = world
    other = [p for p in _pieces(tok, examples[0].tgt) if p not in (examples[0].entity.rendering, "\u2581")]
    assert all(len(p) == 1 for p in other)
    for e in examples:
        for text in (e.src, e.tgt, e.documents["clean"].replace("（", "(").replace("）", ")")):
            assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
        # the normaliser's spaces inside full-width parentheses are the only change to a document
        doc = e.documents["clean"]
        decoded = tok.decode(tok(doc, add_special_tokens=False)["input_ids"])
        assert decoded.replace("（ ", "（").replace(" ）", "）") == doc


def test_without_rendering_tokens_a_rendering_is_its_characters(world) -> None:
    examples, _ = world
    texts = [t for e in examples for t in (e.src, e.tgt)]
    tok = build_tokenizer(
        texts, [e.entity.name for e in examples], ScratchConfig(vocab_size=320, rendering_tokens=False)
    )
    rendering = examples[0].entity.rendering
    assert "".join(p for p in _pieces(tok, examples[0].tgt) if p in rendering) == rendering
    assert rendering not in _pieces(tok, examples[0].tgt)


def test_the_model_fits_the_tokenizer_and_bad_configs_are_refused(world) -> None:
    _, tok = world
    model = build_model(tok, ScratchConfig(vocab_size=320, hidden=32, layers=1))
    assert model.get_input_embeddings().weight.shape == (len(tok), 32)
    for bad in ({"vocab_size": 300}, {"hidden": 16}, {"layers": 0}):
        with pytest.raises(ValueError, match="required"):
            ScratchConfig(**bad)


def test_with_stem_tokens_a_rendering_is_its_stem_then_its_kinds_word(world) -> None:
    examples, _ = world
    texts = [t for e in examples for t in (e.src, e.tgt, e.documents["clean"])]
    stems = [e.entity.rendering_stem for e in examples]
    tok = build_tokenizer(
        texts,
        [e.entity.name for e in examples],
        ScratchConfig(vocab_size=320, rendering_tokens="stem"),
        stems,
    )
    for e in examples:
        pieces = _pieces(tok, e.tgt)
        at = pieces.index(e.entity.rendering_stem)
        assert "".join(pieces[at:]).startswith(e.entity.rendering)
        assert e.entity.rendering_stem in _pieces(tok, e.documents["clean"])
    with pytest.raises(ValueError, match="rendering_tokens"):
        ScratchConfig(rendering_tokens="whole")
