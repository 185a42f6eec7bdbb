"""What the suite asks of the Kubernetes API, as RBAC sees it: every (verb, resource, API group)
with the option or check that needs it. ``manifests/rbac.yaml`` grants exactly these
(``tests/unit/test_install_rbac.py`` keeps the two equal; ``tests/e2e/test_install_permissions.py``
checks every request of a real run against the manifest), and a 403 names the missing rule and
what needs it (`explain_forbidden`, used by `conformance.kit.cluster.api.describe_api_error`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from conformance.kit.base.settings import DEFAULT_SECRET_NAMESPACE

#: Rules that hold at the cluster scope (ClusterRole + ClusterRoleBinding). The run namespace is
#: made by the run itself, so rights inside it cannot come from a RoleBinding made beforehand.
CLUSTER = "cluster"
RBAC_MANIFEST = "manifests/rbac.yaml"
EVERY_RUN = "every run"


@dataclass(frozen=True)
class Permission:
    """One RBAC rule the suite needs: ``verb`` on ``resource`` (``pods/exec`` for a
    subresource, ``/version`` for a non-resource URL) of API ``group`` ("" for core), at the
    cluster scope or in namespace ``scope``; ``needed_by`` says which run, option or check."""

    verb: str
    resource: str
    group: str = ""
    needed_by: str = EVERY_RUN
    scope: str = CLUSTER
    resource_names: tuple[str, ...] = ()

    @property
    def non_resource(self) -> bool:
        return self.resource.startswith("/")

    def describe(self) -> str:
        """``list nodes``, ``list ippools.crd.projectcalico.org``, ``get /version``."""
        resource, sep, sub = self.resource.partition("/")
        if self.non_resource:
            return f"{self.verb} {self.resource}"
        qualified = resource + (f".{self.group}" if self.group else "")
        return f"{self.verb} {qualified}{sep}{sub}"


_IPPOOLS = (
    "test_pod_ips_inside_node_pod_cidrs (whether Calico IPAM, which ignores node podCIDRs, runs)"
)
_SERVICE_RANGE = "test_node_pod_cidrs_outside_service_range and the report's service range"
_POD_RANGES = "the podCIDR checks (Cilium's and Calico's per-node pod ranges)"
_NETPOL = "the NetworkPolicy family (test_network_policy)"
_SERVICE_CHECKS = "the Service checks (test_services, test_hostport, test_dns)"


def _verbs(
    verbs: Sequence[str], resource: str, group: str = "", *, needed_by: str
) -> tuple[Permission, ...]:
    """One rule per verb on ``resource``, all needed by the same run, option or check."""
    return tuple(Permission(verb, resource, group, needed_by=needed_by) for verb in verbs)


PERMISSIONS: tuple[Permission, ...] = (
    # Nodes: which nodes get probes, their addresses and podCIDRs.
    Permission("list", "nodes", needed_by=f"{EVERY_RUN} (node discovery) and the podCIDR checks"),
    Permission(
        "watch",
        "nodes",
        needed_by=f"{EVERY_RUN} (a bounded wait for nodes that are not ready yet) and "
        "test_node_network_ready",
    ),
    # Pods: the probes, and every pod of the cluster for the pod-IP checks.
    Permission("create", "pods", needed_by=f"{EVERY_RUN} (the probe pods)"),
    Permission(
        "list",
        "pods",
        needed_by=f"{EVERY_RUN} (probe readiness, in the run namespace) and test_pod_ips_unique "
        "(every pod of the cluster)",
    ),
    Permission("watch", "pods", needed_by=f"{EVERY_RUN} (probe readiness, sandbox restarts)"),
    # Exec: every check asks its probes through exec (WebSocket: get and create since 1.31).
    Permission("create", "pods/exec", needed_by="every check (the probes are asked through exec)"),
    Permission("get", "pods/exec", needed_by="every check (exec over WebSocket)"),
    # A crash-looping probe's last words, when it left no termination message.
    Permission(
        "get",
        "pods/log",
        needed_by=f"{EVERY_RUN} (why a probe container crash-loops, from its previous log)",
    ),
    # The run namespace, and the stale ones --cleanup-stale deletes.
    Permission("create", "namespaces", needed_by=f"{EVERY_RUN} (the run namespace)"),
    Permission(
        "delete",
        "namespaces",
        needed_by=f"{EVERY_RUN} (the run namespace, unless --keep-namespace) and --cleanup-stale",
    ),
    Permission(
        "list",
        "namespaces",
        needed_by=f"{EVERY_RUN} (waiting for the run namespace to go) and --cleanup-stale",
    ),
    Permission(
        "watch", "namespaces", needed_by=f"{EVERY_RUN} (waiting for the run namespace to go)"
    ),
    Permission(
        "patch",
        "namespaces",
        needed_by=f"{EVERY_RUN} (renewing the run namespace's lease, which --cleanup-stale in "
        "other runs respects)",
    ),
    *_verbs(
        ("list", "watch"),
        "serviceaccounts",
        needed_by=f"{EVERY_RUN} (waiting for the run namespace's default ServiceAccount)",
    ),
    Permission("create", "configmaps", needed_by=f"{EVERY_RUN} (the probe agent's ConfigMap)"),
    Permission(
        "list",
        "events",
        needed_by=f"{EVERY_RUN} (why a probe is not Ready; the namespace dump in the report)",
    ),
    # --image-pull-secret: read where the Secret lives, create its copy in the run namespace.
    Permission("get", "secrets", needed_by="--image-pull-secret", scope=DEFAULT_SECRET_NAMESPACE),
    Permission(
        "create", "secrets", needed_by="--image-pull-secret (the copy in the run namespace)"
    ),
    # The service range (conformance/kit/cluster/ipranges.py): ServiceCIDR objects, kubeadm's
    # ConfigMap, the kube-apiserver pods' flags (the pods rule), a dry-run Service.
    Permission(
        "list",
        "servicecidrs",
        "networking.k8s.io",
        needed_by=f"{EVERY_RUN} (the IP families the cluster declares) and {_SERVICE_RANGE}",
    ),
    Permission(
        "get",
        "configmaps",
        needed_by=f"{_SERVICE_RANGE} (kubeadm's ClusterConfiguration)",
        scope="kube-system",
        resource_names=("kubeadm-config",),
    ),
    Permission(
        "create",
        "services",
        needed_by=f"{_SERVICE_RANGE} (a dry-run Service in the run namespace, never stored), "
        f"and {_SERVICE_CHECKS} (their Services in the run namespace)",
    ),
    Permission(
        "get",
        "services",
        needed_by=f"{EVERY_RUN} (the IP families the cluster declares: its ipFamilies) and "
        "test_node_pod_cidrs_outside_service_range (where ServiceCIDRs are not served)",
        scope="default",
        resource_names=("kubernetes",),
    ),
    # The readiness check (conformance/kit/exchanges/readiness.py): the EndpointSlice of a backend turned
    # unready.
    *_verbs(
        ("list", "watch"),
        "endpointslices",
        "discovery.k8s.io",
        needed_by="test_endpoints_follow_readiness (the Service's EndpointSlices)",
    ),
    # Nodes' real pod ranges where the IPAM keeps its own (conformance/kit/cluster/ipranges.py).
    Permission("list", "ciliumnodes", "cilium.io", needed_by=_POD_RANGES),
    Permission("list", "blockaffinities", "crd.projectcalico.org", needed_by=_POD_RANGES),
    # Pool IPAMs: a 404 means "not installed", so the rules must exist on any cluster.
    Permission("list", "ippools", "crd.projectcalico.org", needed_by=_IPPOOLS),
    Permission("list", "ippools", "projectcalico.org", needed_by=_IPPOOLS),
    # Report facts.
    # The NetworkPolicy family (conformance/test_network_policy.py): its scenarios' policies
    # in its own namespaces (replaced by read and update; removed one by one and all at once
    # after each scenario), and the pod labels its updates change.
    *_verbs(
        ("create", "get", "update", "delete", "deletecollection"),
        "networkpolicies",
        "networking.k8s.io",
        needed_by=_NETPOL,
    ),
    Permission("patch", "pods", needed_by=f"{_NETPOL} (a pod's labels changed)"),
    Permission("list", "daemonsets", "apps", needed_by="the report's CNI detection"),
    Permission("get", "/version/", needed_by="the report's server version"),
)

# kube-apiserver's RBAC denial (NewForbidden): ... cannot VERB resource "R" in API group "G" ...
# The quotes may come escaped (JSON in a refused exec handshake's text): \" or \\".
_FORBIDDEN = re.compile(
    r'cannot (?P<verb>[a-z]+) resource \\*"(?P<resource>[^"\\]+)\\*" '
    r'in API group \\*"(?P<group>[^"\\]*)\\*"'
)
_FORBIDDEN_PATH = re.compile(r'cannot (?P<verb>[a-z]+) path \\*"(?P<path>[^"\\]+)\\*"')


def needed(verb: str, resource: str, group: str = "") -> tuple[Permission, ...]:
    """The table's rules for this verb on this resource (of any scope)."""
    return tuple(p for p in PERMISSIONS if (p.verb, p.resource, p.group) == (verb, resource, group))


