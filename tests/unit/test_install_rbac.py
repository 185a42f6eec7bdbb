"""Least privilege, written down: ``manifests/rbac.yaml`` grants exactly the table of
`conformance.kit.cluster.permissions` (tests/e2e/test_install_permissions.py checks a real run's
requests against it), the README's section names every rule, and a 403 says which permission
is missing and what needs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from conformance.kit.cluster.api import describe_api_error
from conformance.kit.cluster.permissions import (
    CLUSTER,
    PERMISSIONS,
    Permission,
    explain_forbidden,
    grant_of,
    rbac_grants,
)

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "manifests" / "rbac.yaml"
KUBE_DENIAL = (
    'nodes is forbidden: User "system:serviceaccount:default:k8s-netconform" cannot list '
    'resource "nodes" in API group "" at the cluster scope'
)


def documents() -> list[dict[str, object]]:
    return [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]


def test_the_manifest_grants_exactly_the_table() -> None:
    granted = rbac_grants(documents())
    assert len(granted) == len(set(granted)), "a rule is granted twice"
    assert set(granted) == {grant_of(p) for p in PERMISSIONS}


def test_the_manifest_is_valid_rbac() -> None:
    kinds = [str(doc["kind"]) for doc in documents()]
    assert sorted(kinds) == sorted(
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", *["Role", "RoleBinding"] * 2]
    )
    for doc in documents():
        assert doc["apiVersion"] in ("v1", "rbac.authorization.k8s.io/v1")
        for rule in doc.get("rules") or []:  # type: ignore[attr-defined]
            assert rule["verbs"], rule
            assert "*" not in rule["verbs"] + rule.get("resources", []) + rule.get("apiGroups", [])


def test_every_rule_says_what_needs_it() -> None:
    for permission in PERMISSIONS:
        assert permission.needed_by, permission
    # Namespaced exceptions to the cluster scope are only reads of known objects.
    assert {(p.scope, p.verb, p.resource) for p in PERMISSIONS if p.scope != CLUSTER} == {
        ("default", "get", "secrets"),
        ("default", "get", "services"),
        ("kube-system", "get", "configmaps"),
    }


def test_readme_permissions_section_lists_every_rule() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Permissions", 1)[1].split("\n## ", 1)[0]
    for permission in PERMISSIONS:
        assert f"`{permission.describe()}`" in section, permission.describe()


@pytest.mark.parametrize(
    ("text", "missing"),
    [
        (KUBE_DENIAL, "list nodes"),
        (
            'pods "probe-n1" is forbidden: User "netlab-user" cannot create resource '
            '"pods/exec" in API group "" in the namespace "netconform-x"',
            "create pods/exec",
        ),
        # A refused exec handshake: the Status JSON inside the reason, quotes escaped.
        (
            'Handshake status 403 Forbidden -+-+- {} -+-+- b\'{"message": "pods \\\\"p\\\\" is '
            'forbidden: User \\\\"u\\\\" cannot create resource \\\\"pods/exec\\\\" in API group '
            '\\\\"\\\\" in the namespace \\\\"n\\\\""}\'',
            "create pods/exec",
        ),
        (
            'ippools.crd.projectcalico.org is forbidden: User "u" cannot list resource "ippools" '
            'in API group "crd.projectcalico.org" at the cluster scope',
            "list ippools.crd.projectcalico.org",
        ),
        ('forbidden: User "u" cannot get path "/version/"', "get /version/"),
    ],
)
def test_a_denial_names_the_permission_and_what_needs_it(text: str, missing: str) -> None:
    explained = explain_forbidden(text)
    assert explained is not None
    permission = next(p for p in PERMISSIONS if p.describe() == missing)
    assert f"missing RBAC permission: {missing}, needed by {permission.needed_by}" in explained
    assert "manifests/rbac.yaml" in explained


def test_other_errors_are_not_explained_as_rbac() -> None:
    assert explain_forbidden("pods is forbidden: violates PodSecurity ...") is None
    unknown = explain_forbidden('User "u" cannot delete resource "nodes" in API group ""')
    assert unknown is not None
    assert "does not ask for it" in unknown


def test_describe_api_error_of_a_403_carries_the_explanation() -> None:
    body = json.dumps({"kind": "Status", "message": KUBE_DENIAL, "reason": "Forbidden"})
    error = ApiException(status=403, reason="Forbidden")
    error.body = body
    described = describe_api_error(error)
    assert described.startswith(f"HTTP 403 Forbidden: {KUBE_DENIAL}; missing RBAC permission")
    assert Permission("list", "nodes").describe() == "list nodes"
