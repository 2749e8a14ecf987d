"""The registry of the privacy analysis's families, and the lookups every call site goes through.

:data:`PRIVACY_FAMILIES` maps a family name (the ``family`` class attribute of a
:class:`~veil.client_sdk.distributions.UserDistribution`) to the
:class:`~veil.privacy_analysis.families.base.PrivacyFamily` that does that family's maths. A distribution
finds its entry the way the phone's divergence tables do
(:func:`~veil.client_sdk.distributions.divergences.resolve_family`): the nearest class along its MRO whose
``family`` is registered, so a subclass with a name of its own (a codebook's ``"prototype"``, a Gaussian
centred on a public embedding) is analysed as its parent unless it registers maths of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from veil.client_sdk.distributions import UserDistribution
from veil.client_sdk.distributions.divergences import resolve_family

if TYPE_CHECKING:
    from veil.privacy_analysis.families.base import PrivacyFamily

__all__ = [
    "PRIVACY_FAMILIES",
    "family_of",
    "find_family",
    "get_family",
    "population_family",
    "register",
    "same_params",
]

PRIVACY_FAMILIES: dict[str, PrivacyFamily] = {}
"""Family name -> its privacy maths, in registration order (filled by :mod:`veil.privacy_analysis.families`)."""


def register(family: PrivacyFamily) -> PrivacyFamily:
    """Add ``family`` to :data:`PRIVACY_FAMILIES` under ``family.name``; ``ValueError`` if the name is taken."""
    if family.name in PRIVACY_FAMILIES:
        raise ValueError(f"a privacy family named {family.name!r} is already registered")
    PRIVACY_FAMILIES[family.name] = family
    return family


def get_family(name: str) -> PrivacyFamily:
    """The registered family called ``name``.

    Raises
    ------
    ValueError
        No family of that name, naming the known ones.
    """
    family = PRIVACY_FAMILIES.get(name) if isinstance(name, str) else None
    if family is None:
        raise ValueError(f"unknown distribution family {name!r}; known: {list(PRIVACY_FAMILIES)}")
    return family


def find_family(dist: Any) -> PrivacyFamily | None:
    """The family ``dist`` is analysed as (nearest registered ``family`` along its MRO), else ``None``."""
    name = resolve_family(dist, PRIVACY_FAMILIES)
    return None if name is None else PRIVACY_FAMILIES[name]


def family_of(dist: Any) -> PrivacyFamily:
    """:func:`find_family`, raising where nothing is registered.

    Raises
    ------
    ValueError
        ``dist``'s family (and none of its parents') has no privacy maths, naming the known families.
    """
    family = find_family(dist)
    if family is None:
        name = getattr(dist, "family", None)
        raise ValueError(
            f"no privacy analysis for distribution family {name!r} ({type(dist).__name__}); "
            f"known: {list(PRIVACY_FAMILIES)}"
        )
    return family


def population_family(dists: Sequence[Any]) -> PrivacyFamily | None:
    """The one family every entry of ``dists`` is analysed as; ``None`` when they mix families, when one has
    none, or when ``dists`` is empty. Population-wide fast paths and closed forms start here."""
    found = [find_family(d) for d in dists]
    first = found[0] if found else None
    if first is None or any(f is not first for f in found):
        return None
    return first


def same_params(p: UserDistribution, q: UserDistribution) -> bool:
    """Whether ``p`` and ``q`` are the same law with the same parameters (exact comparison).

    One class and one shape on both sides, then the family's own comparison.
    """
    if type(p) is not type(q) or p.shape != q.shape:
        return False
    return family_of(p).same_params(p, q)
