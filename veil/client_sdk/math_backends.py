"""The phone's math, behind one interface: sample, parameter update, privacy-policy check.

:class:`NumpyBackend` is the reference (the families' samplers, :class:`OnDeviceLearner`,
:class:`PolicyGuard`). :class:`OnnxBackend` runs the graphs that ``veil export-onnx`` writes and apps
embed (:mod:`veil.client_sdk.runtime`), each verified against its manifest before use: the sampler takes
its noise as input tensors (drawn here from the client's secure generator and kept in the
:class:`Draw`, since the Beta update differentiates through the noise that made the sample), the update
graph is one ``OnDeviceLearner.step`` with the Adam state passed in and out, and the policy graph measures
the parameters against the prior. Two documented exceptions: the Beta family has no policy graph (its
bound needs log-Beta differences float32 cannot resolve), so its check is the numpy guard; and projecting
an update back inside the policy is a bisection on the line to the prior whose every probe is the policy
graph (:meth:`PolicyGuard.project` with the graph as its check).

A prototype choice (family ``"prototype"``) has no update and no policy graph: the backends sample it
(the ONNX one through ``prototype_sample``, a gather of the chosen row plus noise) and choose it
(:meth:`MathBackend.choose`: :func:`~veil.client_sdk.distributions.choose_prototype`, or the
``prototype_choice`` graph).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from veil.client_sdk.distributions import FAMILIES, UserDistribution
from veil.client_sdk.distributions.prototype import Codebook, choose_prototype
from veil.client_sdk.learning import OnDeviceLearner
from veil.client_sdk.param_store import ClientState
from veil.client_sdk.policy_guard import PolicyCheck, PolicyGuard
from veil.client_sdk.runtime import BetaConstruction, load_graphs

__all__ = ["Draw", "LearningConfig", "MathBackend", "NumpyBackend", "OnnxBackend", "OnnxHeadMath"]

_NO_POLICY = PolicyCheck(ok=True, value=0.0, limit=math.inf, measure="none")
_FLOAT32_MARGIN = 2.0**-18
"""Projection aims this far (relatively) inside each limit, so float64 re-checks of a float32 boundary
point agree with the graph."""
_ADAM_DEFAULTS = {"betas": (0.9, 0.999), "eps": 1e-8}


@dataclass(frozen=True)
class LearningConfig:
    """How the parameters learn from returned gradients (IDfree-PL's Adam, arXiv:2501.06062, 2.3).

    Parameters
    ----------
    lr : float
        Adam step size in the family's unconstrained space, > 0 (wins over the ``lr`` stored with the
        Adam state, so an app update can change it).
    trainable : tuple of str, optional
        Unconstrained parameters to update (default: all of them).
    max_grad_norm : float, optional
        Clip the parameter gradient to this global L2 norm.
    """

    lr: float = 0.05
    trainable: tuple[str, ...] | None = None
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if self.max_grad_norm is not None and not (
            math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0
        ):
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}")


@dataclass(frozen=True)
class Draw:
    """One sample, shape ``(n_tokens, dim)`` float64, and the noise tensors that produced it (if any)."""

    value: np.ndarray
    noise: Mapping[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def stack(cls, draws: list[Draw]) -> Draw:
        """One batch ``(B, n_tokens, dim)`` of draws, their noise joined along the batch axis."""
        if not draws:
            raise ValueError("stack needs at least one draw")
        noise = {k: np.concatenate([d.noise[k] for d in draws]) for k in draws[0].noise}
        return cls(np.stack([d.value for d in draws]), noise)


class MathBackend(Protocol):
    """Every computation the phone performs on its parameters.

    ``update`` takes one draw ``(n_tokens, dim)`` or a batch (:meth:`Draw.stack`, ``(B, n_tokens,
    dim)``) with a gradient of the same shape; a batch's gradients are summed.
    """

    name: str

    def sample(self, distribution: UserDistribution, rng: np.random.Generator) -> Draw:
        """One fresh sample of ``distribution``."""
        ...

    def update(self, state: ClientState, draw: Draw, grad: np.ndarray) -> ClientState:
        """One optimiser step from a draw and the returned ``dL/dx`` (same shape); a new state."""
        ...

    def check(self, distribution: UserDistribution) -> PolicyCheck:
        """The device's privacy policy for these parameters."""
        ...

    def choose(self, losses: np.ndarray, codebook: Codebook) -> int:
        """The usable prototype with the lowest mean loss; ``losses`` ``(examples, K)``, NaN where unusable."""
        ...


