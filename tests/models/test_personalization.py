from __future__ import annotations

import pytest
import torch

from veil.models.personalization import PersonalizationConfig, PersonalizedLM


def _batch(vocab: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    mask[2, 5:] = 0  # right padding
    return ids, mask


def _reference(base, row_ids: torch.Tensor, soft: torch.Tensor | None, placement: str) -> torch.Tensor:
    text = base.get_input_embeddings()(row_ids.unsqueeze(0))
    if soft is None:
        x = text
    else:
        x = (
            torch.cat([soft.unsqueeze(0), text], 1)
            if placement == "prefix"
            else torch.cat([text, soft.unsqueeze(0)], 1)
        )
    return base(inputs_embeds=x).logits[0]


@pytest.mark.parametrize("placement", ["prefix", "suffix"])
def test_zero_soft_tokens_is_exactly_the_base_model(tiny_base, placement: str) -> None:
    ids = torch.randint(3, 128, (4, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    wrapped = PersonalizedLM(tiny_base, PersonalizationConfig(n_tokens=0, placement=placement))
    with torch.no_grad():
        ours = wrapped(ids, mask)
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        ref = tiny_base(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    assert torch.equal(ours[mask.bool()], ref[mask.bool()])


@pytest.mark.parametrize("placement", ["prefix", "suffix"])
def test_mixed_batch_matches_row_by_row_reference(tiny_base, placement: str) -> None:
    ids, mask = _batch()
    wrapped = PersonalizedLM(tiny_base, PersonalizationConfig(n_tokens=2, placement=placement))
    emb = torch.randn(3, 2, 64, generator=torch.Generator().manual_seed(2))
    has = torch.tensor([True, False, True])
    with torch.no_grad():
        out = wrapped(ids, mask, emb, has)
        for r in range(3):
            soft = emb[r] if has[r] else None  # no embedding: the population model, no soft token
            ref = _reference(tiny_base, ids[r][mask[r].bool()], soft, placement)
            torch.testing.assert_close(out[r, -ref.shape[0] :], ref, rtol=1e-5, atol=1e-5)


def test_embedding_changes_the_output(tiny_base) -> None:
    ids, mask = _batch()
    wrapped = PersonalizedLM(tiny_base, PersonalizationConfig(n_tokens=1, placement="suffix", num_labels=3))
    with torch.no_grad():
        a = wrapped.classify(ids, mask, torch.zeros(3, 1, 64))
        b = wrapped.classify(ids, mask, torch.ones(3, 1, 64))
        c = wrapped.classify(ids, mask)  # no embedding: the population model
        d = wrapped.classify(ids, mask, torch.ones(3, 1, 64), torch.tensor([False, False, False]))
    assert a.shape == (3, 3)
    assert not torch.allclose(a, b)
    assert not torch.allclose(a, c)
    torch.testing.assert_close(c, d)


def test_generate_with_prefix_matches_base(tiny_base) -> None:
    ids, mask = _batch()
    wrapped = PersonalizedLM(tiny_base, PersonalizationConfig(n_tokens=1, placement="prefix"))
    emb = torch.randn(3, 1, 64, generator=torch.Generator().manual_seed(3))
    out = wrapped.generate(ids, mask, emb, max_new_tokens=4, do_sample=False, pad_token_id=2)
    for r in (0, 2):
        real = ids[r][mask[r].bool()].unsqueeze(0)
        x = torch.cat([emb[r : r + 1], tiny_base.get_input_embeddings()(real)], 1)
        ref = tiny_base.generate(inputs_embeds=x, max_new_tokens=4, do_sample=False, pad_token_id=2)
        assert torch.equal(out[r], ref[0])


def test_bad_embeddings_are_rejected(tiny_base) -> None:
    ids, mask = _batch()
    wrapped = PersonalizedLM(tiny_base, PersonalizationConfig(n_tokens=1))
    with pytest.raises(ValueError, match="shape"):
        wrapped(ids, mask, torch.zeros(3, 2, 64))
    bad = torch.zeros(3, 1, 64)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        wrapped(ids, mask, bad)
    with pytest.raises(ValueError, match="classification head"):
        wrapped.classify(ids, mask)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="n_tokens"):
        PersonalizationConfig(n_tokens=-1)
    with pytest.raises(ValueError, match="placement"):
        PersonalizationConfig(placement="middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_labels"):
        PersonalizationConfig(num_labels=1)
