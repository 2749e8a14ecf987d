"""How private a method's uploads are: the Bayes ceiling, practical attacks, linking, and the export.

For one method's learned distributions (one per user) this draws fresh uploads exactly as the phones would
send them and measures

- the Bayes-optimal single-upload attribution accuracy (the attacker knows every distribution; Monte
  Carlo with a Wilson interval) next to chance (1/users) and the group floor (1/(users per type)): no
  personalisation that serves a group's preferences can hide which group a user is in;
- practical attacks on the uploads (k-means linkage, a learned attributor, the stylometric attack that
  also reads the text), on a random subset of users for speed;
- the number of uploads an attacker must link to one sender to attribute it with probability 1/2
  (``None`` when linking never gets there: a shared prototype stays at the floor however many are linked).

:func:`export_uploads` writes the same kind of uploads with the simulation's ground truth for auditors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from veil.client_sdk.atomic_files import atomic_write
from veil.client_sdk.distributions import UserDistribution
from veil.privacy_analysis.attacks import run_attacks
from veil.privacy_analysis.attribution import bayes_attribution_fast, linked_attribution

__all__ = ["PrivacyScore", "ScoringConfig", "draw_uploads", "export_uploads", "score_privacy"]


@dataclass
class ScoringConfig:
    """How much to sample.

    Attributes
    ----------
    bayes_uploads: fresh uploads per user for the Bayes estimate.
    attack_uploads: uploads per user for the practical attacks and the export (at least 20 for export).
    attack_users: the practical attacks run on this many randomly chosen users (``None``: all); their
        accuracies come with the Bayes accuracy on exactly the same uploads.
    attacks: which practical attacks (names of :data:`veil.privacy_analysis.attacks.ATTACKS`).
    max_linked: the largest number of linked uploads tried for the 50 % point.
    link_groups: linked groups per user for each tried size.
    """

    bayes_uploads: int = 50
    attack_uploads: int = 20
    attack_users: int | None = 200
    attacks: tuple[str, ...] = ("linkage_kmeans", "learned_attributor", "stylometric")
    max_linked: int = 64
    link_groups: int = 10

    def __post_init__(self) -> None:
        if min(self.bayes_uploads, self.attack_uploads, self.max_linked, self.link_groups) < 1:
            raise ValueError("bayes_uploads, attack_uploads, max_linked and link_groups must be >= 1")
        if self.attack_users is not None and self.attack_users < 2:
            raise ValueError(f"attack_users must be >= 2 or None, got {self.attack_users}")


@dataclass
class PrivacyScore:
    """What :func:`score_privacy` measured."""

    bayes: float
    bayes_ci: tuple[float, float]
    chance: float
    floor: float
    attacks: dict[str, dict[str, Any]]
    uploads_for_half: int | None


def draw_uploads(
    dists: Sequence[UserDistribution],
    texts: Sequence[Sequence[str]],
    per_user: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``per_user`` fresh uploads of every user: embeddings ``(U*per_user, n, d)``, owners, texts.

    User ``u`` sends its own texts ``texts[u]`` in turn, each with a fresh sample.
    """
    emb = np.concatenate([d.sample(rng, size=per_user) for d in dists])
    owners = np.repeat(np.arange(len(dists)), per_user)
    sent = [texts[u][j % len(texts[u])] for u in range(len(dists)) for j in range(per_user)]
    return emb, owners, sent


def _uploads_for_half(
    dists: Sequence[UserDistribution], cfg: ScoringConfig, rng: np.random.Generator
) -> int | None:
    t = 1
    while t <= cfg.max_linked:
        if linked_attribution(dists, t, cfg.link_groups, rng).accuracy >= 0.5:
            return t
        t *= 2
    return None


def score_privacy(
    dists: Sequence[UserDistribution],
    texts: Sequence[Sequence[str]],
    types: np.ndarray,
    cfg: ScoringConfig,
    rng: np.random.Generator,
) -> PrivacyScore:
    """Measure one method's uploads; ``dists[u]`` is user ``u``'s distribution, ``types[u]`` its type."""
    users = len(dists)
    bayes = bayes_attribution_fast(dists, cfg.bayes_uploads, rng)
    # revealing exactly the type gives Bayes accuracy sum_t (n_t/U)(1/n_t) = types/U = 1/(users per type)
    floor = float(len(np.unique(types)) / users)
    pick = np.arange(users)
    if cfg.attack_users is not None and users > cfg.attack_users:
        pick = np.sort(rng.choice(users, size=cfg.attack_users, replace=False))
    sub = [dists[u] for u in pick]
    emb, owners, sent = draw_uploads(sub, [texts[u] for u in pick], cfg.attack_uploads, rng)
    attacks: dict[str, dict[str, Any]] = {}
    for res in run_attacks(sub, emb, owners, rng, texts=sent, attacks=cfg.attacks):
        attacks[res.name] = {
            "accuracy": float(res.accuracy),
            "bayes_same_uploads": float(res.details["bayes_accuracy_same_uploads"]),
            "users": int(pick.size),
            "chance": 1.0 / pick.size,
            "floor": float(len(np.unique(types[pick])) / pick.size),
        }
    return PrivacyScore(
        bayes.accuracy,
        (bayes.ci_low, bayes.ci_high),
        1.0 / users,
        floor,
        attacks,
        _uploads_for_half(dists, cfg, rng),
    )


def export_uploads(
    path: Path,
    dists: Sequence[UserDistribution],
    texts: Sequence[Sequence[str]],
    types: np.ndarray,
    per_user: int,
    rng: np.random.Generator,
) -> None:
    """Write ``<method>.npz``: ``embedding`` float32 ``(uploads, n, d)``, ``user`` and ``type`` int64,
    ``text`` str, ``per_user`` uploads per user; atomically (a temporary file, then a rename)."""
    emb, owners, sent = draw_uploads(dists, texts, per_user, rng)
    arrays = {
        "embedding": emb.astype(np.float32),
        "user": owners.astype(np.int64),
        "type": np.asarray(types, dtype=np.int64)[owners],
        "text": np.array(sent, dtype=str),
    }
    atomic_write(path, lambda fh: np.savez(fh, **arrays))
