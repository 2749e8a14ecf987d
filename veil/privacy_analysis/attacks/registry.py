"""One input type for every attack, and the registry that maps an attack's name to it.

Each attack module registers itself with one line, ``register(Attack(name, Config, run))``; the callers
(:func:`veil.privacy_analysis.attacks.run_attacks` on a population, and
:func:`veil.privacy_analysis.attacks.uploads.run_upload_attacks` on an exported uploads file) build one
:class:`AttackInput` and look the attacks they run up in :data:`ATTACKS` by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from veil.client_sdk.distributions import UserDistribution
from veil.privacy_analysis.attacks.base import AttackResult

__all__ = ["ATTACKS", "Attack", "AttackInput", "register"]


@dataclass(frozen=True)
class AttackInput:
    """What an attacker holds, and the ground truth its result is scored against.

    Attributes
    ----------
    uploads : ndarray, shape ``(N, n_tokens, dim)`` or ``(N, n_tokens * dim)``
        The stored uploads.
    owners : ndarray of int, shape ``(N,)``
        True user of every upload, in ``[0, k)``: for scoring, and for the labelled share ``aux``.
    k : int
        Number of users.
    rng : numpy.random.Generator
        Drives clustering seeds, cross-validation folds and random tie-breaking.
    aux : ndarray of bool, shape ``(N,)``, optional
        The uploads whose owners the attacker holds (the learned attacks train on them and are scored on
        the rest); needed by ``knn``, ``gaussian_fit``, ``learned_attributor`` and ``stylometric``.
    texts : sequence of str, length N, optional
        The text sent with every upload; needed by ``stylometric``.
    dists : sequence of UserDistribution, length k, optional
        The users' true distributions; needed by ``bayes_known_parameters``.
    tie_break : {"first", "random"}
        How ``learned_attributor`` breaks ties between equally probable users: numpy's ``argmax`` (the
        lowest index), or uniformly at random from ``rng`` (the uploads audit's choice, so that equal
        scores do not favour low user indices).
    """

    uploads: np.ndarray
    owners: np.ndarray
    k: int
    rng: np.random.Generator
    aux: np.ndarray | None = None
    texts: Sequence[str] | None = None
    dists: Sequence[UserDistribution] | None = None
    tie_break: Literal["first", "random"] = "first"

    def __post_init__(self) -> None:
        if self.tie_break not in ("first", "random"):
            raise ValueError(f"tie_break must be 'first' or 'random', got {self.tie_break!r}")

    def require(self, name: str, *fields: str) -> None:
        """Raise ``ValueError`` naming the attack if any of ``fields`` is ``None``."""
        missing = [f for f in fields if getattr(self, f) is None]
        if missing:
            raise ValueError(f"the {name} attack needs {', '.join(missing)}, got None")


@dataclass(frozen=True)
class Attack:
    """A registered attack.

    Attributes
    ----------
    name : str
        The name used by callers, configs and reports.
    config_type : type
        The attack's config dataclass; ``config_type()`` gives its defaults.
    run : callable ``(AttackInput, config) -> AttackResult``
    """

    name: str
    config_type: type
    run: Callable[[AttackInput, Any], AttackResult]


ATTACKS: dict[str, Attack] = {}
"""Attack name -> :class:`Attack`, filled by the attack modules as :mod:`veil.privacy_analysis.attacks` imports them."""


def register(attack: Attack) -> Attack:
    """Add ``attack`` to :data:`ATTACKS`; ``ValueError`` if its name is taken."""
    if attack.name in ATTACKS:
        raise ValueError(f"an attack named {attack.name!r} is already registered")
    ATTACKS[attack.name] = attack
    return attack
