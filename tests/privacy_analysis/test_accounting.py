"""DP-SGD accounting through Opacus: composition, the closed-form RDP oracle, the report."""

from __future__ import annotations

import doctest
import warnings

import numpy as np
import pytest

from veil.privacy_analysis import accounting
from veil.privacy_analysis.accounting import (
    DEFAULT_ORDERS,
    CompositionAccountant,
    TrainingRun,
    dp_sgd_epsilon,
    gaussian_rdp,
    rdp_to_epsilon,
)

pytest.importorskip("opacus")


@pytest.mark.parametrize("name", ["prv", "rdp", "gdp"])
def test_composition_of_matching_runs_equals_one_run_with_summed_steps(name: str) -> None:
    acc = CompositionAccountant()
    for steps in (300, 500, 200):
        acc.add_run(1.1, 0.01, steps)
    single = dp_sgd_epsilon(1.1, 0.01, 1000, 1e-5, name)
    assert acc.epsilon(1e-5, name) == pytest.approx(single, rel=1e-6)


@pytest.mark.parametrize("name", ["prv", "rdp", "gdp"])
def test_heterogeneous_composition_costs_more_than_either_run(name: str) -> None:
    acc = CompositionAccountant()
    acc.add_run(1.0, 0.02, 400)
    acc.add_run(2.0, 0.05, 300)
    both = acc.epsilon(1e-5, name)
    assert both > dp_sgd_epsilon(1.0, 0.02, 400, 1e-5, name)
    assert both > dp_sgd_epsilon(2.0, 0.05, 300, 1e-5, name)


def test_rdp_oracle_for_the_unsubsampled_gaussian_mechanism() -> None:
    from opacus.accountants.analysis.rdp import compute_rdp

    orders = np.array(DEFAULT_ORDERS)
    for sigma, steps in ((0.8, 1), (2.0, 10), (5.0, 100)):
        oracle = gaussian_rdp(orders, sigma, steps)
        assert np.allclose(compute_rdp(q=1.0, noise_multiplier=sigma, steps=steps, orders=orders), oracle)
        want, _ = rdp_to_epsilon(orders, oracle, 1e-5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Opacus warns when the best order is at the grid's edge
            got = dp_sgd_epsilon(sigma, 1.0, steps, 1e-5, "rdp")
        assert got == pytest.approx(want, rel=1e-9)
    # The oracle itself: RDP(alpha) = alpha / (2 sigma^2) per step, additive over steps.
    assert float(gaussian_rdp(3.0, 2.0, steps=4)) == pytest.approx(4 * 3.0 / 8.0)


def test_gdp_single_run_equals_opacus_gaussian_accountant() -> None:
    from opacus.accountants import GaussianAccountant

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "GDP accounting is experimental"
        ref = GaussianAccountant()
    ref.history = [(1.3, 0.004, 2500)]
    assert dp_sgd_epsilon(1.3, 0.004, 2500, 1e-6, "gdp") == pytest.approx(ref.get_epsilon(1e-6), rel=1e-9)


def test_epsilon_behaves_monotonically_and_prv_is_tighter_than_rdp() -> None:
    base = dp_sgd_epsilon(1.0, 0.01, 1000, 1e-5, "prv")
    assert dp_sgd_epsilon(1.0, 0.01, 2000, 1e-5, "prv") > base
    assert dp_sgd_epsilon(2.0, 0.01, 1000, 1e-5, "prv") < base
    assert dp_sgd_epsilon(1.0, 0.01, 1000, 1e-7, "prv") > base
    assert base <= dp_sgd_epsilon(1.0, 0.01, 1000, 1e-5, "rdp")
    assert dp_sgd_epsilon(1.0, 0.01, 0, 1e-5, "prv") == 0.0


def test_report_states_everything_a_dp_claim_needs() -> None:
    acc = CompositionAccountant()
    acc.add_run(1.0, 0.01, 100)
    rep = acc.report(1e-5, "rdp")
    assert {"epsilon", "delta", "accountant", "sampling", "unit_of_privacy", "runs"} <= set(rep)
    assert rep["epsilon"] == pytest.approx(acc.epsilon(1e-5, "rdp")) and rep["accountant"] == "rdp"


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="noise_multiplier"):
        TrainingRun(0.0, 0.1, 10)
    with pytest.raises(ValueError, match="sample_rate"):
        TrainingRun(1.0, 1.5, 10)
    with pytest.raises(ValueError, match="steps"):
        TrainingRun(1.0, 0.1, -1)
    with pytest.raises(ValueError, match="delta"):
        dp_sgd_epsilon(1.0, 0.1, 10, 0.0)
    with pytest.raises(ValueError, match="accountant"):
        dp_sgd_epsilon(1.0, 0.1, 10, 1e-5, "moments")


def test_doctests() -> None:
    assert doctest.testmod(accounting).failed == 0
