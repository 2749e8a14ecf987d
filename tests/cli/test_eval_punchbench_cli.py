"""``veil eval punchbench`` against a real OpenAI-compatible server on loopback whose answers come from a
scripted participant of known accuracy: the printed accuracies and p-values must match its plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from veil.cloud_service.background import BackgroundServer
from veil.models.evaluation.punchbench import SCCoQ, ScriptedParticipant, SyntheticConfig, build_synthetic

pytestmark = pytest.mark.skipif(
    not Path("/usr/share/wordnet/data.adj").is_file(),
    reason="needs Debian wordnet-base (.ci/run installs it)",
)
PAIRS = 3


def _veil(veil_here, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    proc = veil_here(tmp_path / "data", *args)
    return proc.returncode, proc.stdout, proc.stderr


def _endpoint(participant: ScriptedParticipant, fail_after: int | None = None) -> Starlette:
    async def completions(request: Request) -> JSONResponse:
        body = await request.json()
        if fail_after is not None and participant.calls >= fail_after:
            return JSONResponse(
                {"error": {"type": "server_error", "message": "overloaded", "param": None}}, 503
            )
        text = participant(body["messages"])
        return JSONResponse(
            {
                "id": "c",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                ],
            }
        )

    return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])


@pytest.fixture()
def items(tmp_path: Path):
    return build_synthetic(
        tmp_path / "data" / "punchbench" / f"synthetic-{PAIRS}-seed0", SyntheticConfig(pairs=PAIRS)
    )


def test_the_report_matches_a_participant_of_known_accuracy(tmp_path: Path, items, veil_here) -> None:
    participant = ScriptedParticipant(items, accuracy=0.75, draw_seed=5)
    log = tmp_path / "scored.jsonl"
    with BackgroundServer(_endpoint(participant)) as server:
        args = ["eval", "punchbench", "--pairs", str(PAIRS), "--base-url", server.url + "/v1", "--api-key", "k",
                "--model", "m", "--judge", "rule", "--strategy", "zero-shot", "--strategy", "sc-coq", "--log", str(log), "--json"]  # fmt: skip
        code, out, err = _veil(veil_here, tmp_path, *args)
        assert code == 0, err
        result = json.loads(out)
        planned = sum(participant.planned.values()) / len(items)
        for name in ("zero-shot", "sc-coq"):
            assert result["strategies"][name]["accuracy"] == pytest.approx(planned)
            assert set(result["strategies"][name]["format"]) == {
                "yes-no",
                "matching",
                "multiple-choice",
                "generation",
            }
        assert result["comparisons"]["sc-coq"]["p_value"] == 1.0  # same planned answers under both strategies
        calls = participant.calls
        code, out2, _ = _veil(veil_here, tmp_path, *args)  # resumes: nothing left to ask
        assert code == 0 and participant.calls == calls and json.loads(out2) == result


def test_an_endpoint_failing_mid_run_is_one_line_and_the_rerun_resumes(
    tmp_path: Path, items, veil_here
) -> None:
    participant = ScriptedParticipant(items, accuracy=0.5)
    log = tmp_path / "scored.jsonl"
    base = ["eval", "punchbench", "--pairs", str(PAIRS), "--api-key", "k", "--log", str(log), "--json"]
    with BackgroundServer(_endpoint(participant, fail_after=10)) as server:
        code, _, err = _veil(veil_here, tmp_path, *base, "--base-url", server.url + "/v1")
    assert code == 2 and err.startswith("veil: error:") and "503" in err and "rerun to resume" in err
    scored = len(log.read_text().splitlines())
    assert scored == 10
    with BackgroundServer(_endpoint(participant)) as server:
        code, out, err = _veil(veil_here, tmp_path, *base, "--base-url", server.url + "/v1")
    assert code == 0, err
    result = json.loads(out)
    assert {name: s["items"] for name, s in result["strategies"].items()} == {
        "zero-shot": len(items),
        "sc-coq": len(items),
    }
    # the rerun asked only what was missing: the other zero-shot items and every SC-CoQ chain in full
    chains = sum(len(SCCoQ().chain_for(it, items)) for it in items)
    assert participant.calls == 10 + (len(items) - 10) + chains
    assert len(log.read_text().splitlines()) == 2 * len(items)


def test_an_unknown_strategy_is_a_one_line_error(tmp_path: Path, veil_here) -> None:
    code, _, err = _veil(veil_here, tmp_path, "eval", "punchbench", "--base-url", "http://127.0.0.1:9/v1",
                         "--strategy", "tree-of-thought")  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "unknown strategy 'tree-of-thought'" in err
    code, _, err = _veil(veil_here, tmp_path, "eval", "punchbench", "--base-url", "http://127.0.0.1:9/v1",
                         "--judge", "gpt")  # fmt: skip
    assert code == 2 and "--judge must be 'rule' or 'lm'" in err
