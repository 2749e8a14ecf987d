"""Make what a Veil deployment needs but must not keep in git: a private CA, one TLS certificate per
service, the service secrets, and the same as Kubernetes Secrets.

    python deploy/bootstrap.py                       # writes deploy/local/ (mode 0700)
    python deploy/bootstrap.py --san relay=relay.example.org --san superlink=fl.example.org

It writes, under ``--out``:

* ``certs/ca.crt`` and ``certs/ca.key`` (the development CA; keep the key off the servers), and
  ``certs/<service>.crt`` / ``.key`` for ``api``, ``relay``, ``superlink`` and ``postgres``, each valid
  for the service's name as Compose and Kubernetes resolve it (``api``, ``api.veil``, ``api.veil.svc``,
  ``api.veil.svc.cluster.local``), ``localhost``, ``127.0.0.1``, ``::1`` and every ``--san`` given;
* ``api.env`` (``VEIL_GATEWAY_KEK``, ``VEIL_GATEWAY_SIGNING_KEY``, ``VEIL_RELAY_SECRET``,
  ``VEIL_DATABASE_URL``, ``VEIL_FLEET_API_KEY``), ``relay.env`` (``VEIL_RELAY_SECRET`` only),
  ``superlink.env`` (``VEIL_FLEET_API_KEY`` only: the operator key the fleet's ServerApp publishes
  codebooks with, which the API accepts) and ``postgres_password``;
* ``k8s-secrets.yaml``: the same values as the Secrets the manifests in ``deploy/k8s`` mount;
* ``flwr/config.toml``: the Flower CLI's connection ``veil-local`` to the SuperLink's published port
  (``FLWR_HOME=deploy/local/flwr flwr run . veil-local``), and ``flwr/fleet.toml``: the run config of
  a fleet on this deployment's API (``cloud = "deployed"``, its URL and the gateway's signing public
  key the phones pin): ``flwr run . veil-local --run-config deploy/local/flwr/fleet.toml``.

The folder is mode 0700. Files that containers read through bind mounts (certificates, keys, the
database password) are 0644 inside it, because the container's user is not the host's; nobody else on
the host can reach them through the folder. An existing folder is never overwritten (rotating a
secret is a decision: pass ``--force``). Needs only ``cryptography``.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import ipaddress
import json
import os
import secrets
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SUPERLINK_PORT = 9093
"""The SuperLink's port in deploy/compose.yaml, published on the host."""

SERVICES = ("api", "relay", "superlink", "postgres")
"""Services that present a certificate; SuperNodes and the relay's upstream only verify (``ca.crt``)."""

API_ENV = (
    "VEIL_GATEWAY_KEK", "VEIL_GATEWAY_SIGNING_KEY", "VEIL_RELAY_SECRET", "VEIL_DATABASE_URL",
    "VEIL_FLEET_API_KEY",
)  # fmt: skip
"""What ``api.env`` and the ``veil-api`` Secret hold."""