def _batched(value: np.ndarray, grad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A draw's value and its gradient as batches ``(B, n_tokens, dim)`` of one shape."""
    v, g = np.asarray(value, np.float64), np.asarray(grad, np.float64)
    if v.shape != g.shape:
        raise ValueError(f"grad must have the draw's shape {v.shape}, got {g.shape}")
    return (v[None], g[None]) if v.ndim == 2 else (v, g)


class NumpyBackend:
    """The numpy reference: the family's sampler, :class:`OnDeviceLearner` and :class:`PolicyGuard`.

    Parameters
    ----------
    learning : LearningConfig
        Optimiser settings.
    guard : PolicyGuard, optional
        The privacy policy; updates are projected inside it. ``None``: no policy.
    """

    name = "numpy"

    def __init__(self, learning: LearningConfig | None = None, guard: PolicyGuard | None = None) -> None:
        if guard is not None and not isinstance(guard, PolicyGuard):
            raise ValueError(f"guard must be a PolicyGuard or None, got {type(guard).__name__}")
        self.learning = learning or LearningConfig()
        self.guard = guard

    def sample(self, distribution: UserDistribution, rng: np.random.Generator) -> Draw:
        noise = distribution.draw_noise(rng, 1)
        return Draw(np.asarray(distribution.sample_from_noise(noise)[0], dtype=np.float64), noise)

    def update(self, state: ClientState, draw: Draw, grad: np.ndarray) -> ClientState:
        cfg = self.learning
        learner = OnDeviceLearner(
            state.distribution,
            lr=cfg.lr,
            trainable=cfg.trainable,
            max_grad_norm=cfg.max_grad_norm,
            guard=self.guard,
        )
        if state.optimizer:
            learner.optimizer.load_state_dict(state.optimizer)
            learner.optimizer.lr = cfg.lr
        value, g = _batched(draw.value, grad)
        updated = learner.step(value, g, draw.noise or None)
        return ClientState(updated, learner.optimizer.state_dict(), state.model)

    def check(self, distribution: UserDistribution) -> PolicyCheck:
        return _NO_POLICY if self.guard is None else self.guard.check(distribution)

    def choose(self, losses: np.ndarray, codebook: Codebook) -> int:
        return choose_prototype(losses, codebook)


class _GraphGuard(PolicyGuard):
    """A :class:`PolicyGuard` whose measure is the exported policy graph (so ``project`` probes it)."""

    def __init__(self, guard: PolicyGuard, session: Any) -> None:
        super().__init__(guard.prior, guard.max_tv, guard.max_gdp_mu)
        self.session = session

    def check(self, dist: UserDistribution) -> PolicyCheck:
        limits = {"max_tv": math.inf if self.max_tv is None else self.max_tv}
        if "gdp" in dist.capabilities:
            limits["max_gdp_mu"] = math.inf if self.max_gdp_mu is None else self.max_gdp_mu
        out = self.session.run(**dist.onnx_policy_feeds(self.prior), **limits)
        measures = [("tv_to_prior", float(out["tv"]), limits["max_tv"])]
        if "max_gdp_mu" in limits:
            measures.append(("gdp_mu_to_prior", float(out["gdp_mu"]), limits["max_gdp_mu"]))
        name, value, limit = max((m for m in measures if math.isfinite(m[2])), key=lambda m: m[1] / m[2])
        return PolicyCheck(ok=bool(out["ok"]), value=value, limit=limit, measure=name)


class OnnxBackend:
    """The exported ONNX graphs of one family, verified against their manifest.

    Parameters
    ----------
    model_dir : path-like
        Folder with ``manifest.json`` and the ``<family>_sample``, ``<family>_update`` (and, when a policy
        is set, ``<family>_policy``) graphs.
    family : str
        ``"gaussian"``, ``"beta"``, ``"basis_mixture"`` (over a Gaussian basis) or ``"prototype"``
        (``prototype_sample`` and ``prototype_choice``; no update, no policy).
    learning : LearningConfig
        Optimiser settings.
    guard : PolicyGuard, optional
        The policy's prior and limits; measured by the policy graph (numpy for Beta, see the module).

    Raises
    ------
    ModelFileError
        A graph is missing, corrupt, or differs from its manifest entry.
    """

    name = "onnx"

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        family: str,
        learning: LearningConfig | None = None,
        guard: PolicyGuard | None = None,
    ) -> None:
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {family!r}")
        caps = FAMILIES[family].capabilities
        self.family = family
        self.model_dir = Path(model_dir)  # its manifest may also ship the gateway's signing key
        self.learning = learning or LearningConfig()
        self._noise_options: dict[str, Any] = {}
        if "choose" in caps:
            if guard is not None:
                raise ValueError(
                    f"a {family} choice has no policy graph: its privacy is the codebook's k_min"
                )
            graphs = load_graphs(model_dir, [f"{family}_sample", f"{family}_choice"])
            self._sampler, self._choice = graphs[f"{family}_sample"], graphs[f"{family}_choice"]
            self._model_dir = model_dir
            self.params, self.guard, self._projector = [], None, None
            return
        if guard is not None and guard.prior.family != family:
            raise ValueError(f"the policy's prior is {guard.prior.family!r}, the graphs are {family!r}")
        policy_graph = guard is not None and "policy_graph" in caps
        names = [f"{family}_sample", f"{family}_update"]
        if policy_graph:
            names.append(f"{family}_policy")
        graphs = load_graphs(model_dir, names)
        self._sampler, self._update = graphs[names[0]], graphs[names[1]]
        self.params: list[str] = list(self._update.entry.extra.get("params", []))
        chosen = set(self.params) if self.learning.trainable is None else set(self.learning.trainable)
        if not chosen or not chosen <= set(self.params):
            raise ValueError(f"trainable must be a non-empty subset of {self.params}, got {sorted(chosen)}")
        self._trainable = np.array([p in chosen for p in self.params])
        construction = self._sampler.entry.extra.get("construction")
        if construction:  # the sampler graph's construction constants decide the noise it takes
            rounds_boost = {k: construction[k] for k in ("rounds", "boost") if k in construction}
            self._noise_options["construction"] = BetaConstruction(**rounds_boost)
        self.guard: PolicyGuard | None = guard
        self._projector: PolicyGuard | None = guard
        if policy_graph and guard is not None:
            session = graphs[names[2]]
            self.guard = _GraphGuard(guard, session)
            shrink = 1.0 - _FLOAT32_MARGIN
            inner = PolicyGuard(
                guard.prior,
                None if guard.max_tv is None else guard.max_tv * shrink,
                None if guard.max_gdp_mu is None else guard.max_gdp_mu * shrink,
            )
            self._projector = _GraphGuard(inner, session)

    def _check_family(self, distribution: UserDistribution) -> None:
        if distribution.family != self.family:
            raise ValueError(
                f"these graphs are for {self.family!r}, got a {distribution.family!r} distribution"
            )

    def sample(self, distribution: UserDistribution, rng: np.random.Generator) -> Draw:
        self._check_family(distribution)
        noise = distribution.draw_noise(rng, 1, **self._noise_options)
        out = self._sampler.run(distribution.onnx_sample_feeds(noise))["sample"]
        return Draw(np.asarray(out[0], dtype=np.float64), noise)

    def update(self, state: ClientState, draw: Draw, grad: np.ndarray) -> ClientState:
        dist, cfg = state.distribution, self.learning
        self._check_family(dist)
        if "learn" not in dist.capabilities:
            raise ValueError(f"a {self.family} choice has no gradient update: choose the prototype again")
        params = dist.unconstrained()
        opt = dict(state.optimizer) if state.optimizer else {}
        betas = tuple(opt.get("betas", _ADAM_DEFAULTS["betas"]))
        eps = float(opt.get("eps", _ADAM_DEFAULTS["eps"]))
        feeds: dict[str, Any] = dict(params)
        value, feeds["grad"] = _batched(draw.value, grad)
        feeds.update(dist.onnx_update_feeds(value, draw.noise))
        for p in self.params:
            feeds[f"anchor_{p}"] = params[p]  # prior_weight 0: the anchor is not used
            feeds[f"adam_m_{p}"] = opt.get("m", {}).get(p, np.zeros_like(params[p]))
            feeds[f"adam_v_{p}"] = opt.get("v", {}).get(p, np.zeros_like(params[p]))
        feeds.update(
            adam_t=np.int64(opt.get("t", 0)), lr=cfg.lr, beta1=betas[0], beta2=betas[1], eps=eps,
            max_grad_norm=math.inf if cfg.max_grad_norm is None else cfg.max_grad_norm, prior_weight=0.0,
            trainable=self._trainable,
        )  # fmt: skip
        out = self._update.run(feeds)
        new = {p: np.asarray(out[f"new_{p}"], dtype=np.float64) for p in self.params}
        updated = dist.with_unconstrained(new)
        if self.guard is not None and self._projector is not None and not self.guard.check(updated).ok:
            updated = self._projector.project(updated)
        optimizer = {
            "lr": cfg.lr, "betas": betas, "eps": eps, "t": int(out["new_adam_t"]),
            "m": {p: np.asarray(out[f"new_adam_m_{p}"], np.float64) for p in self.params},
            "v": {p: np.asarray(out[f"new_adam_v_{p}"], np.float64) for p in self.params},
        }  # fmt: skip
        return ClientState(updated, optimizer, state.model)

    def check(self, distribution: UserDistribution) -> PolicyCheck:
        self._check_family(distribution)
        return _NO_POLICY if self.guard is None else self.guard.check(distribution)

    def choose(self, losses: np.ndarray, codebook: Codebook) -> int:
        if "choose" not in FAMILIES[self.family].capabilities:
            raise ValueError(f"these graphs are for {self.family!r}; choosing needs the prototype graphs")
        arr = np.asarray(losses, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != codebook.size:
            raise ValueError(f"losses must have shape (examples, {codebook.size}), got {arr.shape}")
        if not np.isfinite(arr[:, codebook.active]).all():
            raise ValueError("every usable prototype needs finite losses")
        # unusable columns are never requested (NaN); the graph masks them, and refuses NaN input
        filled = np.where(codebook.active[None, :], arr, 0.0)
        return int(self._choice.run(losses=filled, active=codebook.active)["index"])

    def head_math(self) -> OnnxHeadMath:
        """The private mixing head's math on the ``prototype_head`` graph (for ``PrivateHead(math=...)``)."""
        if "choose" not in FAMILIES[self.family].capabilities:
            raise ValueError(f"these graphs are for {self.family!r}; the head needs the prototype graphs")

        return OnnxHeadMath(load_graphs(self._model_dir, ["prototype_head"])["prototype_head"])


class OnnxHeadMath:
    """:func:`veil.client_sdk.private_head.head_math` on the exported ``prototype_head`` graph.

    The graph works in float32 and marks repeated candidates with a large negative score; both are mapped
    back to the numpy convention (float64, ``-inf``) so :class:`PrivateHead` cannot tell them apart.
    """

    def __init__(self, session: Any) -> None:
        self._session = session

    def __call__(
        self, logp: np.ndarray, first: np.ndarray, bias: np.ndarray, hit: np.ndarray, logits: np.ndarray
    ) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
        out = self._session.run(
            logp=np.asarray(logp, np.float32), first=np.asarray(first, bool), bias=np.asarray(bias, np.float32),
            hit=np.asarray(hit, bool), logits=np.asarray(logits, np.float32),
        )  # fmt: skip
        score = np.where(first, np.asarray(out["score"], np.float64), -np.inf)
        g_logits = np.asarray(out["g_logits"], np.float64)
        return score, float(out["loss"]), g_logits, np.asarray(out["g_score"], np.float64)
