"""``deploy/bootstrap.py``: the CA, the certificates, the secrets and their file modes."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from deploy_files import read_env_file


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _verifies(local: Path, service: str, host: str) -> bool:
    ca = x509.load_pem_x509_certificate((local / "certs" / "ca.crt").read_bytes())
    leaf = x509.load_pem_x509_certificate((local / "certs" / f"{service}.crt").read_bytes())
    try:
        PolicyBuilder().store(Store([ca])).build_server_verifier(x509.DNSName(host)).verify(leaf, [])
    except VerificationError:
        return False
    return True


def test_certificates_name_each_service_as_compose_and_kubernetes_resolve_it(local: Path) -> None:
    for service in ("api", "relay", "superlink", "postgres"):
        for host in (service, f"{service}.veil", f"{service}.veil.svc.cluster.local", "localhost"):
            assert _verifies(local, service, host), (service, host)
    assert not _verifies(local, "api", "relay")
    assert not _verifies(local, "relay", "relay.example.org")  # only with --san


def test_secrets_are_private_and_fresh(local: Path, tmp_path: Path, bootstrap_module) -> None:  # noqa: ANN001
    assert _mode(local) == 0o700
    for private in ("certs/ca.key", "api.env", "relay.env", "superlink.env", "k8s-secrets.yaml"):
        assert _mode(local / private) == 0o600, private
    other = tmp_path / "other"
    bootstrap_module.bootstrap(other, sans={"relay": ["relay.example.org"]})
    assert _verifies(other, "relay", "relay.example.org")
    mine, theirs = read_env_file(local / "api.env"), read_env_file(other / "api.env")
    assert set(mine) == {
        "VEIL_GATEWAY_KEK",
        "VEIL_GATEWAY_SIGNING_KEY",
        "VEIL_RELAY_SECRET",
        "VEIL_DATABASE_URL",
        "VEIL_FLEET_API_KEY",
    }
    assert all(mine[k] != theirs[k] for k in mine)
    text = (local / "k8s-secrets.yaml").read_text()
    assert not text.lstrip().startswith("{")  # kubectl would read the stream as JSON, without "---"
    secrets = {d["metadata"]["name"]: d for d in yaml.safe_load_all(text)}
    assert secrets["veil-relay"]["stringData"] == read_env_file(local / "relay.env")
    assert secrets["veil-api"]["stringData"] == mine
    # the fleet's ServerApp holds the operator key the API accepts, and nothing else
    assert secrets["veil-superlink"]["stringData"] == read_env_file(local / "superlink.env")
    assert read_env_file(local / "superlink.env") == {"VEIL_FLEET_API_KEY": mine["VEIL_FLEET_API_KEY"]}


def test_the_fleet_run_config_is_a_valid_deployed_fleet_pinning_the_gateways_key(
    local: Path, compose_doc: dict, k8s_docs: list
) -> None:
    import base64
    import tomllib

    from veil.client_sdk.ohttp.keysig import public_key_bytes, signing_key_from_seed
    from veil.cloud_service.gateway_signing import decode_signing_seed
    from veil.simulation.fleet import FleetConfig

    run = tomllib.loads((local / "flwr" / "fleet.toml").read_text())
    cfg = FleetConfig.from_mapping(run)
    assert cfg.cloud == "deployed" and cfg.api_url == "https://api:8443"
    supernodes = [name for name in compose_doc["services"] if name.startswith("supernode")]
    (replicas,) = [
        d["spec"]["replicas"]
        for _, d in k8s_docs
        if d["metadata"]["name"] == "supernode" and d["kind"] == "StatefulSet"
    ]
    assert cfg.nodes == len(supernodes) == replicas  # every round waits for exactly these
    seed = decode_signing_seed(read_env_file(local / "api.env")["VEIL_GATEWAY_SIGNING_KEY"])
    assert base64.b64decode(cfg.gateway_key) == public_key_bytes(signing_key_from_seed(seed))


def test_refuses_to_overwrite_and_bad_input(local: Path, tmp_path: Path, bootstrap_module) -> None:  # noqa: ANN001
    before = (local / "api.env").read_text()
    with pytest.raises(FileExistsError):
        bootstrap_module.bootstrap(local)
    assert (local / "api.env").read_text() == before
    assert bootstrap_module.main(["--out", str(local)]) == 2
    assert bootstrap_module.main(["--out", str(tmp_path / "a"), "--san", "gateway=x.example.org"]) == 2
    assert bootstrap_module.main(["--out", str(tmp_path / "b"), "--database-url", "mysql://x/y"]) == 2
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    external = "postgresql+psycopg://veil:pw@db.example.org:5432/veil?sslmode=verify-full"
    assert bootstrap_module.main(["--out", str(tmp_path / "c"), "--database-url", external]) == 0
    assert read_env_file(tmp_path / "c" / "api.env")["VEIL_DATABASE_URL"] == external
