"""Bayes-optimal attribution with known parameters: the ceiling every other attack sits under.

An attacker who knows every user's distribution P_k (and the users' shares of uploads) attributes an
upload e to ``argmax_k pi_k p_k(e)``; no rule has a higher expected accuracy (the Bayes decision rule; IDfree-PL, arXiv:2501.06062, section 3).
Besides the realised accuracy on the given uploads we report the Rao-Blackwellised estimate
``mean_i max_k pi(k | e_i)`` of the same expected accuracy (lower variance, unbiased when the owners are
drawn from the prior) and the degree of anonymity ``mean_i H(pi(. | e_i)) / log K`` (Diaz et al. 2002).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from veil.client_sdk.distributions import UserDistribution
from veil.privacy_analysis.attacks.base import AttackResult, check_owners, make_result
from veil.privacy_analysis.attacks.registry import Attack, AttackInput, register
from veil.privacy_analysis.attribution import log_likelihood_matrix

__all__ = ["BayesConfig", "bayes_attack", "bayes_log_posteriors", "reshape_for"]


@dataclass(frozen=True)
class BayesConfig:
    """Settings of the known-parameters attributor.

    Attributes
    ----------
    prior : {"uniform", "owners"}
        ``"uniform"`` (default) uses pi_k = 1/K, i.e. ``argmax_k log p_k(e)`` as in IDfree-PL's
        threat model (arXiv:2501.06062) and :func:`veil.privacy_analysis.attribution.bayes_attribution`.
        ``"owners"`` uses the users' shares of the given uploads, the ceiling when some users upload more
        than others (a learned attributor could otherwise exploit the imbalance and beat the uniform rule).
    """

    prior: str = "uniform"

    def __post_init__(self) -> None:
        if self.prior not in ("uniform", "owners"):
            raise ValueError(f"prior must be 'uniform' or 'owners', got {self.prior!r}")


def reshape_for(dists: Sequence[UserDistribution], uploads: np.ndarray) -> np.ndarray:
    """Uploads ``(N, n_tokens, dim)`` or ``(N, dim)`` reshaped to ``(N, *shape)`` of the distributions.

    Raises
    ------
    ValueError
        If the distributions disagree on their shape or the uploads do not fit it.
    """
    if len(dists) == 0:
        raise ValueError("need at least one user distribution, got none")
    shapes = {tuple(d.shape) for d in dists}
    if len(shapes) != 1:
        raise ValueError(f"all user distributions must share one shape, got {sorted(shapes)}")
    shape = shapes.pop()
    x = np.asarray(uploads, dtype=np.float64)
    if x.ndim not in (2, 3) or int(np.prod(x.shape[1:])) != shape[0] * shape[1]:
        raise ValueError(f"uploads must have shape (N, {shape[0]}, {shape[1]}) or (N, {shape[0] * shape[1]})")
    return x.reshape(x.shape[0], *shape)


def bayes_log_posteriors(
    dists: Sequence[UserDistribution], uploads: np.ndarray, log_prior: np.ndarray | None = None
) -> np.ndarray:
    """``(N, K)`` log posteriors ``log pi(k | e)`` of N uploads over K users (uniform prior by default)."""
    ll = log_likelihood_matrix(dists, reshape_for(dists, uploads))  # (N, K)
    if log_prior is not None:
        ll = ll + log_prior[None, :]
    norm = logsumexp(ll, axis=1, keepdims=True)
    # an upload impossible under every user (outside all supports) tells nothing: uniform posterior
    return np.where(np.isfinite(norm), ll - norm, -np.log(ll.shape[1]))


def bayes_attack(
    dists: Sequence[UserDistribution],
    uploads: np.ndarray,
    owners: np.ndarray,
    config: BayesConfig | None = None,
) -> AttackResult:
    """Attribute each upload to its most probable user under the known distributions.

    Parameters
    ----------
    dists : sequence of UserDistribution, length K >= 2
    uploads : ndarray, shape ``(N, n_tokens, dim)`` or ``(N, n_tokens * dim)``
    owners : ndarray of int, shape ``(N,)``
        True user index of each upload.
    config : BayesConfig, optional

    Returns
    -------
    AttackResult
        ``name="bayes_known_parameters"``; details ``expected_accuracy`` and ``anonymity_degree``.
    """
    config = config or BayesConfig()
    k = len(dists)
    if k < 2:
        raise ValueError(f"attribution needs at least 2 users, got {k}")
    x = reshape_for(dists, uploads)
    o = check_owners(owners, x.shape[0], k)
    log_prior = None
    if config.prior == "owners":
        with np.errstate(divide="ignore"):
            log_prior = np.log(np.bincount(o, minlength=k) / o.size)
    log_post = bayes_log_posteriors(dists, x, log_prior)
    post = np.exp(log_post)
    with np.errstate(invalid="ignore"):
        entropy = -np.sum(np.where(post > 0, post * log_post, 0.0), axis=1)
    details = {
        "expected_accuracy": float(post.max(axis=1).mean()),
        "anonymity_degree": float(entropy.mean() / np.log(k)),
    }
    return make_result("bayes_known_parameters", o, log_post.argmax(axis=1), k, details)


def _run(inp: AttackInput, config: BayesConfig) -> AttackResult:
    inp.require("bayes_known_parameters", "dists")
    return bayes_attack(inp.dists, inp.uploads, inp.owners, config)  # type: ignore[arg-type]


register(Attack("bayes_known_parameters", BayesConfig, _run))
