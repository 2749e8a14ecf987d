"""Service commands: ``veil serve``, ``veil relay``, ``veil keys ...``, ``veil gateway ...``,
``veil codebook ...``, ``veil train personalized``.

Each command imports the service, the store and the models inside its function (lazy: start-up time,
see :mod:`veil.cli.main`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from veil.cli.errors import UserError
from veil.client_sdk.constants import TASKS

__all__ = ["register"]

keys_app = typer.Typer(no_args_is_help=True, help="API keys for cloud API consumers (stored hashed).")
gateway_app = typer.Typer(no_args_is_help=True, help="The OHTTP gateway's HPKE keys (sealed at rest).")
train_app = typer.Typer(no_args_is_help=True, help="Training jobs on the stored uploads.")
codebook_app = typer.Typer(
    no_args_is_help=True, help="The public prototype codebook phones choose from (GET /v1/codebook)."
)

Host = Annotated[str, typer.Option(help="Interface to listen on.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of tables.")]
TlsCert = Annotated[
    Path | None, typer.Option(help="PEM certificate: serve HTTPS (default VEIL_TLS_CERTFILE; unset: HTTP).")
]
TlsKey = Annotated[Path | None, typer.Option(help="PEM key of --tls-certfile (default VEIL_TLS_KEYFILE).")]


def _sessions():  # -> sessionmaker
    from veil.cloud_service.store.db import make_engine, migrate, session_factory
    from veil.settings import get_settings

    settings = get_settings()
    engine = make_engine(settings.database_url, settings.resolved_data_dir())
    migrate(engine)
    return session_factory(engine)


def _tls(certfile: Path | None, keyfile: Path | None) -> dict[str, str]:
    """uvicorn's TLS options from the flags, else ``VEIL_TLS_CERTFILE``/``VEIL_TLS_KEYFILE``: both or neither."""
    import ssl

    from veil.settings import get_settings

    settings = get_settings()
    cert, key = certfile or settings.tls_certfile, keyfile or settings.tls_keyfile
    if cert is None and key is None:
        return {}
    if cert is None or key is None:
        raise UserError(
            "TLS needs a certificate and its key: --tls-certfile and --tls-keyfile (or VEIL_TLS_*)"
        )
    try:  # a one-line error here rather than uvicorn's traceback after start-up
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise UserError(f"TLS certificate {cert} with key {key}: {exc}") from exc
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}


def serve(
    host: Host = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    model: Annotated[
        str | None, typer.Option(help="Model or checkpoint to serve (default VEIL_MODEL).")
    ] = None,
    max_batch: Annotated[int, typer.Option(help="Most requests per model batch.")] = 8,
    torch_threads: Annotated[
        int | None, typer.Option(help="CPU threads for the model (default: torch's choice).")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve /metrics on this operator port (default: no metrics).")
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="Interface of the metrics port.")] = "127.0.0.1",
    workers: Annotated[
        int, typer.Option(help="API processes sharing the port and the database (dead ones restart).")
    ] = 1,
    tls_certfile: TlsCert = None,
    tls_keyfile: TlsKey = None,
) -> None:
    """Start the API and the OHTTP gateway (data directory from VEIL_DATA_DIR; VEIL_RELAY_SECRET)."""
    import dataclasses

    import uvicorn

    from veil.cloud_service.app import create_app
    from veil.cloud_service.config import ServiceConfig
    from veil.cloud_service.engine import EngineConfig
    from veil.models.loading import quiet_transformers

    if not 0 < port < 65536:
        raise UserError(f"port must be in 1..65535, got {port}")
    if metrics_port is not None and (not 0 < metrics_port < 65536 or metrics_port == port):
        raise UserError(f"--metrics-port must be in 1..65535 and differ from --port, got {metrics_port}")
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    tls = _tls(tls_certfile, tls_keyfile)
    scheme = "https" if tls else "http"
    if workers > 1:
        if tls:
            raise UserError("TLS serves one process: use it with --workers 1 (or terminate TLS in front)")
        if metrics_port is not None:
            raise UserError("--metrics-port counts one process: use it with --workers 1")
        if torch_threads is not None and torch_threads < 1:
            raise UserError(f"--torch-threads must be >= 1, got {torch_threads}")
        from veil.cloud_service.workers import serve_workers

        typer.echo(f"veil: {workers} API workers on http://{host}:{port}", err=True)
        serve_workers(workers, host, port, model=model, max_batch=max_batch, torch_threads=torch_threads)
        return
    if torch_threads is not None:
        if torch_threads < 1:
            raise UserError(f"--torch-threads must be >= 1, got {torch_threads}")
        import torch

        torch.set_num_threads(torch_threads)
    quiet_transformers()
    config = ServiceConfig.from_settings()
    config = dataclasses.replace(
        config, model=model or config.model, engine=EngineConfig(max_batch=max_batch)
    )
    typer.echo(
        f"veil: serving {config.model} on {scheme}://{host}:{port} (data: {config.data_dir})", err=True
    )
    app = create_app(config)
    if metrics_port is None:
        uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning", **tls)
        return
    typer.echo(f"veil: metrics on http://{metrics_host}:{metrics_port}/metrics", err=True)
    _serve_with_metrics(app, (host, port), (metrics_host, metrics_port), tls)


