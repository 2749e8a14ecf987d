"""k-anonymous prototype codebook: every phone of a group sends the same public embedding.

The cloud publishes K prototype embeddings (a :class:`Codebook`); each phone evaluates its own loss under
every usable prototype (through loss / gradient-return requests, so no LM runs on the phone), keeps the
best one as its private choice, and every upload carries that prototype, optionally plus a little
Gaussian noise. A prototype is *usable* only once at least ``k_min`` phones share it (an aggregate count,
see :func:`enforce_k_min`), so an upload's Bayes attribution is at most ``1 / k_min`` however many uploads
a phone sends: all uploads of the users sharing a prototype have one law.

This is clustered federated learning (IFCA, arXiv:2006.04088: each client picks the cluster model with
the lowest loss; FedEM, arXiv:2108.10252) with a minimum cluster size (RR-Cluster, arXiv:2508.06183),
applied to IDfree-PL's soft-token embeddings (arXiv:2501.06062). The phone's distribution is a
:class:`PrototypeDistribution`: a Gaussian centred on its prototype, so every sampler, ONNX graph and
audit that handles Gaussians handles it. What the papers leave open and we chose: hard (argmin) choice,
ties to the lowest index, noise std 0.0001 by default (a point mass in effect: noise adds nothing to
privacy here because a prototype is shared by design).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np

from veil.client_sdk.distributions.base import UserDistribution, as_param
from veil.client_sdk.distributions.gaussian import GaussianDistribution
from veil.client_sdk.distributions.noise import prototype_sample_from_noise

__all__ = [
    "Codebook",
    "CodebookMismatchError",
    "PrototypeDistribution",
    "choose_prototype",
    "enforce_k_min",
]

DEFAULT_NOISE_STD = 1e-4


class CodebookMismatchError(ValueError):
    """A phone's parameters belong to another codebook (version or shape) than the one in use."""


