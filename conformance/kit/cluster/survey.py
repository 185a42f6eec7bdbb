"""Gathering the cluster's facts for the report (`cluster_facts`): the server version, the
Service range, the CNI and pool IPAMs.

Which CNI a cluster runs, as far as its DaemonSets tell: the well-known agents' DaemonSets
(calico-node, cilium, kube-flannel-ds...) name it; anything else is ``unknown``
(`recognise_cni` is pure; `detect_cni` makes the one list request)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from conformance.kit.base.errors import ClusterError
from conformance.kit.base.settings import Settings, Timeouts
from conformance.kit.cluster.api import describe_api_error, name_of
from conformance.kit.cluster.inventory import node_pod_cidrs
from conformance.kit.cluster.ipranges import ServiceRangeFinder

if TYPE_CHECKING:  # discovery builds on this module
    from conformance.kit.cluster.discovery import Discovery

from conformance.kit.cluster.facts import CNI_UNKNOWN, ClusterFacts

#: Well-known CNI DaemonSets (the name, or its prefix before ``-``) -> the CNI's name.
CNI_DAEMONSETS = (
    ("calico-node", "Calico"),
    ("cilium", "Cilium"),
    ("kube-flannel-ds", "Flannel"),
    ("weave-net", "Weave Net"),
    ("antrea-agent", "Antrea"),
    ("kindnet", "kindnet"),
    ("kube-router", "kube-router"),
    ("aws-node", "Amazon VPC CNI"),
    ("azure-cni", "Azure CNI"),
    ("azure-cns", "Azure CNI"),
    ("canal", "Canal"),
    ("kube-ovn-cni", "Kube-OVN"),
    ("ovnkube-node", "OVN-Kubernetes"),
)
SYSTEM_NAMESPACE = "kube-system"


def _meta(daemonset: Any) -> tuple[str, str]:
    meta = getattr(daemonset, "metadata", None)
    return (str(getattr(meta, "namespace", "") or ""), str(getattr(meta, "name", "") or ""))


def _image(daemonset: Any) -> str | None:
    spec = getattr(daemonset, "spec", None)
    template = getattr(spec, "template", None)
    pod_spec = getattr(template, "spec", None)
    containers = getattr(pod_spec, "containers", None) or []
    return str(containers[0].image) if containers and containers[0].image else None


def recognise_cni(daemonsets: Iterable[Any]) -> tuple[str, str]:
    """(CNI, evidence) from DaemonSets (client models): the first well-known one, kube-system's
    before other namespaces', e.g. ``("Cilium", "DaemonSet kube-system/cilium, image
    quay.io/cilium/cilium:v1.15.1")``; ``("unknown", "no well-known CNI DaemonSet among N
    DaemonSets")`` otherwise."""
    listed = sorted(daemonsets, key=lambda d: _meta(d)[0] != SYSTEM_NAMESPACE)
    for daemonset in listed:
        namespace, name = _meta(daemonset)
        for known, cni in CNI_DAEMONSETS:
            if name == known or name.startswith(known + "-"):
                image = _image(daemonset)
                shown = f", image {image}" if image else ""
                return cni, f"DaemonSet {namespace}/{name}{shown}"
    return CNI_UNKNOWN, f"no well-known CNI DaemonSet among {len(listed)} DaemonSets"


def detect_cni(api: client.ApiClient, timeouts: Timeouts) -> tuple[str, str]:
    """(CNI, evidence) from the cluster's DaemonSets (see `conformance.kit.cluster.facts`): one list
    request, no retries; a refused or unserved list is ``unknown``, the evidence saying why."""
    try:
        listed = client.AppsV1Api(api).list_daemon_set_for_all_namespaces(
            _request_timeout=timeouts.api_request
        )
    except ApiException as exc:
        return CNI_UNKNOWN, f"DaemonSets not readable: HTTP {exc.status} {exc.reason or ''}".strip()
    except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
        return CNI_UNKNOWN, f"DaemonSets not readable: {describe_api_error(exc)}"
    return recognise_cni(listed.items or [])


