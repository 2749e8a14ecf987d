"""Reading ``deploy/``: the Compose file, the Kubernetes manifests, the Dockerfile and what
``deploy/bootstrap.py`` writes, as plain data the tests check (no container engine runs here)."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
LOCAL = "./local/"
"""How the Compose file names bootstrap's output folder (deploy/local, outside git)."""

FLOWER_RUNTIME_PORT = 9094
"""flower-supernode's default runtime API port (``--port``), on the container's loopback."""
POSTGRES_PORT = 5432

VEIL_COMMANDS = {"veil", "flower-superlink", "flower-supernode", "flwr", "veil-health"}
"""What the Veil image runs: the project's and flwr's console scripts, and the health check."""

FOREIGN_ENV = {
    "SSL_CERT_FILE": "OpenSSL's CA bundle: Python's default TLS context (the relay's connection to the "
    "gateway, veil-health, httpx in the ClientApp) verifies against the deployment's CA",
    "POD_INDEX": "Kubernetes' downward API: the SuperNode's partition id in --node-config",
}
"""Variables of the Veil image that are not VEIL_* settings, each with the reason it is there."""

POSTGRES_ENV = {"POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD", "POSTGRES_PASSWORD_FILE", "PGDATA"}
"""The official PostgreSQL image's variables that the deployment sets."""


def load_bootstrap() -> ModuleType:
    spec = importlib.util.spec_from_file_location("veil_deploy_bootstrap", DEPLOY / "bootstrap.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def veil_env_names() -> set[str]:
    """Every variable veil's settings read (pydantic-settings: prefix + field name, upper case)."""
    from veil.settings import Settings

    prefix = Settings.model_config["env_prefix"]
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def dockerfile_args() -> dict[str, str]:
    """``ARG NAME=default`` lines of deploy/Dockerfile."""
    text = (DEPLOY / "Dockerfile").read_text()
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)\s*$", text, flags=re.MULTILINE))


def dockerfile_env() -> dict[str, str]:
    """The ``ENV`` block of deploy/Dockerfile (``NAME=value`` pairs, continuation lines joined)."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    pairs: dict[str, str] = {}
    for line in re.findall(r"^ENV\s+(.*)$", text, flags=re.MULTILINE):
        pairs.update(re.findall(r"(\w+)=(\S+)", line))
    return pairs


def read_env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs


def option(argv: list[str], flag: str) -> str | None:
    """The value after ``flag`` in ``argv`` (``None`` when absent)."""
    for i, token in enumerate(argv[:-1]):
        if token == flag:
            return argv[i + 1]
    return None


def listening_port(argv: list[str]) -> int | None:
    """The TCP port a container's main process listens on, read from its command line."""
    if not argv:
        return None
    if "postgres" in argv:  # the server itself, or a wrapper that execs it
        return POSTGRES_PORT
    port = option(argv, "--port")
    if argv[0] == "flower-supernode":
        return int(port) if port else FLOWER_RUNTIME_PORT
    return int(port) if port else None


@dataclass
class Endpoint:
    """A connection one part opens to another: ``host:port``, over TLS or not, and where it was found."""

    host: str
    port: int
    tls: bool
    source: str


def endpoint(address: str, source: str, *, tls: bool | None = None) -> Endpoint:
    """``https://host:port/...``, ``postgresql+psycopg://u:p@host:port/db`` or ``host:port``."""
    split = urlsplit(address if "://" in address else f"//{address}")
    if split.port is None:
        default = {"https": 443, "http": 80}.get(split.scheme)
        if default is None:
            raise ValueError(f"{source}: {address!r} names no port")
        port = default
    else:
        port = split.port
    secure = tls if tls is not None else split.scheme == "https" or "sslmode=verify-full" in split.query
    return Endpoint(split.hostname or "", port, secure, source)


