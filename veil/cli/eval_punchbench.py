"""``veil eval punchbench``: PunchBench (arXiv:2412.11906) over any OpenAI-compatible endpoint.

Without ``--base-url`` it starts Veil's own server on loopback (the model from ``VEIL_MODEL``, a
throwaway store with one API key) and evaluates that. Items come from ``--data`` (the published layout)
or from the synthetic set, built once under the data dir. Every scored item is appended to ``--log``;
a rerun with the same log resumes.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from veil.cli.errors import UserError

__all__ = ["register"]

eval_app = typer.Typer(no_args_is_help=True, help="Evaluate a model through its chat endpoint.")
# --quick: 12 pairs (159 items; zero-shot and SC-CoQ make 477 calls), 24 tokens an answer, one torch thread:
# 493 CPU-s, 11.4 minutes at load 3-5 on the shared 2-core VM. Two threads spin against each other on a
# shared box: 4 pairs' 162 calls took 611 CPU-s and were not done after 14 minutes, against 183 CPU-s
# and 5.4 minutes with one thread
QUICK_PAIRS, FULL_PAIRS = 12, 60
QUICK_MAX_TOKENS, FULL_MAX_TOKENS = 24, 48
QUICK_THREADS = 1


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")


@contextlib.contextmanager
def _own_server(model: str | None, threads: int | None) -> Iterator[tuple[str, str, str]]:
    """Veil's API on a free loopback port; yields (base_url, api_key, model name)."""
    import torch

    from veil.cli.main import _data_dir
    from veil.cloud_service.app import create_app, load_served_model
    from veil.cloud_service.background import BackgroundServer
    from veil.cloud_service.config import ServiceConfig
    from veil.cloud_service.store import create_api_key, make_engine, migrate, session_factory
    from veil.settings import get_settings

    name = model or get_settings().model
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        served = load_served_model(ServiceConfig(data_dir=_data_dir(), model=name))
        with tempfile.TemporaryDirectory(prefix="veil-eval-") as store_dir:
            engine = make_engine(None, Path(store_dir))
            migrate(engine)
            key = create_api_key(session_factory(engine)(), "veil eval punchbench")
            app = create_app(ServiceConfig(data_dir=Path(store_dir), model=name), preloaded=served)
            with BackgroundServer(app) as server:
                yield server.url + "/v1", key, served[2]
    finally:
        torch.set_num_threads(previous)