NAMESPACE = "veil"
DATABASE = "veil"
DATABASE_USER = "veil"
SUPERNODES = 2
"""SuperNodes deploy/compose.yaml and deploy/k8s/supernode.yaml run."""
API_URL = "https://api:8443"
"""The API as the SuperLink's ServerApp reaches it (Compose and Kubernetes alike)."""
API_KEY_PREFIX = "veil_sk_"
"""What every Veil API key starts with (``veil.cloud_service.store.keys``)."""
CA_MOUNT = "/certs/ca.crt"
"""Where every container finds the CA (Compose bind mount, Kubernetes projected volume)."""


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Veil deployment"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_ca(days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Veil development CA"))
        .issuer_name(_name("Veil development CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def service_names(service: str, namespace: str, extra: list[str]) -> list[str]:
    """The DNS names a service answers to: Compose's service name, Kubernetes' forms, loopback."""
    svc = f"{service}.{namespace}.svc"
    return [service, f"{service}.{namespace}", svc, f"{svc}.cluster.local", "localhost", *extra]


def make_leaf(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, names: list[str], days: int
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A server certificate for ``names`` (DNS names or IP literals) plus 127.0.0.1 and ::1."""
    key = _key()
    now = dt.datetime.now(dt.UTC)
    alt: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    alt += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def make_secrets(database_url: str | None = None) -> dict[str, str]:
    """Fresh service secrets in the formats ``veil serve`` and ``veil relay`` accept; ``database_url``
    replaces the deployment's own PostgreSQL by an external one."""
    password = secrets.token_hex(24)  # hex: safe inside a URL without escaping
    values = {
        "VEIL_GATEWAY_KEK": base64.b64encode(secrets.token_bytes(32)).decode(),
        "VEIL_GATEWAY_SIGNING_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "VEIL_RELAY_SECRET": secrets.token_urlsafe(32),
        "VEIL_FLEET_API_KEY": API_KEY_PREFIX + secrets.token_urlsafe(32),
        "POSTGRES_PASSWORD": password,
        # verify-full: the server's certificate must chain to the CA and name the host "postgres".
        "VEIL_DATABASE_URL": (
            f"postgresql+psycopg://{DATABASE_USER}:{password}@postgres:5432/{DATABASE}"
            f"?sslmode=verify-full&sslrootcert={CA_MOUNT}"
        ),
    }
    if database_url is not None:
        if not database_url.startswith("postgresql"):
            raise ValueError(
                f"--database-url must be a postgresql URL, got scheme {database_url.split(':')[0]!r}"
            )
        values["VEIL_DATABASE_URL"] = database_url
    return values


def signing_public_key(values: dict[str, str]) -> str:
    """Base64 of the raw Ed25519 public key of ``VEIL_GATEWAY_SIGNING_KEY`` (what ``veil gateway
    public-key`` prints and phones pin)."""
    seed = base64.b64decode(values["VEIL_GATEWAY_SIGNING_KEY"])
    public = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def fleet_run_config(values: dict[str, str]) -> str:
    """The Flower run config of a fleet on this deployment's API (TOML)."""
    lines = [
        "# Made by deploy/bootstrap.py: flwr run . <connection> --run-config <this file>",
        'cloud = "deployed"',
        f"nodes = {SUPERNODES}  # the SuperNodes of compose.yaml and the k8s StatefulSet's replicas",
        f"api-url = {json.dumps(API_URL)}",
        f"gateway-key = {json.dumps(signing_public_key(values))}",
    ]
    return "\n".join(lines) + "\n"


def _secret(name: str, namespace: str, **fields: object) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        **fields,
    }


def k8s_secrets(
    values: dict[str, str], certs: dict[str, tuple[bytes, bytes]], ca: bytes, namespace: str
) -> list:
    """The Secrets ``deploy/k8s`` refers to, as dicts (``veil-<service>-tls`` for each certificate)."""
    docs = [
        _secret("veil-api", namespace, type="Opaque", stringData={k: values[k] for k in API_ENV}),
        _secret("veil-superlink", namespace, type="Opaque", stringData={"VEIL_FLEET_API_KEY": values["VEIL_FLEET_API_KEY"]}),
        _secret("veil-relay", namespace, type="Opaque", stringData={"VEIL_RELAY_SECRET": values["VEIL_RELAY_SECRET"]}),
        _secret("veil-postgres", namespace, type="Opaque", stringData={"POSTGRES_PASSWORD": values["POSTGRES_PASSWORD"]}),
        _secret("veil-ca", namespace, type="Opaque", stringData={"ca.crt": ca.decode()}),
    ]  # fmt: skip
    for service, (crt, key) in certs.items():
        data = {"tls.crt": base64.b64encode(crt).decode(), "tls.key": base64.b64encode(key).decode()}
        docs.append(_secret(f"veil-{service}-tls", namespace, type="kubernetes.io/tls", data=data))
    return docs


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, mode)  # O_CREAT's mode is masked by the umask


def bootstrap(out: Path, *, namespace: str = NAMESPACE, sans: dict[str, list[str]] | None = None,
              days: int = 365, force: bool = False, database_url: str | None = None) -> None:  # fmt: skip
    """Write the CA, the service certificates, the env files and ``k8s-secrets.yaml`` into ``out``."""
    sans = sans or {}
    values = make_secrets(database_url)  # first: a bad URL leaves nothing behind
    unknown = sorted(set(sans) - set(SERVICES))
    if unknown:
        raise ValueError(f"--san names a service that has no certificate: {unknown}; services: {SERVICES}")
    if days < 1:
        raise ValueError(f"--days must be >= 1, got {days}")
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} is not empty; pass --force to replace its CA, keys and secrets")
    (out / "certs").mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    ca, ca_key = make_ca(days)
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    _write(out / "certs" / "ca.crt", ca_pem, 0o644)
    _write(out / "certs" / "ca.key", _pem_key(ca_key), 0o600)
    certs = {}
    for service in SERVICES:
        cert, key = make_leaf(ca, ca_key, service_names(service, namespace, sans.get(service, [])), days)
        certs[service] = (cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))
        _write(out / "certs" / f"{service}.crt", certs[service][0], 0o644)
        _write(out / "certs" / f"{service}.key", certs[service][1], 0o644)  # see the module docstring
    _write(out / "api.env", "".join(f"{k}={values[k]}\n" for k in API_ENV).encode(), 0o600)
    _write(out / "relay.env", f"VEIL_RELAY_SECRET={values['VEIL_RELAY_SECRET']}\n".encode(), 0o600)
    _write(out / "superlink.env", f"VEIL_FLEET_API_KEY={values['VEIL_FLEET_API_KEY']}\n".encode(), 0o600)
    _write(out / "postgres_password", values["POSTGRES_PASSWORD"].encode(), 0o644)
    # JSON documents are YAML: kubectl reads them, and no YAML library is needed here.
    ca_path = (out / "certs" / "ca.crt").resolve()  # flwr wants an absolute path
    (out / "flwr").mkdir(exist_ok=True)
    flwr = f'[superlink]\ndefault = "veil-local"\n\n[superlink.veil-local]\naddress = "localhost:{SUPERLINK_PORT}"\n'
    _write(
        out / "flwr" / "config.toml",
        (flwr + f"root-certificates = {json.dumps(str(ca_path))}\n").encode(),
        0o644,
    )
    _write(out / "flwr" / "fleet.toml", fleet_run_config(values).encode(), 0o644)  # public values only
    # JSON documents are YAML, so no YAML library is needed. The comment comes first because kubectl
    # reads a stream that starts with "{" as JSON, which knows no "---" separators.
    docs = "---\n".join(json.dumps(d, indent=2) + "\n" for d in k8s_secrets(values, certs, ca_pem, namespace))
    header = "# Made by deploy/bootstrap.py; apply with kubectl apply -f, keep out of git.\n"
    _write(out / "k8s-secrets.yaml", (header + docs).encode(), 0o600)


