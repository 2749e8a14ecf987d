"""Which graphs each distribution family exports, with their shapes and manifest details.

Opset: 17 by default (ONNX 1.12, 2022; supported by every onnxruntime release since 1.12 including the
mobile packages); 18 is also accepted. The graphs use only default-domain operators whose semantics are
the same in both (``ReduceSum`` takes its axes as an input since 13; ``ReduceMax`` is used without axes).
All data tensors are float32; masks are bool, the mixture component and Adam's step count int64.

Dimension names in the manifest: ``batch`` (samples per call, always symbolic), ``examples`` (losses per
prototype in a choice, always symbolic), ``n_tokens``, ``dim``, ``n_basis`` and ``n_prototypes`` (fixed
ints when :class:`GraphShapes` gives them, otherwise symbolic).

The ``prototype`` family (a choice from the public codebook) exports a sampler (a gather of the chosen
prototype plus noise, :func:`~veil.models.onnx.samplers.prototype_sampler`) and the choice itself
(:mod:`~veil.models.onnx.choice`); it has no update (the choice is discrete) and no policy graph (its
privacy is the codebook's ``k_min``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import onnx

from veil.client_sdk.distributions.noise import BetaConstruction, beta_construction_tv_bound
from veil.models.onnx import choice, head, policy, samplers, updates

__all__ = [
    "DEFAULT_OPSET",
    "EXPORT_OPSETS",
    "FAMILY_GRAPHS",
    "BuiltGraph",
    "GraphShapes",
    "build_graphs",
]

DEFAULT_OPSET = 17
EXPORT_OPSETS = (17, 18)
FAMILY_GRAPHS: dict[str, tuple[str, ...]] = {
    "gaussian": ("sampler", "update", "policy"),
    "beta": ("sampler", "update"),
    "basis_mixture": ("sampler", "update", "policy"),
    "prototype": ("sampler", "choice", "head"),
}
"""Graph kinds exported per family (no Beta policy graph: see :mod:`veil.models.onnx.policy`)."""
_SUFFIX = {"sampler": "sample", "update": "update", "policy": "policy", "choice": "choice", "head": "head"}
_PARAMS = {
    "gaussian": ["mean", "log_std"],
    "beta": ["logit_mean", "log_concentration"],
    "basis_mixture": ["logits"],
    "prototype": [],
}
_NOISE = {
    "normal": "i.i.d. standard normal draws from the platform's secure random generator",
    "uniform": "i.i.d. uniform draws on (0, 1); clamped into [2**-126, 1 - 2**-24] inside the graph",
}


@dataclass(frozen=True)
class GraphShapes:
    """Fixed sizes baked into the exported graphs; ``None`` leaves a dimension symbolic."""

    n_tokens: int | None = None
    """Soft tokens per user embedding."""
    dim: int | None = None
    """Embedding width (the LM's hidden size)."""
    n_basis: int | None = None
    """Basis size K of the mixture family."""
    n_prototypes: int | None = None
    """Codebook size K of the prototype family."""

    def __post_init__(self) -> None:
        for name in ("n_tokens", "dim", "n_basis", "n_prototypes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be an int >= 1 or None (symbolic), got {value!r}")

    def resolved(self) -> tuple[int | str, int | str, int | str]:
        """``(n_tokens, dim, n_basis)`` with symbolic names for unset sizes."""
        return (self.n_tokens or "n_tokens", self.dim or "dim", self.n_basis or "n_basis")


@dataclass
class BuiltGraph:
    """One graph ready to be written: manifest name, kind, family, the model, and extra details."""

    name: str
    kind: str
    family: str
    model: onnx.ModelProto
    extra: dict[str, Any] = field(default_factory=dict)


def _build_one(
    family: str, kind: str, shapes: GraphShapes, opset: int, beta: BetaConstruction
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    n, d, k = shapes.resolved()
    extra: dict[str, Any] = {"params": _PARAMS[family], "n_tokens": shapes.n_tokens, "dim": shapes.dim}
    if kind in ("sampler", "update"):
        extra["noise"] = _NOISE
    if family == "prototype":
        extra["n_prototypes"] = shapes.n_prototypes
        extra["codebook"] = "the public prototypes (n_prototypes, n_tokens, dim) and mask of GET /v1/codebook"
        k_protos = shapes.n_prototypes or "n_prototypes"
        if kind == "sampler":
            return samplers.prototype_sampler(k_protos, n, d, opset), extra
        if kind == "head":
            extra["mixing"] = "private mixing head over m requested prototypes (m symbolic)"
            return head.private_head("m", opset), extra
        return choice.prototype_choice(k_protos, opset), extra
    if family == "gaussian":
        build = {
            "sampler": samplers.gaussian_sampler,
            "update": updates.gaussian_update,
            "policy": policy.gaussian_policy,
        }
        return build[kind](n, d, opset), extra
    if family == "beta":
        extra["construction"] = {
            "name": "boosted Marsaglia-Tsang, fixed rounds (veil.client_sdk.distributions.noise)",
            "rounds": beta.rounds,
            "boost": beta.boost,
            "tv_bound_at_alpha_beta_2_5": beta_construction_tv_bound(2.0, 5.0, beta),
        }
        model = (
            samplers.beta_sampler(n, d, opset, beta)
            if kind == "sampler"
            else updates.beta_update(n, d, opset, beta)
        )
        return model, extra
    extra["n_basis"] = shapes.n_basis
    if kind == "sampler":
        extra["basis_family"] = "gaussian"
        return samplers.basis_mixture_sampler(k, n, d, opset), extra
    if kind == "update":
        extra["basis_means"] = "means of the public basis components, any component family"
        return updates.basis_mixture_update(k, n, d, opset), extra
    return policy.basis_mixture_policy(k, opset), extra


def build_graphs(
    families: Iterable[str] = tuple(FAMILY_GRAPHS),
    shapes: GraphShapes | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    beta: BetaConstruction | None = None,
) -> list[BuiltGraph]:
    """Build every graph of the given families, named ``<family>_<sample|update|policy>``.

    Raises
    ------
    ValueError
        Unknown family, empty family list, or an opset outside :data:`EXPORT_OPSETS`.
    """
    chosen = list(dict.fromkeys(families))
    if not chosen:
        raise ValueError(f"families must name at least one of {sorted(FAMILY_GRAPHS)}")
    unknown = [f for f in chosen if f not in FAMILY_GRAPHS]
    if unknown:
        raise ValueError(f"unknown families {unknown}; known: {sorted(FAMILY_GRAPHS)}")
    if opset not in EXPORT_OPSETS:
        raise ValueError(f"opset must be one of {EXPORT_OPSETS}, got {opset!r}")
    shapes = shapes or GraphShapes()
    cfg = beta or BetaConstruction()
    built = []
    for family in chosen:
        for kind in FAMILY_GRAPHS[family]:
            model, extra = _build_one(family, kind, shapes, opset, cfg)
            built.append(BuiltGraph(f"{family}_{_SUFFIX[kind]}", kind, family, model, extra))
    return built
