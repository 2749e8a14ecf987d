"""Population specs for ``veil audit``: a YAML file that lists (or generates) the users' distributions.

Format (all arrays are per coordinate; a flat list is one token, ``[[...], ...]`` is ``(n_tokens, dim)``)::

    family: gaussian                      # gaussian | beta | basis_mixture (any registered family)
    users:
      - {mean: [0.0, 0.0], std: [1.0, 1.0]}   # std may also be one number for every coordinate
      - {mean: [1.0, 0.0], std: 1.0}
    # beta users:           {alpha: [...], beta: [...]}
    # basis_mixture:        basis: [{mean: [...], std: [...]} | {alpha: [...], beta: [...]}, ...]
    #                       users: [{weights: [...]}, ...]     (a probability vector over the basis)
    # instead of users:     generator: {users: 1000, dim: 64, spread: 0.5, seed: 1}
    prior: {mean: [0.0, 0.0], std: 1.0}   # optional: the population prior (default: see below)
    policy: {max_bayes_attribution: 0.2}  # optional: see veil.privacy_analysis.audit.policy.Policy
    utility:                              # optional: points of the privacy-utility frontier
      - {label: "spread 0.5", accuracy: 0.61, attribution: 0.12}

The generator draws users around the prior with a given ``spread`` (see :func:`generate_population`).
Without ``prior:`` the prior is the generator's centre, or, for listed users, the family member with the
users' average parameters (Gaussian: mean of the means, root-mean-square std; Beta: mean of the means
and of the concentrations; basis mixture: the average weights, which is exactly the pooled law). A basis
entry without ``family:`` is a Gaussian unless it names another family's first parameter (``alpha``).

Each family reads, generates and averages its own members
(:class:`~veil.privacy_analysis.families.base.PrivacyFamily`); this module looks the family up by name in
:data:`~veil.privacy_analysis.families.PRIVACY_FAMILIES` and checks everything that is not per family.

Every problem raises :class:`SpecError` with one line naming the place, e.g. ``users[2].std: ...``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from veil.client_sdk.distributions import UserDistribution
from veil.privacy_analysis.families import PRIVACY_FAMILIES, GeneratorSettings, PrivacyFamily, find_family
from veil.privacy_analysis.families.spec_fields import SpecError, kind_of, only_keys

__all__ = [
    "PopulationSpec",
    "SpecError",
    "UtilityPoint",
    "default_prior",
    "generate_population",
    "load_spec",
    "parse_spec",
]

_TOP_KEYS = {"family", "users", "generator", "basis", "prior", "policy", "utility"}
_GENERATOR_KEYS = {"users", "dim", "spread", "seed", "n_tokens", "std", "concentration", "basis_size"}


@dataclass(frozen=True)
class UtilityPoint:
    """One point of the privacy-utility frontier, as measured elsewhere (e.g. ``veil experiment``)."""

    label: str
    """What was run (e.g. ``"spread 0.5"``)."""
    accuracy: float
    """Task accuracy (utility)."""
    attribution: float
    """Bayes attribution accuracy of that configuration (privacy cost)."""


@dataclass(frozen=True)
class PopulationSpec:
    """A parsed spec: the users' distributions plus the optional prior, policy and utility figures."""

    family: str
    distributions: list[UserDistribution]
    prior: UserDistribution
    policy: dict[str, Any] = field(default_factory=dict)
    """The raw ``policy:`` mapping (parsed by :class:`veil.privacy_analysis.audit.policy.Policy`)."""
    utility: list[UtilityPoint] = field(default_factory=list)
    source: str = "<spec>"