@dataclass(frozen=True)
class Codebook:
    """K public prototype embeddings, which of them are usable, and the minimum group size.

    Parameters
    ----------
    prototypes : array_like, shape ``(K, n_tokens, dim)``
        The public embeddings.
    active : array_like of bool, shape ``(K,)``
        Usable prototypes (shared by at least ``k_min`` phones at the last count); default all.
    k_min : int
        Minimum number of phones per usable prototype.

    The :attr:`version` is a hash of all three, so a phone can tell that its choice was made against
    another codebook.
    """

    prototypes: np.ndarray
    active: np.ndarray
    k_min: int

    def __init__(self, prototypes: Any, active: Any = None, k_min: int = 1) -> None:
        protos = as_param("prototypes", prototypes, ndim=3)
        k = protos.shape[0]
        act = np.ones(k, dtype=bool) if active is None else np.array(active, dtype=bool, copy=True)
        if act.shape != (k,):
            raise ValueError(f"active must have shape ({k},), got {act.shape}")
        if not act.any():
            raise ValueError("a codebook needs at least one active prototype, got none")
        if isinstance(k_min, bool) or int(k_min) != k_min or k_min < 1:
            raise ValueError(f"k_min must be an integer >= 1, got {k_min!r}")
        act.flags.writeable = False
        object.__setattr__(self, "prototypes", protos)
        object.__setattr__(self, "active", act)
        object.__setattr__(self, "k_min", int(k_min))

    @property
    def size(self) -> int:
        """Number of prototypes K (usable or not)."""
        return int(self.prototypes.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """Embedding shape ``(n_tokens, dim)``."""
        return (int(self.prototypes.shape[1]), int(self.prototypes.shape[2]))

    @property
    def version(self) -> str:
        """First 16 hex digits of SHA-256 over the prototypes (float64), the mask and ``k_min``."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.prototypes, dtype="<f8").tobytes())
        h.update(self.active.astype(np.uint8).tobytes())
        h.update(str(self.k_min).encode())
        return h.hexdigest()[:16]

    def with_active(self, active: Any) -> Codebook:
        """The same prototypes with another usable set."""
        return Codebook(self.prototypes, active, self.k_min)

    def with_prototypes(self, prototypes: Any) -> Codebook:
        """New prototype values (e.g. after the cloud trained them), same mask and ``k_min``."""
        return Codebook(prototypes, self.active, self.k_min)

    def decode(self, uploads: np.ndarray) -> np.ndarray:
        """Index of the nearest usable prototype of each upload ``(N, n_tokens, dim)``: ``(N,)`` int64.

        This is how the cloud maps a stored upload back to the public prototype it carries.
        """
        x = np.asarray(uploads, dtype=np.float64).reshape(len(uploads), -1)  # (N, n*d)
        p = self.prototypes.reshape(self.size, -1)  # (K, n*d)
        d2 = (x * x).sum(1)[:, None] - 2.0 * x @ p.T + (p * p).sum(1)[None, :]  # (N, K)
        d2[:, ~self.active] = np.inf
        return d2.argmin(axis=1).astype(np.int64)

    def arrays(self) -> dict[str, np.ndarray]:
        """Arrays to store (``codebook.prototypes``, ``codebook.active``, ``codebook.k_min``)."""
        return {
            "codebook.prototypes": self.prototypes,
            "codebook.active": self.active,
            "codebook.k_min": np.array(self.k_min),
            "codebook.version": np.array(self.version),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Codebook:
        """Rebuild from :meth:`arrays`; ``ValueError`` when the stored version does not match the contents."""
        book = cls(arrays["codebook.prototypes"], arrays["codebook.active"], int(arrays["codebook.k_min"]))
        stored = str(arrays["codebook.version"])
        if stored != book.version:
            raise ValueError(f"codebook version {stored!r} does not match its contents ({book.version!r})")
        return book

    def save(self, path: str) -> None:
        """Write the public codebook as ``.npz`` (what the cloud publishes)."""
        with open(path, "wb") as fh:
            np.savez(fh, **self.arrays())

    @classmethod
    def load(cls, path: str) -> Codebook:
        """Read a file written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            try:
                return cls.from_arrays({k: data[k] for k in data.files})
            except KeyError as exc:
                raise ValueError(f"{path}: not a codebook file (missing {exc})") from exc


def choose_prototype(losses: Any, codebook: Codebook) -> int:
    """The phone's private choice: the usable prototype with the lowest mean loss.

    Parameters
    ----------
    losses : array_like, shape ``(K,)`` or ``(examples, K)``
        The phone's losses under every prototype (unusable ones are ignored; they may be NaN).

    Returns
    -------
    int
        Index into the codebook; ties go to the lowest index.
    """
    arr = np.asarray(losses, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr.mean(axis=0)
    if arr.shape != (codebook.size,):
        raise ValueError(
            f"losses must have shape ({codebook.size},) or (examples, {codebook.size}), got {arr.shape}"
        )
    masked = np.where(codebook.active, arr, np.inf)
    if not np.isfinite(masked).any():
        raise ValueError("no usable prototype has a finite loss")
    return int(np.argmin(masked))


def enforce_k_min(losses: Any, codebook: Codebook) -> tuple[np.ndarray, Codebook]:
    """Choices of all phones once every usable prototype is shared by at least ``k_min`` of them.

    The protocol this simulates sees only counts: phones choose (:func:`choose_prototype`), the
    aggregate histogram of choices is published, the least-chosen prototype below ``k_min`` is retired,
    and phones that had chosen it choose again among the rest; repeat until every usable prototype with
    any phone has at least ``k_min``. Prototypes nobody chose are retired too.

    Parameters
    ----------
    losses : array_like, shape ``(users, K)``
        Each phone's mean loss under each prototype.

    Returns
    -------
    choices : ndarray of int64, shape ``(users,)``
    codebook : Codebook
        The codebook with the final usable set.

    Raises
    ------
    ValueError
        If fewer than ``k_min`` phones take part.
    """
    arr = np.asarray(losses, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != codebook.size:
        raise ValueError(f"losses must have shape (users, {codebook.size}), got {arr.shape}")
    if arr.shape[0] < codebook.k_min:
        raise ValueError(f"k_min={codebook.k_min} needs at least that many phones, got {arr.shape[0]}")
    active = codebook.active.copy()
    while True:
        masked = np.where(active[None, :], arr, np.inf)
        choices = masked.argmin(axis=1)
        counts = np.bincount(choices, minlength=codebook.size)
        active &= counts > 0
        small = np.flatnonzero(active & (counts < codebook.k_min))
        if small.size == 0:
            return choices.astype(np.int64), codebook.with_active(active)
        active[small[np.argmin(counts[small])]] = False


class PrototypeDistribution(GaussianDistribution):
    """A phone's law under the codebook: ``N(prototypes[index], noise_std^2 I)``.

    Parameters
    ----------
    codebook : Codebook
    index : int
        The phone's (private) choice; must be a usable prototype.
    noise_std : float
        Std of the Gaussian noise added to the prototype in every upload (> 0).

    Nothing is learnt by gradient: the choice is discrete (:func:`choose_prototype`), so
    :meth:`unconstrained` is empty and :meth:`sample_vjp` returns no gradient.
    """

    family: ClassVar[str] = "prototype"
    capabilities: ClassVar[frozenset[str]] = frozenset({"choose"})

    def __init__(self, codebook: Codebook, index: int, noise_std: float = DEFAULT_NOISE_STD) -> None:
        if not isinstance(codebook, Codebook):
            raise ValueError(f"codebook must be a Codebook, got {type(codebook).__name__}")
        if isinstance(index, bool) or int(index) != index or not 0 <= index < codebook.size:
            raise ValueError(f"index must be an integer in [0, {codebook.size}), got {index!r}")
        if not codebook.active[int(index)]:
            raise ValueError(f"prototype {index} is not usable in codebook {codebook.version}")
        if not (np.isfinite(noise_std) and noise_std > 0):
            raise ValueError(f"noise_std must be a finite number > 0, got {noise_std!r}")
        self.codebook = codebook
        self.index = int(index)
        self.noise_std = float(noise_std)
        super().__init__(codebook.prototypes[self.index], np.full(codebook.shape, self.noise_std))

    def unconstrained(self) -> dict[str, np.ndarray]:
        return {}

    def with_unconstrained(self, params: Mapping[str, np.ndarray]) -> Self:
        if params:
            raise ValueError(f"a prototype choice has no continuous parameters, got {sorted(params)}")
        return self

    def sample_vjp(
        self, x: np.ndarray, grad_x: np.ndarray, noise: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        return {}

    def sample_from_noise(self, noise: Mapping[str, np.ndarray]) -> np.ndarray:
        """``prototypes[index] + noise_std * normal`` (the ``prototype_sample`` graph's function)."""
        return prototype_sample_from_noise(
            self.codebook.prototypes, self.index, self.noise_std, noise["normal"]
        )

    # no update and no policy graph (nothing is learnt, the privacy is the codebook's k_min)
    onnx_update_feeds = UserDistribution.onnx_update_feeds
    onnx_policy_feeds = UserDistribution.onnx_policy_feeds

    def onnx_sample_feeds(self, noise: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return {
            "prototypes": self.codebook.prototypes,
            "index": np.int64(self.index),
            "noise_std": self.noise_std,
            "normal": noise["normal"],
        }

    def check_codebook(self, codebook: Codebook) -> None:
        """Raise :class:`CodebookMismatchError` unless this choice was made against ``codebook``."""
        if codebook.version != self.codebook.version:
            raise CodebookMismatchError(
                f"parameters were chosen against codebook {self.codebook.version} "
                f"(K={self.codebook.size}, k_min={self.codebook.k_min}), the cloud's is {codebook.version} "
                f"(K={codebook.size}, k_min={codebook.k_min}): choose the prototype again"
            )

    def _arrays(self) -> dict[str, np.ndarray]:
        return {
            **self.codebook.arrays(),
            "index": np.array(self.index),
            "noise_std": np.array(self.noise_std),
        }

    @classmethod
    def _from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Self:
        return cls(Codebook.from_arrays(arrays), int(arrays["index"]), float(arrays["noise_std"]))
