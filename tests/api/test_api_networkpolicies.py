"""NetworkPolicies (networking.k8s.io/v1) through the official client, raw requests and kubectl:
discovery, create, get, list, watch, update, patch, delete, deletecollection, dryRun; the v1
defaults (policyTypes, protocol TCP, podSelector); kube-apiserver's 422 texts; the namespace
label ``kubernetes.io/metadata.name`` on create and update; ``kubectl get networkpolicies``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from live_api import LiveServer, kubectl, scratch_namespace, watch_until

KUBECTL = shutil.which("kubectl")
BASE = "/apis/networking.k8s.io/v1"


@pytest.fixture
def ns(live: LiveServer) -> Iterator[str]:
    with scratch_namespace(live, "np") as name:
        yield name


def networking(live: LiveServer) -> Any:
    return client.NetworkingV1Api(live.api_client)


def policy(name: str = "allow", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, **spec},
    }


def refused(live: LiveServer, ns: str, body: dict[str, Any]) -> dict[str, Any]:
    status, _, answer = live.request("POST", f"{BASE}/namespaces/{ns}/networkpolicies", body)
    assert status == 422, answer
    result: dict[str, Any] = answer
    return result


# --- discovery and the verbs ----------------------------------------------------------------


def test_discovery_lists_the_group_and_resource(live: LiveServer) -> None:
    status, _, groups = live.request("GET", "/apis")
    assert status == 200
    names = [g["name"] for g in groups["groups"]]
    assert "networking.k8s.io" in names
    status, _, resources = live.request("GET", BASE)
    [entry] = [r for r in resources["resources"] if r["name"] == "networkpolicies"]
    assert entry["kind"] == "NetworkPolicy"
    assert entry["namespaced"] is True
    assert entry["shortNames"] == ["netpol"]
    assert set(entry["verbs"]) >= {"create", "get", "list", "watch", "update", "patch", "delete"}


def test_create_defaults_get_list_update_patch_delete(live: LiveServer, ns: str) -> None:
    api = networking(live)
    created = api.create_namespaced_network_policy(
        ns,
        policy(ingress=[{"ports": [{"port": 80}, {"port": "http", "protocol": "UDP"}]}]),
    )
    assert created.spec.policy_types == ["Ingress"]
    assert [p.protocol for p in created.spec.ingress[0].ports] == ["TCP", "UDP"]
    assert created.metadata.uid
    assert created.metadata.resource_version
    assert (created.api_version, created.kind) == ("networking.k8s.io/v1", "NetworkPolicy")
    read = api.read_namespaced_network_policy("allow", ns)
    assert read.metadata.uid == created.metadata.uid
    listed = api.list_namespaced_network_policy(ns)
    assert [p.metadata.name for p in listed.items] == ["allow"]
    assert any(
        p.metadata.name == "allow" for p in api.list_network_policy_for_all_namespaces().items
    )
    # An update that adds egress rules without policyTypes: defaulted again from the new rules?
    # No: policyTypes is set already, so it stays what it is.
    read.spec.egress = [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]
    updated = api.replace_namespaced_network_policy("allow", ns, read)
    assert updated.spec.policy_types == ["Ingress"]
    patched = api.patch_namespaced_network_policy(
        "allow", ns, {"spec": {"policyTypes": ["Ingress", "Egress"]}}
    )
    assert patched.spec.policy_types == ["Ingress", "Egress"]
    api.delete_namespaced_network_policy("allow", ns)
    with pytest.raises(ApiException) as gone:
        api.read_namespaced_network_policy("allow", ns)
    assert gone.value.status == 404
    status = json.loads(gone.value.body)
    assert status["message"] == 'networkpolicies.networking.k8s.io "allow" not found'
    assert status["details"] == {
        "name": "allow",
        "group": "networking.k8s.io",
        "kind": "networkpolicies",
    }


def test_egress_rules_default_policy_types_to_both(live: LiveServer, ns: str) -> None:
    api = networking(live)
    both = api.create_namespaced_network_policy(
        ns, policy("both", egress=[{"ports": [{"port": 53, "protocol": "UDP"}]}])
    )
    assert both.spec.policy_types == ["Ingress", "Egress"]
    egress_only = api.create_namespaced_network_policy(
        ns, policy("egress-only", policyTypes=["Egress"])
    )
    assert egress_only.spec.policy_types == ["Egress"]
    # An empty podSelector is the whole namespace; a missing one is the same (a Go struct).
    status, _, body = live.request(
        "POST",
        f"{BASE}/namespaces/{ns}/networkpolicies",
        {"metadata": {"name": "all"}, "spec": {}},
    )
    assert status == 201, body
    assert body["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}


def test_watch_sees_added_modified_deleted(live: LiveServer, ns: str) -> None:
    api = networking(live)
    before = api.list_namespaced_network_policy(ns).metadata.resource_version
    api.create_namespaced_network_policy(ns, policy("w"))
    api.patch_namespaced_network_policy("w", ns, {"metadata": {"labels": {"a": "b"}}})
    api.delete_namespaced_network_policy("w", ns)
    events = watch_until(
        api.list_namespaced_network_policy,
        ns,
        until=lambda seen: [e["type"] for e in seen][-1:] == ["DELETED"],
        missing="the watch never saw the policy deleted",
        resource_version=before,
        timeout_seconds=10,
    )
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]


def test_deletecollection_and_dry_run(live: LiveServer, ns: str) -> None:
    api = networking(live)
    dry = api.create_namespaced_network_policy(ns, policy("dry"), dry_run="All")
    assert dry.spec.policy_types == ["Ingress"]
    assert api.list_namespaced_network_policy(ns).items == []
    for name in ("a", "b"):
        api.create_namespaced_network_policy(ns, policy(name))
    api.delete_collection_namespaced_network_policy(ns)
    assert api.list_namespaced_network_policy(ns).items == []


def test_namespace_metadata_name_label_is_set_and_kept(live: LiveServer, ns: str) -> None:
    created = live.core.read_namespace(ns)
    assert created.metadata.labels["kubernetes.io/metadata.name"] == ns
    # A PUT without the label, or with another value, gets it back, as on kube-apiserver.
    created.metadata.labels = {"team": "blue", "kubernetes.io/metadata.name": "other"}
    updated = live.core.replace_namespace(ns, created)
    assert updated.metadata.labels == {"team": "blue", "kubernetes.io/metadata.name": ns}
    patched = live.core.patch_namespace(
        ns, [{"op": "remove", "path": "/metadata/labels/kubernetes.io~1metadata.name"}]
    )
    assert patched.metadata.labels["kubernetes.io/metadata.name"] == ns


# --- validation: kube-apiserver's texts ----------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"ingress": [{"ports": [{"protocol": "ICMP", "port": 80}]}]},
            'spec.ingress[0].ports[0].protocol: Unsupported value: "ICMP": supported values: '
            '"TCP", "UDP", "SCTP"',
        ),
        (
            {"ingress": [{"ports": [{"port": 0}]}]},
            "spec.ingress[0].ports[0].port: Invalid value: 0: must be between 1 and 65535, "
            "inclusive",
        ),
        (
            {"ingress": [{"ports": [{"port": 80, "endPort": 79}]}]},
            "spec.ingress[0].ports[0].endPort: Invalid value: 79: must be greater than or equal "
            "to `port`",
        ),
        (
            {"egress": [{"ports": [{"port": "http", "endPort": 90}]}]},
            "spec.egress[0].ports[0].endPort: Invalid value: 90: may not be specified when "
            "`port` is non-numeric",
        ),
        (
            {"egress": [{"ports": [{"endPort": 90}]}]},
            "spec.egress[0].ports[0].endPort: Invalid value: 90: may not be specified when "
            "`port` is not specified",
        ),
        (
            {"ingress": [{"ports": [{"port": "Http"}]}]},
            'spec.ingress[0].ports[0].port: Invalid value: "Http": must contain only '
            "alpha-numeric characters (a-z, 0-9), and hyphens (-)",
        ),
        (
            {"ingress": [{"from": [{}]}]},
            "spec.ingress[0].from[0]: Required value: must specify a peer",
        ),
        (
            {"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]},
            "spec.egress[0].to[0]: Forbidden: may not specify both ipBlock and another peer",
        ),
        (
            {"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]},
            'spec.ingress[0].from[0].ipBlock.cidr: Invalid value: "10.0.0.0/33": not a valid CIDR',
        ),
        (
            {
                "ingress": [
                    {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}
                ]
            },
            'spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: "11.0.0.0/16": must be a '
            "strict subset of `cidr`",
        ),
        (
            {
                "ingress": [
                    {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}}]}
                ]
            },
            'spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: "10.0.0.0/8": must be a '
            "strict subset of `cidr`",
        ),
        (
            {"policyTypes": ["Ingress", "Sideways"]},
            'spec.policyTypes[1]: Unsupported value: "Sideways": supported values: "Ingress", '
            '"Egress"',
        ),
        (
            {"policyTypes": ["Ingress", "Egress", "Ingress"]},
            'spec.policyTypes: Invalid value: []networking.PolicyType{"Ingress", "Egress", '
            '"Ingress"}: may not specify more than two policyTypes',
        ),
        (
            {"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": []}]}},
            "spec.podSelector.matchExpressions[0].values: Required value: must be specified when "
            "`operator` is 'In' or 'NotIn'",
        ),
        (
            {
                "podSelector": {
                    "matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]
                }
            },
            "spec.podSelector.matchExpressions[0].values: Forbidden: may not be specified when "
            "`operator` is 'Exists' or 'DoesNotExist'",
        ),
        (
            {"podSelector": {"matchExpressions": [{"key": "app", "operator": "Near"}]}},
            'spec.podSelector.matchExpressions[0].operator: Invalid value: "Near": not a valid '
            "selector operator",
        ),
        (
            {"podSelector": {"matchLabels": {"app": "-bad"}}},
            'spec.podSelector.matchLabels: Invalid value: "-bad": a valid label must be an empty '
            "string or consist of alphanumeric characters, '-', '_' or '.', and must start and end "
            "with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex "
            "used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
        ),
        (
            {"ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"a/b/c": "x"}}}]}]},
            'spec.ingress[0].from[0].namespaceSelector.matchLabels: Invalid value: "a/b/c": a '
            "qualified name must consist of alphanumeric characters, '-', '_' or '.', and must "
            "start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or "
            "'123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') "
            "with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
        ),
    ],
    ids=lambda value: (
        value.split(":", 2)[0] + ":" + value.split(":", 2)[1].strip()
        if isinstance(value, str)
        else ""
    ),
)
def test_validation_texts_are_kube_apiservers(
    live: LiveServer, ns: str, spec: dict[str, Any], message: str
) -> None:
    body = policy("bad")
    body["spec"].update(spec)
    answer = refused(live, ns, body)
    assert answer["reason"] == "Invalid"
    assert answer["message"] == f'NetworkPolicy.networking.k8s.io "bad" is invalid: {message}'
    assert (answer["details"]["group"], answer["details"]["kind"]) == (
        "networking.k8s.io",
        "NetworkPolicy",
    )
    assert answer["details"]["causes"][0]["field"] == message.split(":", 1)[0]


def test_every_cause_is_listed_in_order(live: LiveServer, ns: str) -> None:
    body = policy("bad")
    body["spec"]["ingress"] = [{"ports": [{"port": 70000}], "from": [{}]}]
    body["spec"]["policyTypes"] = ["Up"]
    answer = refused(live, ns, body)
    assert [c["field"] for c in answer["details"]["causes"]] == [
        "spec.ingress[0].ports[0].port",
        "spec.ingress[0].from[0]",
        "spec.policyTypes[0]",
    ]
    assert answer["message"].count(", spec.") == 2
    assert answer["message"].endswith("]")


def test_updates_are_validated_and_defaulted(live: LiveServer, ns: str) -> None:
    api = networking(live)
    api.create_namespaced_network_policy(ns, policy("u"))
    status, _, answer = live.request(
        "PATCH",
        f"{BASE}/namespaces/{ns}/networkpolicies/u",
        {"spec": {"ingress": [{"ports": [{"port": 0}]}]}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert status == 422, answer
    assert "spec.ingress[0].ports[0].port: Invalid value: 0" in answer["message"]
    status, _, answer = live.request(
        "PATCH",
        f"{BASE}/namespaces/{ns}/networkpolicies/u",
        {"spec": {"policyTypes": None, "egress": [{}]}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert status == 200, answer
    assert answer["spec"]["policyTypes"] == ["Ingress", "Egress"]


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_kubectl_get_networkpolicies(live: LiveServer, ns: str) -> None:
    api = networking(live)
    api.create_namespaced_network_policy(ns, policy("web"))
    deny = policy("deny-all", policyTypes=["Ingress", "Egress"])
    deny["spec"]["podSelector"] = {}
    api.create_namespaced_network_policy(ns, deny)
    expressions = policy("exprs")
    expressions["spec"]["podSelector"] = {
        "matchLabels": {"tier": "db"},
        "matchExpressions": [
            {"key": "env", "operator": "In", "values": ["qa", "dev"]},
            {"key": "legacy", "operator": "DoesNotExist"},
        ],
    }
    api.create_namespaced_network_policy(ns, expressions)
    out = kubectl(live, "-n", ns, "get", "networkpolicies").stdout.splitlines()
    assert out[0].split() == ["NAME", "POD-SELECTOR", "AGE"]
    # NAME, then the selector (it may hold spaces), then AGE.
    rows = {line.split()[0]: line.split(None, 1)[1].rsplit(None, 1)[0] for line in out[1:]}
    assert rows == {
        "deny-all": "<none>",
        "exprs": "env in (dev,qa),!legacy,tier=db",
        "web": "app=web",
    }
    short = kubectl(live, "-n", ns, "get", "netpol", "web", "-o", "json").stdout
    assert json.loads(short)["spec"]["policyTypes"] == ["Ingress"]
    applied = kubectl(
        live,
        "-n",
        ns,
        "apply",
        "-f",
        "-",
        stdin=json.dumps(policy("applied", ingress=[{"ports": [{"port": 8080}]}])),
    )
    assert "networkpolicy.networking.k8s.io/applied created" in applied.stdout
    kubectl(live, "-n", ns, "delete", "networkpolicy", "applied")