def _serve_with_metrics(app, api: tuple[str, int], ops: tuple[str, int], tls: dict[str, str]) -> None:  # noqa: ANN001
    """The API (HTTPS with ``tls``) and the operator's metrics app (HTTP), two uvicorn servers in one
    process and event loop."""
    import asyncio

    import uvicorn

    from veil.cloud_service.metrics import create_metrics_app

    servers = [
        uvicorn.Server(
            uvicorn.Config(app, host=api[0], port=api[1], access_log=False, log_level="warning", **tls)
        ),
        uvicorn.Server(
            uvicorn.Config(
                create_metrics_app(app.state.metrics),
                host=ops[0],
                port=ops[1],
                access_log=False,
                log_level="warning",
                lifespan="off",
            )
        ),
    ]

    async def main() -> None:
        tasks = [asyncio.create_task(server.serve()) for server in servers]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for server in servers:  # one stopped (a signal, a port in use): stop the other too
            server.should_exit = True
        await asyncio.gather(*tasks)

    asyncio.run(main())


def relay(
    gateway: Annotated[str, typer.Option(help="Base URL of the gateway, e.g. http://127.0.0.1:8000.")],
    host: Host = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8080,
    hold_window_ms: Annotated[
        float, typer.Option(help="Hold requests up to this long and forward them shuffled (0: off).")
    ] = 0.0,
    max_body_kb: Annotated[int, typer.Option(help="Largest encapsulated request accepted.")] = 1024,
    min_batch: Annotated[
        int, typer.Option(help="With --hold-window-ms: release a batch once it has this many requests.")
    ] = 1,
    constant_rate: Annotated[
        float, typer.Option(help="Send to the gateway at this constant rate per second instead (0: off).")
    ] = 0.0,
    rate_per_s: Annotated[
        float, typer.Option(help="Requests per second per client address, after the burst (0: no limit).")
    ] = 20.0,
    rate_burst: Annotated[int, typer.Option(help="Requests a client address may send at once.")] = 100,
    max_pending: Annotated[int, typer.Option(help="Most requests waiting in the relay (503 beyond).")] = 4096,
    max_concurrency: Annotated[int, typer.Option(help="Most requests in flight to the gateway.")] = 128,
    tls_certfile: TlsCert = None,
    tls_keyfile: TlsKey = None,
) -> None:
    """Start an Oblivious HTTP relay: forwards encapsulated bodies only, strips every client header.

    The secret shared with the gateway comes from VEIL_RELAY_SECRET (never from the command line,
    which other local users can read); production refuses to start without it. An https:// gateway
    is verified against the system's CAs, or those in the file SSL_CERT_FILE names (OpenSSL's variable).
    """
    from veil.cloud_service.relay import RelayConfig, run_relay
    from veil.settings import get_settings

    if not gateway.startswith(("http://", "https://")):
        raise UserError(f"--gateway must be an http(s) URL, got {gateway!r}")
    if hold_window_ms < 0:
        raise UserError(f"--hold-window-ms must be >= 0, got {hold_window_ms}")
    tls = _tls(tls_certfile, tls_keyfile)
    settings = get_settings()
    secret = None if settings.relay_secret is None else settings.relay_secret.get_secret_value()
    if secret is None and settings.environment == "production":
        raise UserError("production needs VEIL_RELAY_SECRET (>= 32 bytes, the gateway's too)")
    try:
        config = RelayConfig(
            gateway_url=gateway.rstrip("/"),
            hold_window_s=hold_window_ms / 1000.0,
            max_body_bytes=max_body_kb * 1024,
            relay_secret=secret,
            rate_per_s=rate_per_s,
            rate_burst=rate_burst,
            max_pending=max_pending,
            max_concurrency=max_concurrency,
            min_batch=min_batch,
            constant_rate_per_s=constant_rate,
        )
    except ValueError as exc:
        raise UserError(f"veil relay: {exc}") from exc
    if secret is None:
        typer.echo(
            "veil: VEIL_RELAY_SECRET is unset: a gateway that has one will refuse this relay", err=True
        )
    scheme = "https" if tls else "http"
    typer.echo(f"veil: relay on {scheme}://{host}:{port} -> {config.gateway_url}", err=True)
    run_relay(config, host, port, **tls)


