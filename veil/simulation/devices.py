"""Simulated phones: IDfree-PL stage 2 (on-device learning of the distribution) and the
on-device fine-tuning baseline (arXiv:2501.06062, ``device_train_prefix.py`` / ``ondevice_baseline.py``).

Stage 2 comes in two modes:

- ``local``: the device runs the frozen cloud model itself (the paper's setting) and back-propagates
  through reparameterised samples of its torch twin distribution.
- ``gradient_return``: the device sends an anonymous (text, fresh sample) to the cloud, which returns
  dL/de (:func:`veil.models.training.embedding_gradients`); the device updates its parameters through
  the reparameterisation with :class:`veil.client_sdk.learning.OnDeviceLearner` and never runs the LM.

For speed every user's device steps in lockstep: one step takes a mini-batch from *every* user and runs
one forward pass over their union. Per-user losses are summed, so each user's parameters receive exactly
the gradient of its own mean loss, and Adam is element-wise, so this equals independent devices.
Each device holds out ``val_fraction`` of its examples and keeps its best-validation parameters (the
paper's choice).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from veil.client_sdk.distributions import UserDistribution
from veil.client_sdk.learning import OnDeviceLearner
from veil.models.distributions import torch_twin
from veil.models.personalization import PersonalizedLM
from veil.models.tasks import TokenizedTask, row_losses
from veil.models.training import TrainConfig, embedding_gradients, evaluate, fit

__all__ = ["DeviceLearningConfig", "GradientOracle", "learn_distributions", "on_device_finetune"]

GradientOracle = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""(example indices ``(B,)``, embeddings ``(B, n, d)``) -> (losses ``(B,)``, dL/de ``(B, n, d)``)."""


