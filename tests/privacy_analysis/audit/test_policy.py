"""The audit policy: parsing, CLI overrides, and the verdict (fail closed on what cannot be measured)."""

from __future__ import annotations

import pytest

from veil.privacy_analysis.audit.policy import Policy, PolicyError, evaluate

ALL_OK = {
    "bayes_attribution": 0.10,
    "pairwise_tv_max": 0.30,
    "tv_to_prior_max": 0.20,
    "gdp_mu_max": 0.50,
    "attack_accuracy_max": 0.08,
    "linked_attribution": {1: 0.10, 8: 0.40},
    "identifiable": False,
}
STRICT = Policy(
    max_bayes_attribution=0.2,
    max_linked_attribution=0.5,
    linked_t=8,
    max_pairwise_tv=0.4,
    max_tv_to_prior=0.25,
    max_gdp_mu=1.0,
    max_attack_accuracy=0.1,
    require_unidentifiable=True,
)


def test_every_limit_holds() -> None:
    assert evaluate(STRICT, ALL_OK) == []
    assert evaluate(Policy(), {}) == []  # nothing configured: nothing to check
    assert Policy().is_empty and not STRICT.is_empty


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("bayes_attribution", 0.21, "max_bayes_attribution"),
        ("pairwise_tv_max", 0.41, "max_pairwise_tv"),
        ("tv_to_prior_max", 0.3, "max_tv_to_prior"),
        ("gdp_mu_max", 1.5, "max_gdp_mu"),
        ("attack_accuracy_max", 0.2, "max_attack_accuracy"),
        ("linked_attribution", {8: 0.6}, "max_linked_attribution"),
        ("identifiable", True, "require_unidentifiable"),
    ],
)
def test_each_limit_reports_its_violation(key: str, value, rule: str) -> None:
    violations = evaluate(STRICT, {**ALL_OK, key: value})
    assert [v.rule for v in violations] == [rule]
    assert violations[0].message


@pytest.mark.parametrize("key", ["gdp_mu_max", "linked_attribution", "identifiable", "tv_to_prior_max"])
def test_unmeasurable_configured_limit_is_a_violation(key: str) -> None:
    violations = evaluate(STRICT, {**ALL_OK, key: None})
    assert len(violations) == 1 and violations[0].value is None
    assert "not measurable" in violations[0].message


def test_linked_limit_reads_its_own_t() -> None:
    policy = Policy(max_linked_attribution=0.5, linked_t=4)
    assert [v.rule for v in evaluate(policy, {"linked_attribution": {8: 0.1}})] == ["max_linked_attribution"]
    assert evaluate(policy, {"linked_attribution": {4: 0.1}}) == []


def test_from_mapping_and_overrides() -> None:
    policy = Policy.from_mapping({"max_bayes_attribution": 0.3, "max_gdp_mu": 2})
    assert policy.max_gdp_mu == 2
    merged = policy.with_overrides(max_bayes_attribution=0.1, max_gdp_mu=None, max_pairwise_tv=0.5)
    assert (merged.max_bayes_attribution, merged.max_gdp_mu, merged.max_pairwise_tv) == (0.1, 2, 0.5)
    assert merged.to_json()["max_pairwise_tv"] == 0.5
    assert Policy.from_mapping(None) == Policy()


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"max_attribution": 0.3}, "unknown keys"),
        ({"max_bayes_attribution": 1.5}, "max_bayes_attribution"),
        ({"max_pairwise_tv": 0}, "max_pairwise_tv"),
        ({"max_gdp_mu": -1}, "max_gdp_mu"),
        ({"max_gdp_mu": float("inf")}, "max_gdp_mu"),
        ({"linked_t": 0}, "linked_t"),
        ({"require_unidentifiable": "yes"}, "require_unidentifiable"),
        ({"max_tv_to_prior": "0.2"}, "max_tv_to_prior"),
    ],
)
def test_bad_policies_raise(data: dict, fragment: str) -> None:
    with pytest.raises(PolicyError, match=fragment):
        Policy.from_mapping(data)
    with pytest.raises(PolicyError, match="unknown policy limits"):
        Policy().with_overrides(max_everything=1.0)
