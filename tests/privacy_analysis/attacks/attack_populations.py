"""Small random populations for the attack tests."""

from __future__ import annotations

import numpy as np

from veil.client_sdk.distributions import BetaDistribution, GaussianDistribution, UserDistribution

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "runs",
    "fast",
    "slow",
    "over",
    "under",
    "house",
    "tree",
    "i",
    "you",
    "we",
    "it",
    "is",
    "was",
    "not",
    "and",
    "or",
    "but",
    "so",
]


def population(
    family: str,
    k: int,
    n_tokens: int,
    dim: int,
    spread: float,
    rng: np.random.Generator,
    static: bool = False,
) -> list[UserDistribution]:
    """K users of one family; ``spread`` scales how far apart they are, ``static`` makes them point masses."""
    shape = (n_tokens, dim)
    if family == "gaussian":
        std = np.full(shape, 1e-4) if static else None
        return [
            GaussianDistribution(
                spread * rng.normal(size=shape), std if static else np.exp(0.3 * rng.normal(size=shape))
            )
            for _ in range(k)
        ]
    conc = 1e7 if static else 4.0 * np.exp(0.3 * rng.normal(size=(k, *shape)))
    means = 1.0 / (1.0 + np.exp(-spread * rng.normal(size=(k, *shape))))
    return [BetaDistribution.from_mean_concentration(means[i], conc if static else conc[i]) for i in range(k)]


def draw_uploads(
    dists: list[UserDistribution], n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uploads with owners drawn i.i.d. uniformly (so the uniform-prior Bayes rule is the optimum)."""
    owners = rng.integers(len(dists), size=n)
    uploads = np.empty((n, *dists[0].shape))
    for k, d in enumerate(dists):
        idx = np.flatnonzero(owners == k)
        if idx.size:
            uploads[idx] = d.sample(rng, size=idx.size)
    return uploads, owners


def neutral_texts(n: int, rng: np.random.Generator) -> list[str]:
    """Texts whose style does not depend on the user."""
    return [" ".join(rng.choice(WORDS, size=8)) for _ in range(n)]


def quirky_texts(owners: np.ndarray, rng: np.random.Generator) -> list[str]:
    """Texts where every user has two habits (a word, a punctuation or casing mark) used half the time."""
    habits = ["!!", "colour", "lol", ";)", "Hence", "...", "tbh", "XD", "whilst", "u", "ALSO", "~"]
    k = int(owners.max()) + 1
    mine = [rng.choice(habits, size=2, replace=False) for _ in range(k)]
    return [
        " ".join([*rng.choice(WORDS, size=8), *(h for h in mine[o] if rng.random() < 0.5)]) for o in owners
    ]
