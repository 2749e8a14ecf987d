"""Production is the default: a forgotten KEK fails closed; ``veil gateway`` commands keep working."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from test_cli import assert_one_line_error, veil

from veil.settings import Settings

pytestmark = pytest.mark.integration


def test_settings_default_to_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VEIL_ENVIRONMENT", raising=False)
    assert Settings().environment == "production"
    monkeypatch.setenv("VEIL_ENVIRONMENT", "development")
    assert Settings().environment == "development"
    assert os.environ["VEIL_ENVIRONMENT"] == "development"  # the suite itself runs as development


def test_a_missing_kek_fails_closed_unless_development(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VEIL_ENVIRONMENT")  # what an operator who forgot it runs
    monkeypatch.delenv("VEIL_GATEWAY_KEK", raising=False)
    for args in (("serve", "--port", "8123"), ("gateway", "rotate")):
        assert_one_line_error(veil(tmp_path, *args), "VEIL_GATEWAY_KEK", "VEIL_ENVIRONMENT=development")
    assert not (tmp_path / "gateway.kek").exists()  # nothing generated next to the database


def test_gateway_commands_rotate_and_retire(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from veil.cli.main import app

    monkeypatch.setenv("VEIL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("VEIL_GATEWAY_KEK", base64.b64encode(bytes(range(32))).decode())

    def run(*args: str) -> str:
        result = CliRunner().invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return result.stdout

    def listed() -> list[int]:
        return [k["key_id"] for k in json.loads(run("gateway", "list", "--json"))["keys"]]

    (first,) = listed()
    run("gateway", "rotate")
    current = listed()[0]
    assert listed() == [current, first]
    refused = CliRunner().invoke(app, ["gateway", "retire", "--key-id", str(current)])
    assert isinstance(refused.exception, ValueError) and "current" in str(refused.exception)
    assert f"[{first}]" in run("gateway", "retire", "--key-id", str(first))
    assert listed() == [current]
