"""Pure CIDR analysis over pods and nodes, for any IP family (via :mod:`ipaddress`).

Inputs are thin dataclasses the caller fills from the API (``PodAddress`` from pod status,
``NodeCIDRs`` from node spec and status). Every check returns findings: small frozen
dataclasses whose ``describe()`` is one failure line for the person on call, naming pods, nodes,
what was expected and what was observed. An empty list means the rule holds.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class CIDRParseError(ValueError):
    """An address or CIDR from the cluster that is not valid IP notation."""


@dataclass(frozen=True)
class PodAddress:
    """A pod's identity, placement and ``status.podIPs``."""

    namespace: str
    name: str
    node: str
    ips: tuple[str, ...]
    host_network: bool = False

    @property
    def ref(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"

    def placed(self) -> str:
        """``namespace/name (node N)``, for failure lines."""
        return f"{self.ref} (node {self.node or '<unscheduled>'})"


@dataclass(frozen=True)
class NodeCIDRs:
    """A node's ``spec.podCIDRs`` and its own addresses (``status.addresses``)."""

    node: str
    pod_cidrs: tuple[str, ...]
    internal_ips: tuple[str, ...] = ()


class Finding(Protocol):
    """Anything a check returns: it can say what is wrong in one line."""

    def describe(self) -> str: ...


def family_name(version: int) -> str:
    """``IPv4`` or ``IPv6``."""
    return f"IPv{version}"


def parse_ip(text: str, *, owner: str = "") -> IPAddress:
    """An address; ``CIDRParseError`` naming ``owner`` when the text is not one."""
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError as exc:
        where = f" of {owner}" if owner else ""
        raise CIDRParseError(f"{text!r}{where} is not an IP address") from exc


def parse_cidr(text: str, *, owner: str = "") -> IPNetwork:
    """A network (host bits tolerated); ``CIDRParseError`` naming ``owner`` when invalid."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        where = f" of {owner}" if owner else ""
        raise CIDRParseError(f"{text!r}{where} is not a CIDR") from exc


def parse_cidr_list(text: str) -> tuple[str, ...]:
    """``"10.96.0.0/12,fd00:10:96::/112"`` (a flag value) as canonical CIDR strings."""
    return tuple(str(parse_cidr(part)) for part in text.split(",") if part.strip())


def _sort_key(address: IPAddress | IPNetwork) -> tuple[int, int, int]:
    if isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return (address.version, int(address), 0)
    return (address.version, int(address.network_address), address.prefixlen)


def _join(items: Iterable[str]) -> str:
    return ", ".join(items) or "none"


# ---------------------------------------------------------------------------------------------
# Pod IP uniqueness.


@dataclass(frozen=True)
class DuplicatePodIP:
    """One pod IP held by more than one pod."""

    ip: str
    pods: tuple[PodAddress, ...]

    def describe(self) -> str:
        holders = _join(pod.placed() for pod in self.pods)
        return (
            f"pod IP {self.ip} is held by {len(self.pods)} pods: {holders}; "
            "expected every pod IP to belong to exactly one pod"
        )


def find_duplicate_pod_ips(pods: Iterable[PodAddress]) -> list[DuplicatePodIP]:
    """Pod IPs held by two or more pods. hostNetwork pods share their node's IP by design and
    are left out. Sorted by family, then address; pods in each group by ``namespace/name``."""
    holders: dict[IPAddress, dict[str, PodAddress]] = defaultdict(dict)
    for pod in pods:
        if pod.host_network:
            continue
        for text in pod.ips:
            holders[parse_ip(text, owner=f"pod {pod.ref}")][pod.ref] = pod
    return [
        DuplicatePodIP(str(ip), tuple(by_ref[ref] for ref in sorted(by_ref)))
        for ip, by_ref in sorted(holders.items(), key=lambda item: _sort_key(item[0]))
        if len(by_ref) > 1
    ]


# ---------------------------------------------------------------------------------------------
# Pod IPs inside their node's podCIDRs.


@dataclass(frozen=True)
class PodIPOutsideNodeCIDRs:
    """A pod IP outside every podCIDR of its node for that IP family."""

    pod: PodAddress
    ip: str
    node_cidrs: tuple[str, ...]

    def describe(self) -> str:
        family = family_name(parse_ip(self.ip).version)
        return (
            f"pod {self.pod.placed()} has IP {self.ip}, outside node {self.pod.node}'s "
            f"{family} podCIDRs {_join(self.node_cidrs)}; expected every pod IP inside its "
            "node's podCIDR of the same family"
        )


@dataclass(frozen=True)
class UncheckedPodIP:
    """A pod IP the containment check could not judge, with the reason."""

    pod: PodAddress
    ip: str
    reason: str

    def describe(self) -> str:
        return f"pod {self.pod.placed()} IP {self.ip} not checked: {self.reason}"


@dataclass(frozen=True)
class ContainmentReport:
    """Outcome of ``check_pod_ips_in_node_cidrs``: violations, and what could not be judged."""

    checked: int
    outside: tuple[PodIPOutsideNodeCIDRs, ...] = field(default_factory=tuple)
    unchecked: tuple[UncheckedPodIP, ...] = field(default_factory=tuple)


def check_pod_ips_in_node_cidrs(
    pods: Iterable[PodAddress], nodes: Iterable[NodeCIDRs]
) -> ContainmentReport:
    """Every pod IP must lie in a podCIDR of its node of the same family (an IPv6 pod IP is
    judged against the node's IPv6 CIDRs only). hostNetwork pods are left out. IPs on nodes
    not given, or of a family the node has no podCIDR for, are returned as ``unchecked``."""
    networks_of: dict[str, list[IPNetwork]] = {
        node.node: [parse_cidr(text, owner=f"node {node.node}") for text in node.pod_cidrs]
        for node in nodes
    }
    checked = 0
    outside: list[PodIPOutsideNodeCIDRs] = []
    unchecked: list[UncheckedPodIP] = []
    for pod in sorted(pods, key=lambda p: (p.namespace, p.name)):
        if pod.host_network:
            continue
        for text in pod.ips:
            ip = parse_ip(text, owner=f"pod {pod.ref}")
            if pod.node not in networks_of:
                unchecked.append(UncheckedPodIP(pod, str(ip), f"node {pod.node!r} is not known"))
                continue
            same_family = [net for net in networks_of[pod.node] if net.version == ip.version]
            if not same_family:
                reason = f"node {pod.node} has no {family_name(ip.version)} podCIDR"
                unchecked.append(UncheckedPodIP(pod, str(ip), reason))
                continue
            checked += 1
            if not any(ip in net for net in same_family):
                cidrs = tuple(str(net) for net in same_family)
                outside.append(PodIPOutsideNodeCIDRs(pod, str(ip), cidrs))
    return ContainmentReport(checked, tuple(outside), tuple(unchecked))


# ---------------------------------------------------------------------------------------------
# Node podCIDRs: presence, overlap between nodes, overlap with services, node addresses.


def nodes_without_pod_cidrs(nodes: Iterable[NodeCIDRs]) -> list[str]:
    """Names of nodes whose ``spec.podCIDRs`` is empty, sorted."""
    return sorted(node.node for node in nodes if not node.pod_cidrs)


def of_family(texts: Iterable[str], version: int) -> tuple[str, ...]:
    """The addresses or CIDRs of ``texts`` of IP ``version`` (4 or 6), in order."""
    return tuple(t for t in texts if ipaddress.ip_network(t, strict=False).version == version)


def nodes_of_family(nodes: Iterable[NodeCIDRs], version: int) -> list[NodeCIDRs]:
    """The nodes with only their podCIDRs and addresses of IP ``version``."""
    return [
        replace(
            n,
            pod_cidrs=of_family(n.pod_cidrs, version),
            internal_ips=of_family(n.internal_ips, version),
        )
        for n in nodes
    ]


def pods_of_family(pods: Iterable[PodAddress], version: int) -> list[PodAddress]:
    """The pods with only their IPs of IP ``version``."""
    return [replace(p, ips=of_family(p.ips, version)) for p in pods]


def pod_cidr_skip_reason(nodes: Sequence[NodeCIDRs]) -> str | None:
    """Why podCIDR checks do not apply to this cluster, or None when they do.

    Many CNIs (Calico, Cilium cluster-pool, cloud VPC IPAM) allocate pod IPs themselves and
    leave ``spec.podCIDRs`` empty on every node; then the podCIDR rules have nothing to judge.
    """
    if not nodes:
        return "no nodes to check"
    if all(not node.pod_cidrs for node in nodes):
        return (
            f"none of the {len(nodes)} nodes carries spec.podCIDRs (the CNI allocates pod IPs "
            "itself); podCIDR checks do not apply"
        )
    return None


@dataclass(frozen=True)
class OverlappingNodeCIDRs:
    """Two nodes whose podCIDRs share addresses."""

    node_a: str
    cidr_a: str
    node_b: str
    cidr_b: str

    def describe(self) -> str:
        return (
            f"podCIDR {self.cidr_a} of node {self.node_a} overlaps podCIDR {self.cidr_b} of "
            f"node {self.node_b}; expected the podCIDRs of different nodes to be disjoint"
        )


def _node_networks(nodes: Iterable[NodeCIDRs]) -> list[tuple[IPNetwork, str]]:
    entries = {
        (parse_cidr(text, owner=f"node {node.node}"), node.node)
        for node in nodes
        for text in node.pod_cidrs
    }
    return sorted(entries, key=lambda entry: (_sort_key(entry[0]), entry[1]))


def find_overlapping_node_cidrs(nodes: Iterable[NodeCIDRs]) -> list[OverlappingNodeCIDRs]:
    """Pairs of podCIDRs of different nodes that overlap, in address order.

    Two CIDRs overlap only when one contains the other, so one sweep over the CIDRs sorted by
    start address (wider first) with a stack of the enclosing ones finds every pair without
    comparing all pairs: linear in nodes plus the number of findings.
    """
    findings: list[OverlappingNodeCIDRs] = []
    enclosing: list[tuple[IPNetwork, str]] = []
    for network, node in _node_networks(nodes):
        enclosing = [
            (outer, owner)
            for outer, owner in enclosing
            if outer.version == network.version
            and int(outer.broadcast_address) >= int(network.network_address)
        ]
        for outer, owner in enclosing:
            if owner != node:
                findings.append(OverlappingNodeCIDRs(owner, str(outer), node, str(network)))
        enclosing.append((network, node))
    return findings


@dataclass(frozen=True)
class NodeCIDROverlapsServiceRange:
    """A node podCIDR sharing addresses with the service ClusterIP range."""

    node: str
    pod_cidr: str
    service_cidr: str

    def describe(self) -> str:
        return (
            f"podCIDR {self.pod_cidr} of node {self.node} overlaps the service range "
            f"{self.service_cidr}; expected pod and service addresses to be disjoint"
        )


def find_cidrs_overlapping_service_range(
    nodes: Iterable[NodeCIDRs], service_cidrs: Sequence[str]
) -> list[NodeCIDROverlapsServiceRange]:
    """Node podCIDRs overlapping any of the service CIDRs (one per family when dual-stack)."""
    services = [parse_cidr(text, owner="the service range") for text in service_cidrs]
    return [
        NodeCIDROverlapsServiceRange(node, str(network), str(service))
        for network, node in _node_networks(nodes)
        for service in services
        if service.version == network.version and service.overlaps(network)
    ]


@dataclass(frozen=True)
class NodeAddressInPodCIDR:
    """A node's own address inside a podCIDR (its own or another node's)."""

    address_node: str
    address: str
    cidr_node: str
    pod_cidr: str

    def describe(self) -> str:
        whose = "its own" if self.address_node == self.cidr_node else f"node {self.cidr_node}'s"
        return (
            f"node {self.address_node} address {self.address} lies inside {whose} podCIDR "
            f"{self.pod_cidr}; expected node addresses outside every pod range"
        )


def find_node_addresses_in_pod_cidrs(nodes: Sequence[NodeCIDRs]) -> list[NodeAddressInPodCIDR]:
    """Node addresses (``internal_ips``) that fall inside any node's podCIDR."""
    networks = _node_networks(nodes)
    findings: list[NodeAddressInPodCIDR] = []
    for node in sorted(nodes, key=lambda n: n.node):
        for text in node.internal_ips:
            address = parse_ip(text, owner=f"node {node.node}")
            findings.extend(
                NodeAddressInPodCIDR(node.node, str(address), owner, str(network))
                for network, owner in networks
                if network.version == address.version and address in network
            )
    return findings


def describe_findings(findings: Sequence[Finding], *, limit: int = 20) -> str:
    """One line per finding, at most ``limit`` of them, then how many more were left out."""
    lines = [finding.describe() for finding in findings[:limit]]
    if len(findings) > limit:
        lines.append(f"... and {len(findings) - limit} more")
    return "\n".join(lines)
