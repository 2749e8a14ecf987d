"""Population specs: every family, the generator, and one clear line for every kind of bad spec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from veil.client_sdk.distributions import BasisMixtureDistribution, BetaDistribution, GaussianDistribution
from veil.privacy_analysis.audit.spec import SpecError, generate_population, load_spec, parse_spec


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "population.yaml"
    path.write_text(text)
    return path


def test_gaussian_users_with_scalar_std_and_per_token_arrays(tmp_path: Path) -> None:
    spec = load_spec(
        _write(
            tmp_path,
            """
family: gaussian
users:
  - {mean: [0.0, 0.0], std: [1.0, 2.0]}
  - {mean: [1.0, 0.0], std: 1.5}
policy: {max_bayes_attribution: 0.9}
utility:
  - {spread: 0.5, accuracy: 0.6, attribution: 0.3}
""",
        )
    )
    assert spec.family == "gaussian" and len(spec.distributions) == 2
    a, b = spec.distributions
    assert isinstance(a, GaussianDistribution) and a.shape == (1, 2)
    np.testing.assert_array_equal(b.std, [[1.5, 1.5]])
    # Default prior: mean of the means, root-mean-square std.
    np.testing.assert_allclose(spec.prior.loc, [[0.5, 0.0]])
    np.testing.assert_allclose(spec.prior.std, [[np.sqrt((1 + 2.25) / 2), np.sqrt((4 + 2.25) / 2)]])
    assert spec.policy == {"max_bayes_attribution": 0.9}
    assert spec.utility[0].label == "spread 0.5" and spec.utility[0].attribution == 0.3
    two_tokens = parse_spec(
        {
            "family": "gaussian",
            "users": [{"mean": [[0, 1], [2, 3]], "std": 1}, {"mean": [[0, 0], [0, 0]], "std": 1}],
        }
    )
    assert two_tokens.distributions[0].shape == (2, 2)


def test_beta_and_basis_mixture_users() -> None:
    beta = parse_spec(
        {"family": "beta", "users": [{"alpha": [2, 3], "beta": [2, 1]}, {"alpha": [1, 1], "beta": [4, 4]}]}
    )
    assert isinstance(beta.distributions[0], BetaDistribution)
    np.testing.assert_allclose(beta.distributions[0].alpha, [[2, 3]])
    mix = parse_spec(
        {
            "family": "basis_mixture",
            "basis": [
                {"mean": [0.0], "std": 1.0},
                {"alpha": [2.0], "beta": [3.0]},
                {"family": "gaussian", "mean": [3.0], "std": 0.5},
            ],
            "users": [
                {"weights": [0.2, 0.3, 0.5]},
                {"weights": [1.0, 0.0, 0.0]},
                {"weights": [0.5, 0.5, 0.0]},
            ],
            "prior": {"weights": [1 / 3, 1 / 3, 1 / 3]},
        }
    )
    assert all(isinstance(d, BasisMixtureDistribution) for d in mix.distributions)
    assert isinstance(mix.distributions[0].basis[1], BetaDistribution)
    np.testing.assert_allclose(mix.prior.weights, [1 / 3] * 3)


def test_generator_for_each_family() -> None:
    spec = parse_spec({"family": "gaussian", "generator": {"users": 30, "dim": 4, "spread": 0.5, "seed": 3}})
    assert len(spec.distributions) == 30 and spec.distributions[0].shape == (1, 4)
    np.testing.assert_array_equal(spec.prior.loc, np.zeros((1, 4)))
    again = parse_spec({"family": "gaussian", "generator": {"users": 30, "dim": 4, "spread": 0.5, "seed": 3}})
    np.testing.assert_array_equal(spec.distributions[7].loc, again.distributions[7].loc)  # seeded
    means = np.stack([d.loc for d in spec.distributions])
    assert 0.3 < means.std() < 0.7
    beta, prior = generate_population("beta", 5, 3, 1.0, seed=0, concentration=20.0)
    np.testing.assert_allclose(beta[0].alpha + beta[0].beta, 20.0)
    np.testing.assert_allclose(prior.mean(), 0.5)
    mix, mix_prior = generate_population("basis_mixture", 6, 2, 0.0, basis_size=4)
    np.testing.assert_allclose(mix[3].weights, 0.25)  # spread 0: identical users
    assert mix_prior.basis is mix[0].basis or len(mix_prior.basis) == 4


BAD_SPECS = [
    (
        {"family": "gaussian", "users": [{"mean": [0.0], "std": [-1.0]}, {"mean": [1.0], "std": [1.0]}]},
        "users[0].std",
        "> 0",
    ),
    (
        {"family": "gaussian", "users": [{"mean": [0.0], "std": [1.0]}, {"mean": [1.0], "std": [0.0]}]},
        "users[1].std",
        "> 0",
    ),
    (
        {"family": "beta", "users": [{"alpha": [1.0], "beta": [1.0]}, {"alpha": [-2.0], "beta": [1.0]}]},
        "users[1].alpha",
        "> 0",
    ),
    (
        {"family": "beta", "users": [{"alpha": [1.0], "beta": [0.0]}, {"alpha": [2.0], "beta": [1.0]}]},
        "users[0].beta",
        "> 0",
    ),
    (
        {"family": "gaussian", "users": [{"mean": [0.0, 1.0], "std": [1.0]}, {"mean": [1.0], "std": [1.0]}]},
        "users[0].std",
        "mismatched",
    ),
    (
        {"family": "gaussian", "users": [{"mean": [0.0, 1.0], "std": 1.0}, {"mean": [1.0], "std": 1.0}]},
        "users[1]",
        "differs",
    ),
    ({"family": "gaussian", "users": []}, "users", "empty"),
    ({"family": "gaussian", "users": [{"mean": [0.0], "std": 1.0}]}, "users", "at least 2"),
    ({"family": "gaussian", "generator": {"users": 0, "dim": 3, "spread": 1.0}}, "generator.users", "empty"),
    ({"family": "gaussian", "generator": {"users": 10, "dim": 3}}, "generator.spread", "missing"),
    ({"family": "gaussian", "generator": {"users": 10, "dim": 3, "spread": -1}}, "generator.spread", ">= 0"),
    ({"family": "cauchy", "users": [{"mean": [0.0], "std": 1.0}] * 2}, "family", "cauchy"),
    ({"family": "gaussian"}, "users", "neither"),
    (
        {"family": "gaussian", "users": [{"mean": [0.0], "std": 1.0}] * 2, "generator": {"users": 2}},
        "exactly one",
        "users and generator",
    ),
    ({"family": "gaussian", "users": [{"mean": [0.0], "sd": 1.0}] * 2}, "users[0]", "unknown keys"),
    ({"family": "gaussian", "users": [{"mean": ["a"], "std": 1.0}] * 2}, "users[0].mean", "numbers"),
    ({"family": "gaussian", "users": [{"mean": [float("nan")], "std": 1.0}] * 2}, "users[0].mean", "finite"),
    (
        {
            "family": "basis_mixture",
            "basis": [{"mean": [0.0], "std": 1.0}] * 2,
            "users": [{"weights": [0.5, 0.6]}] * 2,
        },
        "users[0].weights",
        "sum to 1",
    ),
    (
        {
            "family": "basis_mixture",
            "basis": [{"mean": [0.0], "std": 1.0}] * 2,
            "users": [{"weights": [1.5, -0.5]}] * 2,
        },
        "users[0].weights",
        ">= 0",
    ),
    (
        {
            "family": "basis_mixture",
            "basis": [{"mean": [0.0], "std": 1.0}] * 2,
            "users": [{"weights": [1.0]}] * 2,
        },
        "users[0].weights",
        "2 entries",
    ),
    ({"family": "basis_mixture", "users": [{"weights": [1.0]}] * 2}, "basis", "needs a top-level"),
    (
        {
            "family": "basis_mixture",
            "basis": [{"mean": [0.0], "std": 1.0}, {"mean": [0.0, 1.0], "std": 1.0}],
            "users": [{"weights": [1.0, 0.0]}] * 2,
        },
        "basis[1]",
        "differs",
    ),
    (
        {"family": "gaussian", "users": [{"mean": [0.0], "std": 1.0}] * 2, "colour": "red"},
        "unknown top-level",
        "colour",
    ),
    (
        {
            "family": "gaussian",
            "users": [{"mean": [0.0], "std": 1.0}] * 2,
            "utility": [{"accuracy": 2, "attribution": 0.1}],
        },
        "utility[0].accuracy",
        "[0, 1]",
    ),
    ([1, 2, 3], "must be a mapping", "list"),
]


@pytest.mark.parametrize(("data", "where", "what"), BAD_SPECS)
def test_bad_specs_raise_one_line_naming_the_field(data, where: str, what: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(data, source="pop.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("pop.yaml: ")
    assert where in message and what in message, message


def test_unreadable_and_invalid_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path)  # a directory
    bad = _write(tmp_path, "family: gaussian\nusers: [ {mean: [0.0], std: 1.0\n")
    with pytest.raises(SpecError, match=r"invalid YAML at line \d+"):
        load_spec(bad)
    binary = tmp_path / "weights.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(SpecError, match="UTF-8"):
        load_spec(binary)
    assert issubclass(SpecError, ValueError)
