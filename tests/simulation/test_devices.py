"""Stage 2 (on-device learning of each user's distribution) and the on-device fine-tuning baseline."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from veil.client_sdk import GaussianDistribution
from veil.models.personalization import PersonalizationConfig, PersonalizedLM
from veil.models.tasks import TokenizedTask, row_losses
from veil.models.training import TrainConfig, evaluate, fit
from veil.simulation.devices import DeviceLearningConfig, learn_distributions, on_device_finetune

HIDDEN = 64
START_STD = 0.3
MODES = ("local", "gradient_return")


def _task(n: int, seed: int = 0) -> TokenizedTask:
    rng = np.random.default_rng(seed)
    tokens = [list(rng.integers(3, 128, size=rng.integers(3, 8))) for _ in range(n)]
    return TokenizedTask("classification", tokens, rng.integers(0, 2, size=n), pad_id=2)


def _tiny_model() -> PersonalizedLM:
    from transformers import AutoModelForCausalLM

    from veil.models.loading import tiny_llama_config

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(tiny_llama_config(vocab_size=128)).eval()
    return PersonalizedLM(base, PersonalizationConfig(n_tokens=1, placement="suffix", num_labels=2))


@pytest.fixture(scope="module")
def reader() -> tuple[PersonalizedLM, TokenizedTask, np.ndarray]:
    """A model trained so that the label is the sign of the embedding along ``direction``.

    The texts are random and their labels random with respect to the text, so only the embedding can
    decide. Returns the (frozen-after-training) model, the data and the unit direction ``(1, hidden)``.
    """
    data = _task(48)
    model = _tiny_model()
    direction = np.random.default_rng(1).normal(size=(1, HIDDEN))
    direction /= np.linalg.norm(direction)
    sign = np.where(data.targets == 1, 1.0, -1.0)
    rng = np.random.default_rng(2)

    def source(idx: np.ndarray) -> np.ndarray:
        return 2.0 * sign[idx, None, None] * direction[None] + START_STD * rng.normal(
            size=(idx.size, 1, HIDDEN)
        )

    cfg = TrainConfig(epochs=4, lr=1e-2, batch_size=16, cold_start_fraction=0.0)
    fit(model, data, np.arange(len(data)), cfg, source)
    assert evaluate(model, data, np.arange(len(data)), source).mean() > 0.95  # the premise of this module
    return model, data, direction


def _users(data: TokenizedTask) -> dict[str, np.ndarray]:
    """Two users who always say 1 and two who always say 0: each needs the opposite side of the direction."""
    pos, neg = np.flatnonzero(data.targets == 1), np.flatnonzero(data.targets == 0)
    return {"a": pos[:8], "b": neg[:8], "c": pos[8:16], "d": neg[8:16]}


def _start(users: dict[str, np.ndarray]) -> dict[str, GaussianDistribution]:
    # Mean zero is the population embedding: it tells the model nothing about the user.
    return {u: GaussianDistribution(np.zeros((1, HIDDEN)), np.full((1, HIDDEN), START_STD)) for u in users}


def _cfg(mode: str, **kw: object) -> DeviceLearningConfig:
    base = {"epochs": 2, "batch_size": 4, "lr": 0.05, "val_fraction": 0.0, "trainable": ("mean",)}
    return DeviceLearningConfig(mode=mode, **{**base, **kw})  # type: ignore[arg-type]


def _expected_loss(
    model: PersonalizedLM, data: TokenizedTask, idx: np.ndarray, dist: GaussianDistribution
) -> float:
    """Monte-Carlo mean loss of a user's examples under fresh samples of its distribution."""
    rng = np.random.default_rng(5)
    reps = np.tile(idx, 8)
    with torch.no_grad():
        return float(row_losses(model, data.batch(reps, dist.sample(rng, size=reps.size)), data.task).mean())