@dataclass
class Part:
    """One container of the deployment, as Compose or Kubernetes describes it."""

    name: str
    image: str
    argv: list[str]
    env: dict[str, str]
    health_urls: list[str] = field(default_factory=list)
    # Where /certs/tls.crt and /certs/ca.crt come from (a file under bootstrap's output, or a Secret).
    tls_cert: str | None = None
    ca: str | None = None

    @property
    def is_veil(self) -> bool:
        return self.image.split(":")[0] == "veil"

    def endpoints(self) -> list[Endpoint]:
        """Connections this part opens to other parts (from flags, node config and env)."""
        from flwr.common.config import parse_config_args

        found = []
        if gateway := option(self.argv, "--gateway"):
            found.append(endpoint(gateway, f"{self.name} --gateway"))
        if superlink := option(self.argv, "--superlink"):
            # HTTPS unless --insecure (flwr 1.42); --root-certificates names the CA.
            found.append(endpoint(superlink, f"{self.name} --superlink", tls="--insecure" not in self.argv))
        if node_config := option(self.argv, "--node-config"):
            config = parse_config_args([re.sub(r"\$\(\w+\)", "0", node_config)])
            for key, value in config.items():
                if isinstance(value, str) and "://" in value:
                    found.append(endpoint(value, f"{self.name} node config {key}"))
        if url := self.env.get("VEIL_DATABASE_URL"):
            found.append(endpoint(url, f"{self.name} VEIL_DATABASE_URL"))
        return found


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _mounts(service: dict) -> dict[str, str]:
    """Container path -> source of the service's bind mounts and volumes."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        mounts[target] = source
    return mounts


def compose_parts(doc: dict, local: Path) -> list[Part]:
    """The services, with env files read from ``local`` (bootstrap's output) for ``./local/`` paths."""
    parts = []
    for name, service in doc["services"].items():
        env: dict[str, str] = {}
        for env_file in service.get("env_file", []):
            env.update(read_env_file(local_path(env_file, local)))
        env.update({k: str(v) for k, v in service.get("environment", {}).items()})
        argv = list(service.get("command", []))  # an entrypoint wrapper (postgres) execs it
        test = service.get("healthcheck", {}).get("test", [])
        mounts = _mounts(service)
        parts.append(
            Part(
                name=name,
                image=service["image"],
                argv=argv,
                env=env,
                health_urls=[t for t in test if "://" in t],
                tls_cert=mounts.get("/certs/tls.crt"),
                ca=mounts.get("/certs/ca.crt"),
            )
        )
    return parts


def local_path(path: str, local: Path) -> Path:
    """A Compose path: ``./local/x`` -> ``local/x``, anything else relative to deploy/."""
    if path.startswith(LOCAL):
        return local / path[len(LOCAL) :]
    return DEPLOY / path


def k8s_documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job")


def pod_templates(docs: list[tuple[str, dict]]) -> list[dict]:
    return [doc for _, doc in docs if doc["kind"] in WORKLOADS]


def generated_secrets(local: Path) -> dict[str, dict[str, str]]:
    """bootstrap's Kubernetes Secrets: name -> key -> value (``data`` decoded)."""
    import base64

    secrets = {}
    for doc in yaml.safe_load_all((local / "k8s-secrets.yaml").read_text()):
        values = dict(doc.get("stringData", {}))
        values.update({k: base64.b64decode(v).decode() for k, v in doc.get("data", {}).items()})
        secrets[doc["metadata"]["name"]] = values
    return secrets


def k8s_parts(workload: dict, secrets: dict[str, dict[str, str]] | None = None) -> list[Part]:
    """The containers of a workload; variables from ``secrets`` (bootstrap's) where they come from a
    Secret, else as ``<secret:NAME/KEY>``."""
    secrets = secrets or {}
    spec = workload["spec"]["template"]["spec"]
    sources = {}
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            sources[volume["name"]] = [volume["secret"]["secretName"]]
        elif "projected" in volume:
            sources[volume["name"]] = [
                s["secret"]["name"] for s in volume["projected"]["sources"] if "secret" in s
            ]
    parts = []
    for container in spec["containers"]:
        env = {}
        for source in container.get("envFrom", []):
            env.update(secrets.get(source["secretRef"]["name"], {}))
        for item in container.get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                env[item["name"]] = secrets.get(ref["name"], {}).get(
                    ref["key"], f"<secret:{ref['name']}/{ref['key']}>"
                )
            else:
                env[item["name"]] = str(item.get("value", ""))
        certs = [
            secret
            for mount in container.get("volumeMounts", [])
            if mount["mountPath"] == "/certs"
            for secret in sources.get(mount["name"], [])
        ]
        probes = [container.get(p, {}) for p in ("startupProbe", "readinessProbe", "livenessProbe")]
        urls = [t for p in probes for t in p.get("exec", {}).get("command", []) if "://" in t]
        parts.append(
            Part(
                name=f"{workload['metadata']['name']}/{container['name']}",
                image=container["image"],
                argv=[*container.get("command", []), *container.get("args", [])],
                env=env,
                health_urls=urls,
                tls_cert=next((s for s in certs if s.endswith("-tls")), None),
                ca=next((s for s in certs if s == "veil-ca"), None),
            )
        )
    return parts


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())
