"""What a request asks for, in authorization's terms (verb, API group, resource, subresource,
namespace, name), read from its URL as kube-apiserver's RequestInfoFactory reads it. Unlike
``request.parse_path`` this knows nothing of what the lab serves: a request for secrets or
Calico IPPools has a RequestInfo too, so RBAC can deny it before the 404."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

_METHOD_VERBS = {
    "POST": "create",
    "GET": "get",
    "HEAD": "get",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}
_SPECIAL_VERBS = ("proxy", "watch")  # /api/v1/watch/... (deprecated form)
_NAMESPACE_SUBRESOURCES = ("status", "finalize")
# Long-running requests, as kube-apiserver's BasicLongRunningRequestCheck names them.
_LONG_RUNNING_VERBS = ("watch", "proxy")
_LONG_RUNNING_SUBRESOURCES = ("attach", "exec", "proxy", "log", "portforward")
# Subresources whose WebSocket upgrade (a GET) also needs "create" (Kubernetes 1.31 and later).
_UPGRADE_SUBRESOURCES = ("attach", "exec", "portforward")


@dataclass(frozen=True)
class RequestInfo:
    """A request as the authorizer and priority-and-fairness see it."""

    verb: str
    path: str
    is_resource: bool = False
    group: str = ""
    version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    websocket: bool = False

    @property
    def long_running(self) -> bool:
        return self.verb in _LONG_RUNNING_VERBS or self.subresource in _LONG_RUNNING_SUBRESOURCES

    @property
    def reads(self) -> bool:
        return self.verb in ("get", "list", "watch")

    @property
    def verbs_checked(self) -> tuple[str, ...]:
        """The verbs authorization asks about, in order."""
        if self.websocket and self.verb == "get" and self.subresource in _UPGRADE_SUBRESOURCES:
            return ("get", "create")
        return (self.verb,)


def request_info(
    method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str]
) -> RequestInfo:
    """The RequestInfo of one request (a non-resource one for anything outside /api, /apis)."""
    websocket = headers.get("Upgrade", "").lower() == "websocket"
    plain = RequestInfo(verb=method.lower(), path=path, websocket=websocket)
    parts = [part for part in path.split("/") if part]
    if len(parts) < 3 or parts[0] not in ("api", "apis"):
        return plain
    group = ""
    if parts[0] == "apis":
        if len(parts) < 4:
            return plain
        group, parts = parts[1], parts[1:]
    version, parts = parts[1], parts[2:]
    if parts and parts[0] in _SPECIAL_VERBS:
        verb, parts = parts[0], parts[1:]
        if not parts:
            return plain
    else:
        verb = _METHOD_VERBS.get(method.upper(), "")
    namespace = ""
    if parts and parts[0] == "namespaces" and len(parts) > 1:
        namespace = parts[1]
        if len(parts) > 2 and parts[2] not in _NAMESPACE_SUBRESOURCES:
            parts = parts[2:]
    resource = parts[0] if parts else ""
    name = parts[1] if len(parts) > 1 else ""
    subresource = parts[2] if len(parts) > 2 and verb != "proxy" else ""
    if not name and verb == "get":
        verb = "watch" if query.get("watch", "").lower() in ("1", "true") else "list"
        selected = _exact_name(query.get("fieldSelector", ""))
        if selected:
            name = selected
    if not name and verb == "delete":
        verb = "deletecollection"
    return RequestInfo(
        verb=verb,
        path=path,
        is_resource=True,
        group=group,
        version=version,
        namespace=namespace,
        resource=resource,
        subresource=subresource,
        name=name,
        websocket=websocket,
    )


def _exact_name(field_selector: str) -> str:
    """The name a ``metadata.name=X`` field selector pins (what a single-object watch sends)."""
    for term in field_selector.split(","):
        key, sep, value = term.partition("=")
        if key.strip() == "metadata.name" and sep:
            name = value.removeprefix("=").strip()  # "=" and "==" both pin a name
            if name and "/" not in name and name not in (".", ".."):
                return name
    return ""
