"""The deployment files agree with each other and with the code they run: settings, flags, ports,
secrets, certificates and the image."""

from __future__ import annotations

import argparse
from pathlib import Path

import click
import pytest
import typer
import yaml
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from deploy_files import (
    DEPLOY,
    FOREIGN_ENV,
    POSTGRES_ENV,
    ROOT,
    VEIL_COMMANDS,
    Part,
    compose_parts,
    dockerfile_args,
    dockerfile_env,
    endpoint,
    generated_secrets,
    k8s_parts,
    labels_match,
    listening_port,
    local_path,
    pod_templates,
    project_version,
    veil_env_names,
)


def unknown_env(part: Part, settings: set[str]) -> list[str]:
    """Variables of ``part`` that nothing in its image reads."""
    allowed = set(FOREIGN_ENV) | settings if part.is_veil else POSTGRES_ENV
    return sorted(name for name in part.env if name not in allowed)


def all_parts(compose_doc: dict, k8s_docs: list, local: Path) -> list[Part]:
    secrets = generated_secrets(local)
    k8s = [p for w in pod_templates(k8s_docs) for p in k8s_parts(w, secrets)]
    return compose_parts(compose_doc, local) + k8s


def test_every_variable_is_one_its_program_reads(compose_doc: dict, k8s_docs: list, local: Path) -> None:
    settings = veil_env_names()
    parts = all_parts(compose_doc, k8s_docs, local)
    assert {p.name for p in parts if p.is_veil} >= {"api", "relay", "superlink", "api/api", "relay/relay"}
    assert {p.name: unknown_env(p, settings) for p in parts if unknown_env(p, settings)} == {}
    for name in ("VEIL_DATABASE_URL", "VEIL_GATEWAY_KEK", "VEIL_RELAY_SECRET", "VEIL_TLS_CERTFILE"):
        assert name in settings
    typo = Part("api", "veil:0.1.0", [], {"VEIL_DATABSE_URL": "x", "SSL_CERT_FILE": "y"})
    assert unknown_env(typo, settings) == ["VEIL_DATABSE_URL"]


