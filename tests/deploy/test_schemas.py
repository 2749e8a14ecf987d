"""The deployment files against the official schemas, offline (no container engine runs here).

* Compose: the Compose Specification's JSON schema (compose-spec/compose-spec, Apache-2.0), the copy
  that ``check-jsonschema`` vendors (``check_jsonschema/builtin_schemas/vendor/compose-spec.json``).
* Kubernetes: the API's JSON schemas per version, strict (no unknown fields), as ``kubernetes-validate``
  ships them; checked at 1.28 (the oldest the SuperNodes' pod-index label works on) and the newest.
"""

from __future__ import annotations

import copy
import json
from importlib.resources import files

import jsonschema
import kubernetes_validate
import pytest
import yaml

K8S_VERSIONS = ("1.28", kubernetes_validate.utils.latest_version())


def compose_errors(doc: dict) -> list[str]:
    text = files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    schema = json.loads(text)
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def k8s_error(doc: dict, version: str) -> str | None:
    """``None`` when ``doc`` is valid; a missing schema (unknown kind or apiVersion) is an error too."""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{'.'.join(map(str, exc.path))}: {exc.message}"
    except kubernetes_validate.SchemaNotFoundError as exc:
        return exc.message
    return None


def test_compose_file_follows_the_compose_specification(compose_doc: dict) -> None:
    assert compose_errors(compose_doc) == []


def test_compose_schema_catches_a_misspelt_key_and_a_wrong_type(compose_doc: dict) -> None:
    misspelt = copy.deepcopy(compose_doc)
    misspelt["services"]["api"]["helthcheck"] = misspelt["services"]["api"].pop("healthcheck")
    assert any("helthcheck" in e for e in compose_errors(misspelt))
    wrong = copy.deepcopy(compose_doc)
    wrong["services"]["relay"]["depends_on"]["api"]["condition"] = "service_ready"
    assert compose_errors(wrong)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_validate_strictly(k8s_docs: list[tuple[str, dict]], version: str) -> None:
    assert k8s_docs
    errors = {
        f"{name} {doc['kind']}/{doc['metadata']['name']}": k8s_error(doc, version) for name, doc in k8s_docs
    }
    assert {k: v for k, v in errors.items() if v} == {}


def test_generated_secrets_validate(local) -> None:  # noqa: ANN001
    docs = list(yaml.safe_load_all((local / "k8s-secrets.yaml").read_text()))
    assert {d["kind"] for d in docs} == {"Secret"}
    assert [k8s_error(d, K8S_VERSIONS[-1]) for d in docs] == [None] * len(docs)


def test_kubernetes_validation_catches_unknown_fields_and_kinds(k8s_docs: list[tuple[str, dict]]) -> None:
    deployment = copy.deepcopy(next(d for _, d in k8s_docs if d["kind"] == "Deployment"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGet"]["schema"] = "HTTPS"  # the field is `scheme`
    assert k8s_error(deployment, K8S_VERSIONS[-1])
    container["readinessProbe"]["httpGet"].pop("schema")
    container["ports"][0]["containerPort"] = "8443"
    assert k8s_error(deployment, K8S_VERSIONS[-1])
    assert k8s_error({**deployment, "apiVersion": "apps/v1beta9"}, K8S_VERSIONS[-1])
