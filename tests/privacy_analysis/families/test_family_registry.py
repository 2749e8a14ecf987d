"""The privacy analysis's family registry: lookups, every registered family through every dispatch site,
and a family registered here picked up by the unchanged call sites."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self

import numpy as np
import pytest
from scipy import integrate
from scipy.stats import norm

from veil.client_sdk.distributions import FAMILIES, Codebook, PrototypeDistribution, UserDistribution
from veil.privacy_analysis._families import atoms, interval_mass, quantile_grid, stack_population
from veil.privacy_analysis.attribution import bayes_attribution_fast, exact_bayes_attribution
from veil.privacy_analysis.audit.spec import default_prior, generate_population, parse_spec
from veil.privacy_analysis.distances import pairwise, total_variation_estimate
from veil.privacy_analysis.families import (
    PRIVACY_FAMILIES,
    ProductFamily,
    family_of,
    get_family,
    population_family,
    register,
    same_params,
)
from veil.privacy_analysis.families.gaussian import GaussianFamily


# ---------------------------------------------------------------------------------------------- lookups
class _Cauchy:
    family = "cauchy"


def test_an_unknown_family_name_raises_naming_it_and_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'cauchy'.*known: \['gaussian', 'beta', 'basis_mixture'\]"):
        get_family("cauchy")
    with pytest.raises(
        ValueError, match=r"'cauchy' \(_Cauchy\).*known: \['gaussian', 'beta', 'basis_mixture'\]"
    ):
        family_of(_Cauchy())


def test_an_unknown_family_has_no_population_family_and_no_fast_path() -> None:
    g = generate_population("gaussian", 2, 1, 1.0)[0]
    assert population_family([_Cauchy(), _Cauchy()]) is None
    assert population_family([g[0], _Cauchy()]) is None
    assert population_family([]) is None
    assert population_family(g) is PRIVACY_FAMILIES["gaussian"]


def test_a_taken_name_cannot_be_registered_again() -> None:
    with pytest.raises(ValueError, match="'gaussian' is already registered"):
        register(GaussianFamily())
    assert isinstance(PRIVACY_FAMILIES["gaussian"], GaussianFamily)


def test_a_subclass_with_a_name_of_its_own_is_analysed_as_its_parent() -> None:
    proto = PrototypeDistribution(Codebook(np.zeros((2, 1, 3))), 1)
    assert proto.family == "prototype"
    assert family_of(proto) is PRIVACY_FAMILIES["gaussian"]


def test_one_coordinate_prototypes_with_different_noise_get_the_exact_tv_of_their_gaussians() -> None:
    codebook = Codebook(np.array([[[0.0]], [[1.0]]]))
    p, q = PrototypeDistribution(codebook, 0, 0.3), PrototypeDistribution(codebook, 1, 0.5)
    want = (
        0.5
        * integrate.quad(lambda x: abs(norm.pdf(x, 0.0, 0.3) - norm.pdf(x, 1.0, 0.5)), -10, 10, limit=200)[0]
    )
    value, _, method = total_variation_estimate(p, q)
    assert method == "exact 1-D" and value == pytest.approx(want, abs=1e-7)


@pytest.mark.parametrize(
    "name", sorted(n for n, cls in FAMILIES.items() if cls.__module__.startswith("veil."))
)
def test_every_family_veil_ships_has_privacy_maths(name: str) -> None:
    cls = FAMILIES[name]
    # Resolution reads only the class, so an uninitialised instance is enough to ask.
    assert family_of(cls.__new__(cls)) is not None


# ---------------------------------------------------------------------------------------------- every family
@pytest.fixture(params=list(PRIVACY_FAMILIES))
def population(request: pytest.FixtureRequest) -> tuple[str, list[UserDistribution]]:
    users, _ = generate_population(request.param, 3, 1, 1.5, seed=4)
    return request.param, users


def test_every_registered_family_is_found_by_name_and_by_its_members(population) -> None:
    name, users = population
    assert get_family(name) is PRIVACY_FAMILIES[name] and PRIVACY_FAMILIES[name].name == name
    assert all(family_of(u) is PRIVACY_FAMILIES[name] for u in users)
    assert population_family(users) is PRIVACY_FAMILIES[name]
    assert family_of(default_prior(users)) is PRIVACY_FAMILIES[name]


def test_every_registered_family_compares_parameters(population) -> None:
    _, users = population
    assert same_params(users[0], users[0]) and not same_params(users[0], users[1])


def test_every_registered_family_splits_into_product_atoms_with_unit_mass(population) -> None:
    _, users = population
    for u in users:
        weights = [w for w, _ in atoms(u)]
        assert np.isclose(sum(weights), 1.0) and all(w > 0 for w in weights)
        whole = interval_mass(u, 0, np.array([-np.inf]), np.array([np.inf]))
        np.testing.assert_allclose(whole, [1.0], atol=1e-12)
    grid = quantile_grid(users, 16, axis=0)
    assert grid.size > 16 and np.all(np.diff(grid) > 0)


def test_every_registered_family_has_a_stack_that_matches_log_prob(population) -> None:
    _, users = population
    stack = stack_population(users)
    assert stack is not None and stack.k == len(users)
    x = stack.sample(np.array([0, 1, 2, 2]), np.random.default_rng(0))
    want = np.stack([u.log_prob(x.reshape(-1, 1, 1)) for u in users], axis=1)
    np.testing.assert_allclose(stack.log_likelihood(x), want, rtol=1e-9, atol=1e-9)


def test_every_registered_family_gets_exact_attribution_in_one_dimension(population) -> None:
    _, users = population
    exact = exact_bayes_attribution(users)
    mc = bayes_attribution_fast(users, 4000, np.random.default_rng(1))
    assert 1 / 3 <= exact <= 1 and mc.ci_low - 0.01 <= exact <= mc.ci_high + 0.01


# ---------------------------------------------------------------------------------------------- a new family
class LaplaceDistribution(UserDistribution):
    """Independent ``Laplace(loc, scale)`` per coordinate: a family that veil does not ship.

    Its ``family`` name is set by the fixtures (with ``monkeypatch``), so neither the phone's :data:`FAMILIES`
    nor :data:`PRIVACY_FAMILIES` keeps it after a test.
    """

    def __init__(self, loc: Any, scale: Any) -> None:
        self.loc, self.scale = np.asarray(loc, dtype=np.float64), np.asarray(scale, dtype=np.float64)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.loc.shape[0]), int(self.loc.shape[1]))

    def sample(self, rng: np.random.Generator, size: int | None = None) -> np.ndarray:
        n = 1 if size is None else int(size)
        x = self.sample_from_noise(self.draw_noise(rng, n))
        return x[0] if size is None else x

    def noise_shapes(self, size: int, **options: Any) -> dict[str, tuple[int, ...]]:
        return {"uniform": (int(size), *self.shape)}

    def draw_noise(self, rng: np.random.Generator, size: int = 1, **options: Any) -> dict[str, np.ndarray]:
        return {"uniform": rng.random((int(size), *self.shape))}

    def sample_from_noise(self, noise: Mapping[str, np.ndarray]) -> np.ndarray:
        return _laplace_quantile(self.loc, self.scale, noise["uniform"])

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        z = np.abs(np.asarray(x) - self.loc) / self.scale + np.log(2.0 * self.scale)
        return -z.sum(axis=(-2, -1))

    def mean(self) -> np.ndarray:
        return self.loc.copy()

    def variance(self) -> np.ndarray:
        return 2.0 * self.scale**2

    def unconstrained(self) -> dict[str, np.ndarray]:
        return {"loc": self.loc.copy(), "log_scale": np.log(self.scale)}

    def with_unconstrained(self, params: Mapping[str, np.ndarray]) -> Self:
        return type(self)(params.get("loc", self.loc), np.exp(params.get("log_scale", np.log(self.scale))))

    def sample_vjp(self, x: np.ndarray, grad_x: np.ndarray, noise: Any = None) -> dict[str, np.ndarray]:
        raise ValueError('the test family does not learn (no "learn" capability)')

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"loc": self.loc, "scale": self.scale}

    @classmethod
    def _from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Self:
        return cls(arrays["loc"], arrays["scale"])


def _laplace_quantile(loc: np.ndarray, scale: np.ndarray, u: np.ndarray) -> np.ndarray:
    return loc - scale * np.sign(u - 0.5) * np.log1p(-2.0 * np.abs(u - 0.5))


def _laplace_cdf(z: np.ndarray) -> np.ndarray:
    return np.where(z < 0, 0.5 * np.exp(np.minimum(z, 0.0)), 1.0 - 0.5 * np.exp(-np.maximum(z, 0.0)))


class LaplaceFamily(ProductFamily):
    name: ClassVar[str] = "laplace"
    spec_params: ClassVar[tuple[str, ...]] = ("loc", "scale")
    spec_positive: ClassVar[tuple[str, ...]] = ("scale",)

    def flat_params(self, d: UserDistribution) -> tuple[np.ndarray, np.ndarray]:
        return d.loc.ravel(), d.scale.ravel()  # type: ignore[attr-defined]

    def build(self, a: np.ndarray, b: np.ndarray) -> UserDistribution:
        return LaplaceDistribution(a, b)

    def coordinate_quantiles(self, d: UserDistribution, levels: np.ndarray) -> np.ndarray:
        a, b = self.flat_params(d)
        return _laplace_quantile(a[:, None], b[:, None], levels[None, :])

    def interval_mass(self, d: UserDistribution, axis: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        a, b = self.flat_params(d)
        zl, zh = (lo - a[axis]) / b[axis], (hi - a[axis]) / b[axis]
        return np.maximum(_laplace_cdf(zh) - _laplace_cdf(zl), 0.0)


@pytest.fixture
def unregistered(monkeypatch: pytest.MonkeyPatch) -> type[LaplaceDistribution]:
    monkeypatch.setattr(LaplaceDistribution, "family", "laplace", raising=False)
    return LaplaceDistribution


@pytest.fixture
def laplace(unregistered, monkeypatch: pytest.MonkeyPatch) -> type[LaplaceDistribution]:
    monkeypatch.setitem(PRIVACY_FAMILIES, "laplace", LaplaceFamily())
    return unregistered


def _laplace_tv(delta: float, scale: float) -> float:
    # Equal scales: the densities cross at the midpoint, so TV = F_0(delta/2) - F_delta(delta/2).
    return 1.0 - np.exp(-delta / (2.0 * scale))


def test_an_unregistered_family_gets_a_clear_error_at_the_call_sites(unregistered) -> None:
    users = [unregistered([[0.0]], [[1.0]]), unregistered([[1.0]], [[1.0]])]
    with pytest.raises(ValueError, match=r"'laplace' \(LaplaceDistribution\); known: \['gaussian'"):
        exact_bayes_attribution(users)
    assert stack_population(users) is None  # optional fast paths just step aside


def test_a_family_registered_here_gets_exact_attribution_and_tv_at_the_same_call_sites(laplace) -> None:
    users = [laplace([[0.0]], [[1.0]]), laplace([[1.2]], [[1.0]])]
    tv = _laplace_tv(1.2, 1.0)
    assert family_of(users[0]) is PRIVACY_FAMILIES["laplace"]
    assert exact_bayes_attribution(users) == pytest.approx(0.5 * (1.0 + tv), abs=1e-7)
    np.testing.assert_allclose(pairwise(users, "tv"), [[0.0, tv], [tv, 0.0]], atol=1e-7)
    # In two dimensions, a pair that differs in one coordinate reduces to it through the family's build.
    p, q = laplace([[0.0, 3.0]], [[2.0, 0.5]]), laplace([[0.9, 3.0]], [[2.0, 0.5]])
    value, se, method = total_variation_estimate(p, q)
    assert method == "exact 1-D" and se == 0.0 and value == pytest.approx(_laplace_tv(0.9, 2.0), abs=1e-7)


def test_a_family_registered_here_falls_back_to_monte_carlo_where_it_has_no_fast_path(laplace) -> None:
    users = [laplace([[0.0, 0.0]], [[1.0, 1.0]]), laplace([[1.0, 0.5]], [[1.0, 2.0]])]
    assert stack_population(users) is None
    res = bayes_attribution_fast(users, 2000, np.random.default_rng(0))
    assert res.ci_low - 0.01 <= exact_bayes_attribution(users) <= res.ci_high + 0.01


def test_a_family_registered_here_is_read_from_a_population_spec(laplace) -> None:
    spec = parse_spec(
        {
            "family": "laplace",
            "users": [{"loc": [0.0, 1.0], "scale": 1.0}, {"loc": [2.0, 1.0], "scale": [0.5, 1.0]}],
            "prior": {"loc": [1.0, 1.0], "scale": 2.0},
        }
    )
    assert [type(d) for d in spec.distributions] == [laplace, laplace]
    np.testing.assert_array_equal(spec.distributions[1].scale, [[0.5, 1.0]])
    with pytest.raises(ValueError, match=r"users\[0\]\.scale: must be > 0"):
        parse_spec({"family": "laplace", "users": [{"loc": [0.0], "scale": -1.0}] * 2})
