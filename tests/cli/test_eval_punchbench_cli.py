"""``veil eval punchbench`` against a real OpenAI-compatible server on loopback whose answers come from a
scripted participant of known accuracy: the printed accuracies and p-values must match its plan."""

from __future__ import annotations

import asyncio
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


def _endpoint(
    participant: ScriptedParticipant, fail_after: int | None = None, stall_after: int | None = None
) -> Starlette:
    """Answers from ``participant``; after ``fail_after`` calls a 503, after ``stall_after`` silence."""

    async def completions(request: Request) -> JSONResponse:
        body = await request.json()
        if fail_after is not None and participant.calls >= fail_after:
            return JSONResponse(
                {"error": {"type": "server_error", "message": "overloaded", "param": None}}, 503
            )
        if stall_after is not None and participant.calls >= stall_after:
            await asyncio.sleep(1.5)  # past the client's --timeout; the reply is never read
            return JSONResponse({})
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
        assert sum(s["calls"] for s in result["strategies"].values()) == calls
        assert result["config"]["data"] == f"synthetic, {PAIRS} pairs" and not result["config"]["own_server"]
        assert result["seconds"] > 0 and result["cpu_seconds"] > 0
        code, out2, _ = _veil(veil_here, tmp_path, *args)  # resumes: nothing left to ask
        assert code == 0 and participant.calls == calls
        timing = ("seconds", "cpu_seconds")
        assert {k: v for k, v in json.loads(out2).items() if k not in timing} == {
            k: v for k, v in result.items() if k not in timing
        }


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


def test_an_unknown_strategy_or_a_bad_option_is_a_one_line_error(tmp_path: Path, veil_here) -> None:
    code, _, err = _veil(veil_here, tmp_path, "eval", "punchbench", "--base-url", "http://127.0.0.1:9/v1",
                         "--strategy", "tree-of-thought")  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "unknown strategy 'tree-of-thought'" in err
    code, _, err = _veil(veil_here, tmp_path, "eval", "punchbench", "--base-url", "http://127.0.0.1:9/v1",
                         "--judge", "gpt")  # fmt: skip
    assert code == 2 and "--judge must be 'rule' or 'lm'" in err
    code, _, err = _veil(veil_here, tmp_path, "eval", "punchbench", "--threads", "0")
    assert code == 2 and "--threads must be >= 1, got 0" in err


def test_an_endpoint_stalling_mid_run_times_out_in_one_line_and_the_rerun_resumes(
    tmp_path: Path, items, veil_here
) -> None:
    participant = ScriptedParticipant(items, accuracy=0.5)
    log = tmp_path / "scored.jsonl"
    base = ["eval", "punchbench", "--pairs", str(PAIRS), "--api-key", "k", "--log", str(log), "--json",
            "--strategy", "zero-shot"]  # fmt: skip
    with BackgroundServer(_endpoint(participant, stall_after=7)) as server:
        code, _, err = _veil(veil_here, tmp_path, *base, "--base-url", server.url + "/v1", "--timeout", "0.3")
    assert code == 2 and err.count("\n") == 1, err
    assert "did not answer within 0.3 s" in err and "rerun to resume" in err
    assert len(log.read_text().splitlines()) == 7
    with BackgroundServer(_endpoint(participant)) as server:
        code, out, err = _veil(veil_here, tmp_path, *base, "--base-url", server.url + "/v1")
    assert code == 0, err
    assert json.loads(out)["strategies"]["zero-shot"]["items"] == len(items)
    assert participant.calls == len(items)  # the 7 scored items were not asked again


def test_a_log_scored_under_another_seed_is_a_one_line_error_before_any_call(
    tmp_path: Path, items, veil_here
) -> None:
    log = tmp_path / "scored.jsonl"
    log.write_text(json.dumps({"strategy": "zero-shot", "item_id": items[0].item_id, "seed": 3}) + "\n")
    code, _, err = _veil(veil_here, tmp_path, "eval", "punchbench", "--pairs", str(PAIRS), "--base-url",
                         "http://127.0.0.1:9/v1", "--log", str(log), "--json")  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "seed 3, this run uses 0" in err, err
    assert "rerun with its --seed" in err and "rerun to resume" not in err


def test_malformed_published_items_are_a_one_line_error_naming_file_and_line(
    tmp_path: Path, veil_here
) -> None:
    split = tmp_path / "pb" / "dev0610" / "Perception"
    split.mkdir(parents=True)
    (split / "Matching.jsonl").write_text('{"id": 1, "caption": "a", "options": ["a", "b"]}\n')
    args = ["eval", "punchbench", "--data", str(tmp_path / "pb"), "--base-url", "http://127.0.0.1:9/v1"]
    code, _, err = _veil(veil_here, tmp_path, *args)
    assert code == 2 and err.count("\n") == 1 and "Matching.jsonl:1" in err and "answer" in err, err
    (split / "Matching.jsonl").rename(split / "Riddle.jsonl")
    code, _, err = _veil(veil_here, tmp_path, *args)
    assert code == 2 and err.count("\n") == 1 and "Riddle.jsonl: unknown format file" in err, err
