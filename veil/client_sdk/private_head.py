"""Private mixing on the device: the phone combines the cloud's answers for public prototypes.

A request carries only public prototypes (the phone's own, or several), never anything individual. The
cloud answers each with its top-k next-token log-probabilities (or class log-probabilities); the phone
scores every returned candidate ``c`` as

    score(c) = log sum_j w_j p_j(c) + b_c,

with private mixture weights ``w = softmax(logits)`` over the requested prototypes and a private bias
``b`` per token, learnt on the phone from its own examples. The weights are learnt exactly, by
enumerating the few prototypes (no straight-through estimate); the bias serves the user's individual
deviations from its group. Nothing of either leaves the phone, so the single-request attribution is that
of the prototypes sent. This is FedEM-style mixing (arXiv:2108.10252) with a small private head on top of
a shared model (Jain et al., "Differentially private model personalization", NeurIPS 2021).

Choices the papers leave open: a token prototype ``j`` did not return gets ``p_j(c)`` equal to the
smallest probability ``j`` did return (an upper bound on its true value); the bias has an L2 penalty
``bias_l2 / 2 * ||b||^2``; full-batch Adam on the phone's examples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from veil.client_sdk.distributions._special import logsumexp

__all__ = ["HeadAnswers", "HeadMath", "PrivateHead", "PrivateHeadConfig", "head_math"]


@dataclass(frozen=True)
class HeadAnswers:
    """The cloud's answers for N requests, each asked for m prototypes, k candidates each.

    Attributes
    ----------
    tokens : int64, shape ``(N, m, k)``; candidate ids (vocabulary tokens or class indices).
    logprobs : float64, shape ``(N, m, k)``; their log-probabilities under each prototype.
    """

    tokens: np.ndarray
    logprobs: np.ndarray

    def __post_init__(self) -> None:
        t = np.asarray(self.tokens)
        lp = np.asarray(self.logprobs, dtype=np.float64)
        if t.ndim != 3 or t.shape != lp.shape:
            raise ValueError(
                f"tokens and logprobs must share a shape (N, m, k), got {t.shape} and {lp.shape}"
            )
        if not np.all(np.isfinite(lp)) or np.any(lp > 1e-6):
            raise ValueError("logprobs must be finite and <= 0")
        object.__setattr__(self, "tokens", t.astype(np.int64))
        object.__setattr__(self, "logprobs", lp)

    def candidates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every returned token once per request, with its log-probability under every prototype.

        Returns
        -------
        cand : ``(N, m*k)`` candidate ids (duplicates kept in place),
        first : ``(N, m*k)`` bool, True for the first occurrence of each id in its row,
        logp : ``(N, m*k, m)`` ``log p_j(cand)``, floored at prototype ``j``'s smallest returned value.
        """
        n, m, k = self.tokens.shape
        cand = self.tokens.reshape(n, m * k)  # row: [proto0 top-k | proto1 top-k | ...]
        eq = cand[:, :, None, None] == self.tokens[:, None, :, :]  # (N, mk, m, k)
        found = eq.any(axis=3)  # (N, mk, m)
        value = np.where(eq, self.logprobs[:, None, :, :], -np.inf).max(axis=3)  # (N, mk, m)
        floor = self.logprobs.min(axis=2)[:, None, :]  # (N, 1, m)
        logp = np.where(found, value, floor)
        same = cand[:, :, None] == cand[:, None, :]  # (N, mk, mk)
        first = ~np.tril(same, k=-1).any(axis=2)
        return cand, first, logp


@dataclass
class PrivateHeadConfig:
    """How the phone fits its head.

    Attributes
    ----------
    steps: full-batch Adam steps.
    lr: Adam step size.
    bias_l2: L2 penalty on the bias (keeps it at 0 for tokens the phone has no evidence about).
    """

    steps: int = 150
    lr: float = 0.1
    bias_l2: float = 0.05

    def __post_init__(self) -> None:
        if self.steps < 0 or not self.lr > 0 or self.bias_l2 < 0:
            raise ValueError(
                f"need steps >= 0, lr > 0, bias_l2 >= 0; got {self.steps}, {self.lr}, {self.bias_l2}"
            )


