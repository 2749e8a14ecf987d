"""What the privacy analysis needs from a distribution family: one small base class, and its product form.

Every family analysed here is a mixture of product laws (independent coordinates), which is what makes
rectangle masses, and so the exact Bayes attribution in one or two dimensions, computable:
``P(box) = sum_b w_b prod_d P_b,d(interval_d)``. A :class:`PrivacyFamily` therefore says

* how to compare two of its laws and split one into weighted product pieces (:meth:`~PrivacyFamily.atoms`);
* for a product law (:class:`ProductFamily`): its flat parameters, marginal quantiles and interval masses;
* what it has beyond Monte Carlo: a stacked population for vectorised log-likelihoods, closed forms for
  the Bhattacharyya matrix, total variation and the L2 Gram matrix (``None`` where it has none);
* how ``veil audit``'s population spec reads, generates and averages its members.

The defaults are "not available": a new family starts from Monte Carlo everywhere and adds closed forms
one method at a time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from veil.client_sdk.distributions import UserDistribution
from veil.privacy_analysis._stacked import StackedPopulation
from veil.privacy_analysis.families.spec_fields import SpecError, only_keys, read_array

__all__ = ["GeneratorSettings", "PrivacyFamily", "ProductFamily", "row_blocks"]

_BLOCK = 4_000_000  # floats per broadcast block in the (K, K, D) pairwise formulas


def row_blocks(k: int, d: int) -> list[slice]:
    """Row slices of a ``(k, k, d)`` broadcast that keep each block near 4 million floats."""
    rows = max(1, _BLOCK // max(1, k * d))
    return [slice(i, min(k, i + rows)) for i in range(0, k, rows)]


@dataclass(frozen=True)
class GeneratorSettings:
    """What :func:`veil.privacy_analysis.audit.spec.generate_population` asks a family to draw (validated
    there); each family reads the fields it needs."""

    users: int
    """Number of users."""
    shape: tuple[int, int]
    """Event shape ``(n_tokens, dim)``."""
    spread: float
    """How far users scatter around the family's centre (0: identical users)."""
    std: float
    """Gaussian users' standard deviation."""
    concentration: float
    """Beta users' ``alpha + beta``."""
    basis_size: int
    """Basis mixtures' number of components."""