def test_api_gets_every_production_secret_and_they_pass_veils_checks(
    compose_doc: dict, local: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from veil.cloud_service.config import ServiceConfig

    api = next(p for p in compose_parts(compose_doc, local) if p.name == "api")
    assert api.env["VEIL_ENVIRONMENT"] == "production"
    for name, value in api.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("VEIL_DATA_DIR", str(local / "data"))
    config = ServiceConfig.from_settings()  # raises on a missing or malformed production secret
    assert len(config.gateway_kek) == 32 and len(config.gateway_signing_key) == 32
    relay = next(p for p in compose_parts(compose_doc, local) if p.name == "relay")
    assert relay.env["VEIL_RELAY_SECRET"] == api.env["VEIL_RELAY_SECRET"]
    assert not {"VEIL_GATEWAY_KEK", "VEIL_GATEWAY_SIGNING_KEY", "VEIL_DATABASE_URL"} & set(relay.env)


def test_database_url_carries_the_postgres_password_and_verifies_the_server(local: Path) -> None:
    from sqlalchemy.engine import make_url

    url = make_url((local / "api.env").read_text().split("VEIL_DATABASE_URL=")[1].strip())
    assert url.password == (local / "postgres_password").read_text()
    assert (url.username, url.database, url.host, url.port) == ("veil", "veil", "postgres", 5432)
    assert url.query["sslmode"] == "verify-full" and url.query["sslrootcert"] == "/certs/ca.crt"


def _parse_veil(argv: list[str]) -> None:
    from veil.cli.main import app

    group = typer.main.get_command(app)
    ctx = group.make_context("veil", [argv[1]], resilient_parsing=True)
    command = group.get_command(ctx, argv[1])
    assert command is not None, f"no command veil {argv[1]}"
    command.make_context(argv[1], argv[2:], parent=ctx)  # raises on an unknown option or a bad value


def _parse_flower(argv: list[str]) -> None:
    # flwr pins <1.43 in pyproject.toml; these builders are what the console scripts parse with.
    from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink
    from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

    parser: argparse.ArgumentParser = {
        "flower-superlink": _parse_args_run_superlink,
        "flower-supernode": _parse_args_run_supernode,
    }[argv[0]]()
    flags = [t for t in argv[1:] if t.startswith("--")]
    unknown = [f for f in flags if f not in parser._option_string_actions]  # no abbreviations either
    assert not unknown, f"{argv[0]} has no {unknown}"
    try:
        parser.parse_args(argv[1:])
    except SystemExit as exc:
        raise AssertionError(f"{argv[0]} refuses {argv[1:]}") from exc


def _parse_flwr(argv: list[str]) -> None:
    from flwr.cli.app import app

    group = typer.main.get_command(app)
    ctx = group.make_context("flwr", [argv[1]], resilient_parsing=True)
    group.get_command(ctx, argv[1]).make_context(argv[1], argv[2:], parent=ctx)


PARSERS = {"veil": _parse_veil, "flower-superlink": _parse_flower, "flower-supernode": _parse_flower}
PARSERS["flwr"] = _parse_flwr


def test_every_command_line_parses_with_the_installed_programs(
    compose_doc: dict, k8s_docs: list, local: Path
) -> None:
    checked = set()
    for part in all_parts(compose_doc, k8s_docs, local):
        if not part.is_veil:
            continue
        assert part.argv[0] in VEIL_COMMANDS, part.name
        PARSERS[part.argv[0]](part.argv)
        checked.add(part.argv[0])
    assert checked == set(PARSERS)
    with pytest.raises((click.UsageError, AssertionError)):
        _parse_veil(["veil", "serve", "--tls-cert", "/certs/tls.crt"])
    with pytest.raises(AssertionError, match="--ssl-cert"):
        _parse_flower(["flower-superlink", "--ssl-cert", "/certs/tls.crt"])


def _compose_listeners(compose_doc: dict, local: Path) -> dict[str, int]:
    return {p.name: port for p in compose_parts(compose_doc, local) if (port := listening_port(p.argv))}


def test_compose_ports_health_checks_and_links_agree(compose_doc: dict, local: Path) -> None:
    listeners = _compose_listeners(compose_doc, local)
    assert listeners["api"] == 8443 and listeners["postgres"] == 5432
    links = []
    for part in compose_parts(compose_doc, local):
        for url in part.health_urls:  # a health check asks the part itself, on its own port
            target = endpoint(url, f"{part.name} health check")
            assert target.host in ("localhost", "127.0.0.1") and target.port == listeners[part.name], url
        for published in compose_doc["services"][part.name].get("ports", []):
            assert int(published.split(":")[-1]) == listeners[part.name], (part.name, published)
        for link in part.endpoints():
            assert link.host in listeners, link
            assert link.port == listeners[link.host], link
            links.append((part.name, link.host))
    assert {
        ("relay", "api"),
        ("api", "postgres"),
        ("supernode-1", "superlink"),
        ("supernode-2", "relay"),
    } <= set(links)


def _verify(cert: bytes, ca: bytes, host: str) -> None:
    store = Store([x509.load_pem_x509_certificate(ca)])
    verifier = PolicyBuilder().store(store).build_server_verifier(x509.DNSName(host))
    verifier.verify(x509.load_pem_x509_certificate(cert), [])


def test_compose_tls_links_verify_against_the_ca(compose_doc: dict, local: Path) -> None:
    parts = {p.name: p for p in compose_parts(compose_doc, local)}
    checked = 0
    for part in parts.values():
        for link in part.endpoints():
            if not link.tls:
                continue
            # /certs/ca.crt: what SSL_CERT_FILE, --root-certificates and sslrootcert name
            assert part.ca is not None, f"{part.name} opens TLS to {link.host} but mounts no CA"
            ca = local_path(part.ca, local).read_bytes()
            target = parts[link.host]
            assert target.tls_cert is not None, f"{link.host} presents no certificate to {part.name}"
            _verify(local_path(target.tls_cert, local).read_bytes(), ca, link.host)
            checked += 1
        for url in part.health_urls:
            if url.startswith("https://"):
                _verify(
                    local_path(part.tls_cert, local).read_bytes(),
                    local_path(part.ca, local).read_bytes(),
                    "localhost",
                )
    assert checked >= 5
    with pytest.raises(VerificationError):  # the relay's certificate does not name the API
        _verify(
            (local / "certs" / "relay.crt").read_bytes(), (local / "certs" / "ca.crt").read_bytes(), "api"
        )


def test_compose_references_only_defined_secrets_and_existing_files(compose_doc: dict, local: Path) -> None:
    defined = set(compose_doc.get("secrets", {}))
    for name, service in compose_doc["services"].items():
        assert set(service.get("secrets", [])) <= defined, name
        for env_file in service.get("env_file", []):
            assert local_path(env_file, local).is_file(), (name, env_file)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert local_path(source, local).is_file(), (name, source)
            else:
                assert source in compose_doc["volumes"], (name, source)
    for secret in compose_doc["secrets"].values():
        assert local_path(secret["file"], local).is_file()
    assert (DEPLOY / compose_doc["services"]["api"]["build"]["dockerfile"].removeprefix("deploy/")).is_file()


def test_images_match_the_dockerfile_and_the_project_version(
    compose_doc: dict, k8s_docs: list, local: Path
) -> None:
    version = project_version()
    assert dockerfile_args()["VEIL_VERSION"] == version
    build = compose_doc["services"]["api"]["build"]
    assert build["args"]["VEIL_VERSION"] == version
    assert (Path(DEPLOY, build["context"]).resolve(), build["dockerfile"]) == (ROOT, "deploy/Dockerfile")
    images = {p.image for p in all_parts(compose_doc, k8s_docs, local)}
    assert images == {f"veil:{version}", compose_doc["services"]["postgres"]["image"]}


def test_the_image_turns_flowers_telemetry_and_update_check_off() -> None:
    import inspect

    from flwr.supercore import constant, telemetry

    env = dockerfile_env()
    assert env["FLWR_TELEMETRY_ENABLED"] == "0" and 'getenv("FLWR_TELEMETRY_ENABLED"' in inspect.getsource(
        telemetry
    )
    assert env[constant.FLWR_DISABLE_UPDATE_CHECK] == "1"
    assert env["VEIL_DATA_DIR"] == "/var/lib/veil"


def _k8s_services(k8s_docs: list) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for _, d in k8s_docs if d["kind"] == "Service"}


