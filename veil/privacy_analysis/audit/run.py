"""The audit behind ``veil audit``: every attribution figure for one population, and the policy verdict.

Given the users' distributions, :func:`run_audit` measures (IDfree-PL, arXiv:2501.06062, section 3):

- the Bayes-optimal attribution accuracy of one upload (Monte Carlo with a 95% interval; exact numerical
  integration as well when the embedding is one number), next to chance ``1/K`` and the closed-form upper
  bound;
- the same accuracy when T uploads of a user can be linked (``linked``);
- total variation between users (all pairs up to ``pairwise_users`` users, else a random subset) and the
  device guard's TV bound from each user to the prior;
- for Gaussian users, the pairwise Gaussian-DP ``mu`` (exact over every pair when all users share one std),
  its growth ``sqrt(T) mu`` under linking, and epsilon at ``delta = 1e-5``;
- the Gram-matrix identifiability test of the pooled stream (on at most ``identifiability_users`` users);
- the practical attacks on a random subset of at most ``attack_users`` users;
- the policy's violations (:mod:`veil.privacy_analysis.audit.policy`).

Subsets keep a 10,000-user audit within a minute on 2 cores; every figure computed on a subset says so
(``n_users``/``sampled`` in its section).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from veil.client_sdk.distributions import UserDistribution
from veil.privacy_analysis.audit import sections
from veil.privacy_analysis.audit.policy import Policy, Violation, evaluate
from veil.privacy_analysis.audit.spec import UtilityPoint
from veil.progress import NullProgress, Progress

__all__ = ["AuditConfig", "AuditResult", "run_audit"]


_COUNTS = (
    "uploads_per_user",
    "attack_users",
    "attack_uploads_per_user",
    "pairwise_users",
    "identifiability_users",
)


@dataclass
class AuditConfig:
    """How thoroughly to audit (defaults: a careful audit that still finishes in seconds for 100 users)."""

    uploads_per_user: int = 100
    """Monte-Carlo uploads drawn per user for the Bayes attribution estimate."""
    linked: tuple[int, ...] = (1, 2, 4, 8)
    """Numbers T of linked uploads to evaluate (T = 1 is the single-upload estimate)."""
    linked_groups: int = 4000
    """Linked groups drawn for each T > 1, spread evenly over the users (at least one each); each group
    costs T uploads. 4000 groups give a 95% interval of about +-1.5 points."""
    seed: int = 0
    """Seed of every random draw (the audit is reproducible)."""
    attacks: bool = True
    """Run the practical attacks (on a subset of users, see ``attack_users``)."""
    attack_users: int = 30
    """Most users the attacks run on (a random subset when there are more)."""
    attack_uploads_per_user: int = 20
    """Uploads drawn per user for the attacks when no real uploads are given."""
    pairwise_users: int = 50
    """Full pairwise TV matrix (and the report's heatmap) up to this many users; a random subset above."""
    identifiability_users: int = 200
    """Most users in the Gram-matrix identifiability test."""
    policy: Policy = field(default_factory=Policy)
    """Limits to check; the policy's ``linked_t`` is added to ``linked`` when a linked limit is set."""

    def __post_init__(self) -> None:
        for name in _COUNTS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.attack_users < 2 or self.pairwise_users < 2 or self.identifiability_users < 2:
            raise ValueError("attack_users, pairwise_users and identifiability_users must be >= 2")
        if not isinstance(self.linked_groups, int) or self.linked_groups < 1:
            raise ValueError(f"linked_groups must be an integer >= 1, got {self.linked_groups!r}")
        linked = tuple(int(t) for t in self.linked)
        if not linked or any(t < 1 for t in linked):
            raise ValueError(f"linked must be a non-empty list of integers >= 1, got {self.linked!r}")
        if not isinstance(self.policy, Policy):
            raise ValueError(f"policy must be a Policy, got {type(self.policy).__name__}")
        if self.policy.max_linked_attribution is not None:
            linked = (*linked, self.policy.linked_t)
        self.linked = tuple(sorted(set(linked)))


@dataclass
class AuditResult:
    """Everything the audit measured; :meth:`to_json` is what ``veil audit --json`` prints."""

    users: int
    family: str
    shape: tuple[int, int]
    chance: float
    bayes: dict[str, Any]
    upper_bound: float | None
    linked: dict[int, dict[str, float]]
    pairwise_tv: dict[str, Any]
    tv_to_prior: dict[str, Any] | None
    gdp: dict[str, Any] | None
    identifiability: dict[str, Any] | None
    attacks: list[dict[str, Any]]
    attacks_context: dict[str, Any]
    violations: list[Violation]
    policy: Policy
    utility: list[UtilityPoint] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    pairwise_matrix: np.ndarray | None = None
    """Full ``(K, K)`` TV matrix when ``K <= pairwise_users`` (for the heatmap; not in the JSON)."""

    @property
    def ok(self) -> bool:
        """True when no policy limit is violated."""
        return not self.violations

    def to_json(self) -> dict[str, Any]:
        ident = self.identifiability
        return {
            "users": self.users,
            "family": self.family,
            "shape": list(self.shape),
            "chance": self.chance,
            "bayes_attribution_accuracy": self.bayes["accuracy"],
            "bayes_ci": list(self.bayes["ci"]),
            "bayes": self.bayes,
            "upper_bound": self.upper_bound,
            "linked": {str(t): v for t, v in self.linked.items()},
            "identifiable": None if ident is None else ident["identifiable"],
            "identifiability": ident,
            "pairwise_tv": self.pairwise_tv,
            "tv_to_prior": self.tv_to_prior,
            "gdp": self.gdp,
            "attacks": self.attacks,
            "attacks_context": self.attacks_context,
            "policy": {
                "ok": self.ok,
                "limits": self.policy.to_json(),
                "violations": [v.to_json() for v in self.violations],
            },
            "utility": [vars(u) for u in self.utility],
            "seconds": self.seconds,
        }


def run_audit(
    dists: Sequence[UserDistribution],
    cfg: AuditConfig | None = None,
    texts: Sequence[str] | None = None,
    uploads: np.ndarray | None = None,
    owners: np.ndarray | None = None,
    utility: Sequence[UtilityPoint] | None = None,
    prior: UserDistribution | None = None,
    progress: Progress | None = None,
) -> AuditResult:
    """Audit a population of user distributions.

    Parameters
    ----------
    dists : sequence of UserDistribution, length K >= 2, one shape
    cfg : AuditConfig, optional
    texts : sequence of str, optional
        Upload texts (aligned with ``uploads``) for the stylometric attack.
    uploads, owners : ndarray, optional
        Real uploads ``(N, n_tokens, dim)`` and their owners ``(N,)`` (indices into ``dists``) to run the
        attacks on; without them the attacks run on fresh samples of a subset of users.
    utility : sequence of UtilityPoint, optional
        Utility figures for the report's privacy-utility frontier.
    prior : UserDistribution, optional
        The population prior for the TV-to-prior figures (skipped when ``None``).
    progress : optional
        Progress display (``stage(description, total)``); nothing is shown by default.
    """
    cfg = cfg or AuditConfig()
    dists = _check(dists)
    if (uploads is None) != (owners is None):
        raise ValueError("give uploads and owners together (owners index the distributions)")
    if texts is not None and uploads is None:
        raise ValueError("texts need the uploads they belong to")
    progress = progress or NullProgress()
    rng = np.random.default_rng(cfg.seed)
    k, seconds = len(dists), {}
    clock = time.perf_counter()

    with progress.stage("Bayes attribution (1 upload)", 1) as stage:
        bayes = sections.measure_bayes(dists, cfg.uploads_per_user, rng)
        upper = float(sections.lookup("attribution_upper_bound")(dists))
        stage.advance()
    seconds["bayes"], clock = _lap(clock)

    linked: dict[int, dict[str, float]] = {}
    groups = max(1, math.ceil(cfg.linked_groups / k))  # per user
    with progress.stage("Linked uploads (T)", len(cfg.linked)) as stage:
        for t in cfg.linked:
            if t == 1:
                linked[1] = {
                    "accuracy": bayes["accuracy"],
                    "ci_low": bayes["ci"][0],
                    "ci_high": bayes["ci"][1],
                    "n": bayes["n_uploads"],
                }
            else:
                res = sections.lookup("linked_attribution")(dists, t, groups, rng)
                linked[t] = {
                    "accuracy": res.accuracy,
                    "ci_low": res.ci_low,
                    "ci_high": res.ci_high,
                    "n": res.n_uploads,
                }
            stage.advance()
    seconds["linked"], clock = _lap(clock)

    with progress.stage("Distances (TV, Gaussian DP)", 1) as stage:
        pairwise, matrix = sections.measure_pairwise_tv(dists, cfg.pairwise_users, rng)
        to_prior = sections.measure_tv_to_prior(dists, prior) if prior is not None else None
        gdp = sections.measure_gdp(dists, cfg.linked, cfg.pairwise_users, rng)
        stage.advance()
    seconds["distances"], clock = _lap(clock)

    with progress.stage("Identifiability (Gram matrix)", 1) as stage:
        ident = sections.measure_identifiability(dists, cfg.identifiability_users, rng)
        stage.advance()
    seconds["identifiability"], clock = _lap(clock)

    attacks: list[dict[str, Any]] = []
    context: dict[str, Any] = {}
    if cfg.attacks:
        with progress.stage("Attacks", 1) as stage:
            attacks, context = sections.measure_attacks(
                dists, cfg.attack_users, cfg.attack_uploads_per_user, rng, texts, uploads, owners
            )
            stage.advance()
        seconds["attacks"], clock = _lap(clock)

    metrics = {
        "bayes_attribution": bayes["ci"][1],
        "pairwise_tv_max": pairwise.get("max"),
        "tv_to_prior_max": None if to_prior is None else to_prior["max"],
        "gdp_mu_max": None if gdp is None else (gdp["mu_max"] if gdp["finite"] else math.inf),
        "attack_accuracy_max": max((a["ci"][1] for a in attacks), default=None),
        "linked_attribution": {t: v["ci_high"] for t, v in linked.items()},
        "identifiable": None if ident is None else ident["identifiable"],
    }
    violations = evaluate(cfg.policy, metrics)
    seconds["total"] = sum(seconds.values())
    seconds["user_uploads_per_second"] = k * cfg.uploads_per_user / max(seconds["bayes"], 1e-9)
    family = dists[0].family if len({d.family for d in dists}) == 1 else "mixed"
    return AuditResult(
        users=k,
        family=family,
        shape=dists[0].shape,
        chance=1.0 / k,
        bayes=bayes,
        upper_bound=upper,
        linked=linked,
        pairwise_tv=pairwise,
        tv_to_prior=to_prior,
        gdp=gdp,
        identifiability=ident,
        attacks=attacks,
        attacks_context=context,
        violations=violations,
        policy=cfg.policy,
        utility=list(utility or []),
        seconds=seconds,
        pairwise_matrix=matrix,
    )


# ---------------------------------------------------------------------------------------------- helpers
def _check(dists: Sequence[UserDistribution]) -> list[UserDistribution]:
    out = list(dists)
    if len(out) < 2:
        raise ValueError(f"an audit needs at least 2 users, got {len(out)}")
    for i, d in enumerate(out):
        if not isinstance(d, UserDistribution):
            raise ValueError(f"user {i} is not a UserDistribution but {type(d).__name__}")
        if d.shape != out[0].shape:
            raise ValueError(f"user {i} has shape {d.shape}, user 0 has {out[0].shape}: one shape per audit")
    return out


def _lap(start: float) -> tuple[float, float]:
    now = time.perf_counter()
    return now - start, now
