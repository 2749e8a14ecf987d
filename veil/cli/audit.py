"""``veil audit``: attribution risk of a population, a policy verdict for CI, and an HTML report.

Inputs (one of the first two, and/or the third; or the fourth alone):

- ``--population FILE``: a YAML population spec (:mod:`veil.privacy_analysis.audit.spec`);
- ``--params PATH``: device parameter files saved by ``UserDistribution.save`` (``.npz``), or folders of
  them; one file per user;
- ``--db URL``: a live store. Stored uploads carry no owner, so with ``--db`` alone the audit measures
  only the pooled stream (exact repeats, cluster structure: :mod:`veil.privacy_analysis.audit.stream`)
  and every per-user policy limit is "not measurable" (a violation). With ``--params`` as well it adds
  the expected Bayes accuracy on exactly the stored uploads.
- ``--uploads FILE``: uploads exported by the simulator with their ground truth
  (:func:`veil.privacy_analysis.attacks.uploads.load_uploads`), attacked by an attacker who knows no
  parameters (:func:`~veil.privacy_analysis.attacks.uploads.run_upload_attacks`); only ``--json`` and
  ``--seed`` apply. With any of the three inputs above, ``--uploads N`` keeps its older meaning: the number
  of Monte-Carlo uploads per user.

Exit codes: 0 when the policy holds (always, for ``--uploads FILE``), 1 when it is violated, 2 for bad
input (one line on stderr).

The command imports the analysis inside its functions (lazy: start-up time, see :mod:`veil.cli.main`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from click.core import ParameterSource

from veil.cli.errors import UserError

__all__ = ["audit", "register"]


def register(app: typer.Typer) -> None:
    """Add ``veil audit`` to the ``veil`` command."""
    app.command("audit")(audit)


def audit(
    ctx: typer.Context,
    population: Annotated[
        Path | None, typer.Option("--population", help="YAML population spec.", show_default=False)
    ] = None,
    params: Annotated[
        list[Path] | None,
        typer.Option(
            "--params", help="Device parameter file (.npz) or folder of them; repeatable.", show_default=False
        ),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option("--db", help="Live store URL (sqlite:///PATH or postgresql://...).", show_default=False),
    ] = None,
    uploads: Annotated[
        str | None,
        typer.Option(
            "--uploads",
            metavar="FILE|N",
            help="Exported uploads (.npz) to attack; with --population/--params/--db: Monte-Carlo uploads "
            "per user (default 100).",
            show_default=False,
        ),
    ] = None,
    linked: Annotated[
        str, typer.Option("--linked", help="Linked-upload counts T, comma-separated.")
    ] = "1,2,4,8",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object on stdout instead of tables.")
    ] = False,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Write report.html and audit.json here.", show_default=False),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    attacks: Annotated[
        bool, typer.Option("--attacks/--no-attacks", help="Run the practical attacks.")
    ] = True,
    max_attribution: Annotated[
        float | None,
        typer.Option("--max-attribution", help="Limit on Bayes attribution accuracy.", show_default=False),
    ] = None,
    max_linked_attribution: Annotated[
        float | None,
        typer.Option(
            "--max-linked-attribution", help="Limit at T=--linked-at linked uploads.", show_default=False
        ),
    ] = None,
    linked_at: Annotated[
        int | None,
        typer.Option("--linked-at", help="T for --max-linked-attribution (default 8).", show_default=False),
    ] = None,
    max_pairwise_tv: Annotated[
        float | None,
        typer.Option("--max-pairwise-tv", help="Limit on TV between two users.", show_default=False),
    ] = None,
    max_tv_to_prior: Annotated[
        float | None,
        typer.Option(
            "--max-tv-to-prior", help="Limit on a user's TV bound to the prior.", show_default=False
        ),
    ] = None,
    max_gdp_mu: Annotated[
        float | None,
        typer.Option("--max-gdp-mu", help="Limit on pairwise Gaussian-DP mu.", show_default=False),
    ] = None,
    max_attack_accuracy: Annotated[
        float | None,
        typer.Option(
            "--max-attack-accuracy", help="Limit on the best attack's accuracy.", show_default=False
        ),
    ] = None,
    require_unidentifiable: Annotated[
        bool, typer.Option("--require-unidentifiable", help="Fail when the pooled stream is identifiable.")
    ] = False,
) -> None:
    """Attribution risk of a population: Bayes ceiling, bounds, linked uploads, attacks, policy gate.

    Exit code 1 when the policy (spec 'policy:' section and/or the --max-* flags) is violated.
    'veil audit --uploads FILE' instead attacks exported uploads without knowing any parameters.
    """
    from veil.privacy_analysis.audit.policy import Policy
    from veil.privacy_analysis.audit.spec import SpecError

    if population is not None and params:
        raise UserError("give either --population or --params, not both")
    if population is None and not params and db is None:
        if uploads is None:
            raise UserError(
                "nothing to audit: give --uploads FILE, --population FILE, --params DIR_OR_FILES or --db URL"
            )
        _refuse_population_options(ctx)
        _audit_upload_file(Path(uploads), seed, as_json)
        return
    n_uploads = _monte_carlo_uploads(uploads)
    ts = _linked(linked)
    try:
        spec = _load_population(population) if population is not None else None
        dists, prior = (spec.distributions, spec.prior) if spec is not None else (None, None)
        if params:
            dists, prior = _load_params(params)
        policy = Policy.from_mapping(spec.policy if spec is not None else None).with_overrides(
            max_bayes_attribution=max_attribution,
            max_linked_attribution=max_linked_attribution,
            linked_t=linked_at,
            max_pairwise_tv=max_pairwise_tv,
            max_tv_to_prior=max_tv_to_prior,
            max_gdp_mu=max_gdp_mu,
            max_attack_accuracy=max_attack_accuracy,
            require_unidentifiable=require_unidentifiable or None,
        )
    except (SpecError, ValueError) as exc:
        raise UserError(str(exc)) from None
    stream = _audit_db(db, dists, seed) if db is not None else None
    summary, matrix = _run(dists, prior, spec, policy, stream, n_uploads, ts, seed, attacks, as_json)
    if report is not None:
        from veil.privacy_analysis.audit.report import write_audit_report

        html_path, json_path = write_audit_report(summary, report, matrix)
        typer.echo(f"report: {html_path}\nsummary: {json_path}", err=as_json)
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        _print(summary)
    if not summary["policy"]["ok"]:
        raise SystemExit(1)  # not typer.Exit: main() runs click with standalone_mode=False


def _monte_carlo_uploads(text: str | None) -> int:
    if text is None:
        return 100
    try:
        n = int(text)
    except ValueError:
        raise UserError(
            f"--uploads {text}: an uploads file is audited on its own, not with --population, --params or "
            "--db (with them, --uploads is the number of Monte-Carlo uploads per user)"
        ) from None
    if n < 1:
        raise UserError(f"--uploads must be >= 1, got {n}")
    return n


def _refuse_population_options(ctx: typer.Context) -> None:
    own = {"uploads", "as_json", "seed"}
    given = [
        param.opts[0]
        for param in ctx.command.params
        if param.name not in own and ctx.get_parameter_source(param.name) is not ParameterSource.DEFAULT
    ]
    if given:
        raise UserError(f"{', '.join(given)}: not used by --uploads FILE, which takes only --json and --seed")


def _audit_upload_file(path: Path, seed: int, as_json: bool) -> None:
    import numpy as np

    from veil.privacy_analysis.attacks.uploads import UploadFileError, load_uploads, run_upload_attacks

    try:
        data = load_uploads(path)
    except UploadFileError as exc:
        raise UserError(str(exc)) from None
    audit = run_upload_attacks(data, np.random.default_rng(seed))
    summary = {"file": str(path), "seed": seed, **audit.to_json()}
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        _print_upload_attacks(summary)


def _linked(text: str) -> tuple[int, ...]:
    try:
        ts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(f"--linked must be comma-separated integers >= 1, got {text!r}") from None
    if not ts or min(ts) < 1:
        raise UserError(f"--linked must be comma-separated integers >= 1, got {text!r}")
    return ts


def _load_population(path: Path) -> Any:
    from veil.privacy_analysis.audit.spec import load_spec

    return load_spec(path)


def _load_params(paths: list[Path]) -> tuple[list[Any], Any]:
    from veil.client_sdk.distributions import load_distribution
    from veil.privacy_analysis.audit.spec import default_prior

    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.npz"))
            if not found:
                raise UserError(f"{path}: no device parameter files (*.npz) in this folder")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise UserError(f"{path}: no such file or folder")
    dists = []
    for file in files:
        try:
            dists.append(load_distribution(file))
        except Exception as exc:  # a corrupt or foreign file can fail in numpy, zipfile or the family
            raise UserError(f"{file}: not a device parameter file: {str(exc).splitlines()[0]}") from None
    if len(dists) < 2:
        raise UserError(f"an audit needs at least 2 users' parameter files, got {len(dists)}")
    families = {d.family for d in dists}
    shapes = {d.shape for d in dists}
    if len(families) > 1 or len(shapes) > 1:
        raise UserError(f"parameter files mix families {sorted(families)} or shapes {sorted(shapes)}")
    return dists, default_prior(dists)


def _audit_db(url: str, dists: list[Any] | None, seed: int) -> dict[str, Any]:
    from veil.cloud_service.store import StoreError, iter_uploads, make_engine, session_factory
    from veil.privacy_analysis.audit.stream import StreamAuditConfig, audit_stream
    from veil.settings import get_settings

    try:
        engine = make_engine(url, get_settings().resolved_data_dir())
        try:
            with session_factory(engine)() as session:
                stored = [(u.embedding, u.task) for u in iter_uploads(session) if u.embedding is not None]
        finally:
            engine.dispose()
    except StoreError as exc:
        raise UserError(str(exc)) from None
    try:
        return audit_stream(
            [e for e, _ in stored], [t for _, t in stored], dists, StreamAuditConfig(seed=seed)
        )
    except ValueError as exc:
        raise UserError(f"--db: {exc}") from None


def _run(
    dists: list[Any] | None,
    prior: Any,
    spec: Any,
    policy: Any,
    stream: dict[str, Any] | None,
    uploads: int,
    ts: tuple[int, ...],
    seed: int,
    attacks: bool,
    as_json: bool,
) -> tuple[dict[str, Any], Any]:
    from veil.privacy_analysis.audit import AuditConfig, run_audit
    from veil.privacy_analysis.audit.stream import stream_only_summary
    from veil.progress import NullProgress, RichProgress

    if dists is None:
        return stream_only_summary(stream or {}, policy), None
    cfg = AuditConfig(uploads_per_user=uploads, linked=ts, seed=seed, attacks=attacks, policy=policy)
    progress = RichProgress() if sys.stderr.isatty() else NullProgress()  # no redraws in CI logs
    utility = spec.utility if spec is not None else None
    result = run_audit(dists, cfg, utility=utility, prior=prior, progress=progress)
    summary = result.to_json()
    if stream is not None:
        summary["stream"] = stream
    return summary, result.pairwise_matrix


def _print(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from veil.privacy_analysis.audit.report import summary_rows

    users = summary.get("users")
    table = Table(title=f"Privacy audit ({summary.get('family') or 'stored stream'}, {users or '?'} users)")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for name, value in summary_rows(summary):
        table.add_row(name, value)
    console = Console()
    console.print(table)
    for finding in (summary.get("stream") or {}).get("findings", []):
        console.print(f"stream: {finding}")
    for violation in summary["policy"]["violations"]:
        console.print(f"[red]policy violated:[/red] {violation['message']}")


def _print_upload_attacks(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    title = (
        f"Attacks on {Path(summary['file']).name} ({summary['users']} users, {summary['uploads']} uploads, "
        f"{summary['types']} types)"
    )
    table = Table(
        title=title,
        caption=f"attacker holds the owners of {summary['train_fraction']:.0%} of every user's uploads; "
        "users: those attacked (a random subset of whole types for the costly attacks); "
        "floor: accuracy of knowing a user's type and guessing within it",
    )
    for head in ("attack", "users", "accuracy", "95% interval", "chance", "floor"):
        table.add_column(head, justify="left" if head == "attack" else "right")
    for attack in summary["attacks"]:
        lo, hi = attack["ci"]
        table.add_row(
            attack["name"],
            str(attack["details"]["users"]),
            f"{attack['accuracy']:.3f}",
            f"[{lo:.3f}, {hi:.3f}]",
            f"{attack['chance']:.3f}",
            f"{attack['details']['group_floor']:.3f}",
        )
    console = Console()
    console.print(table)
    for name, why in summary["skipped"].items():
        console.print(f"skipped {name}: {why}")