@keys_app.command("create")
def keys_create(
    label: Annotated[str, typer.Option(help="What the key is for (e.g. the consuming service).")] = "default",
    operator: Annotated[
        bool,
        typer.Option(
            "--operator",
            help="The key may also publish the codebook (PUT /v1/codebook), e.g. from a federated server.",
        ),
    ] = False,
) -> None:
    """Create an API key; the key is printed once, alone on the last line."""
    from veil.cloud_service.store.repository import create_api_key

    if not label.strip() or len(label) > 200:
        raise UserError("--label must be 1..200 characters")
    with _sessions()() as session:
        key = create_api_key(session, label.strip(), operator=operator)
    kind = "operator key" if operator else "key"
    typer.echo(f"Store this {kind} now; only its hash is kept:", err=True)
    typer.echo(key)


@keys_app.command("list")
def keys_list(as_json: AsJson = False) -> None:
    """List API keys (prefix, label, day created, revoked, operator); never the keys themselves."""
    from dataclasses import asdict

    from veil.cloud_service.store.repository import list_api_keys

    with _sessions()() as session:
        keys = list_api_keys(session)
    rows = [{k: str(v) if not isinstance(v, bool) else v for k, v in asdict(info).items()} for info in keys]
    if as_json:
        typer.echo(json.dumps({"keys": rows}))
        return
    for row in rows:
        typer.echo("  ".join(f"{k}={v}" for k, v in row.items()))


@keys_app.command("revoke")
def keys_revoke(
    prefix: Annotated[str, typer.Argument(help="The key's prefix as shown by 'veil keys list'.")],
) -> None:
    """Revoke an API key by its prefix."""
    from veil.cloud_service.store.repository import revoke_api_key

    with _sessions()() as session:
        if not revoke_api_key(session, prefix):
            raise UserError(f"no API key with prefix {prefix!r}")
    typer.echo(f"revoked {prefix}")


def _keyring(sessions=None):  # -> Keyring
    from veil.cloud_service.config import ServiceConfig
    from veil.cloud_service.gateway_setup import build_keyring
    from veil.cloud_service.keyring import KeyringError

    try:
        return build_keyring(ServiceConfig.from_settings(), sessions or _sessions())
    except KeyringError as exc:
        raise UserError(str(exc)) from None


@gateway_app.command("list")
def gateway_list(as_json: AsJson = False) -> None:
    """The published key configurations, newest first (key id, KEM, KDF and AEAD ids)."""
    configs = [
        {"key_id": c.key_id, "kem_id": c.kem_id, "symmetric": [list(a) for a in c.symmetric_algorithms]}
        for c in _keyring().key_configs()
    ]
    if as_json:
        typer.echo(json.dumps({"keys": configs}))
        return
    for c in configs:
        typer.echo(f"key_id={c['key_id']}  kem=0x{c['kem_id']:04x}  symmetric={c['symmetric']}")


@gateway_app.command("public-key")
def gateway_public_key(as_json: AsJson = False) -> None:
    """The gateway's signing public key (base64 of the raw 32-byte Ed25519 key), to ship with apps."""
    from veil.cloud_service.gateway_signing import KeyConfigSigner, decode_signing_seed, signing_key_for
    from veil.settings import get_settings

    settings = get_settings()
    try:
        secret = settings.gateway_signing_key
        seed = decode_signing_seed(secret.get_secret_value()) if secret is not None else None
        signer = KeyConfigSigner(signing_key_for(seed, settings.environment, settings.resolved_data_dir()))
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps({"public_key": signer.public_key_b64, "key_id": signer.key_id}))
        return
    typer.echo(signer.public_key_b64)


