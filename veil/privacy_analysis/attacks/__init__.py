"""Attacks a curious cloud could run on stored uploads, each scored against the Bayes ceiling.

=========================  ==========================================================  ====================
name                       what the attacker knows                                     module
=========================  ==========================================================  ====================
``bayes_known_parameters`` every user's distribution (the ceiling)                     :mod:`.bayes`
``linkage_kmeans``         only the pooled stream and the number of users              :mod:`.clustering`
``linkage_gmm``            same, fitting a diagonal Gaussian mixture by EM             :mod:`.clustering`
``learned_attributor``     a labelled share of the uploads (``aux_fraction``)          :mod:`.learned`
``stylometric``            the same labelled share, plus the text of every upload      :mod:`.stylometric`
``knn``                    the labelled share (uploads audit only)                     :mod:`.nearest`
``gaussian_fit``           the labelled share (uploads audit only)                     :mod:`.gaussian_fit`
=========================  ==========================================================  ====================

Every attack takes one :class:`~veil.privacy_analysis.attacks.registry.AttackInput` and registers itself in
:data:`~veil.privacy_analysis.attacks.registry.ATTACKS` (name -> :class:`Attack`). :func:`run_attacks` runs
those of :data:`ATTACKS` (the first five, in that order) on one population's uploads. Every result's details
carry ``bayes_accuracy_same_uploads``: the ceiling's accuracy on exactly the uploads that attack was
evaluated on, so the two can be compared without sampling noise between them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from veil.client_sdk.distributions import UserDistribution

# The attack modules register themselves in the registry on import; ``noqa: F401`` keeps the imports.
from veil.privacy_analysis.attacks import gaussian_fit, nearest  # noqa: F401
from veil.privacy_analysis.attacks.base import AttackResult, as_features, check_owners, stratified_split
from veil.privacy_analysis.attacks.bayes import BayesConfig, bayes_log_posteriors
from veil.privacy_analysis.attacks.clustering import GMMConfig, KMeansConfig
from veil.privacy_analysis.attacks.learned import LearnedConfig
from veil.privacy_analysis.attacks.registry import ATTACKS as REGISTRY
from veil.privacy_analysis.attacks.registry import Attack, AttackInput
from veil.privacy_analysis.attacks.stylometric import StylometricConfig

__all__ = [
    "ATTACKS",
    "REGISTRY",
    "Attack",
    "AttackInput",
    "AttackResult",
    "BayesConfig",
    "GMMConfig",
    "KMeansConfig",
    "LearnedConfig",
    "StylometricConfig",
    "run_attacks",
]

ATTACKS: dict[str, Attack] = {
    name: REGISTRY[name]
    for name in (
        "bayes_known_parameters",
        "linkage_kmeans",
        "linkage_gmm",
        "learned_attributor",
        "stylometric",
    )
}
"""The attacks :func:`run_attacks` runs on a population, in its order (name -> registered :class:`Attack`)."""


def run_attacks(
    dists: Sequence[UserDistribution],
    uploads: np.ndarray,
    owners: np.ndarray,
    rng: np.random.Generator,
    *,
    texts: Sequence[str] | None = None,
    aux_fraction: float = 0.2,
    attacks: Sequence[str] | None = None,
    configs: Mapping[str, Any] | None = None,
) -> list[AttackResult]:
    """Run attribution and linkage attacks on one set of uploads.

    Parameters
    ----------
    dists : sequence of UserDistribution, length K >= 2
        The users' true distributions; ``owners`` index into it. Only the Bayes ceiling reads them.
    uploads : ndarray, shape ``(N, n_tokens, dim)`` or ``(N, n_tokens * dim)``
    owners : ndarray of int, shape ``(N,)``
        True user of every upload.
    rng : numpy.random.Generator
        Drives the auxiliary split and the clustering seeds.
    texts : sequence of str, length N, optional
        The text sent with every upload; needed by ``"stylometric"``.
    aux_fraction : float
        Share of every user's uploads the learned and stylometric attackers get with labels (stratified,
        see :func:`~veil.privacy_analysis.attacks.base.stratified_split`); they are evaluated on the rest.
        The Bayes and linkage attacks are evaluated on all uploads.
    attacks : sequence of str, optional
        Names from :data:`ATTACKS`; by default all of them (``"stylometric"`` only when ``texts`` is given).
    configs : mapping, optional
        Attack name -> config instance, overriding that attack's defaults.

    Returns
    -------
    list of AttackResult
        In the order of :data:`ATTACKS`.

    Raises
    ------
    ValueError
        Unknown attack names, mismatched shapes, owners outside ``[0, K)``, fewer than 2 users or more
        users than uploads, a config of the wrong type, ``aux_fraction`` outside ``(0, 1)``, or
        ``"stylometric"`` requested without texts.

    Notes
    -----
    Cost is dominated by the clustering (``O(N K D)`` per iteration, restarts included) and by the
    logistic regressions (``O(N_aux F K)`` per L-BFGS step); for populations of thousands of users,
    run the attacks on a sample of users.
    """
    k = len(dists)
    if k < 2:
        raise ValueError(f"attacks need at least 2 users, got {k}")
    n = as_features(uploads).shape[0]
    if k > n:
        raise ValueError(f"need at least as many uploads as users, got {n} uploads for {k} users")
    o = check_owners(owners, n, k)
    if texts is not None and len(texts) != n:
        raise ValueError(f"need one text per upload: {n} uploads, got {len(texts)} texts")
    if attacks is None:
        wanted = [a for a in ATTACKS if a != "stylometric" or texts is not None]
    else:
        unknown = sorted(set(attacks) - set(ATTACKS))
        if unknown:
            raise ValueError(f"unknown attacks {unknown}; known: {list(ATTACKS)}")
        wanted = [a for a in ATTACKS if a in set(attacks)]
        if "stylometric" in wanted and texts is None:
            raise ValueError("the stylometric attack needs texts, got texts=None")
    cfgs = {name: ATTACKS[name].config_type() for name in wanted}
    for name, cfg in (configs or {}).items():
        if name not in ATTACKS or not isinstance(cfg, ATTACKS[name].config_type):
            wanted_type = ATTACKS[name].config_type.__name__ if name in ATTACKS else "?"
            raise ValueError(f"config for {name!r} must be a {wanted_type}")
        cfgs[name] = cfg

    bayes_cfg = cfgs.get("bayes_known_parameters", BayesConfig())
    log_prior = None
    if bayes_cfg.prior == "owners":
        with np.errstate(divide="ignore"):
            log_prior = np.log(np.bincount(o, minlength=k) / n)
    bayes_right = bayes_log_posteriors(dists, uploads, log_prior).argmax(axis=1) == o  # (N,)
    aux = (
        stratified_split(o, aux_fraction, rng)
        if {"learned_attributor", "stylometric"} & set(wanted)
        else None
    )

    inp = AttackInput(uploads, o, k, rng, aux=aux, texts=texts, dists=dists)
    results = []
    for name in wanted:
        res = ATTACKS[name].run(inp, cfgs[name])
        evaluated = res.predictions >= 0 if res.predictions is not None else np.ones(n, dtype=bool)
        res.details["bayes_accuracy_same_uploads"] = float(bayes_right[evaluated].mean())
        results.append(res)
    return results
