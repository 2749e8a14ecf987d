"""User-distribution families for soft-token embeddings (numpy only; this code ships to phones).

Families: :class:`BetaDistribution` (IDfree-PL's, arXiv:2501.06062), :class:`GaussianDistribution`
(diagonal), :class:`BasisMixtureDistribution` (per-user weights over a public basis) and
:class:`PrototypeDistribution` (a k-anonymous choice from a public :class:`Codebook`). :data:`FAMILIES`
maps the family name stored in saved files to its class.
"""

from __future__ import annotations

import os

from veil.client_sdk.distributions.base import FAMILIES, UserDistribution
from veil.client_sdk.distributions.basis_mixture import BasisMixtureDistribution
from veil.client_sdk.distributions.beta import BetaDistribution
from veil.client_sdk.distributions.gaussian import GaussianDistribution
from veil.client_sdk.distributions.prototype import (
    Codebook,
    CodebookMismatchError,
    PrototypeDistribution,
    choose_prototype,
    enforce_k_min,
)

__all__ = [
    "FAMILIES",
    "BasisMixtureDistribution",
    "BetaDistribution",
    "Codebook",
    "CodebookMismatchError",
    "GaussianDistribution",
    "PrototypeDistribution",
    "UserDistribution",
    "choose_prototype",
    "enforce_k_min",
    "load_distribution",
]


def load_distribution(path: str | os.PathLike[str]) -> UserDistribution:
    """Load a distribution saved with :meth:`UserDistribution.save`, dispatching on its stored family.

    Raises
    ------
    ValueError
        If the file names an unknown family or is malformed.
    """
    return UserDistribution.load(path)