def _container_port(workload: dict, target: int | str) -> int:
    for container in workload["spec"]["template"]["spec"]["containers"]:
        for port in container.get("ports", []):
            if target in (port["containerPort"], port.get("name")):
                return port["containerPort"]
    raise AssertionError(f"{workload['metadata']['name']} has no port {target!r}")


def _selected(service: dict, workloads: list[dict]) -> list[dict]:
    selector = service["spec"].get("selector", {})
    return [w for w in workloads if labels_match(selector, w["spec"]["template"]["metadata"]["labels"])]


def test_kubernetes_services_probes_and_links_agree(k8s_docs: list, local: Path) -> None:
    secrets = generated_secrets(local)
    workloads = pod_templates(k8s_docs)
    services = _k8s_services(k8s_docs)
    for workload in workloads:  # a workload's selector picks its own pods
        assert labels_match(
            workload["spec"]["selector"]["matchLabels"], workload["spec"]["template"]["metadata"]["labels"]
        )
    routes: dict[tuple[str, int], int] = {}  # (service, port) -> the port the selected pod listens on
    for name, service in services.items():
        (workload,) = _selected(service, workloads)
        for port in service["spec"].get("ports", []):
            target = _container_port(workload, port.get("targetPort", port["port"]))
            (part,) = k8s_parts(workload)
            assert target == listening_port(part.argv), (name, port)
            routes[(name, port["port"])] = target
    for workload in workloads:
        for part, container in zip(
            k8s_parts(workload, secrets), workload["spec"]["template"]["spec"]["containers"], strict=True
        ):
            own = listening_port(part.argv)
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                spec = container.get(probe)
                if spec is None:
                    continue
                if "httpGet" in spec:
                    assert spec["httpGet"]["path"] == "/health", part.name
                    assert _container_port(workload, spec["httpGet"]["port"]) == own, (part.name, probe)
                    assert spec["httpGet"]["scheme"] == "HTTPS", part.name
            for url in part.health_urls:
                assert endpoint(url, part.name).port == own, url
            for link in part.endpoints():
                assert (link.host, link.port) in routes, link
            assert container.get("readinessProbe") and container.get("livenessProbe"), part.name
    assert {("api", 8443), ("relay", 443), ("postgres", 5432), ("superlink", 9093)} <= set(routes)