@pytest.fixture(scope="module")
def learned(reader) -> dict[str, dict[str, GaussianDistribution]]:
    """Stage-2 results of both modes from the same uninformative start; also checks the weights stay put."""
    model, data, _ = reader
    users = _users(data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = {mode: learn_distributions(model, data, users, _start(users), _cfg(mode)) for mode in MODES}
    after = model.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert changed == []
    return out


@pytest.mark.parametrize("mode", MODES)
def test_stage2_moves_each_user_toward_its_label_and_lowers_its_loss(reader, learned, mode: str) -> None:
    model, data, direction = reader
    users = _users(data)
    start = _start(users)
    for u, idx in users.items():
        dist = learned[mode][u]
        want = 1.0 if data.targets[idx[0]] == 1 else -1.0
        along = float((dist.loc * direction).sum())
        assert want * along > 0.3, (u, along)
        np.testing.assert_allclose(dist.std, start[u].std, rtol=1e-12)  # only the mean was trainable
        before = _expected_loss(model, data, idx, start[u])
        after = _expected_loss(model, data, idx, dist)
        assert after < 0.5 * before, (u, before, after)
        at_mean = np.repeat(dist.loc[None], idx.size, axis=0)
        assert evaluate(model, data, idx, lambda i, e=at_mean: e[: i.size]).mean() == 1.0


def test_local_and_gradient_return_agree_in_direction(reader, learned) -> None:
    _, data, _ = reader
    for u in _users(data):
        a = learned["local"][u].loc.ravel()
        b = learned["gradient_return"][u].loc.ravel()
        cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        assert cosine > 0.5, (u, cosine)
        assert 0.5 < np.linalg.norm(a) / np.linalg.norm(b) < 2.0


@pytest.mark.parametrize("mode", MODES)
def test_stage2_leaves_the_model_untouched(reader, mode: str) -> None:
    model, data, _ = reader
    model = copy.deepcopy(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    users = _users(data)
    learn_distributions(model, data, users, _start(users), _cfg(mode, epochs=1))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("mode", MODES)
def test_prior_weight_keeps_users_near_the_start(reader, mode: str) -> None:
    model, data, _ = reader
    users = _users(data)
    free = learn_distributions(model, data, users, _start(users), _cfg(mode))
    pulled = learn_distributions(model, data, users, _start(users), _cfg(mode, prior_weight=50.0))
    for u in users:
        moved_free = np.linalg.norm(free[u].loc)  # the start is mean 0
        moved_pulled = np.linalg.norm(pulled[u].loc)
        assert moved_pulled < 0.6 * moved_free, (u, moved_free, moved_pulled)


def test_gradient_return_uses_the_oracle_per_user(reader) -> None:
    """A fake cloud that always returns dL/de = +1 on coordinate 0 drives every mean's coordinate 0 down."""
    model, data, _ = reader
    users = _users(data)
    seen: list[int] = []

    def oracle(idx: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seen.extend(int(i) for i in idx)
        grad = np.zeros_like(e)
        grad[:, 0, 0] = 1.0
        return np.zeros(idx.size), grad

    out = learn_distributions(model, data, users, _start(users), _cfg("gradient_return", epochs=2), oracle)
    for u in users:
        assert out[u].loc[0, 0] < -0.05
        np.testing.assert_array_equal(out[u].loc[0, 1:], 0.0)
    # every training example of every user was sent each epoch, and nothing else
    assert sorted(seen) == sorted(np.concatenate(list(users.values())).tolist() * 2)


def test_missing_initial_distribution_is_an_error(reader) -> None:
    model, data, _ = reader
    users = _users(data)
    start = _start(users)
    del start["c"]
    with pytest.raises(ValueError, match="no initial distribution"):
        learn_distributions(model, data, users, start, _cfg("local"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "cloud"}, "mode"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"prior_weight": -1.0}, "prior_weight"),
        ({"prior_weight": float("nan")}, "prior_weight"),
        ({"prior_weight": float("inf")}, "prior_weight"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
    ],
)
def test_device_learning_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DeviceLearningConfig(**kwargs)


def test_on_device_finetune_matches_per_user_reference_and_restores_weights(reader) -> None:
    model, data, _ = reader
    model = copy.deepcopy(model)
    train = {"b": np.arange(0, 4), "a": np.arange(4, 8), "cold": np.array([], dtype=np.int64)}
    test = {"b": np.arange(24, 29), "cold": np.arange(29, 31), "a": np.arange(31, 34)}
    cfg = TrainConfig(epochs=1, lr=5e-2, batch_size=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen: list[str] = []

    correct = on_device_finetune(model, data, train, test, cfg, on_user=seen.append)

    assert correct.dtype == bool and correct.shape == (10,)
    assert seen == ["a", "b", "cold"]  # sorted users
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    # Reference: each user fine-tunes its own copy of the same starting model.
    expected = []
    for u in sorted(test):
        own = copy.deepcopy(model)
        if train[u].size:
            fit(own, data, train[u], cfg)
        expected.append(evaluate(own, data, test[u]))
    np.testing.assert_array_equal(correct, np.concatenate(expected))
    # the fine-tuned copies really changed something, so restoring the weights was not a no-op
    tuned = copy.deepcopy(model)
    fit(tuned, data, train["a"], cfg)
    assert not all(torch.equal(v, tuned.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("mode", MODES)
def test_splitting_a_lockstep_step_into_passes_changes_nothing(reader, mode: str) -> None:
    """16 rows per step in passes of 3 rows: the same gradients, so the same learned parameters."""
    model, data, _ = reader
    users = _users(data)
    whole = learn_distributions(model, data, users, _start(users), _cfg(mode, prior_weight=0.5, epochs=1))
    split = learn_distributions(
        model, data, users, _start(users), _cfg(mode, prior_weight=0.5, epochs=1, max_rows=3)
    )
    for u in users:
        np.testing.assert_allclose(split[u].loc, whole[u].loc, rtol=1e-4, atol=1e-6)
