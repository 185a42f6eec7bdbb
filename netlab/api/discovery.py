"""Discovery documents: /version, /api, /api/v1, /apis and the small OpenAPI v3 subset
kubectl reads to learn that the server validates fields itself (fieldValidation)."""

from __future__ import annotations

import platform
from dataclasses import dataclass

from netlab.contract import JSONDict

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
    group: str = ""  # "" is the core group (/api/v1); others are served under /apis/GROUP/VERSION
    version: str = "v1"

    @property
    def api_version(self) -> str:
        """What objects of this resource carry as apiVersion (``v1``, ``discovery.k8s.io/v1``)."""
        return f"{self.group}/{self.version}" if self.group else self.version


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
        ResourceInfo("services", "Service", True, _RW, ("svc",), "service", ("all",)),
        ResourceInfo(
            "endpointslices",
            "EndpointSlice",
            True,
            _RW,
            (),
            "endpointslice",
            group="discovery.k8s.io",
        ),
        ResourceInfo(
            "networkpolicies",
            "NetworkPolicy",
            True,
            _RW,
            ("netpol",),
            "networkpolicy",
            group="networking.k8s.io",
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
    "nodes/proxy": ("NodeProxyOptions", ("create", "delete", "get", "patch", "update")),
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


def group_versions() -> dict[str, str]:
    """Each named API group the lab serves -> its one (preferred) version."""
    return {info.group: info.version for info in RESOURCES.values() if info.group}


def _group_entry(group: str) -> JSONDict:
    version = group_versions()[group]
    preferred = {"groupVersion": f"{group}/{version}", "version": version}
    return {"name": group, "versions": [preferred], "preferredVersion": preferred}


def api_group(group: str) -> JSONDict:
    """/apis/GROUP: the APIGroup document."""
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_entry(group)}


def api_group_list() -> JSONDict:
    groups = [_group_entry(group) for group in group_versions()]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def group_resource_list(group: str) -> JSONDict:
    """/apis/GROUP/VERSION: the resources of a named group."""
    version = group_versions()[group]
    entries = [_resource_entry(info) for info in RESOURCES.values() if info.group == group]
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}",
        "resources": sorted(entries, key=lambda e: e["name"]),
    }


def _resource_entry(info: ResourceInfo) -> JSONDict:
    return {
        "name": info.name,
        "singularName": info.singular,
        "namespaced": info.namespaced,
        "kind": info.kind,
        "verbs": list(info.verbs),
        **({"shortNames": list(info.short_names)} if info.short_names or not info.group else {}),
        **({"categories": list(info.categories)} if info.categories else {}),
    }


def api_resource_list() -> JSONDict:
    entries: list[JSONDict] = []
    for info in RESOURCES.values():
        if info.group:
            continue  # served under /apis/GROUP/VERSION
        entries.append(_resource_entry(info))
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


def openapi_v3_paths() -> dict[str, str]:
    """Each group-version's OpenAPI v3 path (``api/v1``, ``apis/discovery.k8s.io/v1``) ->
    the group it documents ("" for core)."""
    paths = {"api/v1": ""}
    paths.update({f"apis/{group}/{version}": group for group, version in group_versions().items()})
    return paths


def openapi_v3_root() -> JSONDict:
    return {
        "paths": {
            path: {"serverRelativeURL": f"/openapi/v3/{path}?hash={GIT_VERSION}"}
            for path in openapi_v3_paths()
        }
    }


def openapi_v3_core(group: str = "") -> JSONDict:
    """Just the PATCH operations with their fieldValidation parameter: what kubectl's
    query-param verifier looks for before it leaves validation to the server."""
    paths: JSONDict = {}
    parameter = {
        "name": "fieldValidation",
        "in": "query",
        "schema": {"type": "string", "uniqueItems": True},
    }
    for info in RESOURCES.values():
        if "patch" not in info.verbs or info.group != group:
            continue
        prefix = f"/apis/{info.api_version}" if info.group else "/api/v1"
        base = f"{prefix}/namespaces/{{namespace}}/" if info.namespaced else f"{prefix}/"
        operation = "".join(part.capitalize() for part in info.group.split(".")[:1]) or "Core"
        paths[f"{base}{info.name}/{{name}}"] = {
            "patch": {
                "operationId": f"patch{operation}{info.version.capitalize()}"
                f"{'Namespaced' if info.namespaced else ''}{info.kind}",
                "parameters": [parameter],
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {
                    "group": info.group,
                    "version": info.version,
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