@gateway_app.command("rotate")
def gateway_rotate() -> None:
    """Make a new current gateway key; older keys keep working until retired."""
    config = _keyring().rotate()
    typer.echo(f"new current key id {config.key_id}; running servers pick it up within 30 s")


@gateway_app.command("retire")
def gateway_retire(
    key_id: Annotated[
        int | None, typer.Option(help="Retire this key now (default: keys past the grace period).")
    ] = None,
    revived: Annotated[
        bool, typer.Option("--revived", help="Delete records of retired keys that came back (backups).")
    ] = False,
) -> None:
    """Remove rotated-out gateway keys and the replay digests recorded under them."""
    from veil.cloud_service.gateway_setup import DatabaseKeyStorage, DatabaseReplayStore
    from veil.cloud_service.keyring import purge_revived

    sessions = _sessions()
    if revived:
        purged = purge_revived(DatabaseKeyStorage(sessions))
        typer.echo(f"deleted revived records (key id, epoch): {purged or 'none'}")
    keyring = _keyring(sessions)
    gone = keyring.retire(key_id)
    forgotten = DatabaseReplayStore(sessions).forget(keyring.retired_epochs())
    typer.echo(f"retired key ids: {gone or 'none'}; {forgotten} replay digests dropped")


@train_app.command("personalized")
def train_personalized(
    task: Annotated[str, typer.Option(help="next_word | classification")] = "next_word",
    base: Annotated[
        str | None, typer.Option(help="Starting model or checkpoint (default VEIL_MODEL).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Checkpoint folder (default: data dir/checkpoints).")
    ] = None,
    epochs: Annotated[int, typer.Option(help="Passes over the uploads.")] = 3,
    batch_size: Annotated[
        int, typer.Option(help="Rows per step (expected size with Poisson sampling).")
    ] = 32,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-3,
    dp: Annotated[bool, typer.Option("--dp/--no-dp", help="DP-SGD through Opacus.")] = False,
    lora: Annotated[bool, typer.Option("--lora/--full", help="LoRA adapters or full fine-tuning.")] = True,
    freeze_embeddings: Annotated[
        bool, typer.Option(help="Full fine-tuning without the token embedding matrix (fast under DP).")
    ] = False,
    noise_multiplier: Annotated[float | None, typer.Option(help="DP noise multiplier.")] = None,
    target_epsilon: Annotated[float | None, typer.Option(help="DP: reach this epsilon instead.")] = None,
    delta: Annotated[float | None, typer.Option(help="DP delta (default: 1/n^1.1).")] = None,
    max_grad_norm: Annotated[float, typer.Option(help="DP per-example clipping norm.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    codebook: Annotated[
        bool,
        typer.Option(
            "--codebook/--no-codebook",
            help="Decode uploads to the published codebook's prototypes, train them too, publish the result.",
        ),
    ] = False,
    as_json: AsJson = False,
) -> None:
    """IDfree-PL stage 3 on the stored uploads, optionally with DP-SGD; reports (epsilon, delta)."""
    from dataclasses import asdict

    from veil.cloud_service.jobs.personalized import PersonalizedTrainingConfig
    from veil.cloud_service.jobs.runner import run_training_job
    from veil.models.dp_training import DPConfig
    from veil.models.loading import quiet_transformers
    from veil.settings import get_settings

    if task not in TASKS:
        raise UserError(f"--task must be next_word or classification, got {task!r}")
    if dp and noise_multiplier is None and target_epsilon is None:
        noise_multiplier = 1.0
    dp_cfg = (
        DPConfig(
            noise_multiplier=None if target_epsilon is not None else noise_multiplier,
            target_epsilon=target_epsilon,
            delta=delta,
            max_grad_norm=max_grad_norm,
        )
        if dp
        else None
    )
    from veil.models.training import LoraSettings

    cfg = PersonalizedTrainingConfig(
        task=task,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        dp=dp_cfg,
        seed=seed,
        lora=LoraSettings() if lora and not freeze_embeddings else None,
        freeze_embeddings=freeze_embeddings,
        codebook=codebook,
    )
    quiet_transformers()
    settings = get_settings()
    report = run_training_job(
        _sessions(),
        base or settings.model,
        out,
        cfg,
        settings.resolved_data_dir(),
        show_progress=sys.stderr.isatty() or not as_json,
    )
    if as_json:
        typer.echo(json.dumps(report.to_json()))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Personalised fine-tuning on stored uploads ({task})")
    table.add_column("field")
    table.add_column("value", justify="right")
    for key, value in asdict(report).items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)