def _parse_sans(items: list[str]) -> dict[str, list[str]]:
    sans: dict[str, list[str]] = {}
    for item in items:
        service, sep, name = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--san takes SERVICE=NAME, got {item!r}")
        sans.setdefault(service, []).append(name)
    return sans


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "local")
    parser.add_argument("--namespace", default=NAMESPACE, help="Kubernetes namespace (DNS names, Secrets)")
    parser.add_argument("--san", action="append", default=[], metavar="SERVICE=NAME",
                        help="another name a service is reached by, e.g. relay=relay.example.org")  # fmt: skip
    parser.add_argument("--days", type=int, default=365, help="validity of the CA and certificates")
    parser.add_argument("--force", action="store_true", help="replace an existing CA, keys and secrets")
    parser.add_argument(
        "--database-url", help="an external PostgreSQL (SQLAlchemy URL) instead of deploy's own"
    )
    args = parser.parse_args(argv)
    try:
        bootstrap(args.out, namespace=args.namespace, sans=_parse_sans(args.san), days=args.days,
                  force=args.force, database_url=args.database_url)  # fmt: skip
    except (ValueError, FileExistsError) as exc:
        print(f"bootstrap: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} (CA, certificates for {', '.join(SERVICES)}, env files, k8s-secrets.yaml)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
