"""The privacy analysis's distribution families, one module each, dispatched by family name.

Every computation in :mod:`veil.privacy_analysis` that depends on the family asks the family's entry in
:data:`PRIVACY_FAMILIES` (``family_of(dist).interval_mass(...)``, ``population_family(users).stack(...)``)
instead of testing classes. Adding a family is one module here (a
:class:`~veil.privacy_analysis.families.base.PrivacyFamily`, usually a
:class:`~veil.privacy_analysis.families.base.ProductFamily`) and one ``register`` line below; what it does
not provide falls back to the generic (Monte Carlo) paths.
"""

from __future__ import annotations

from veil.privacy_analysis.families.base import GeneratorSettings, PrivacyFamily, ProductFamily
from veil.privacy_analysis.families.basis_mixture import BasisMixtureFamily
from veil.privacy_analysis.families.beta import BetaFamily
from veil.privacy_analysis.families.gaussian import GaussianFamily
from veil.privacy_analysis.families.registry import (
    PRIVACY_FAMILIES,
    family_of,
    find_family,
    get_family,
    population_family,
    register,
    same_params,
)

__all__ = [
    "PRIVACY_FAMILIES",
    "GeneratorSettings",
    "PrivacyFamily",
    "ProductFamily",
    "family_of",
    "find_family",
    "get_family",
    "population_family",
    "register",
    "same_params",
]

# The registry lines, in the order specs and messages list the families.
register(GaussianFamily())
register(BetaFamily())
register(BasisMixtureFamily())
