"""Torch twins of the user distributions, pinned to the numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from veil.client_sdk import BasisMixtureDistribution, BetaDistribution, GaussianDistribution
from veil.client_sdk.distributions._special import beta_implicit_grad
from veil.models.distributions import TorchBasisMixture, TorchBeta, TorchGaussian, torch_twin

SHAPE = (2, 3)


def make_beta(seed: int = 0) -> BetaDistribution:
    rng = np.random.default_rng(seed)
    return BetaDistribution(rng.uniform(0.5, 8.0, SHAPE), rng.uniform(0.5, 8.0, SHAPE))


def make_gaussian(seed: int = 0) -> GaussianDistribution:
    rng = np.random.default_rng(seed)
    return GaussianDistribution(rng.normal(size=SHAPE), rng.uniform(0.2, 1.5, SHAPE))


def make_mixture(seed: int = 0) -> BasisMixtureDistribution:
    return BasisMixtureDistribution(
        [make_beta(seed), make_gaussian(seed), make_beta(seed + 1)], [0.25, 0.5, 0.25]
    )


ALL = [make_beta, make_gaussian, make_mixture]
TWIN_TYPES = {"beta": TorchBeta, "gaussian": TorchGaussian, "basis_mixture": TorchBasisMixture}


@pytest.mark.parametrize("factory", ALL)
def test_log_prob_matches_numpy(factory) -> None:
    dist = factory()
    twin = torch_twin(dist)
    assert isinstance(twin, TWIN_TYPES[dist.family])
    x = dist.sample(np.random.default_rng(0), 500)
    got = twin.log_prob(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, dist.log_prob(x), rtol=1e-9, atol=1e-6)


@pytest.mark.parametrize("factory", ALL)
def test_parameter_names_and_round_trip(factory) -> None:
    dist = factory()
    twin = torch_twin(dist)
    trained = {name for name, p in twin.named_parameters() if p.requires_grad}
    assert trained == set(dist.unconstrained())
    for name, value in dist.unconstrained().items():
        np.testing.assert_allclose(getattr(twin, name).detach().numpy(), value, rtol=1e-12)
    back = twin.to_numpy()
    assert type(back) is type(dist)
    x = dist.sample(np.random.default_rng(1), 50)
    np.testing.assert_allclose(back.log_prob(x), dist.log_prob(x), rtol=1e-12)
    assert type(type(twin).from_numpy(back)) is type(twin)


@pytest.mark.parametrize("factory", ALL)
def test_rsample_moments(factory) -> None:
    torch.manual_seed(0)
    dist = factory()
    x = torch_twin(dist).rsample(100_000).detach().numpy()
    assert x.shape == (100_000, *SHAPE) and x.dtype == np.float64
    np.testing.assert_allclose(x.mean(0), dist.mean(), atol=0.015)
    np.testing.assert_allclose(x.var(0), dist.variance(), rtol=0.04)


def test_beta_implicit_grad_matches_torch_rsample() -> None:
    """Torch's Beta gradient (``_dirichlet_grad``) is a rational approximation accurate to ~1e-2 relative
    in the worst case (median ~1e-7), so this checks agreement, not precision; precision is checked
    against scipy finite differences in the client tests."""
    torch.manual_seed(0)
    n = 4000
    alpha = torch.exp(
        torch.empty(n, dtype=torch.float64).uniform_(np.log(0.3), np.log(50.0))
    ).requires_grad_()
    beta = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(np.log(0.3), np.log(50.0))).requires_grad_()
    x = torch.distributions.Beta(alpha, beta).rsample()
    ga, gb = torch.autograd.grad(x.sum(), (alpha, beta))
    xs = x.detach().numpy()
    keep = (xs > 1e-4) & (xs < 1 - 1e-4)
    na, nb = beta_implicit_grad(xs, alpha.detach().numpy(), beta.detach().numpy())
    np.testing.assert_allclose(na[keep], ga.numpy()[keep], rtol=2e-2, atol=1e-8)
    np.testing.assert_allclose(nb[keep], gb.numpy()[keep], rtol=2e-2, atol=1e-8)
    assert np.median(np.abs(na[keep] - ga.numpy()[keep]) / np.abs(na[keep])) < 1e-5


@pytest.mark.parametrize("factory", ALL)
def test_rsample_gradients_match_numpy_sample_vjp(factory) -> None:
    """Backprop through the twin's rsample equals the phone's sample_vjp on the same sample."""
    torch.manual_seed(1)
    dist = factory()
    twin = torch_twin(dist)
    x = twin.rsample(64)
    g = torch.randn_like(x)
    (x * g).sum().backward()
    expected = dist.sample_vjp(x.detach().numpy(), g.numpy())
    rtol = 2e-2 if dist.family == "beta" else 1e-10  # torch's Beta gradient is approximate (see above)
    for name, value in expected.items():
        np.testing.assert_allclose(getattr(twin, name).grad.numpy(), value, rtol=rtol, atol=1e-8)


def test_frozen_parameter_gets_no_gradient_and_basis_is_a_buffer() -> None:
    twin = torch_twin(make_gaussian())
    twin.log_std.requires_grad_(False)
    twin.rsample(8).sum().backward()
    assert twin.log_std.grad is None and twin.mean.grad is not None
    mix = torch_twin(make_mixture())
    assert [n for n, _ in mix.named_parameters()] == ["logits"]
    assert "basis_means" in dict(mix.named_buffers())


def test_float32_twin_and_invalid_inputs() -> None:
    twin = TorchBeta.from_numpy(make_beta(), dtype=torch.float32)
    assert twin.rsample(4).dtype == torch.float32
    with pytest.raises(ValueError, match="2-D"):
        TorchGaussian(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        TorchBasisMixture([make_beta()], torch.zeros(2))
    with pytest.raises(ValueError, match="no torch twin"):
        torch_twin(object())  # type: ignore[arg-type]
