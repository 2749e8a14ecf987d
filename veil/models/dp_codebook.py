"""IDfree-PL stage 3 on k-anonymous codebook uploads, optionally under DP-SGD: the model and the prototypes.

Every upload carries its group's public prototype (plus negligible noise). The cloud decodes it to the
prototype's index (:meth:`veil.client_sdk.distributions.Codebook.decode`) and trains the model *and the
prototype vectors* on (text, target, index) rows (the codebook's stage 3; clustered FL, IFCA
arXiv:2006.04088, on IDfree-PL's soft tokens, arXiv:2501.06062).

Under DP-SGD (Abadi et al., arXiv:1607.00133; Opacus) the prototypes are the rows of an ``nn.Embedding``
(:class:`PrototypeTable`) that sits beside the model in the module Opacus hooks. Each example's gradient
touches one prototype row, and Opacus' embedding sampler gives it as a per-sample gradient like any
other, so the one L2 clip of ``DPConfig.max_grad_norm`` bounds an example's whole contribution (adapters,
head and prototype row together), and the Gaussian noise covers every coordinate of every row, including
rows no example of the batch used. Training is :func:`veil.models.training.fit` with the table as its
``extra`` module; sampling, accountant and noise search are those of its DP-SGD update
(:class:`veil.models.dp_training.DPSGD`: Poisson sampling; sigma found by the accountant for a target
epsilon).

Unit of privacy: one upload (add-or-remove-one-record). The cloud cannot sample by person, since uploads
are unlinkable; a person with ``m`` uploads is covered at the user level by :func:`user_level_epsilon`
(the run's sigma and steps, each step bounded by a Poisson-subsampled Gaussian of rate ``1 - (1 - q)^m``
and sensitivity ``m`` clip norms) and, more loosely, by :func:`group_privacy`. What we chose where the
sources leave it open: one learning rate and optimiser for the model and the prototypes (as
:func:`veil.simulation.codebook.learn_codebook` does), and the prototypes' noise per coordinate, like the
model's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from veil.models.dp_training import DPSGD, DPTrainConfig, DPTrainResult
from veil.models.personalization import PersonalizedLM
from veil.models.tasks import TokenizedTask
from veil.models.training import fit
from veil.privacy_analysis.accounting import dp_sgd_epsilon

__all__ = [
    "CodebookStage3Config",
    "CodebookStage3Result",
    "PrototypeTable",
    "fit_codebook_stage3",
    "group_privacy",
    "user_level_epsilon",
]


class PrototypeTable(nn.Module):
    """K prototype embeddings as the rows of an ``nn.Embedding`` (so Opacus samples their gradients).

    Parameters
    ----------
    prototypes : array_like, shape ``(K, n_tokens, hidden)``
    trainable : bool
        Whether the rows receive gradients.
    """

    def __init__(self, prototypes: np.ndarray | Tensor, trainable: bool = True) -> None:
        super().__init__()
        init = torch.tensor(
            np.asarray(prototypes), dtype=torch.float32
        )  # a copy: the codebook's is read-only
        if init.ndim != 3 or init.shape[0] < 1:
            raise ValueError(f"prototypes must have shape (K, n_tokens, hidden), got {tuple(init.shape)}")
        k, n, d = init.shape
        self.shape = (int(n), int(d))
        self.table = nn.Embedding(k, n * d)  # row j: prototype j flattened, (n_tokens * hidden,)
        with torch.no_grad():
            self.table.weight.copy_(init.reshape(k, n * d))
        self.table.weight.requires_grad_(trainable)

    def forward(self, index: Tensor) -> Tensor:
        """Prototypes of ``index`` ``(B,)``: ``(B, n_tokens, hidden)``."""
        return self.table(index).view(-1, *self.shape)

    def numpy(self) -> np.ndarray:
        """The current prototypes, ``(K, n_tokens, hidden)`` float64."""
        return self.table.weight.detach().cpu().numpy().astype(np.float64).reshape(-1, *self.shape)


@dataclass
class CodebookStage3Config(DPTrainConfig):
    """Stage 3 on codebook uploads: :class:`DPTrainConfig`'s settings, plus these.

    With ``dp=None`` it trains without privacy (the same loop, shuffled fixed-size batches and
    ``max_grad_norm`` clipping of the batch gradient instead).

    Attributes
    ----------
    train_prototypes: train the prototype vectors with the model (the codebook's stage 3); ``False``
        keeps them as they are, so only the model learns what each group wants.
    """

    train_prototypes: bool = True


@dataclass
class CodebookStage3Result:
    """The trained prototypes ``(K, n_tokens, hidden)`` and the run (losses; privacy, under DP)."""

    prototypes: np.ndarray
    train: DPTrainResult
    max_grad_norm: float | None = None

    def privacy(self, uploads_per_user: int | None = None) -> dict[str, Any] | None:
        """Everything a DP claim states: (epsilon, delta), accountant, sampling, steps, unit.

        With ``uploads_per_user`` the user-level figure (:func:`user_level_epsilon`) comes along, at the
        same delta. ``None`` without DP.
        """
        t = self.train
        if t.epsilon is None or t.delta is None or t.noise_multiplier is None or t.sample_rate is None:
            return None
        out: dict[str, Any] = {
            "epsilon": t.epsilon,
            "delta": t.delta,
            "accountant": t.accountant,
            "noise_multiplier": t.noise_multiplier,
            "sample_rate": t.sample_rate,
            "steps": t.steps,
            "max_grad_norm": self.max_grad_norm,
            "sampling": "Poisson",
            "unit_of_privacy": "one upload (add or remove one record)",
        }
        if uploads_per_user is not None:
            out["user_level"] = {
                "uploads_per_user": uploads_per_user,
                "epsilon": user_level_epsilon(
                    t.noise_multiplier, t.sample_rate, t.steps, t.delta, uploads_per_user
                ),
                "delta": t.delta,
                "accountant": "rdp",
                "unit_of_privacy": f"one user (all {uploads_per_user} of their uploads)",
            }
        return out


def group_privacy(epsilon: float, delta: float, k: int) -> tuple[float, float]:
    """``(epsilon, delta)`` for data sets that differ in ``k`` records, from the guarantee for one.

    Chaining ``k`` neighbouring data sets gives ``(k eps, delta * sum_{i<k} e^{i eps})`` (Dwork & Roth,
    "The Algorithmic Foundations of Differential Privacy", 2014, Theorem 2.2, for ``delta = 0``; the same
    induction carries delta).

    >>> group_privacy(1.0, 1e-6, 1)
    (1.0, 1e-06)
    >>> eps, d = group_privacy(0.5, 1e-6, 3)
    >>> eps, round(d / 1e-6, 4)  # 1 + e^0.5 + e^1
    (1.5, 5.367)
    """
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if not (epsilon >= 0 and 0 <= delta < 1):
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1), got {epsilon}, {delta}")
    return k * epsilon, delta * sum(math.exp(i * epsilon) for i in range(int(k)))


def user_level_epsilon(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    uploads_per_user: int,
    accountant: str = "rdp",
) -> float:
    """Epsilon for one user with ``m = uploads_per_user`` records in a DP-SGD run sampled per record.

    Removing the user removes ``J ~ Binomial(m, q)`` sampled examples from a step, whose clipped sum has
    norm at most ``J`` clip norms: the step is a mixture over ``J`` of Gaussians shifted by at most ``J``
    (the mixture-of-Gaussians view of group privacy, Ganesh, arXiv:2401.10294). Conditioning on ``J >= 1``
    (probability ``q_m = 1 - (1 - q)^m``), joint convexity of Renyi divergence powers and of the
    hockey-stick divergence in the pair of distributions, and the growth of the subsampled Gaussian's
    divergence with the shift, bound it in both directions by the Poisson-subsampled Gaussian with rate
    ``q_m`` and sensitivity ``m``, i.e. noise multiplier ``sigma / m``. That mechanism, composed over
    ``steps``, is accounted by ``accountant`` (RDP by default: Mironov et al., arXiv:1908.10530, cover
    both neighbouring directions). ``m = 1`` is the record-level figure.
    """
    m = uploads_per_user
    if isinstance(m, bool) or int(m) != m or m < 1:
        raise ValueError(f"uploads_per_user must be an integer >= 1, got {m!r}")
    rate = 1.0 - (1.0 - sample_rate) ** m
    return dp_sgd_epsilon(noise_multiplier / m, rate, steps, delta, accountant)


def fit_codebook_stage3(
    model: PersonalizedLM,
    data: TokenizedTask,
    indices: Sequence[int] | np.ndarray,
    prototype_index: np.ndarray,
    prototypes: np.ndarray,
    cfg: CodebookStage3Config,
    on_step: Callable[[float], None] | None = None,
) -> CodebookStage3Result:
    """Train ``model`` (LoRA or full, per ``cfg``) and the prototypes on uploads ``data[indices]``.

    Parameters
    ----------
    indices : array_like of int, shape ``(N,)``
        The training uploads (rows of ``data``); ``N`` is the ``n`` of the accountant's ``1/n`` delta.
    prototype_index : ndarray of int, shape ``(len(data),)``
        The prototype each upload decodes to (:meth:`Codebook.decode`); only rows in ``indices`` are read.
    prototypes : ndarray, shape ``(K, n_tokens, hidden)``
        Starting prototype values (the codebook the phones chose against).
    cfg : CodebookStage3Config
        ``cfg.cold_start_fraction`` of rows train without a soft token, as in every stage 3.

    Returns
    -------
    CodebookStage3Result
        ``prototypes`` are the trained values (the starting ones if ``cfg.train_prototypes`` is False).
    """
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size == 0:
        raise ValueError("no training examples")
    table = PrototypeTable(prototypes, cfg.train_prototypes).to(model.device)
    if table.shape != model.embedding_shape:
        raise ValueError(
            f"prototypes must have shape (K, *{model.embedding_shape}), got {np.shape(prototypes)}"
        )
    index = np.asarray(prototype_index)
    if index.shape != (len(data),) or not np.issubdtype(index.dtype, np.integer):
        raise ValueError(
            f"prototype_index must be integers of shape ({len(data)},), got {index.dtype} {index.shape}"
        )
    used = index[indices]
    k = table.table.num_embeddings
    if used.min() < 0 or used.max() >= k:
        raise ValueError(
            f"prototype_index must lie in [0, {k}) on the training rows, got [{used.min()}, {used.max()}]"
        )
    index_t = torch.as_tensor(index, dtype=torch.long, device=model.device)

    def source(rows: np.ndarray) -> Tensor:
        return table(index_t[torch.as_tensor(rows, dtype=torch.long, device=model.device)])  # (B, n, d)

    extra = table if cfg.train_prototypes else None
    if cfg.dp is None:  # fit's plain update, as every stage 3 without DP
        losses = fit(model, data, indices, cfg, source, on_step, extra=extra)
        return CodebookStage3Result(table.numpy(), DPTrainResult.without_dp(losses))
    private = DPSGD(cfg.dp)
    losses = fit(model, data, indices, cfg, source, on_step, extra=extra, update=private)
    return CodebookStage3Result(table.numpy(), private.result(losses), cfg.dp.max_grad_norm)
