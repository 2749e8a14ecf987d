"""Learning the codebook with a real (tiny) model, private mixing, and what the scoring measures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from veil.client_sdk.distributions import Codebook, GaussianDistribution, PrototypeDistribution
from veil.models.loading import load_model
from veil.models.personalization import PersonalizationConfig, PersonalizedLM
from veil.models.tasks import row_losses, tokenize_task
from veil.models.training import TrainConfig
from veil.privacy_analysis.attacks.uploads import load_uploads
from veil.simulation.codebook import CodebookConfig, learn_codebook, prototype_losses
from veil.simulation.data import PopulationConfig, make_population
from veil.simulation.experiments.scoring import ScoringConfig, export_uploads, score_privacy
from veil.simulation.mixing import MixingConfig, private_mixing, requested_prototypes


@pytest.fixture(scope="module")
def setup(data_dir: str) -> dict:
    torch.manual_seed(0)
    pop = make_population(
        PopulationConfig(task="next_word", n_users=8, n_types=2, train_per_user=6, test_per_user=2)
    )
    loaded = load_model("tiny-llama")
    examples = pop.train + pop.test
    data = tokenize_task(
        loaded.tokenizer, "next_word", [e.text for e in examples], [e.label for e in examples], pop.labels, 16
    )
    train: dict[str, list[int]] = {u: [] for u in pop.users}
    test: dict[str, list[int]] = {u: [] for u in pop.users}
    for i, e in enumerate(examples):
        (train if i < len(pop.train) else test)[e.user].append(i)
    owner = np.array([e.user for e in examples], dtype=object)
    model = PersonalizedLM(loaded.model, PersonalizationConfig(1, "prefix", None))
    return {"pop": pop, "data": data, "train": train, "test": test, "owner": owner, "model": model}


def test_prototype_losses_equal_one_request_at_a_time(setup: dict) -> None:
    model, data = setup["model"], setup["data"]
    protos = np.random.default_rng(0).normal(size=(3, *model.embedding_shape))
    examples = {u: np.asarray(ix[:2]) for u, ix in list(setup["train"].items())[:3]}
    got = prototype_losses(model, data, examples, protos, batch_size=5)  # batches split rows mid-user
    for i, ix in enumerate(examples.values()):
        for k in range(3):
            with torch.no_grad():
                emb = np.repeat(protos[k][None], ix.size, axis=0)
                want = row_losses(model, data.batch(ix, emb), "next_word").mean().item()
            assert got[i, k] == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_learn_codebook_keeps_groups_of_k_min_and_trains_the_prototypes(setup: dict) -> None:
    s = setup
    cfg = CodebookConfig(size=4, rounds=2, choice_examples=3, seed=1)
    start = Codebook(
        np.random.default_rng(1).normal(0.0, cfg.init_scale, size=(4, *s["model"].embedding_shape))
    )
    result = learn_codebook(
        s["model"], s["data"], s["train"], np.arange(len(s["pop"].train)), s["owner"], cfg,
        TrainConfig(epochs=1, lr=3e-3, batch_size=16), 3, np.random.default_rng(0),
    )  # fmt: skip
    book = result.codebook
    counts = np.bincount([d.index for d in result.distributions.values()], minlength=4)
    assert np.all(counts[book.active] >= 3) and np.all(counts[~book.active] == 0)
    assert len(result.history) == 3 and result.losses.shape == (8, 4)
    assert not np.allclose(book.prototypes, start.prototypes)  # stage 3 moved them
    assert {d.codebook.version for d in result.distributions.values()} == {book.version}
    for i, u in enumerate(sorted(s["train"])):
        assert result.distributions[u].index == int(
            np.argmin(np.where(book.active, result.losses[i], np.inf))
        )


def test_private_mixing_predicts_for_every_test_example(setup: dict) -> None:
    s = setup
    book = Codebook(np.random.default_rng(2).normal(size=(3, *s["model"].embedding_shape)))
    losses = np.random.default_rng(3).random((8, 3))
    correct = private_mixing(
        s["model"], s["data"], s["train"], s["test"], book, losses, MixingConfig(top_k=5)
    )
    assert correct.dtype == bool and correct.shape == (16,)
    asked = requested_prototypes(losses, book, 2)
    assert np.array_equal(asked[:, 0], losses.argmin(axis=1)) and asked.shape == (8, 2)
    assert requested_prototypes(losses, book.with_active([True, False, True]), 0).tolist() == [[0, 2]] * 8


def test_scoring_puts_a_shared_prototype_at_the_floor_and_a_point_mass_at_one() -> None:
    rng = np.random.default_rng(0)
    types = np.repeat(np.arange(3), 6)  # 18 users, 3 types
    book = Codebook(rng.normal(size=(3, 1, 6)))
    texts = [[f"text {u} {j}" for j in range(3)] for u in range(18)]
    cfg = ScoringConfig(bayes_uploads=20, attack_uploads=6, attack_users=None, max_linked=8, link_groups=3)
    shared = score_privacy([PrototypeDistribution(book, int(t)) for t in types], texts, types, cfg, rng)
    assert shared.floor == pytest.approx(3 / 18) and shared.chance == pytest.approx(1 / 18)
    assert shared.bayes == pytest.approx(3 / 18, abs=0.04)
    assert shared.uploads_for_half is None  # linking never beats the group
    assert set(shared.attacks) == {"linkage_kmeans", "learned_attributor", "stylometric"}
    points = [GaussianDistribution(rng.normal(size=(1, 6)), np.full((1, 6), 1e-4)) for _ in types]
    ident = score_privacy(points, texts, types, cfg, rng)
    assert ident.bayes == 1.0 and ident.uploads_for_half == 1


def test_exported_uploads_are_what_the_auditor_reads(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    types = np.array([0, 0, 1, 1])
    book = Codebook(rng.normal(size=(2, 1, 5)))
    dists = [PrototypeDistribution(book, int(t)) for t in types]
    texts = [["a b", "c"], ["d"], ["e f g"], ["h", "i"]]
    export_uploads(tmp_path / "codebook.npz", dists, texts, types, 20, rng)
    assert [p.name for p in tmp_path.iterdir()] == ["codebook.npz"]  # no temporary file left
    up = load_uploads(tmp_path / "codebook.npz")
    assert up.embedding.dtype == np.float32 and up.embedding.shape == (80, 1, 5)
    assert up.user.tolist() == np.repeat(np.arange(4), 20).tolist()
    assert up.type.tolist() == np.repeat(types, 20).tolist()
    assert up.text[:3].tolist() == ["a b", "c", "a b"]
    assert np.allclose(up.embedding[:20], book.prototypes[0], atol=1e-3)
