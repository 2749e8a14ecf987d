"""Learning a k-anonymous prototype codebook with the model (clustered FL, IFCA arXiv:2006.04088).

One round:

1. every phone evaluates its loss under each usable prototype on (up to) ``choice_examples`` of its own
   examples, as loss requests (in the service: ``/v1/embedding-gradients``, which returns the loss), and
   keeps the best (:func:`veil.client_sdk.distributions.choose_prototype`);
2. the aggregate count of choices retires prototypes shared by fewer than ``k_min`` phones
   (:func:`veil.client_sdk.distributions.enforce_k_min`);
3. phones upload (text, their prototype + noise); the cloud maps each stored upload back to the public
   prototype it carries (:meth:`Codebook.decode`) and trains the model *and the prototype vectors* on
   them (stage 3), which publishes a new codebook version.

The cloud never sees a choice, only uploads that every phone of the group could have sent. Rounds
alternate as IDfree-PL alternates stages 2 and 3 (arXiv:2501.06062). Choices the papers leave open, each
a field of :class:`CodebookConfig`: random Gaussian initial prototypes, K a few times the expected number
of groups (IFCA's remedy for bad random starts), and a retired prototype re-seeded next to the busiest
one so that a group that merged two preference types can split (Linde-Buzo-Gray splitting).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from veil.client_sdk.distributions import Codebook, PrototypeDistribution, enforce_k_min
from veil.cloud_service.jobs.codebook import fit_codebook
from veil.models.personalization import PersonalizedLM
from veil.models.tasks import TokenizedTask, row_losses
from veil.models.training import TrainConfig

__all__ = ["CodebookConfig", "CodebookResult", "learn_codebook", "prototype_losses"]


@dataclass
class CodebookConfig:
    """Settings of the k-anonymous prototype codebook.

    Attributes
    ----------
    size: number of prototypes K (usable or not).
    k_min: minimum phones per usable prototype; ``None`` means half the expected group size
        (``users / (2 * types)``), at least 2.
    rounds: choice / stage-3 alternations.
    init_scale: std of the random initial prototypes.
    noise_std: std of the Gaussian noise each upload adds to its prototype.
    choice_examples: examples per phone scored under every prototype to choose (``None``: all).
    reseed: re-seed retired prototypes next to the busiest usable one between rounds.
    reseed_scale: std of the offset of a re-seeded prototype from the one it splits.
    seed: initial prototypes and re-seeding.
    """

    size: int = 32
    k_min: int | None = None
    rounds: int = 3
    init_scale: float = 1.0
    noise_std: float = 1e-4
    choice_examples: int | None = 16
    reseed: bool = True
    reseed_scale: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.size < 1 or self.rounds < 1:
            raise ValueError(f"size and rounds must be >= 1, got {self.size}, {self.rounds}")
        if self.k_min is not None and self.k_min < 1:
            raise ValueError(f"k_min must be >= 1 or None, got {self.k_min}")
        if not (self.init_scale > 0 and self.noise_std > 0 and self.reseed_scale > 0):
            raise ValueError("init_scale, noise_std and reseed_scale must be > 0")
        if self.choice_examples is not None and self.choice_examples < 1:
            raise ValueError(f"choice_examples must be >= 1 or None, got {self.choice_examples}")

    def resolved_k_min(self, users: int, types: int) -> int:
        return self.k_min if self.k_min is not None else max(2, users // (2 * types))


@dataclass
class CodebookResult:
    """The final codebook, every phone's distribution, its losses and how the groups evolved.

    ``losses[i, k]`` is phone ``users[i]``'s mean loss under prototype ``k`` at the final choice.
    """

    codebook: Codebook
    distributions: dict[str, PrototypeDistribution]
    losses: np.ndarray
    history: list[dict[str, int]]


@torch.no_grad()
def prototype_losses(
    model: PersonalizedLM,
    data: TokenizedTask,
    examples: Mapping[str, np.ndarray],
    prototypes: np.ndarray,
    batch_size: int = 512,
    active: np.ndarray | None = None,
) -> np.ndarray:
    """Mean loss of each phone's ``examples`` under each prototype: ``(users, K)``, users in key order.

    Every (example, prototype) pair is one loss request; they are batched across phones. With an
    ``active`` mask ``(K,)`` only usable prototypes are asked about; the others get ``inf``.
    """
    users = list(examples)
    k = prototypes.shape[0]
    if active is not None and not np.all(active):  # retired prototypes are not asked about
        out = np.full((len(users), k), np.inf)
        out[:, active] = prototype_losses(model, data, examples, prototypes[active], batch_size)
        return out
    idx = np.concatenate([examples[u] for u in users])  # (E,)
    owner = np.repeat(np.arange(len(users)), [examples[u].size for u in users])  # (E,)
    rows_ex = np.repeat(idx, k)  # (E*K,) example of every request: e0 p0, e0 p1, ...
    rows_k = np.tile(np.arange(k), idx.size)  # (E*K,) prototype of every request
    protos = torch.tensor(prototypes, dtype=torch.float32)
    losses = np.empty(rows_ex.size)
    model.eval()
    for start in range(0, rows_ex.size, batch_size):
        part = slice(start, start + batch_size)
        batch = data.batch(rows_ex[part], protos[rows_k[part]])
        losses[part] = row_losses(model, batch, data.task).cpu().numpy()
    per_example = losses.reshape(idx.size, k)  # (E, K)
    sums = np.zeros((len(users), k))
    np.add.at(sums, owner, per_example)
    return sums / np.bincount(owner, minlength=len(users))[:, None]


def _reseed(book: Codebook, counts: np.ndarray, scale: float, rng: np.random.Generator) -> Codebook:
    """Give each usable prototype (largest groups first) at most one sibling: a retired prototype put next
    to it and reactivated, so the group can split if it holds two kinds of users."""
    protos = book.prototypes.copy()
    active = book.active.copy()
    retired = np.flatnonzero(~book.active)
    busy = np.argsort(-np.where(book.active, counts, -1))[: int(book.active.sum())]
    for r, src in zip(retired, busy, strict=False):
        protos[r] = protos[src] + rng.normal(0.0, scale, size=protos[src].shape)
        active[r] = True
    return Codebook(protos, active, book.k_min)


def learn_codebook(
    model: PersonalizedLM,
    data: TokenizedTask,
    train: Mapping[str, Sequence[int]],
    train_idx: np.ndarray,
    owner: np.ndarray,
    cfg: CodebookConfig,
    stage3: TrainConfig,
    k_min: int,
    rng: np.random.Generator,
    on_step: Callable[[str, int, int], None] | None = None,
) -> CodebookResult:
    """Alternate prototype choice and stage 3 (model and prototypes) ``cfg.rounds`` times.

    Parameters
    ----------
    train : user -> indices of that phone's training examples in ``data``.
    train_idx : the pooled training indices (stage 3 trains on these).
    owner : ``owner[i]`` is the user of example ``i`` (only the simulated phones read it: it decides
        who draws the upload for example ``i``; the trainer sees the decoded prototype alone).
    on_step : ``(phase, done, total)`` progress callback.
    """
    users = sorted(train)
    shape = model.embedding_shape
    init_rng = np.random.default_rng(cfg.seed)
    book = Codebook(init_rng.normal(0.0, cfg.init_scale, size=(cfg.size, *shape)), k_min=k_min)
    choice_rng = np.random.default_rng(cfg.seed + 1)
    scored = {}
    for u in users:
        ex = np.asarray(train[u], dtype=np.int64)
        n = ex.size if cfg.choice_examples is None else min(ex.size, cfg.choice_examples)
        scored[u] = choice_rng.choice(ex, size=n, replace=False)
    history: list[dict[str, int]] = []
    dists: dict[str, PrototypeDistribution] = {}
    for r in range(cfg.rounds + 1):
        losses = prototype_losses(model, data, scored, book.prototypes, active=book.active)
        choices, book = enforce_k_min(losses, book)
        counts = np.bincount(choices, minlength=book.size)
        history.append(
            {"round": r, "usable": int(book.active.sum()), "smallest_group": int(counts[counts > 0].min())}
        )
        dists = {
            u: PrototypeDistribution(book, int(c), cfg.noise_std) for u, c in zip(users, choices, strict=True)
        }
        if on_step is not None:
            on_step("choice", r, cfg.rounds)
        if r == cfg.rounds:
            break
        # every example goes up once with its phone's prototype; stage 3 is the service job's own code,
        # which decodes the stored uploads and trains the model and the prototype vectors together
        sent = np.stack([dists[owner[i]].sample(rng) for i in range(len(data))])  # (len(data), n, d)
        s3 = dataclasses.replace(stage3, seed=stage3.seed + r)
        tick = None if on_step is None else (lambda _, r=r: on_step("stage3", r, cfg.rounds))
        _, book, _ = fit_codebook(model, data, train_idx, s3, sent, book, tick)
        if cfg.reseed and r < cfg.rounds - 1:
            book = _reseed(book, counts, cfg.reseed_scale, np.random.default_rng(cfg.seed + 100 + r))
    return CodebookResult(book, dists, losses, history)