HeadMath = Callable[
    [np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    tuple[np.ndarray, float, np.ndarray, np.ndarray],
]
"""``(logp, first, bias, hit, logits) -> (score, loss, d loss / d logits, d loss / d score)``."""


def head_math(
    logp: np.ndarray, first: np.ndarray, bias: np.ndarray, hit: np.ndarray, logits: np.ndarray
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """The head's scores, its loss and the exact gradients, on the candidates of N requests.

    Parameters
    ----------
    logp : ``(N, C, m)`` ``log p_j(c)`` of every candidate under every prototype (floored).
    first : ``(N, C)`` bool, the first occurrence of each candidate in its row.
    bias : ``(N, C)`` the private bias of each candidate.
    hit : ``(N, C)`` bool, the target's first occurrence (all False at inference).
    logits : ``(m,)`` mixture logits.

    Returns
    -------
    score : ``(N, C)``, ``-inf`` where not ``first``;
    loss : mean cross-entropy over the rows with a hit (0 with none);
    g_logits : ``(m,)``; g_score : ``(N, C)``, zero on rows without a hit.
    """
    log_w = logits - logsumexp(logits, axis=0)
    mix = logsumexp(logp + log_w[None, None, :], axis=2)  # (N, C): log sum_j w_j p_j(c)
    score = np.where(first, mix + bias, -np.inf)
    rows = hit.any(axis=1)
    n = max(int(rows.sum()), 1)
    lse = logsumexp(score, axis=1)  # (N,)
    picked = np.where(hit, score, 0.0).sum(axis=1)
    loss = float(np.where(rows, lse - picked, 0.0).sum() / n)
    prob = np.where(first, np.exp(score - lse[:, None]), 0.0)  # softmax over candidates
    g_score = np.where(rows[:, None], prob - hit, 0.0) / n
    # d mix_c / d logits_i = r_ci - w_i, with r_ci = w_i p_i(c) / sum_j w_j p_j(c) (the responsibility)
    log_r = logp + log_w[None, None, :]
    r = np.exp(log_r - logsumexp(log_r, axis=2)[:, :, None])  # (N, C, m)
    g_logits = np.einsum("nc,nci->i", g_score, r - np.exp(log_w)[None, None, :])
    return score, loss, g_logits, g_score


class PrivateHead:
    """Mixture logits over m prototypes and a sparse per-token bias, both private to the phone.

    Parameters
    ----------
    m : int
        Prototypes per request.
    logits : array_like, shape ``(m,)``, optional
        Initial mixture logits (default: uniform).
    math : HeadMath, optional
        Where the scores and gradients are computed: :func:`head_math` (numpy, default) or the exported
        ``prototype_head`` ONNX graph (:class:`veil.client_sdk.math_backends.OnnxHeadMath`). Candidate
        bookkeeping and the bias table stay in numpy either way.
    """

    def __init__(self, m: int, logits: np.ndarray | None = None, math: HeadMath | None = None) -> None:
        if m < 1:
            raise ValueError(f"m must be >= 1, got {m}")
        self.logits = np.zeros(m) if logits is None else np.asarray(logits, dtype=np.float64).copy()
        if self.logits.shape != (m,):
            raise ValueError(f"logits must have shape ({m},), got {self.logits.shape}")
        self.bias: dict[int, float] = {}
        self.math: HeadMath = math or head_math

    @property
    def weights(self) -> np.ndarray:
        """Mixture weights ``softmax(logits)``, shape ``(m,)``."""
        z = self.logits - self.logits.max()
        return np.exp(z) / np.exp(z).sum()

    def _bias_of(self, cand: np.ndarray) -> np.ndarray:
        if not self.bias:
            return np.zeros(cand.shape)
        keys = np.fromiter(self.bias, dtype=np.int64)
        vals = np.fromiter(self.bias.values(), dtype=np.float64)
        order = np.argsort(keys)
        keys, vals = keys[order], vals[order]
        pos = np.clip(np.searchsorted(keys, cand), 0, keys.size - 1)
        return np.where(keys[pos] == cand, vals[pos], 0.0)

    def predict(self, answers: HeadAnswers) -> np.ndarray:
        """The highest-scoring candidate of every request, ``(N,)``."""
        cand, first, logp = answers.candidates()
        score, *_ = self.math(logp, first, self._bias_of(cand), np.zeros(first.shape, bool), self.logits)
        return cand[np.arange(cand.shape[0]), score.argmax(axis=1)]

    def loss_and_grads(
        self, answers: HeadAnswers, targets: np.ndarray, bias_l2: float = 0.0
    ) -> tuple[float, np.ndarray, dict[int, float]]:
        """Mean cross-entropy over the requests whose target is among the candidates, and its exact gradients.

        Returns
        -------
        loss, d loss / d logits ``(m,)``, d loss / d bias (per token id).
        """
        cand, first, logp = answers.candidates()
        hit = (cand == np.asarray(targets)[:, None]) & first  # (N, C)
        if not hit.any():
            return 0.0, np.zeros_like(self.logits), {t: bias_l2 * b for t, b in self.bias.items()}
        _, loss, g_logits, g_score = self.math(logp, first, self._bias_of(cand), hit, self.logits)
        g_bias: dict[int, float] = {}
        flat_c, flat_g = cand[first], g_score[first]
        uniq, inv = np.unique(flat_c, return_inverse=True)
        sums = np.zeros(uniq.size)
        np.add.at(sums, inv, flat_g)
        for t, g in zip(uniq.tolist(), sums.tolist(), strict=True):
            if g != 0.0:  # rows without a hit contribute nothing
                g_bias[t] = g
        for t, b in self.bias.items():
            g_bias[t] = g_bias.get(t, 0.0) + bias_l2 * b
        loss += 0.5 * bias_l2 * sum(b * b for b in self.bias.values())
        return float(loss), np.asarray(g_logits, dtype=np.float64), g_bias

    def fit(
        self, answers: HeadAnswers, targets: np.ndarray, cfg: PrivateHeadConfig | None = None
    ) -> list[float]:
        """Full-batch Adam on the phone's own examples; returns the loss of every step."""
        cfg = cfg or PrivateHeadConfig()
        b1, b2, eps = 0.9, 0.999, 1e-8
        m_l, v_l = np.zeros_like(self.logits), np.zeros_like(self.logits)
        m_b: dict[int, float] = {}
        v_b: dict[int, float] = {}
        losses = []
        for t in range(1, cfg.steps + 1):
            loss, g_l, g_b = self.loss_and_grads(answers, targets, cfg.bias_l2)
            losses.append(loss)
            m_l = b1 * m_l + (1 - b1) * g_l
            v_l = b2 * v_l + (1 - b2) * g_l * g_l
            self.logits -= cfg.lr * (m_l / (1 - b1**t)) / (np.sqrt(v_l / (1 - b2**t)) + eps)
            for tok, g in g_b.items():
                m_b[tok] = b1 * m_b.get(tok, 0.0) + (1 - b1) * g
                v_b[tok] = b2 * v_b.get(tok, 0.0) + (1 - b2) * g * g
                step = cfg.lr * (m_b[tok] / (1 - b1**t)) / (np.sqrt(v_b[tok] / (1 - b2**t)) + eps)
                self.bias[tok] = self.bias.get(tok, 0.0) - step
        return losses
