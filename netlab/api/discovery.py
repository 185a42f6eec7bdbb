"""Discovery documents: /version, /api, /api/v1, /apis and the small OpenAPI v3 subset
kubectl reads to learn that the server validates fields itself (fieldValidation)."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Any

JSONDict = dict[str, Any]

GIT_VERSION = "v1.31.0-netlab"


@dataclass(frozen=True)
class ResourceInfo:
    """One served resource of core/v1."""

    name: str  # plural, as in the URL
    kind: str
    namespaced: bool
    verbs: tuple[str, ...]
    short_names: tuple[str, ...] = ()
    singular: str = ""
    categories: tuple[str, ...] = ()
    # Why writes are refused (405), for a resource the lab only serves for reading.
    read_only: str = ""


_RW = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
RESOURCES: dict[str, ResourceInfo] = {
    r.name: r
    for r in (
        ResourceInfo("pods", "Pod", True, _RW, ("po",), "pod", ("all",)),
        ResourceInfo("nodes", "Node", False, ("get", "list", "watch"), ("no",), "node"),
        ResourceInfo(
            "namespaces",
            "Namespace",
            False,
            ("create", "delete", "get", "list", "patch", "update", "watch"),
            ("ns",),
            "namespace",
        ),
        ResourceInfo("configmaps", "ConfigMap", True, _RW, ("cm",), "configmap"),
        ResourceInfo("serviceaccounts", "ServiceAccount", True, _RW, ("sa",), "serviceaccount"),
        ResourceInfo("events", "Event", True, _RW, ("ev",), "event"),
        ResourceInfo(
            "services",
            "Service",
            True,
            ("get", "list", "watch"),
            ("svc",),
            "service",
            ("all",),
            read_only=(
                "services are read-only in netlab: the lab has no Service data plane "
                "(no kube-proxy, no cluster IPs), so it serves only default/kubernetes"
            ),
        ),
    )
}
# Subresources: name -> (kind, verbs)
SUBRESOURCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "pods/status": ("Pod", ("get", "patch", "update")),
    "pods/log": ("Pod", ("get",)),
    "pods/exec": ("PodExecOptions", ("create", "get")),
    "pods/eviction": ("Eviction", ("create",)),
    "namespaces/status": ("Namespace", ("get",)),
    "nodes/status": ("Node", ("get",)),
}


# Subresources served in another API group's version (discovery names it), as Eviction is.
SUBRESOURCE_GROUP_VERSIONS: dict[str, tuple[str, str]] = {"pods/eviction": ("policy", "v1")}


def go_arch() -> str:
    """This machine's architecture as Go (and so Kubernetes) names it."""
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def version() -> JSONDict:
    machine = go_arch()
    return {
        "major": "1",
        "minor": "31",
        "gitVersion": GIT_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2024-08-13T00:00:00Z",
        "goVersion": "go1.22.5",
        "compiler": "gc",
        "platform": f"linux/{machine}",
    }


def api_versions(server_address: str) -> JSONDict:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def api_group_list() -> JSONDict:
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}


def api_resource_list() -> JSONDict:
    entries: list[JSONDict] = []
    for info in RESOURCES.values():
        entries.append(
            {
                "name": info.name,
                "singularName": info.singular,
                "namespaced": info.namespaced,
                "kind": info.kind,
                "verbs": list(info.verbs),
                "shortNames": list(info.short_names),
                **({"categories": list(info.categories)} if info.categories else {}),
            }
        )
    for name, (kind, verbs) in SUBRESOURCES.items():
        entries.append(
            {
                "name": name,
                "singularName": "",
                "namespaced": RESOURCES[name.split("/")[0]].namespaced,
                **_group_version(name),
                "kind": kind,
                "verbs": list(verbs),
            }
        )
    entries.sort(key=lambda e: e["name"])
    return {"kind": "APIResourceList", "groupVersion": "v1", "resources": entries}


def _group_version(subresource: str) -> JSONDict:
    if subresource not in SUBRESOURCE_GROUP_VERSIONS:
        return {}
    group, version = SUBRESOURCE_GROUP_VERSIONS[subresource]
    return {"group": group, "version": version}


def openapi_v3_root() -> JSONDict:
    return {"paths": {"api/v1": {"serverRelativeURL": f"/openapi/v3/api/v1?hash={GIT_VERSION}"}}}


def openapi_v3_core() -> JSONDict:
    """Just the PATCH operations with their fieldValidation parameter: what kubectl's
    query-param verifier looks for before it leaves validation to the server."""
    paths: JSONDict = {}
    parameter = {
        "name": "fieldValidation",
        "in": "query",
        "schema": {"type": "string", "uniqueItems": True},
    }
    for info in RESOURCES.values():
        if "patch" not in info.verbs:
            continue
        base = "/api/v1/namespaces/{namespace}/" if info.namespaced else "/api/v1/"
        paths[f"{base}{info.name}/{{name}}"] = {
            "patch": {
                "operationId": f"patchCoreV1{'Namespaced' if info.namespaced else ''}{info.kind}",
                "parameters": [parameter],
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {
                    "group": "",
                    "version": "v1",
                    "kind": info.kind,
                },
            }
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": GIT_VERSION},
        "paths": paths,
        "components": {},
    }