def test_kubernetes_references_only_generated_secrets(k8s_docs: list, local: Path) -> None:
    generated = {
        d["metadata"]["name"]: d for d in yaml.safe_load_all((local / "k8s-secrets.yaml").read_text())
    }
    namespaces = {d["metadata"]["name"] for _, d in k8s_docs if d["kind"] == "Namespace"}
    assert {d["metadata"]["namespace"] for d in generated.values()} == namespaces
    assert {d["metadata"]["namespace"] for _, d in k8s_docs if d["kind"] != "Namespace"} == namespaces

    def keys(name: str) -> set[str]:
        assert name in generated, f"Secret {name} is not generated by deploy/bootstrap.py"
        return set(generated[name].get("stringData", {})) | set(generated[name].get("data", {}))

    refs = 0
    for workload in pod_templates(k8s_docs):
        spec = workload["spec"]["template"]["spec"]
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                assert keys(source["secretRef"]["name"]) <= veil_env_names() | FOREIGN_ENV.keys()
                refs += 1
            for item in container.get("env", []):
                if ref := item.get("valueFrom", {}).get("secretKeyRef"):
                    assert ref["key"] in keys(ref["name"]), ref
                    refs += 1
        for volume in spec.get("volumes", []):
            sources = [volume] if "secret" in volume else volume.get("projected", {}).get("sources", [])
            for source in sources:
                secret = source["secret"]
                name = secret.get("secretName") or secret["name"]
                assert {i["key"] for i in secret.get("items", [])} <= keys(name), name
                refs += 1
    assert refs >= 8


def test_kubernetes_tls_secrets_verify_for_the_names_clients_use(k8s_docs: list, local: Path) -> None:
    secrets = generated_secrets(local)
    presenter = {}  # Service name -> the TLS Secret its pods present
    for workload in pod_templates(k8s_docs):
        for part in k8s_parts(workload, secrets):
            for service in _selected_services(k8s_docs, workload):
                presenter[service] = part.tls_cert
    links = []
    for workload in pod_templates(k8s_docs):
        for part in k8s_parts(workload, secrets):
            for link in part.endpoints():
                assert link.tls, link
                assert part.ca == "veil-ca", f"{part.name} opens TLS to {link.host} but mounts no CA"
                assert presenter[link.host] is not None, f"{link.host} presents no certificate"
                cert = secrets[presenter[link.host]]["tls.crt"].encode()
                _verify(cert, secrets["veil-ca"]["ca.crt"].encode(), link.host)
                links.append((workload["metadata"]["name"], link.host))
    assert {("relay", "api"), ("api", "postgres"), ("supernode", "superlink"), ("supernode", "relay")} <= set(
        links
    )


def _selected_services(k8s_docs: list, workload: dict) -> list[str]:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return [
        n for n, s in _k8s_services(k8s_docs).items() if labels_match(s["spec"].get("selector", {}), labels)
    ]


def test_flower_cli_configurations_point_at_the_superlink(compose_doc: dict, local: Path) -> None:
    import tomllib

    from flwr.cli.flower_config import parse_superlink_connection

    listeners = _compose_listeners(compose_doc, local)
    config = tomllib.loads((DEPLOY / "flwr" / "config.toml").read_text())["superlink"]
    inside = parse_superlink_connection(config["veil-compose"], "veil-compose")  # validates like flwr
    host, port = inside.address.rsplit(":", 1)
    assert listeners[host] == int(port)
    flwr_run = compose_doc["services"]["flwr-run"]
    assert f"./local/certs/ca.crt:{inside.root_certificates}:ro" in flwr_run["volumes"]
    assert flwr_run["command"][:4] == ["flwr", "run", ".", config["default"]]
    config = tomllib.loads((local / "flwr" / "config.toml").read_text())["superlink"]
    host_side = parse_superlink_connection(config[config["default"]], config["default"])
    assert host_side.address == f"localhost:{listeners['superlink']}"
    assert (
        f"{listeners['superlink']}:{listeners['superlink']}" in compose_doc["services"]["superlink"]["ports"]
    )
    assert Path(host_side.root_certificates) == (local / "certs" / "ca.crt").resolve()
