"""The pods' resolver as kubelet writes it, and what the DNS checks make of it on each node.

kubelet (``pkg/kubelet/network/dns/dns.go``, ``GetPodDNS``) gives a pod with ``dnsPolicy:
ClusterFirst``:

- with cluster DNS configured (``clusterDNS``, ``--cluster-dns``): those nameservers only, the
  search list ``<namespace>.svc.<domain> svc.<domain> <domain>`` before the node's own
  (``clusterDomain``), and ``ndots:5``;
- without: the node's own resolv.conf (kubelet's ``resolvConf``), exactly as a pod with
  ``dnsPolicy: Default`` gets it, and a Warning event ``MissingClusterDNS``.

So the suite tests the cluster DNS through whatever nameserver kubelet wrote into a
ClusterFirst pod of each node, whatever the DNS Service is called (``kube-dns``,
``rke2-coredns-rke2-coredns``...), and tells "no cluster DNS" by comparing that pod's resolver
with a Default-policy pod's of the same node (the hostNetwork probe). Pure: the resolvers are
read by `conformance.kit.probes.service_deployment.read_resolvers`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from conformance.kit.base.jsondata import JSONData

#: Where a pod's resolver search list does not say (kubelet's default ``clusterDomain``).
DEFAULT_CLUSTER_DOMAIN = "cluster.local"

#: What the DNS checks do on a node (`DNSPlan.action`).
DNS_TEST = "test"  # through the pod's resolver
DNS_SKIP = "skip"  # kubelet configures no cluster DNS on any tested node
DNS_BROKEN = "broken"  # this node's kubelet configures none while other nodes' do
DNS_UNTESTED = "untested"  # the resolvers could not be read: could not test

#: How a node's kubelet configured a ClusterFirst pod's resolver (`kubelet_dns`).
CLUSTER_FIRST = "cluster-first"  # cluster nameservers and the cluster search list
CLUSTER_NO_DOMAIN = "cluster-without-domain"  # cluster nameservers, no cluster search list
NODE_FALLBACK = "node-fallback"  # the node's own resolv.conf: no cluster DNS
UNKNOWN = "unknown"


def cluster_domain_from_search(search: Sequence[str], namespace: str) -> str | None:
    """The cluster domain in a ClusterFirst pod's resolver search list (kubelet writes
    ``<namespace>.svc.<domain> svc.<domain> <domain>``); None when the list has no such entry."""
    head = f"{namespace}.svc."
    for entry in search:
        name = entry.rstrip(".")
        if name.startswith(head) and len(name) > len(head):
            return name[len(head) :]
    return None


@dataclass(frozen=True)
class Resolver(JSONData):
    """A pod's /etc/resolv.conf as the agent reads it (``info``'s ``resolver``)."""

    nameservers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    @classmethod
    def from_info(cls, raw: Mapping[str, Any] | None) -> Resolver | None:
        """From the agent's ``info`` answer's ``resolver`` (None: the file was unreadable)."""
        if not isinstance(raw, Mapping):
            return None
        return cls(
            nameservers=tuple(str(s) for s in raw.get("nameservers") or ()),
            search=tuple(str(s) for s in raw.get("search") or ()),
            options=tuple(str(s) for s in raw.get("options") or ()),
        )

    def same_as(self, other: Resolver) -> bool:
        """The same configuration (options in any order: kubelet merges them through a map)."""
        return (
            self.nameservers == other.nameservers
            and tuple(s.rstrip(".") for s in self.search)
            == tuple(s.rstrip(".") for s in other.search)
            and sorted(self.options) == sorted(other.options)
        )

    def describe(self) -> str:
        """``nameserver 10.96.0.10; search a b c; options ndots:5``, as a person reads the file."""
        parts = [
            f"nameserver {' '.join(self.nameservers)}" if self.nameservers else "no nameserver"
        ]
        parts.append(f"search {' '.join(self.search)}" if self.search else "no search list")
        if self.options:
            parts.append(f"options {' '.join(self.options)}")
        return "; ".join(parts)


@dataclass(frozen=True)
class NodeResolvers(JSONData):
    """What one node's kubelet wrote: for the ClusterFirst probe pod ``pod_name`` and, only where
    that is not a cluster-first configuration, for the Default-policy pod ``node_pod_name`` (the
    node's own resolv.conf). ``error``: a resolver could not be read."""

    pod_name: str
    pod: Resolver | None = None
    node_pod_name: str = ""
    node: Resolver | None = None
    error: str | None = None


@dataclass(frozen=True)
class DNSPlan:
    """What the DNS checks do on one node: `DNS_TEST` through ``resolver`` with the cluster
    ``domain``; `DNS_SKIP`, `DNS_BROKEN` or `DNS_UNTESTED` with the ``reason``. ``note``: what
    a person should know about a tested resolver (no cluster domain in its search list)."""

    action: str
    reason: str = ""
    resolver: Resolver | None = None
    domain: str = DEFAULT_CLUSTER_DOMAIN
    note: str = ""


def kubelet_dns(found: NodeResolvers, namespace: str) -> str:
    """How the node's kubelet configured its ClusterFirst pod: `CLUSTER_FIRST` (the cluster
    search list of ``namespace``), `NODE_FALLBACK` (the node's own resolv.conf, what kubelet
    does without cluster DNS), `CLUSTER_NO_DOMAIN` (neither: cluster nameservers without a
    cluster domain), `UNKNOWN` (not read)."""
    if found.error is not None or found.pod is None:
        return UNKNOWN
    if cluster_domain_from_search(found.pod.search, namespace) is not None:
        return CLUSTER_FIRST
    if found.node is None:
        return UNKNOWN
    return NODE_FALLBACK if found.pod.same_as(found.node) else CLUSTER_NO_DOMAIN


def needs_node_resolver(found: NodeResolvers, namespace: str) -> bool:
    """Whether the node's own resolv.conf must be read to tell what the pod's resolver is."""
    return (
        found.error is None
        and found.pod is not None
        and cluster_domain_from_search(found.pod.search, namespace) is None
    )


def plan_dns(node: str, resolvers: Mapping[str, NodeResolvers], namespace: str) -> DNSPlan:
    """The DNS checks' plan on ``node`` from every tested node's resolvers: test through the
    pod's resolver wherever kubelet configured a cluster DNS; skip only when no tested node's
    kubelet configures one; a node without one among nodes with one is broken (its pods cannot
    resolve the names the other nodes' pods can)."""
    found = resolvers.get(node)
    if found is None:
        return DNSPlan(DNS_UNTESTED, f"the run did not read the resolver of {node}'s pods")
    kinds = {name: kubelet_dns(r, namespace) for name, r in resolvers.items()}
    kind = kinds[node]
    if kind == UNKNOWN:
        why = found.error or (
            f"{found.pod_name}'s /etc/resolv.conf could not be read"
            if found.pod is None
            else f"the node's own resolv.conf ({found.node_pod_name}) could not be read"
        )
        return DNSPlan(DNS_UNTESTED, f"the resolver kubelet wrote on {node} is unknown: {why}")
    assert found.pod is not None
    if kind == CLUSTER_FIRST:
        domain = cluster_domain_from_search(found.pod.search, namespace)
        return DNSPlan(DNS_TEST, resolver=found.pod, domain=domain or DEFAULT_CLUSTER_DOMAIN)
    if kind == CLUSTER_NO_DOMAIN:
        note = (
            f"kubelet on {node} names nameservers of its own but no cluster domain (no "
            f"{namespace}.svc.<domain> in the search list); names are looked up in "
            f"{DEFAULT_CLUSTER_DOMAIN}"
        )
        return DNSPlan(DNS_TEST, resolver=found.pod, note=note)
    with_dns = sorted(n for n, k in kinds.items() if k in (CLUSTER_FIRST, CLUSTER_NO_DOMAIN))
    if with_dns:
        example = resolvers[with_dns[0]].pod
        named = example.describe() if example is not None else "?"
        return DNSPlan(
            DNS_BROKEN,
            f"kubelet on {node} configures no cluster DNS (ClusterFirst pods get the node's own "
            f"resolv.conf: {found.pod.describe()}), while kubelet on {', '.join(with_dns)} "
            f"configures one ({with_dns[0]}: {named})",
            resolver=found.pod,
        )
    # The same text on every node, so the rule line says it once.
    first = min(n for n, k in kinds.items() if k == NODE_FALLBACK)
    example = resolvers[first].pod
    return DNSPlan(
        DNS_SKIP,
        "kubelet configures no cluster DNS on any tested node: ClusterFirst pods get the "
        f"node's own resolv.conf ({first}: {example.describe() if example else '?'}), as "
        "kubelet does without clusterDNS (--cluster-dns)",
        resolver=found.pod,
    )
