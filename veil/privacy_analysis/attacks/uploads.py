"""Parameter-free attacks on exported uploads: what a curious cloud learns from what it stores.

The simulator exports, per method, the uploads the cloud would keep with the simulation's ground truth as
one ``.npz`` file (:func:`load_uploads`). The attacker knows no user's parameters: it holds the owners of a
stratified share of the uploads (``train_fraction`` of every user's) and attributes the rest, by

- ``knn``: a vote of the nearest labelled uploads (:mod:`~veil.privacy_analysis.attacks.nearest`),
- ``gaussian_fit``: per-user diagonal Gaussians fitted on them
  (:mod:`~veil.privacy_analysis.attacks.gaussian_fit`),
- ``learned_attributor`` and ``stylometric`` (the text too, when the file has any): as in
  :mod:`~veil.privacy_analysis.attacks`,

or, without labels, links the pooled stream of those users (``linkage_kmeans``, ``linkage_gmm``).
The last four cost ``O(K^2)`` or more in the number of users K (timings in ``benchmarks/README.md``,
"Attack costs"), so they run on a random subset of ``max_users`` users drawn as
whole preference types; their results say so (``users``, ``sampled``) and carry that subset's chance.

Every result reports, besides ``chance = 1/K``, the ``group_floor`` of the uploads it was scored on: the
accuracy of an attacker who learns exactly the user's preference type and guesses uniformly among the
users of that type. A method that hides users in groups (a k-anonymous codebook) should sit near it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from veil.privacy_analysis.attacks.base import AttackResult, stratified_split
from veil.privacy_analysis.attacks.clustering import GMMConfig, KMeansConfig
from veil.privacy_analysis.attacks.gaussian_fit import GaussianFitConfig
from veil.privacy_analysis.attacks.learned import LearnedConfig
from veil.privacy_analysis.attacks.nearest import KNNConfig
from veil.privacy_analysis.attacks.registry import ATTACKS, AttackInput
from veil.privacy_analysis.attacks.stylometric import StylometricConfig

__all__ = [
    "SAMPLED_ATTACKS",
    "UPLOAD_ATTACKS",
    "UploadAttackConfig",
    "UploadAudit",
    "UploadFileError",
    "UploadSet",
    "group_floor",
    "load_uploads",
    "run_upload_attacks",
    "sample_by_type",
]

UPLOAD_ATTACKS = ("knn", "gaussian_fit", "learned_attributor", "linkage_kmeans", "linkage_gmm", "stylometric")
"""The attacks :func:`run_upload_attacks` can run, in the order it runs them."""
SAMPLED_ATTACKS = frozenset({"learned_attributor", "linkage_kmeans", "linkage_gmm", "stylometric"})
"""The attacks that cost ``O(K^2)`` or more in the number of users K, run on ``max_users`` users."""
_CONFIG_FIELD = {
    "knn": "knn",
    "gaussian_fit": "gaussian",
    "learned_attributor": "learned",
    "linkage_kmeans": "kmeans",
    "linkage_gmm": "gmm",
    "stylometric": "stylometric",
}
"""Attack name -> the :class:`UploadAttackConfig` field holding its settings."""
"""Attacks that run on at most ``max_users`` users."""
REQUIRED_ARRAYS = ("embedding", "user", "type")
OPTIONAL_ARRAYS = ("text",)


class UploadFileError(ValueError):
    """An uploads file that is missing, unreadable or not in the format of :func:`load_uploads`."""


@dataclass(frozen=True, eq=False)
class UploadSet:
    """Uploads with their ground truth, checked on construction.

    Attributes
    ----------
    embedding : ndarray, shape ``(N, n_tokens, dim)``, floating (float32 as exported), finite
    user : ndarray of int64, shape ``(N,)``
        Owner of every upload; the users are exactly ``0..K-1``, K >= 2, each with at least 2 uploads.
    type : ndarray of int64, shape ``(N,)``
        The owner's latent preference type; one type per user.
    text : ndarray of str, shape ``(N,)``, optional
        The text sent with every upload.

    Raises
    ------
    UploadFileError
        Naming the first constraint that fails.
    """

    embedding: np.ndarray
    user: np.ndarray
    type: np.ndarray
    text: np.ndarray | None = None

    def __post_init__(self) -> None:
        emb = self.embedding
        if emb.ndim != 3 or 0 in emb.shape:
            raise UploadFileError(f"'embedding' must have shape (uploads, n_tokens, dim), got {emb.shape}")
        if not np.issubdtype(emb.dtype, np.floating):
            raise UploadFileError(f"'embedding' must be floating point (float32), got dtype {emb.dtype}")
        bad = ~np.isfinite(emb).all(axis=(1, 2))
        if bad.any():
            raise UploadFileError(
                f"'embedding' holds NaN/Inf in {bad.sum()} uploads, first at {np.argmax(bad)}"
            )
        n = emb.shape[0]
        for name in ("user", "type"):
            a = getattr(self, name)
            if a.shape != (n,) or not np.issubdtype(a.dtype, np.integer):
                raise UploadFileError(f"'{name}' must be integers of shape ({n},), got {a.dtype} {a.shape}")
            object.__setattr__(self, name, a.astype(np.int64))
        if self.text is not None and (self.text.shape != (n,) or self.text.dtype.kind != "U"):
            raise UploadFileError(
                f"'text' must be strings of shape ({n},), got {self.text.dtype} {self.text.shape}"
            )
        lo, hi = int(self.user.min()), int(self.user.max())
        if lo < 0 or hi >= n:
            raise UploadFileError(
                f"'user' must index users 0..K-1 with K <= {n} uploads, got range [{lo}, {hi}]"
            )
        counts = np.bincount(self.user, minlength=hi + 1)
        if hi < 1:
            raise UploadFileError(f"need at least 2 users, got {hi + 1}")
        if np.any(counts < 2):
            few = np.flatnonzero(counts < 2)
            raise UploadFileError(
                f"every user 0..{hi} needs >= 2 uploads; {few.size} have fewer, e.g. user {few[0]} with "
                f"{counts[few[0]]}"
            )
        pairs = np.unique(np.stack([self.user, self.type]), axis=1)  # (2, distinct (user, type) pairs)
        if pairs.shape[1] != hi + 1:
            user = int(pairs[0][np.flatnonzero(np.diff(pairs[0]) == 0)[0]])
            raise UploadFileError(f"every user needs one 'type'; user {user} has several")

    @property
    def n_users(self) -> int:
        return int(self.user.max()) + 1

    @property
    def user_types(self) -> np.ndarray:
        """``(K,)`` the type of every user."""
        types = np.empty(self.n_users, dtype=np.int64)
        types[self.user] = self.type
        return types

    @property
    def has_text(self) -> bool:
        """Whether any upload came with a non-empty text."""
        return self.text is not None and bool(np.char.str_len(self.text).any())


def load_uploads(path: str | Path) -> UploadSet:
    """Read an exported uploads file: ``.npz`` with ``embedding``, ``user``, ``type`` and optionally ``text``.

    See :class:`UploadSet` for the arrays. Pickled (object) arrays are refused.

    Raises
    ------
    UploadFileError
        If the file is missing or unreadable, lacks an array or has one it does not expect, or an array
        breaks a constraint of :class:`UploadSet`; the message starts with the path.
    """
    path = Path(path)
    if not path.is_file():
        raise UploadFileError(f"{path}: no such file")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # a foreign file can fail in numpy, zipfile or pickle, with any exception
        raise UploadFileError(f"{path}: not a readable .npz file: {_first_line(exc)}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise UploadFileError(f"{path}: holds a single array (.npy), expected an .npz archive of arrays")
    with archive:
        names = set(archive.files)
        missing = [name for name in REQUIRED_ARRAYS if name not in names]
        unknown = sorted(names - set(REQUIRED_ARRAYS) - set(OPTIONAL_ARRAYS))
        if missing or unknown:
            raise UploadFileError(
                f"{path}: missing arrays {missing}, unexpected arrays {unknown}; expected "
                f"{list(REQUIRED_ARRAYS)} and optionally {list(OPTIONAL_ARRAYS)}"
            )
        try:
            arrays = {name: archive[name] for name in names}
        except Exception as exc:  # a damaged member, or an object array refused without pickle
            raise UploadFileError(f"{path}: cannot read an array: {_first_line(exc)}") from None
    try:
        return UploadSet(arrays["embedding"], arrays["user"], arrays["type"], arrays.get("text"))
    except UploadFileError as exc:
        raise UploadFileError(f"{path}: {exc}") from None


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def group_floor(owners: np.ndarray, user_types: np.ndarray, evaluated: np.ndarray) -> float:
    """Accuracy of knowing every upload's type and guessing its user uniformly within the type.

    ``mean_i 1 / |users of type(owner_i)|`` over the ``evaluated`` uploads ``(N,)`` of ``owners`` ``(N,)``,
    with ``user_types`` ``(K,)`` the type of every user.

    >>> group_floor(np.array([0, 1, 2, 2]), np.array([7, 7, 8]), np.ones(4, dtype=bool))
    0.75
    """
    _, type_of, size = np.unique(user_types, return_inverse=True, return_counts=True)
    return float(np.mean(1.0 / size[type_of.reshape(-1)][owners[evaluated]]))


@dataclass(frozen=True)
class UploadAttackConfig:
    """Settings of :func:`run_upload_attacks`.

    Attributes
    ----------
    train_fraction : float
        Share of every user's uploads the attacker gets with owners (default 0.5); the others are scored.
    max_users : int
        Most users the attacks of :data:`SAMPLED_ATTACKS` run on (default 100; timings in
        ``benchmarks/README.md``, "Attack costs").
    attacks : tuple of str
        Names from :data:`UPLOAD_ATTACKS` (default all; ``stylometric`` is skipped for files without text).
    knn, gaussian, learned, kmeans, gmm, stylometric
        Each attack's own settings.
    """

    train_fraction: float = 0.5
    max_users: int = 100
    attacks: tuple[str, ...] = UPLOAD_ATTACKS
    knn: KNNConfig = field(default_factory=KNNConfig)
    gaussian: GaussianFitConfig = field(default_factory=GaussianFitConfig)
    learned: LearnedConfig = field(default_factory=LearnedConfig)
    kmeans: KMeansConfig = field(default_factory=KMeansConfig)
    gmm: GMMConfig = field(default_factory=GMMConfig)
    stylometric: StylometricConfig = field(default_factory=StylometricConfig)

    def __post_init__(self) -> None:
        if not 0.0 < self.train_fraction < 1.0:
            raise ValueError(f"train_fraction must be in (0, 1), got {self.train_fraction}")
        if self.max_users < 2:
            raise ValueError(f"max_users must be >= 2, got {self.max_users}")
        unknown = sorted(set(self.attacks) - set(UPLOAD_ATTACKS))
        if unknown or not self.attacks:
            raise ValueError(
                f"attacks must be a non-empty subset of {list(UPLOAD_ATTACKS)}, got {self.attacks}"
            )


@dataclass(frozen=True)
class UploadAudit:
    """Attack results on one uploads file, with what they should be read against.

    Attributes
    ----------
    users, uploads, types : int
    train_fraction : float
        Share of every user's uploads the attacker held with owners.
    chance : float
        ``1 / users``.
    group_floor : float
        :func:`group_floor` over all uploads.
    results : list of AttackResult
        Each with ``group_floor``, ``users`` and ``sampled`` in its details.
    skipped : dict
        Attack name -> why it did not run.
    """

    users: int
    uploads: int
    types: int
    train_fraction: float
    chance: float
    group_floor: float
    results: list[AttackResult]
    skipped: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "users": self.users,
            "uploads": self.uploads,
            "types": self.types,
            "train_fraction": self.train_fraction,
            "chance": self.chance,
            "group_floor": self.group_floor,
            "attacks": [r.as_dict() for r in self.results],
            "skipped": dict(self.skipped),
        }


def sample_by_type(user_types: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """``min(m, K)`` sorted user indices: whole types in random order, the last one possibly cut short.

    Keeping types whole keeps the subset's users per type, so its group floor matches the population's.
    """
    _, type_of = np.unique(user_types, return_inverse=True)
    type_rank = rng.permutation(type_of.max() + 1)[type_of.reshape(-1)]  # (K,)
    order = np.lexsort((rng.random(user_types.size), type_rank))  # by type rank, randomly within a type
    return np.sort(order[:m])


def run_upload_attacks(
    data: UploadSet, rng: np.random.Generator, config: UploadAttackConfig | None = None
) -> UploadAudit:
    """Run the parameter-free attacks of ``config.attacks`` on ``data``; see the module docstring."""
    cfg = config or UploadAttackConfig()
    k, types = data.n_users, data.user_types
    x = data.embedding.reshape(data.embedding.shape[0], -1)  # (N, n_tokens * dim)
    aux = stratified_split(data.user, cfg.train_fraction, rng)  # (N,) the labelled share
    subset = sample_by_type(types, cfg.max_users, rng)
    skipped = {}
    if "stylometric" in cfg.attacks and not data.has_text:
        skipped["stylometric"] = "the file has no text"
    results = []
    for name in (a for a in UPLOAD_ATTACKS if a in cfg.attacks and a not in skipped):
        users = subset if name in SAMPLED_ATTACKS else np.arange(k)
        keep = np.isin(data.user, users)  # (N,)
        owners = np.searchsorted(users, data.user[keep])  # renumbered 0..len(users)-1
        texts = data.text[keep].tolist() if name == "stylometric" else None  # type: ignore[index]
        inp = AttackInput(x[keep], owners, len(users), rng, aux=aux[keep], texts=texts, tie_break="random")
        res = ATTACKS[name].run(inp, getattr(cfg, _CONFIG_FIELD[name]))
        evaluated = res.predictions >= 0
        extra = {"group_floor": group_floor(owners, types[users], evaluated), "users": len(users)}
        results.append(replace(res, details={**res.details, **extra, "sampled": len(users) < k}))
    everyone = np.ones(data.user.size, dtype=bool)
    floor = group_floor(data.user, types, everyone)
    n_types = int(np.unique(types).size)
    return UploadAudit(k, data.user.size, n_types, cfg.train_fraction, 1.0 / k, floor, results, skipped)
