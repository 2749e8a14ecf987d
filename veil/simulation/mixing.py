"""Simulated phones that mix the cloud's per-prototype answers with a private head.

The cloud half is :func:`head_answers`: for each request it runs the model once per public prototype the
request names and returns the top-k log-probabilities (every class, for classification). The phone half
is :class:`veil.client_sdk.private_head.PrivateHead`, fitted on each phone's own training examples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from veil.client_sdk.distributions import Codebook
from veil.client_sdk.private_head import HeadAnswers, PrivateHead, PrivateHeadConfig
from veil.models.personalization import PersonalizedLM
from veil.models.tasks import TokenizedTask, logits_for

__all__ = ["MixingConfig", "head_answers", "requested_prototypes", "private_mixing"]


@dataclass
class MixingConfig:
    """Private mixing settings.

    Attributes
    ----------
    prototypes: prototypes per request, the phone's best by its own loss (1: its own group's only, so a
        request reveals no more than an upload; 0: every usable prototype, so it reveals nothing).
    top_k: log-probabilities the cloud returns per prototype (next_word; classification returns all).
    head: how the phone fits its head.
    """

    prototypes: int = 1
    top_k: int = 20
    head: PrivateHeadConfig = field(default_factory=PrivateHeadConfig)

    def __post_init__(self) -> None:
        if self.prototypes < 0 or self.top_k < 1:
            raise ValueError(f"need prototypes >= 0 and top_k >= 1, got {self.prototypes}, {self.top_k}")


def requested_prototypes(losses: np.ndarray, codebook: Codebook, m: int) -> np.ndarray:
    """Each phone's ``m`` best usable prototypes by its own loss (``m=0``: all usable): ``(users, m)``."""
    usable = np.flatnonzero(codebook.active)
    if m == 0 or m >= usable.size:
        return np.tile(usable, (losses.shape[0], 1))
    ranked = np.argsort(np.where(codebook.active[None, :], losses, np.inf), axis=1, kind="stable")
    return ranked[:, :m]


@torch.no_grad()
def head_answers(
    model: PersonalizedLM,
    data: TokenizedTask,
    indices: np.ndarray,
    prototypes: np.ndarray,
    top_k: int,
    batch_size: int = 512,
) -> HeadAnswers:
    """The cloud's answers to requests ``indices`` ``(N,)``, each naming prototypes ``(N, m, n, d)``."""
    n, m = prototypes.shape[:2]
    rows_ex = np.repeat(indices, m)  # (N*m,) request i with its prototypes 0..m-1
    emb = prototypes.reshape(n * m, *prototypes.shape[2:])
    k = top_k if data.task == "next_word" else None
    tokens, logprobs = [], []
    model.eval()
    for start in range(0, rows_ex.size, batch_size):
        part = slice(start, start + batch_size)
        logp = F.log_softmax(
            logits_for(model, data.batch(rows_ex[part], emb[part]), data.task).float(), dim=-1
        )
        top = logp.topk(min(k or logp.shape[-1], logp.shape[-1]), dim=-1)
        tokens.append(top.indices.cpu().numpy())
        logprobs.append(top.values.cpu().numpy().astype(np.float64))
    tok = np.concatenate(tokens).reshape(n, m, -1)
    return HeadAnswers(tok, np.minimum(np.concatenate(logprobs).reshape(n, m, -1), 0.0))


def private_mixing(
    model: PersonalizedLM,
    data: TokenizedTask,
    train: Mapping[str, Sequence[int]],
    test: Mapping[str, Sequence[int]],
    codebook: Codebook,
    losses: np.ndarray,
    cfg: MixingConfig,
) -> np.ndarray:
    """Fit every phone's head on its training examples; per-example correctness on the test examples.

    ``losses`` ``(users, K)`` are the phones' own losses under each prototype, users in sorted order;
    the result follows the users in sorted order too (like :func:`veil.models.training.evaluate` on the
    concatenated test indices).
    """
    users = sorted(train)
    asked = requested_prototypes(losses, codebook, cfg.prototypes)  # (users, m)
    tr = [np.asarray(train[u], dtype=np.int64) for u in users]
    te = [np.asarray(test[u], dtype=np.int64) for u in users]
    idx = np.concatenate(tr + te)
    per_row = np.concatenate(
        [np.repeat(asked[i][None], t.size, axis=0) for i, t in enumerate(tr)]
        + [np.repeat(asked[i][None], t.size, axis=0) for i, t in enumerate(te)]
    )  # (rows, m) prototype ids of every request: all train rows, then all test rows
    answers = head_answers(model, data, idx, codebook.prototypes[per_row], cfg.top_k)
    n_train = sum(t.size for t in tr)
    correct = []
    tr_off, te_off = 0, n_train
    for i, _ in enumerate(users):
        a, b = tr[i].size, te[i].size
        head = PrivateHead(asked.shape[1])
        part = slice(tr_off, tr_off + a)
        head.fit(HeadAnswers(answers.tokens[part], answers.logprobs[part]), data.targets[tr[i]], cfg.head)
        part = slice(te_off, te_off + b)
        pred = head.predict(HeadAnswers(answers.tokens[part], answers.logprobs[part]))
        correct.append(pred == data.targets[te[i]])
        tr_off, te_off = tr_off + a, te_off + b
    return np.concatenate(correct) if correct else np.zeros(0, dtype=bool)