def _codebooks():  # -> CodebookStore
    from veil.cloud_service.codebooks import CodebookStore
    from veil.settings import get_settings

    return CodebookStore(get_settings().resolved_data_dir())


def _codebook_json(book) -> dict:  # noqa: ANN001 - Codebook, imported lazily
    return {
        "version": book.version,
        "size": book.size,
        "k_min": book.k_min,
        "usable": int(book.active.sum()),
        "active": [bool(a) for a in book.active],
        "embedding_shape": list(book.shape),
    }


def _echo_codebook(book, path: Path, as_json: bool) -> None:  # noqa: ANN001
    info = _codebook_json(book)
    if as_json:
        typer.echo(json.dumps({**info, "path": str(path)}))
    else:
        typer.echo(
            f"codebook {info['version']}: {info['usable']} of {info['size']} prototypes usable, "
            f"k_min {info['k_min']}, embedding shape {info['embedding_shape']} ({path})"
        )


@codebook_app.command("init")
def codebook_init(
    size: Annotated[int, typer.Option(help="Number of prototypes K (a few times the expected groups).")],
    k_min: Annotated[int, typer.Option(help="Minimum phones per usable prototype.")],
    seed: Annotated[int, typer.Option(help="Random seed of the prototypes.")] = 0,
    scale: Annotated[float, typer.Option(help="Std of the random Gaussian prototypes.")] = 1.0,
    model: Annotated[
        str | None, typer.Option(help="Served model whose embedding shape to use (default VEIL_MODEL).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a published codebook.")] = False,
    as_json: AsJson = False,
) -> None:
    """Publish random Gaussian prototypes of the served model's embedding shape (phones re-choose)."""
    import dataclasses

    from veil.cloud_service.app import load_served_model
    from veil.cloud_service.codebooks import init_codebook
    from veil.cloud_service.config import ServiceConfig
    from veil.models.loading import quiet_transformers

    store = _codebooks()
    if store.current() is not None and not overwrite:
        raise UserError(f"{store.path} exists; pass --overwrite to replace it (phones must choose again)")
    quiet_transformers()
    config = ServiceConfig.from_settings()
    config = dataclasses.replace(config, model=model or config.model)
    shape = tuple(load_served_model(config)[0].embedding_shape)
    book = store.publish(init_codebook(size, k_min, shape, seed, scale))
    _echo_codebook(book, store.path, as_json)


@codebook_app.command("retire")
def codebook_retire(
    counts: Annotated[
        Path, typer.Option(help="JSON file: a list of K counts of phones per prototype (an aggregate).")
    ],
    as_json: AsJson = False,
) -> None:
    """Retire prototypes shared by fewer than k_min phones (one round of the rule; phones re-choose)."""
    from veil.cloud_service.codebooks import retire_by_counts

    store = _codebooks()
    book = store.current()
    if book is None:
        raise UserError(f"no codebook is published in {store.path.parent} (veil codebook init)")
    try:
        values = json.loads(counts.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"--counts {counts}: {exc}") from exc
    if not isinstance(values, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    ):
        raise UserError(f"--counts {counts}: must be a JSON list of integers")
    new = retire_by_counts(book, values)
    if new.version != book.version:
        new = store.publish(new)
    _echo_codebook(new, store.path, as_json)


@codebook_app.command("show")
def codebook_show(as_json: AsJson = False) -> None:
    """The published codebook's version, size, usable prototypes and k_min."""
    store = _codebooks()
    book = store.current()
    if book is None:
        raise UserError(f"no codebook is published in {store.path.parent} (veil codebook init)")
    _echo_codebook(book, store.path, as_json)


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(relay)
    app.add_typer(keys_app, name="keys")
    app.add_typer(gateway_app, name="gateway")
    app.add_typer(train_app, name="train")
    app.add_typer(codebook_app, name="codebook")