class PrivacyFamily(ABC):
    """The privacy maths of one distribution family; one instance per family lives in the registry.

    Attributes
    ----------
    name : str
        The family name it is registered under (a ``UserDistribution.family``).
    takes_basis : bool
        Whether its spec entries are weights over a top-level ``basis:`` list.
    spec_params : tuple of str
        The parameter names of its spec entries, first the one that identifies the family in an
        untagged basis entry.
    """

    name: ClassVar[str]
    takes_basis: ClassVar[bool] = False
    spec_params: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------------ parameters and pieces
    @abstractmethod
    def same_params(self, p: UserDistribution, q: UserDistribution) -> bool:
        """Whether ``p`` and ``q`` (one class, one shape) have exactly equal parameters."""

    def atoms(self, d: UserDistribution) -> list[tuple[float, UserDistribution]]:
        """Product-form pieces of ``d`` with their weights; ``[(1, d)]`` for a product law."""
        return [(1.0, d)]

    def shared_basis(self, dists: Sequence[UserDistribution]) -> tuple[UserDistribution, ...] | None:
        """The common basis when every entry is a mixture over the same components, else ``None``."""
        return None

    # ------------------------------------------------------------------ per-coordinate marginals
    def flat_params(self, d: UserDistribution) -> tuple[np.ndarray, np.ndarray]:
        """The two parameter arrays of a product law, each flattened to ``(D,)``."""
        raise ValueError(
            f"expected a product law with per-coordinate parameters, got the {self.name!r} family "
            f"({type(d).__name__})"
        )

    def coordinate_quantiles(self, d: UserDistribution, levels: np.ndarray) -> np.ndarray:
        """Marginal quantiles at probabilities ``levels`` ``(L,)`` of every flattened coordinate: ``(D, L)``."""
        raise ValueError(f"the {self.name!r} family has no per-coordinate quantiles ({type(d).__name__})")

    def interval_mass(self, d: UserDistribution, axis: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Marginal probability of ``[lo, hi]`` along flattened coordinate ``axis`` of a product law."""
        raise ValueError(f"the {self.name!r} family has no per-coordinate masses ({type(d).__name__})")

    def differing_coordinate(
        self, p: UserDistribution, q: UserDistribution
    ) -> tuple[UserDistribution, UserDistribution] | None:
        """The one-dimensional marginals of ``p`` and ``q`` when they are product laws that differ in exactly
        one coordinate (their TV is then that coordinate's TV), else ``None``."""
        return None

    # ------------------------------------------------------------------ populations and closed forms
    def stack(self, dists: Sequence[UserDistribution]) -> StackedPopulation | None:
        """``dists`` (all of this family) stacked for vectorised log-likelihoods, or ``None``."""
        return None

    def log_bc_matrix(self, dists: Sequence[UserDistribution]) -> np.ndarray | None:
        """``(K, K)`` log Bhattacharyya coefficients of every pair, in closed form, or ``None``."""
        return None

    def shift_distances(self, dists: Sequence[UserDistribution]) -> np.ndarray | None:
        """``(K, K)`` Mahalanobis distances ``Delta`` when every pair is a shift of one Gaussian (then
        ``TV = 2 Phi(Delta/2) - 1`` and ``BC = exp(-Delta^2/8)``), else ``None``."""
        return None

    def closed_form_tv(self, p: UserDistribution, q: UserDistribution) -> float | None:
        """``TV(p, q)`` in closed form for two laws of one class, or ``None``."""
        return None

    def tv_upper_bound(self, p: UserDistribution, q: UserDistribution) -> float | None:
        """A closed-form upper bound on ``TV(p, q)`` that clips Monte-Carlo estimates, or ``None``."""
        return None

    def log_gram(self, dists: Sequence[UserDistribution]) -> tuple[np.ndarray, str] | None:
        """``(log G, method)`` with ``G_ij = integral p_i p_j`` in closed form, or ``None``."""
        return None

    # ------------------------------------------------------------------ the audit's population spec
    def read_member(
        self, entry: Mapping[str, Any], where: str, basis: Sequence[UserDistribution] | None
    ) -> UserDistribution:
        """One user (or prior) entry of a spec; ``basis`` is the spec's basis list, if it has one."""
        raise SpecError(f"{where}: the {self.name!r} family cannot be read from a population spec")

    def generate(
        self, rng: np.random.Generator, settings: GeneratorSettings
    ) -> tuple[list[UserDistribution], UserDistribution]:
        """``settings.users`` users scattered around a centre, and the centre: ``(users, prior)``."""
        raise SpecError(f"generator: the {self.name!r} family has no population generator")

    def average(self, dists: Sequence[UserDistribution]) -> UserDistribution:
        """The family member with the users' average parameters (the default prior of a spec)."""
        raise SpecError(f"no default prior for {type(dists[0]).__name__}")


class ProductFamily(PrivacyFamily):
    """A family of product laws given by two parameter arrays of shape ``(n_tokens, dim)``.

    Subclasses give :meth:`flat_params`, :meth:`build` (its inverse), the marginals
    (:meth:`~PrivacyFamily.coordinate_quantiles`, :meth:`~PrivacyFamily.interval_mass`), ``spec_params`` and
    ``spec_positive`` (the spec parameters that must be > 0).
    """

    spec_positive: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def flat_params(self, d: UserDistribution) -> tuple[np.ndarray, np.ndarray]: ...

    @abstractmethod
    def build(self, a: np.ndarray, b: np.ndarray) -> UserDistribution:
        """The law with parameter arrays ``a`` and ``b``, each ``(n_tokens, dim)``."""

    @abstractmethod
    def coordinate_quantiles(self, d: UserDistribution, levels: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def interval_mass(self, d: UserDistribution, axis: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray: ...

    def same_params(self, p: UserDistribution, q: UserDistribution) -> bool:
        a1, b1 = self.flat_params(p)
        a2, b2 = self.flat_params(q)
        return bool(np.array_equal(a1, a2) and np.array_equal(b1, b2))

    def differing_coordinate(
        self, p: UserDistribution, q: UserDistribution
    ) -> tuple[UserDistribution, UserDistribution] | None:
        (a1, b1), (a2, b2) = self.flat_params(p), self.flat_params(q)
        differ = np.flatnonzero((a1 != a2) | (b1 != b2))
        if differ.size != 1:
            return None
        j = slice(int(differ[0]), int(differ[0]) + 1)
        return self.build(a1[j].reshape(1, 1), b1[j].reshape(1, 1)), self.build(
            a2[j].reshape(1, 1), b2[j].reshape(1, 1)
        )

    def stacked_params(self, dists: Sequence[UserDistribution]) -> tuple[np.ndarray, np.ndarray]:
        """Both parameter arrays of every user, stacked: ``(K, D)`` each."""
        a, b = (np.stack(x) for x in zip(*(self.flat_params(d) for d in dists), strict=True))
        return a, b

    def pairwise_blocks(
        self, formula: Callable[..., np.ndarray], dists: Sequence[UserDistribution]
    ) -> np.ndarray:
        """``(K, K)`` matrix of ``formula(a_i, b_i, a_j, b_j)``, an array formula over ``(K, 1, D)`` x
        ``(1, K, D)`` parameter stacks that sums over coordinates, computed in memory-bounded row blocks."""
        a, b = self.stacked_params(dists)
        out = np.empty((len(dists), len(dists)))
        for blk in row_blocks(*a.shape):
            out[blk] = formula(a[blk, None, :], b[blk, None, :], a[None], b[None])
        return out

    def read_member(
        self, entry: Mapping[str, Any], where: str, basis: Sequence[UserDistribution] | None
    ) -> UserDistribution:
        first, second = self.spec_params
        only_keys(entry, {first, second}, where)
        a = read_array(entry, first, where)
        b = read_array(entry, second, where, like=a)
        for name, arr in zip((first, second), (a, b), strict=True):
            if name in self.spec_positive and np.any(arr <= 0):
                raise SpecError(f"{where}.{name}: must be > 0 everywhere, got {arr.min():g}")
        return self.build(a, b)