@dataclass
class DeviceLearningConfig:
    """Stage-2 settings.

    Attributes
    ----------
    mode: ``"local"`` (device runs the model) or ``"gradient_return"`` (cloud returns dL/de).
    epochs: local epochs (paper: 20).
    batch_size: examples per user per step.
    lr: Adam learning rate on the unconstrained parameters. The paper uses AdamW at 5e-5 for alpha/beta;
        that barely moves them in 20 epochs of a small local set, so the default here is 0.05.
    val_fraction: held-out share of each user's examples for keeping the best parameters (paper: 0.1).
    trainable: names of unconstrained parameters to learn; ``None`` learns all of them.
    prior_weight: pull of the trainable parameters toward their starting values (the population
        prior), ``lambda/2 * ||theta - theta_0||^2`` per user (see ``OnDeviceLearner``); 0 is the paper.
    max_rows: rows per forward pass of the simulator; a lockstep step over many devices is split into
        passes whose gradients add up (per-user losses are independent), so memory stays bounded.
    seed: sampling and shuffling.
    """

    mode: Literal["local", "gradient_return"] = "local"
    epochs: int = 20
    batch_size: int = 16
    lr: float = 0.05
    val_fraction: float = 0.1
    trainable: tuple[str, ...] | None = None
    prior_weight: float = 0.0
    max_rows: int = 4096
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {self.max_rows}")
        if self.mode not in ("local", "gradient_return"):
            raise ValueError(f"mode must be 'local' or 'gradient_return', got {self.mode!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not (np.isfinite(self.prior_weight) and self.prior_weight >= 0):
            raise ValueError(f"prior_weight must be >= 0, got {self.prior_weight}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


def _split(indices: np.ndarray, frac: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(indices)
    n_val = int(round(frac * order.size)) if order.size > 1 else 0
    return order[n_val:], order[:n_val]


def _val_losses(
    model: PersonalizedLM,
    data: TokenizedTask,
    val: Mapping[str, np.ndarray],
    dists: Mapping[str, UserDistribution],
    rng: np.random.Generator,
) -> dict[str, float]:
    """Mean validation loss of every user (fresh samples), in one forward pass."""
    users = [u for u in val if val[u].size]
    if not users:
        return {}
    idx = np.concatenate([val[u] for u in users])
    samples = np.concatenate([dists[u].sample(rng, size=val[u].size) for u in users])
    with torch.no_grad():
        losses = row_losses(model, data.batch(idx, samples), data.task).cpu().numpy()
    out, offset = {}, 0
    for u in users:
        out[u] = float(losses[offset : offset + val[u].size].mean())
        offset += val[u].size
    return out


def learn_distributions(
    model: PersonalizedLM,
    data: TokenizedTask,
    user_indices: Mapping[str, Sequence[int]],
    init: Mapping[str, UserDistribution],
    cfg: DeviceLearningConfig,
    oracle: GradientOracle | None = None,
    on_epoch: Callable[[int], None] | None = None,
) -> dict[str, UserDistribution]:
    """Fit each user's distribution against the frozen ``model``; returns the learned distributions."""
    users = sorted(user_indices)
    missing = [u for u in users if u not in init]
    if missing:
        raise ValueError(f"no initial distribution for users {missing[:5]}")
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    splits = {u: _split(np.asarray(user_indices[u], dtype=np.int64), cfg.val_fraction, rng) for u in users}
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()

    if cfg.mode == "local":
        twins = {u: torch_twin(init[u]) for u in users}
        for twin in twins.values():
            for name, param in twin.named_parameters():
                param.requires_grad_(cfg.trainable is None or name in cfg.trainable)
        params = [p for t in twins.values() for p in t.parameters() if p.requires_grad]
        anchors = [p.detach().clone() for p in params]
        optim = torch.optim.Adam(params, lr=cfg.lr)
        current: Callable[[str], UserDistribution] = lambda u: twins[u].to_numpy()  # noqa: E731
    else:
        if oracle is None:

            def oracle(idx: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                parts = [
                    embedding_gradients(model, data, idx[i : i + cfg.max_rows], e[i : i + cfg.max_rows])
                    for i in range(0, idx.size, cfg.max_rows)
                ]
                return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

        learners = {
            u: OnDeviceLearner(init[u], lr=cfg.lr, trainable=cfg.trainable, prior_weight=cfg.prior_weight)
            for u in users
        }
        current = lambda u: learners[u].distribution  # noqa: E731

    best = {u: (np.inf, init[u]) for u in users}
    for epoch in range(cfg.epochs):
        orders = {u: rng.permutation(splits[u][0]) for u in users}
        steps = max((o.size + cfg.batch_size - 1) // cfg.batch_size for o in orders.values())
        for s in range(steps):
            chunks = {u: o[s * cfg.batch_size : (s + 1) * cfg.batch_size] for u, o in orders.items()}
            chunks = {u: c for u, c in chunks.items() if c.size}
            idx = np.concatenate(list(chunks.values()))
            if cfg.mode == "local":
                optim.zero_grad(set_to_none=True)
                samples = [twins[u].rsample(c.size) for u, c in chunks.items()]
                emb = torch.cat(samples, dim=0)  # (rows, n, d), differentiable w.r.t. every device's twin
                weights = torch.cat([torch.full((c.size,), 1.0 / c.size) for c in chunks.values()])
                # Each pass back-propagates into a detached copy of the samples and frees its own graph,
                # so memory is that of one pass of max_rows; the samples' gradient then flows into the
                # twins once (the same gradient as one pass over all rows).
                leaf = emb.detach().requires_grad_(True)
                for start in range(0, idx.size, cfg.max_rows):
                    part = slice(start, start + cfg.max_rows)
                    batch = data.batch(idx[part], leaf[part])
                    batch.embeddings = leaf[part]
                    losses = row_losses(model, batch, data.task)
                    (losses * weights[part].to(losses.device)).sum().backward()
                total = (emb * leaf.grad).sum()
                if cfg.prior_weight:
                    pull = sum(((p - a) ** 2).sum() for p, a in zip(params, anchors, strict=True))
                    total = total + 0.5 * cfg.prior_weight * pull
                total.backward()
                optim.step()
            else:
                samples_np = [learners[u].distribution.sample(rng, size=c.size) for u, c in chunks.items()]
                _, grads = oracle(idx, np.concatenate(samples_np, axis=0))
                offset = 0
                for (u, c), e in zip(chunks.items(), samples_np, strict=True):
                    learners[u].step(e, grads[offset : offset + c.size] / c.size)
                    offset += c.size
        now = {u: current(u) for u in users}
        val_losses = _val_losses(model, data, {u: splits[u][1] for u in users}, now, rng)
        for u in users:
            loss = val_losses.get(u, -np.inf)  # no validation split: keep the latest parameters
            if loss < best[u][0] or u not in val_losses:
                best[u] = (loss, now[u])
        if on_epoch is not None:
            on_epoch(epoch)
    return {u: best[u][1] for u in users}


def on_device_finetune(
    model: PersonalizedLM,
    data: TokenizedTask,
    train: Mapping[str, Sequence[int]],
    test: Mapping[str, Sequence[int]],
    cfg: TrainConfig,
    on_user: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Baseline: every device fine-tunes its own copy of ``model`` on its own data only.

    Returns per-example correctness on the test examples, users in sorted order.
    """
    state = copy.deepcopy(model.state_dict())
    results = []
    try:
        for u in sorted(test):
            if len(train.get(u, ())):
                fit(model, data, np.asarray(train[u]), cfg)
            results.append(evaluate(model, data, np.asarray(test[u])))
            model.load_state_dict(state)
            if on_user is not None:
                on_user(u)
    finally:
        model.load_state_dict(state)
    return np.concatenate(results) if results else np.zeros(0, dtype=bool)
