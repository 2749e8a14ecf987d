"""Gram-matrix identifiability test and the grouped-samples demonstration."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate

from veil.client_sdk.distributions import BasisMixtureDistribution, BetaDistribution, GaussianDistribution
from veil.privacy_analysis.identifiability import (
    IdentifiabilityResult,
    gram_matrix,
    grouped_identifiability_demo,
    identifiability_test,
)


def _numeric_gram(users, lo: float, hi: float) -> np.ndarray:
    def pdf(d, x: float) -> float:
        return float(np.exp(d.log_prob(np.array([[x]]))))

    n = len(users)
    g = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            f = lambda x, i=i, j=j: pdf(users[i], x) * pdf(users[j], x)  # noqa: E731
            g[i, j] = integrate.quad(f, lo, hi, limit=400, epsabs=1e-13)[0]
    return g


def test_gaussian_gram_closed_form_matches_integration() -> None:
    users = [GaussianDistribution([[m]], [[s]]) for m, s in [(0.0, 1.0), (0.7, 0.4), (-1.5, 2.0)]]
    assert np.allclose(gram_matrix(users), _numeric_gram(users, -40, 40), rtol=1e-8, atol=1e-12)


def test_beta_gram_closed_form_matches_integration() -> None:
    users = [BetaDistribution([[a]], [[b]]) for a, b in [(2.0, 5.0), (1.5, 1.5), (4.0, 2.0)]]
    assert np.allclose(gram_matrix(users), _numeric_gram(users, 0, 1), rtol=1e-8)


def test_basis_mixture_gram_is_w_gb_wt() -> None:
    basis = [GaussianDistribution([[m]], [[1.0]]) for m in (-1.0, 0.5, 2.0)]
    w = np.array([[0.2, 0.3, 0.5], [0.6, 0.4, 0.0], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]])
    users = [BasisMixtureDistribution(basis, row) for row in w]
    assert np.allclose(gram_matrix(users), w @ gram_matrix(basis) @ w.T, rtol=1e-10)
    assert np.allclose(gram_matrix(users), _numeric_gram(users, -40, 40), rtol=1e-7)


def test_distinct_gaussians_and_betas_are_identifiable() -> None:
    rng = np.random.default_rng(0)
    gauss = [
        GaussianDistribution(rng.normal(size=(2, 32)), rng.uniform(0.5, 1.5, (2, 32))) for _ in range(20)
    ]
    res = identifiability_test(gauss)
    assert isinstance(res, IdentifiabilityResult)
    assert res.identifiable and res.rank == res.n == 20 and res.weights_rank is None
    betas = [BetaDistribution([[a]], [[b]]) for a, b in [(2.0, 5.0), (3.0, 3.0), (5.0, 2.0)]]
    assert identifiability_test(betas).identifiable
    assert set(res.as_dict()) == {
        "rank",
        "smallest_eigenvalue",
        "n",
        "identifiable",
        "method",
        "weights_rank",
    }


def test_shared_basis_population_with_more_users_than_basis_is_not_identifiable() -> None:
    rng = np.random.default_rng(1)
    basis = [GaussianDistribution(rng.normal(size=(1, 4)), np.ones((1, 4))) for _ in range(3)]
    users = [BasisMixtureDistribution(basis, w) for w in rng.dirichlet(np.ones(3), size=7)]
    res = identifiability_test(users)
    assert not res.identifiable
    assert res.rank <= 3 and res.weights_rank == 3 and res.smallest_eigenvalue < 1e-10
    assert "rank(W)" in res.method


def test_a_duplicated_user_makes_the_family_dependent() -> None:
    p = GaussianDistribution([[0.0, 1.0]], [[1.0, 1.0]])
    q = GaussianDistribution([[2.0, 1.0]], [[1.0, 1.0]])
    res = identifiability_test([p, q, p])
    assert not res.identifiable and res.rank == 2 and abs(res.smallest_eigenvalue) < 1e-12


def test_monte_carlo_weighted_gram_for_families_without_closed_form() -> None:
    # A basis mixing Gaussian and Beta components has no closed-form Gram matrix.
    basis = [GaussianDistribution([[0.5]], [[0.3]]), BetaDistribution([[2.0]], [[2.0]])]
    users = [BasisMixtureDistribution(basis, w) for w in ([0.2, 0.8], [0.5, 0.5], [0.9, 0.1])]
    with pytest.raises(ValueError, match="no closed-form"):
        gram_matrix(users)
    res = identifiability_test(users, rng=np.random.default_rng(0), n_samples=5000)
    assert "Monte Carlo" in res.method and not res.identifiable and res.rank == 2
    # Beta parameters below 1/2: p_i^2 is not integrable, so no L2 Gram matrix either.
    betas = [BetaDistribution([[0.3]], [[2.0]]), BetaDistribution([[2.0]], [[0.4]])]
    res = identifiability_test(betas, rng=np.random.default_rng(0), n_samples=5000)
    assert "Monte Carlo" in res.method and res.identifiable
    mixed = [GaussianDistribution([[0.5]], [[0.3]]), BetaDistribution([[2.0]], [[2.0]])]
    assert identifiability_test(mixed, rng=np.random.default_rng(0), n_samples=5000).identifiable


def test_grouped_samples_make_the_shared_basis_population_identifiable() -> None:
    out = grouped_identifiability_demo(4, 3, 7, np.random.default_rng(0), n_groups=3000)
    assert out["identifiability_group_size"] == 7
    assert not out["pooled_identifiable"] and out["gram_rank"] <= 3
    # Two different populations, one pooled law.
    assert out["alternative_pooled_law_max_diff"] < 1e-12 and out["alternative_max_weight_change"] > 0.1
    errors = {r["group_size"]: r["error"] for r in out["recovery"]}
    assert errors[7] < 0.05, errors
    # (seeds 0-5 give 0.07-0.27 for one upload per group against 0.006-0.012 for seven)
    assert errors[1] > 0.05 and errors[1] > 3 * errors[7], errors


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        identifiability_test([])
    with pytest.raises(ValueError, match="tol"):
        identifiability_test([GaussianDistribution([[0.0]], [[1.0]])], tol=0.0)
    with pytest.raises(ValueError, match="n_users >= 2"):
        grouped_identifiability_demo(1, 3, 1, np.random.default_rng(0))
