"""API key prefixes never start with ``-``: the CLI's ``keys revoke <prefix>`` would read one as an option."""

from __future__ import annotations

from veil.cloud_service.store import keys


def test_no_new_key_starts_with_a_dash(monkeypatch) -> None:
    draws = iter(["-" + "a" * 42, "-" + "b" * 42, "c" * 43])
    monkeypatch.setattr(keys.secrets, "token_urlsafe", lambda _n: next(draws))
    assert keys._new_key() == keys.API_KEY_PREFIX + "c" * 43
    monkeypatch.undo()
    assert all(not keys._new_key().removeprefix(keys.API_KEY_PREFIX).startswith("-") for _ in range(2000))