@eval_app.command("punchbench")
def punchbench(
    strategy: Annotated[
        list[str] | None,
        typer.Option("--strategy", help="Repeatable: zero-shot, few-shot, cot, sc-coq, sc-coq-inter."),
    ] = None,
    base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible base URL (…/v1); default: start Veil's.")
    ] = None,
    api_key: Annotated[str, typer.Option(help="API key for --base-url.")] = "none",
    model: Annotated[
        str | None, typer.Option(help="Model name at the endpoint (default VEIL_MODEL).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="PunchBench root holding dev0610/{Perception,Reasoning}.")
    ] = None,
    log: Annotated[Path | None, typer.Option(help="JSONL of scored items; a rerun resumes from it.")] = None,
    pairs: Annotated[int | None, typer.Option(help="Synthetic pairs (default 60; 12 with --quick).")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N items.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds per completion before the run stops.")] = 120.0,
    max_tokens: Annotated[
        int | None, typer.Option(help="Completion budget per question (default 48; 24 with --quick).")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(help="Torch CPU threads of Veil's own server (default: torch's; 1 with --quick)."),
    ] = None,
    judge: Annotated[
        str, typer.Option(help="Generation judge: rule (content-word recall) or lm (the endpoint's model).")
    ] = "rule",
    seed: Annotated[int, typer.Option(help="Seed for templates, option order and demonstrations.")] = 0,
    quick: Annotated[
        bool, typer.Option("--quick", help="12 synthetic pairs (159 items), 24 tokens an answer, 1 thread.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
) -> None:
    """Accuracy per format, level and caption variant, and each strategy against zero-shot (McNemar)."""
    from veil.models.evaluation.punchbench import (
        STRATEGIES,
        EndpointError,
        ItemError,
        LMJudge,
        OpenAIChat,
        ResumeError,
        RuleJudge,
        SyntheticConfig,
        WordNetMissingError,
        build_synthetic,
        load_published,
        load_synthetic,
        report,
        run_punchbench,
    )

    started, cpu_started = time.monotonic(), time.process_time()
    names = list(dict.fromkeys(strategy or ["zero-shot", "sc-coq"]))
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        raise UserError(f"unknown strategy {unknown[0]!r}; choose from {sorted(STRATEGIES)}")
    if "zero-shot" not in names:
        names.insert(0, "zero-shot")  # the paired control every comparison needs
    if judge not in ("rule", "lm"):
        raise UserError(f"--judge must be 'rule' or 'lm', got {judge!r}")
    if max_tokens is None:
        max_tokens = QUICK_MAX_TOKENS if quick else FULL_MAX_TOKENS
    if threads is None and quick:
        threads = QUICK_THREADS
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    if timeout <= 0 or max_tokens < 1:
        raise UserError(f"--timeout must be > 0 and --max-tokens >= 1, got {timeout} and {max_tokens}")
    n_pairs = pairs or (QUICK_PAIRS if quick else FULL_PAIRS)
    try:
        if data is not None:
            items = load_published(data)
        else:
            from veil.cli.main import _data_dir

            root = _data_dir() / "punchbench" / f"synthetic-{n_pairs}-seed{seed}"
            items = (
                load_synthetic(root)
                if (root / "items.jsonl").is_file()
                else build_synthetic(root, SyntheticConfig(pairs=n_pairs, seed=seed))
            )
    except (ItemError, WordNetMissingError) as exc:
        raise UserError(str(exc)) from exc
    items = items[:limit] if limit else items

    from veil.progress import NullProgress, RichProgress

    progress = NullProgress() if as_json else RichProgress()
    server = (
        contextlib.nullcontext((base_url, api_key, model or "default"))
        if base_url
        else _own_server(model, threads)
    )
    try:
        with server as (url, key, name), progress.stage("PunchBench: scoring items", None) as bar:
            chat = OpenAIChat(url, key, name, timeout_s=timeout, max_tokens=max_tokens)
            # the LM judge is the evaluated model itself: a stand-in for the paper's gpt-3.5 judge
            scorer = LMJudge(chat) if judge == "lm" else RuleJudge()
            records = run_punchbench(
                items,
                names,
                chat,
                log_path=log,
                seed=seed,
                judge=scorer,
                on_item=lambda done, total: bar.update(done, total),
            )
    except EndpointError as exc:
        where = f"; {log} keeps what was scored, rerun to resume" if log else ""
        raise UserError(f"{exc}{where}") from exc
    except ResumeError as exc:  # rerunning would meet the same log: name the way out instead
        raise UserError(f"{exc}; rerun with its --seed, or another --log") from exc
    out = report(records, seed=seed)
    out["items"] = len(items)
    out["config"] = {
        "data": str(data) if data is not None else f"synthetic, {n_pairs} pairs",
        "limit": limit,
        "model": name,
        "own_server": base_url is None,
        "threads": threads if base_url is None else None,
        "max_tokens": max_tokens,
        "judge": judge,
        "seed": seed,
    }
    # this process's time; with Veil's own server that includes loading the model and every generation
    out["seconds"] = time.monotonic() - started
    out["cpu_seconds"] = time.process_time() - cpu_started
    if as_json:
        print(json.dumps(out))
        return
    _print(out)


def _print(out: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"PunchBench accuracy ({out['items']} items)")
    keys = [("all", None)] + [(f"{k}:{g}", (k, g)) for k in ("format", "level", "variant")
                               for g in next(iter(out["strategies"].values()))[k]]  # fmt: skip
    table.add_column("strategy")
    for head, _ in keys:
        table.add_column(head, justify="right")
    table.add_column("vs zero-shot (p)", justify="right")
    for name, s in out["strategies"].items():
        cells = [f"{s['accuracy']:.3f}"] + [f"{s[k].get(g, float('nan')):.3f}" for _, (k, g) in keys[1:]]
        c = out["comparisons"].get(name)
        table.add_row(name, *cells, f"{c['diff']:+.3f} ({c['p_value']:.3g})" if c else "-")
    Console().print(table)