# ---------------------------------------------------------------------------------------------- loading
def load_spec(path: str | os.PathLike[str]) -> PopulationSpec:
    """Read and parse a YAML population spec.

    Raises
    ------
    SpecError
        Unreadable file, invalid YAML, or an invalid spec.
    """
    # lazy: pyyaml comes with the cloud extra; only YAML specs need it
    import yaml

    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise SpecError(f"{source}: cannot read the population spec: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{source}: not a text (UTF-8) file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise SpecError(f"{source}: invalid YAML{where}: {problem}") from None
    return parse_spec(data, source=source)


def parse_spec(data: Any, source: str = "<spec>") -> PopulationSpec:
    """Build a :class:`PopulationSpec` from an already-parsed mapping (the YAML document)."""
    if not isinstance(data, Mapping):
        raise SpecError(
            f"{source}: the spec must be a mapping with 'family' and 'users', got {kind_of(data)}"
        )
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise SpecError(
            f"{source}: unknown top-level keys {sorted(map(str, unknown))}; known: {sorted(_TOP_KEYS)}"
        )
    family = data.get("family")
    if family not in list(PRIVACY_FAMILIES):  # a list: the value may be unhashable
        raise SpecError(f"{source}: family must be one of {list(PRIVACY_FAMILIES)}, got {family!r}")
    fam = PRIVACY_FAMILIES[family]
    has_users, has_gen = data.get("users") is not None, data.get("generator") is not None
    if has_users == has_gen:
        raise SpecError(f"{source}: give exactly one of 'users' (a list) or 'generator', got {_which(data)}")
    try:
        basis = _basis(data.get("basis"), fam)
        if has_gen:
            dists, centre = _generated(data["generator"], family, basis)
        else:
            dists = _listed(data["users"], fam, basis)
            centre = None
        prior = _prior(data.get("prior"), fam, basis, dists, centre)
        utility = _utility(data.get("utility"))
        policy = data.get("policy") or {}
        if not isinstance(policy, Mapping):
            raise SpecError(f"policy: must be a mapping of limits, got {kind_of(policy)}")
    except SpecError as exc:
        raise SpecError(f"{source}: {exc}") from None
    return PopulationSpec(family, dists, prior, dict(policy), utility, source)


# ---------------------------------------------------------------------------------------------- users
def _listed(
    users: Any, family: PrivacyFamily, basis: list[UserDistribution] | None
) -> list[UserDistribution]:
    if not isinstance(users, list):
        raise SpecError(f"users: must be a list of user entries, got {kind_of(users)}")
    if not users:
        raise SpecError("users: the population is empty; list at least 2 users")
    if len(users) < 2:
        raise SpecError(f"users: attribution needs at least 2 users, got {len(users)}")
    dists = [_member(entry, family, basis, f"users[{i}]") for i, entry in enumerate(users)]
    first = dists[0].shape
    for i, dist in enumerate(dists):
        if dist.shape != first:
            raise SpecError(
                f"users[{i}]: shape (n_tokens, dim) = {dist.shape} differs from users[0]'s {first}"
            )
    return dists


def _member(
    entry: Any, family: PrivacyFamily, basis: list[UserDistribution] | None, where: str
) -> UserDistribution:
    """One user (or prior) entry of the given family."""
    if not isinstance(entry, Mapping):
        raise SpecError(f"{where}: must be a mapping of parameters, got {kind_of(entry)}")
    return family.read_member(entry, where, basis)


def _basis(raw: Any, family: PrivacyFamily) -> list[UserDistribution] | None:
    if not family.takes_basis:
        if raw is not None:
            takers = " or ".join(f.name for f in PRIVACY_FAMILIES.values() if f.takes_basis)
            raise SpecError(f"basis: only the {takers} family takes a basis, family is {family.name!r}")
        return None
    if raw is None:
        return None  # a generator builds its own basis
    components = [f for f in PRIVACY_FAMILIES.values() if not f.takes_basis]
    names = " or ".join(f.name for f in components)
    if not isinstance(raw, list) or not raw:
        raise SpecError(f"basis: must be a non-empty list of {names} components, got {kind_of(raw)}")
    out = []
    for k, entry in enumerate(raw):
        where = f"basis[{k}]"
        if not isinstance(entry, Mapping):
            raise SpecError(f"{where}: must be a mapping of parameters, got {kind_of(entry)}")
        # Untagged: the first component family, unless the entry names another one's first parameter.
        named = [f for f in components[1:] if f.spec_params and f.spec_params[0] in entry]
        comp_family = entry.get("family") or (named or components)[0].name
        comp = next((f for f in components if f.name == comp_family), None)
        if comp is None:
            raise SpecError(f"{where}.family: must be {names}, got {comp_family!r}")
        out.append(comp.read_member({k2: v for k2, v in entry.items() if k2 != "family"}, where, None))
        if out[-1].shape != out[0].shape:
            raise SpecError(f"{where}: shape {out[-1].shape} differs from basis[0]'s {out[0].shape}")
    return out


# ---------------------------------------------------------------------------------------------- generator
def generate_population(
    family: str,
    users: int,
    dim: int,
    spread: float,
    seed: int = 0,
    *,
    n_tokens: int = 1,
    std: float = 1.0,
    concentration: float = 10.0,
    basis_size: int = 8,
) -> tuple[list[UserDistribution], UserDistribution]:
    """Draw ``users`` distributions scattered around a common prior; returns ``(users, prior)``.

    - gaussian: ``mean_i ~ N(0, spread^2 I)``, ``std_i = std``; prior ``N(0, std^2 I)``. Two users are
      then ``Delta ~ spread * sqrt(2 n_tokens dim) / std`` apart on average.
    - beta: ``logit(mean_i) ~ N(0, spread^2 I)``, concentration ``concentration``; prior mean 1/2.
    - basis_mixture: a shared basis of ``basis_size`` Gaussians ``N(b_k, I)`` with ``b_k ~ N(0, I)``,
      weights ``softmax(spread * z_i)`` with ``z_i ~ N(0, I_K)``; prior: uniform weights.
      ``spread = 0`` gives identical users.
    """
    if family not in list(PRIVACY_FAMILIES):
        raise SpecError(f"generator: family must be one of {list(PRIVACY_FAMILIES)}, got {family!r}")
    for name, value, low in (
        ("users", users, 2),
        ("dim", dim, 1),
        ("n_tokens", n_tokens, 1),
        ("basis_size", basis_size, 1),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise SpecError(f"generator.{name}: must be an integer >= {low}, got {value!r}")
    for name, value, strict in (
        ("spread", spread, False),
        ("std", std, True),
        ("concentration", concentration, True),
    ):
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not np.isfinite(value)
            or value < 0
            or (strict and value == 0)
        ):
            raise SpecError(
                f"generator.{name}: must be a finite number {'> 0' if strict else '>= 0'}, got {value!r}"
            )
    settings = GeneratorSettings(users, (n_tokens, dim), spread, std, concentration, basis_size)
    return PRIVACY_FAMILIES[family].generate(np.random.default_rng(seed), settings)


def _generated(
    raw: Any, family: str, basis: list[UserDistribution] | None
) -> tuple[list[UserDistribution], UserDistribution]:
    if not isinstance(raw, Mapping):
        raise SpecError(f"generator: must be a mapping {{users, dim, spread, seed}}, got {kind_of(raw)}")
    unknown = set(raw) - _GENERATOR_KEYS
    if unknown:
        raise SpecError(
            f"generator: unknown keys {sorted(map(str, unknown))}; known: {sorted(_GENERATOR_KEYS)}"
        )
    for key in ("users", "dim", "spread"):
        if key not in raw:
            raise SpecError(f"generator.{key}: missing (needs users, dim, spread; seed is optional)")
    if basis is not None:
        raise SpecError("basis: a generator draws its own basis; drop 'basis' or list the users")
    if raw["users"] in (0, None) or (isinstance(raw["users"], int) and raw["users"] < 1):
        raise SpecError(
            f"generator.users: the population is empty; need at least 2 users, got {raw['users']!r}"
        )
    extra = {k: raw[k] for k in ("n_tokens", "std", "concentration", "basis_size") if k in raw}
    return generate_population(family, raw["users"], raw["dim"], raw["spread"], raw.get("seed", 0), **extra)


# ---------------------------------------------------------------------------------------------- prior
def default_prior(dists: Sequence[UserDistribution]) -> UserDistribution:
    """The family member with the users' average parameters (see the module docstring)."""
    family = find_family(dists[0])
    if family is None:
        raise SpecError(f"no default prior for {type(dists[0]).__name__}")
    return family.average(dists)


def _prior(
    raw: Any,
    family: PrivacyFamily,
    basis: list[UserDistribution] | None,
    dists: list[UserDistribution],
    centre: UserDistribution | None,
) -> UserDistribution:
    if raw is None:
        return centre if centre is not None else default_prior(dists)
    if family.takes_basis and basis is None:  # generated users: the prior weighs their basis
        shared = family.shared_basis(dists)
        basis = None if shared is None else list(shared)
    prior = _member(raw, family, basis, "prior")
    if prior.shape != dists[0].shape:
        raise SpecError(f"prior: shape {prior.shape} differs from the users' {dists[0].shape}")
    return prior


# ---------------------------------------------------------------------------------------------- utility
def _utility(raw: Any) -> list[UtilityPoint]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise SpecError(f"utility: must be a list of {{label, accuracy, attribution}}, got {kind_of(raw)}")
    out = []
    for i, entry in enumerate(raw):
        where = f"utility[{i}]"
        if not isinstance(entry, Mapping):
            raise SpecError(
                f"{where}: must be a mapping {{label, accuracy, attribution}}, got {kind_of(entry)}"
            )
        only_keys(entry, {"label", "spread", "accuracy", "attribution"}, where)
        values = {}
        for key in ("accuracy", "attribution"):
            value = entry.get(key)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
                raise SpecError(f"{where}.{key}: must be a number in [0, 1], got {value!r}")
            values[key] = float(value)
        label = entry.get("label", f"spread {entry['spread']}" if "spread" in entry else f"point {i}")
        out.append(UtilityPoint(str(label), values["accuracy"], values["attribution"]))
    return out


# ---------------------------------------------------------------------------------------------- helpers
def _which(data: Mapping[str, Any]) -> str:
    present = [k for k in ("users", "generator") if data.get(k) is not None]
    return " and ".join(present) if present else "neither"