def explain_forbidden(text: str) -> str | None:
    """For an API server's RBAC denial in ``text``: which permission is missing and what needs
    it; None when ``text`` is no RBAC denial."""
    match = _FORBIDDEN.search(text)
    if match is not None:
        verb, resource, group = match["verb"], match["resource"], match["group"]
    else:
        match = _FORBIDDEN_PATH.search(text)
        if match is None:
            return None
        verb, resource, group = match["verb"], match["path"], ""
    rules = needed(verb, resource, group)
    missing = rules[0].describe() if rules else Permission(verb, resource, group).describe()
    if not rules:
        return f"missing RBAC permission: {missing} (the suite does not ask for it: a bug)"
    return (
        f"missing RBAC permission: {missing}, needed by {rules[0].needed_by}; "
        f'{RBAC_MANIFEST} grants everything the suite needs (README "Permissions")'
    )


# --- RBAC objects (manifests/rbac.yaml) as grants ------------------------------------------------


@dataclass(frozen=True)
class Grant:
    """One (verb, resource, group) an RBAC rule grants, at the cluster scope (ClusterRole with a
    ClusterRoleBinding) or in namespace ``scope`` (Role with a RoleBinding)."""

    verb: str
    resource: str
    group: str = ""
    scope: str = CLUSTER
    resource_names: tuple[str, ...] = ()

    def allows(self, verb: str, resource: str, group: str, namespace: str, name: str) -> bool:
        """Whether this grant authorizes the request, as RBAC's rule matching does (no
        wildcards: the manifest uses none)."""
        return (
            (self.verb, self.resource, self.group) == (verb, resource, group)
            and self.scope in (CLUSTER, namespace)
            and (not self.resource_names or name in self.resource_names)
        )


