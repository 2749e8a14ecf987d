"""Population specs for ``veil audit``: a YAML file that lists (or generates) the users' distributions.

Format (all arrays are per coordinate; a flat list is one token, ``[[...], ...]`` is ``(n_tokens, dim)``)::

    family: gaussian                      # gaussian | beta | basis_mixture
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
and of the concentrations; basis mixture: the average weights, which is exactly the pooled law).

Every problem raises :class:`SpecError` with one line naming the place, e.g. ``users[2].std: ...``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from veil.client_sdk.distributions import (
    BasisMixtureDistribution,
    BetaDistribution,
    GaussianDistribution,
    UserDistribution,
)

__all__ = [
    "FAMILY_NAMES",
    "PopulationSpec",
    "SpecError",
    "UtilityPoint",
    "default_prior",
    "generate_population",
    "load_spec",
    "parse_spec",
]

FAMILY_NAMES = ("gaussian", "beta", "basis_mixture")
_SIMPLEX_TOL = 1e-6
_TOP_KEYS = {"family", "users", "generator", "basis", "prior", "policy", "utility"}
_GENERATOR_KEYS = {"users", "dim", "spread", "seed", "n_tokens", "std", "concentration", "basis_size"}


class SpecError(ValueError):
    """A population spec that cannot be used; the message is one line naming the offending field."""


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
        raise SpecError(f"{source}: the spec must be a mapping with 'family' and 'users', got {_kind(data)}")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise SpecError(
            f"{source}: unknown top-level keys {sorted(map(str, unknown))}; known: {sorted(_TOP_KEYS)}"
        )
    family = data.get("family")
    if family not in FAMILY_NAMES:
        raise SpecError(f"{source}: family must be one of {list(FAMILY_NAMES)}, got {family!r}")
    has_users, has_gen = data.get("users") is not None, data.get("generator") is not None
    if has_users == has_gen:
        raise SpecError(f"{source}: give exactly one of 'users' (a list) or 'generator', got {_which(data)}")
    try:
        basis = _basis(data.get("basis"), family)
        if has_gen:
            dists, centre = _generated(data["generator"], family, basis)
        else:
            dists = _listed(data["users"], family, basis)
            centre = None
        prior = _prior(data.get("prior"), family, basis, dists, centre)
        utility = _utility(data.get("utility"))
        policy = data.get("policy") or {}
        if not isinstance(policy, Mapping):
            raise SpecError(f"policy: must be a mapping of limits, got {_kind(policy)}")
    except SpecError as exc:
        raise SpecError(f"{source}: {exc}") from None
    return PopulationSpec(family, dists, prior, dict(policy), utility, source)


# ---------------------------------------------------------------------------------------------- users
def _listed(users: Any, family: str, basis: list[UserDistribution] | None) -> list[UserDistribution]:
    if not isinstance(users, list):
        raise SpecError(f"users: must be a list of user entries, got {_kind(users)}")
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


def _member(entry: Any, family: str, basis: list[UserDistribution] | None, where: str) -> UserDistribution:
    """One user (or prior) entry of the given family."""
    if not isinstance(entry, Mapping):
        raise SpecError(f"{where}: must be a mapping of parameters, got {_kind(entry)}")
    if family == "basis_mixture":
        _only(entry, {"weights"}, where)
        if basis is None:
            raise SpecError("basis: the basis_mixture family needs a top-level 'basis' list of components")
        weights = _vector(entry, "weights", where)
        if weights.size != len(basis):
            raise SpecError(
                f"{where}.weights: needs {len(basis)} entries (one per basis element), got {weights.size}"
            )
        if np.any(weights < 0):
            raise SpecError(
                f"{where}.weights: must be >= 0 (a probability vector), got min {weights.min():g}"
            )
        if abs(float(weights.sum()) - 1.0) > _SIMPLEX_TOL:
            raise SpecError(
                f"{where}.weights: must sum to 1 (a probability vector), got sum {weights.sum():g}"
            )
        return BasisMixtureDistribution(basis, weights)
    return _component(entry, family, where)


def _component(entry: Mapping[str, Any], family: str, where: str) -> UserDistribution:
    first, second = ("mean", "std") if family == "gaussian" else ("alpha", "beta")
    _only(entry, {first, second}, where)
    a = _array(entry, first, where)
    b = _array(entry, second, where, like=a)
    positive = (second,) if family == "gaussian" else (first, second)
    for name, arr in zip((first, second), (a, b), strict=True):
        if name in positive and np.any(arr <= 0):
            raise SpecError(f"{where}.{name}: must be > 0 everywhere, got {arr.min():g}")
    return GaussianDistribution(a, b) if family == "gaussian" else BetaDistribution(a, b)


def _basis(raw: Any, family: str) -> list[UserDistribution] | None:
    if family != "basis_mixture":
        if raw is not None:
            raise SpecError(f"basis: only the basis_mixture family takes a basis, family is {family!r}")
        return None
    if raw is None:
        return None  # a generator builds its own basis
    if not isinstance(raw, list) or not raw:
        raise SpecError(f"basis: must be a non-empty list of gaussian or beta components, got {_kind(raw)}")
    out = []
    for k, entry in enumerate(raw):
        where = f"basis[{k}]"
        if not isinstance(entry, Mapping):
            raise SpecError(f"{where}: must be a mapping of parameters, got {_kind(entry)}")
        comp_family = entry.get("family") or ("beta" if "alpha" in entry else "gaussian")
        if comp_family not in ("gaussian", "beta"):
            raise SpecError(f"{where}.family: must be gaussian or beta, got {comp_family!r}")
        out.append(_component({k2: v for k2, v in entry.items() if k2 != "family"}, comp_family, where))
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
    if family not in FAMILY_NAMES:
        raise SpecError(f"generator: family must be one of {list(FAMILY_NAMES)}, got {family!r}")
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
    rng = np.random.default_rng(seed)
    shape = (n_tokens, dim)
    if family == "gaussian":
        means = spread * rng.standard_normal((users, *shape))
        std_arr = np.full(shape, float(std))
        return [GaussianDistribution(m, std_arr) for m in means], GaussianDistribution(
            np.zeros(shape), std_arr
        )
    if family == "beta":
        logits = spread * rng.standard_normal((users, *shape))
        means = 1.0 / (1.0 + np.exp(-logits))
        dists = [BetaDistribution.from_mean_concentration(m, concentration) for m in means]
        return dists, BetaDistribution.from_mean_concentration(np.full(shape, 0.5), concentration)
    basis = [GaussianDistribution(rng.standard_normal(shape), np.ones(shape)) for _ in range(basis_size)]
    z = spread * rng.standard_normal((users, basis_size))
    weights = np.exp(z - z.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    dists = [BasisMixtureDistribution(basis, w) for w in weights]
    return dists, BasisMixtureDistribution(basis, np.full(basis_size, 1.0 / basis_size))


def _generated(
    raw: Any, family: str, basis: list[UserDistribution] | None
) -> tuple[list[UserDistribution], UserDistribution]:
    if not isinstance(raw, Mapping):
        raise SpecError(f"generator: must be a mapping {{users, dim, spread, seed}}, got {_kind(raw)}")
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
    first = dists[0]
    if isinstance(first, GaussianDistribution):
        loc = np.mean([d.loc for d in dists], axis=0)
        std = np.sqrt(np.mean([d.std**2 for d in dists], axis=0))
        return GaussianDistribution(loc, std)
    if isinstance(first, BetaDistribution):
        mean = np.mean([d.mean() for d in dists], axis=0)
        conc = np.mean([d.alpha + d.beta for d in dists], axis=0)
        return BetaDistribution.from_mean_concentration(mean, conc)
    if isinstance(first, BasisMixtureDistribution):
        return BasisMixtureDistribution(first.basis, np.mean([d.weights for d in dists], axis=0))
    raise SpecError(f"no default prior for {type(first).__name__}")


def _prior(
    raw: Any,
    family: str,
    basis: list[UserDistribution] | None,
    dists: list[UserDistribution],
    centre: UserDistribution | None,
) -> UserDistribution:
    if raw is None:
        return centre if centre is not None else default_prior(dists)
    if family == "basis_mixture" and basis is None:
        basis = list(dists[0].basis)  # type: ignore[attr-defined]
    prior = _member(raw, family, basis, "prior")
    if prior.shape != dists[0].shape:
        raise SpecError(f"prior: shape {prior.shape} differs from the users' {dists[0].shape}")
    return prior


# ---------------------------------------------------------------------------------------------- utility
def _utility(raw: Any) -> list[UtilityPoint]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise SpecError(f"utility: must be a list of {{label, accuracy, attribution}}, got {_kind(raw)}")
    out = []
    for i, entry in enumerate(raw):
        where = f"utility[{i}]"
        if not isinstance(entry, Mapping):
            raise SpecError(
                f"{where}: must be a mapping {{label, accuracy, attribution}}, got {_kind(entry)}"
            )
        _only(entry, {"label", "spread", "accuracy", "attribution"}, where)
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
def _array(entry: Mapping[str, Any], name: str, where: str, like: np.ndarray | None = None) -> np.ndarray:
    """A parameter as ``(n_tokens, dim)``: a flat list is one token; a number broadcasts to ``like``."""
    if name not in entry:
        raise SpecError(f"{where}.{name}: missing")
    raw = entry[name]
    try:
        arr = np.array(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise SpecError(
            f"{where}.{name}: must be a number or a (nested) list of numbers, got {_kind(raw)}"
        ) from None
    if arr.ndim == 0 and like is not None:
        arr = np.full(like.shape, float(arr))
    elif arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.size == 0:
        raise SpecError(
            f"{where}.{name}: must be a non-empty list per coordinate (or [[...]] per token), "
            f"got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise SpecError(f"{where}.{name}: must be finite (no NaN/Inf)")
    if like is not None and arr.shape != like.shape:
        raise SpecError(
            f"{where}.{name}: mismatched dimensions: shape {arr.shape} (n_tokens, dim), but the other "
            f"parameter has shape {like.shape}"
        )
    return arr


def _vector(entry: Mapping[str, Any], name: str, where: str) -> np.ndarray:
    if name not in entry:
        raise SpecError(f"{where}.{name}: missing")
    try:
        arr = np.array(entry[name], dtype=np.float64)
    except (TypeError, ValueError):
        raise SpecError(f"{where}.{name}: must be a list of numbers, got {_kind(entry[name])}") from None
    if arr.ndim != 1 or not np.all(np.isfinite(arr)):
        raise SpecError(f"{where}.{name}: must be a flat list of finite numbers, got shape {arr.shape}")
    return arr


def _only(entry: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(entry) - allowed
    if unknown:
        raise SpecError(f"{where}: unknown keys {sorted(map(str, unknown))}; expected {sorted(allowed)}")


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _which(data: Mapping[str, Any]) -> str:
    present = [k for k in ("users", "generator") if data.get(k) is not None]
    return " and ".join(present) if present else "neither"
