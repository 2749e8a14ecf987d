"""The gateway's relay-authentication check under mutated headers: RelayAuthError or a pass, nothing else."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veil.cloud_service.relay_auth import RelayAuthError, verify_relay_auth
from veil.testing.gateway_fuzz import relay_auth_target
from veil.testing.ohttp_fuzz import MUTATIONS, mutate, run_target

TARGET = relay_auth_target()
_mutations = st.lists(
    st.tuples(st.integers(0, len(MUTATIONS) - 1), st.integers(0, 1 << 16), st.integers(0, 1 << 12)),
    min_size=1,
    max_size=6,
)


def test_every_seed_passes() -> None:
    assert all(run_target(TARGET, seed) == "ok" for seed in TARGET.seeds)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), mutations=_mutations)
def test_mutated_headers_and_bodies_raise_only_relay_auth_errors(data: st.DataObject, mutations) -> None:
    seed = data.draw(st.sampled_from(TARGET.seeds), label="seed")
    run_target(TARGET, mutate(seed, mutations))


@settings(max_examples=300, deadline=None, database=None)
@given(header=st.text(st.characters(max_codepoint=0xFF), max_size=80))
def test_any_latin1_header_raises_only_relay_auth_errors(header: str) -> None:
    with pytest.raises(RelayAuthError):
        verify_relay_auth(bytes(32), header, b"", now=0)


# Regression: str.isdigit() accepts the latin-1 superscripts, int() does not, so a header byte 0xB2
# in t= escaped as a ValueError (a 500 from /ohttp) instead of a 401.
@pytest.mark.parametrize("t", ["\xb2", "1\xb3", "\xb9" * 3])
def test_superscript_digits_in_the_timestamp_are_refused(t: str) -> None:
    with pytest.raises(RelayAuthError, match="must be"):
        verify_relay_auth(bytes(32), f"t={t}, mac=AAAA", b"")