def cluster_facts(
    api: client.ApiClient,
    nodes: Sequence[client.V1Node],
    discovery: Discovery,
    settings: Settings,
    namespace: str,
) -> ClusterFacts:
    """Facts about the cluster under test for the report. The Service range comes from the
    same finder as the podCIDR check's (`ServiceRangeFinder`: ServiceCIDRs, kubeadm-config,
    the kube-apiserver flag, a dry-run Service in ``namespace``), per tested family."""
    try:
        version = client.VersionApi(api).get_code(_request_timeout=settings.timeouts.api_request)
        server_version = str(version.git_version)
    except (ApiException, urllib3.exceptions.HTTPError) as exc:
        server_version = f"unknown ({describe_api_error(exc)})"
    by_name = {name_of(n): n for n in nodes}
    probed = [by_name[n] for n in discovery.nodes if n in by_name]
    finder = ServiceRangeFinder(api, namespace, settings.timeouts)
    services = [c for f in discovery.families for c in finder.range_of(f).cidrs]
    cni, cni_evidence = detect_cni(api, settings.timeouts)
    return ClusterFacts(
        server_version=server_version,
        node_count=len(nodes),
        nodes_tested=discovery.nodes,
        pod_cidrs=tuple(f"{name_of(n)}={c}" for n in probed for c in node_pod_cidrs(n)),
        service_cidr=",".join(services) or None,
        ip_families=tuple(f"ipv{f}" for f in discovery.families),
        probe_image=settings.probe_image,
        cni=cni,
        cni_evidence=cni_evidence,
    )


# --- IPAM ------------------------------------------------------------------------------------

#: IPAMs that allocate pod IPs from pools of their own and ignore ``node.spec.podCIDR`` by
#: design, found by their pool resources: (IPAM, API group, version, plural).
POOL_IPAM_RESOURCES = (
    ("Calico IPAM", "crd.projectcalico.org", "v1", "ippools"),
    ("Calico IPAM", "projectcalico.org", "v3", "ippools"),
)


@dataclass(frozen=True)
class PoolIPAM:
    """An IPAM found in the cluster that hands out pod IPs from its own pools."""

    ipam: str
    resource: str
    pools: tuple[str, ...]

    def reason(self) -> str:
        """Why the podCIDR containment rule does not apply, for the skip message."""
        shown = ", ".join(self.pools[:5]) + (" ..." if len(self.pools) > 5 else "")
        return (
            f"{self.ipam} allocates pod IPs from its own pools, not from node podCIDRs "
            f"({len(self.pools)} {self.resource}: {shown}); the node podCIDR rule does not apply"
        )


def _pool_description(item: Any) -> str:
    if not isinstance(item, Mapping):
        return "?"
    meta = item.get("metadata") or {}
    spec = item.get("spec") or {}
    name = str(meta.get("name") or "?") if isinstance(meta, Mapping) else "?"
    cidr = spec.get("cidr") if isinstance(spec, Mapping) else None
    return f"{name} ({cidr})" if cidr else name


def detect_pool_ipam(api: client.ApiClient, timeouts: Timeouts) -> PoolIPAM | None:
    """The pool-based IPAM the cluster runs (Calico IPPools exist), or ``None``.

    One request per known resource, no retries. A resource the server does not serve (404)
    counts as absent, and so does any other failure but one: when no resource showed pools and
    RBAC forbade a list (403), whether the rule applies is unknown, and `ClusterError` names
    the missing permission.
    """
    custom = client.CustomObjectsApi(api)
    forbidden: list[str] = []
    for ipam, group, version, plural in POOL_IPAM_RESOURCES:
        try:
            listed = custom.list_cluster_custom_object(
                group, version, plural, _request_timeout=timeouts.api_request
            )
        except ApiException as exc:
            if exc.status == 403:  # not "absent": unknown, unless another resource answers
                forbidden.append(f"list {plural}.{group}: {describe_api_error(exc)}")
            continue
        except (urllib3.exceptions.HTTPError, OSError, ValueError):
            continue
        items = listed.get("items") if isinstance(listed, Mapping) else None
        if isinstance(items, list) and items:
            return PoolIPAM(
                ipam=ipam,
                resource=f"{plural}.{group}/{version}",
                pools=tuple(_pool_description(item) for item in items),
            )
    if forbidden:
        raise ClusterError("; ".join(forbidden))
    return None