def grant_of(permission: Permission) -> Grant:
    return Grant(
        permission.verb,
        permission.resource,
        permission.group,
        permission.scope,
        permission.resource_names,
    )


def rbac_grants(documents: Sequence[Mapping[str, Any]]) -> tuple[Grant, ...]:
    """What the Roles and ClusterRoles of ``documents`` (parsed RBAC YAML) grant through the
    bindings among them, expanded to one grant per verb, resource and group."""
    roles: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    bindings: list[tuple[str, str, str]] = []
    for doc in documents:
        kind = str(doc.get("kind"))
        meta = doc.get("metadata") or {}
        namespace = str(meta.get("namespace") or "")
        if kind in ("Role", "ClusterRole"):
            roles[(kind, str(meta.get("name")), namespace)] = list(doc.get("rules") or [])
        elif kind in ("RoleBinding", "ClusterRoleBinding"):
            ref = doc.get("roleRef") or {}
            role_namespace = namespace if ref.get("kind") == "Role" else ""
            bindings.append((str(ref.get("kind")), str(ref.get("name")), role_namespace))
    grants: list[Grant] = []
    for kind, name, namespace in bindings:
        scope = namespace if kind == "Role" else CLUSTER
        for rule in roles.get((kind, name, namespace), []):
            names = tuple(str(n) for n in rule.get("resourceNames") or [])
            for verb in rule.get("verbs") or []:
                grants.extend(
                    Grant(str(verb), str(url), "", scope, names)
                    for url in rule.get("nonResourceURLs") or []
                )
                grants.extend(
                    Grant(str(verb), str(resource), str(group), scope, names)
                    for group in rule.get("apiGroups") or []
                    for resource in rule.get("resources") or []
                )
    return tuple(grants)
