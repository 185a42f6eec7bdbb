"""Every pod gets its own IP: unique in the cluster, from its node's pod range, in ranges that
overlap neither each other, the service range nor the nodes' own addresses, and the IP the
API reports is the address the pod really has."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from kubernetes import client

from conformance.kit.base.errors import ClusterError, CouldNotTest
from conformance.kit.base.settings import Timeouts
from conformance.kit.cluster.api import name_of
from conformance.kit.cluster.cidrs import (
    Finding,
    NodeCIDRs,
    PodAddress,
    PodIPOutsideNodeCIDRs,
    check_pod_ips_in_node_cidrs,
    describe_findings,
    find_cidrs_overlapping_service_range,
    find_duplicate_pod_ips,
    find_node_addresses_in_pod_cidrs,
    find_overlapping_node_cidrs,
    nodes_of_family,
    of_family,
    pod_cidr_skip_reason,
    pods_of_family,
)
from conformance.kit.cluster.discovery import Discovery
from conformance.kit.cluster.inventory import (
    list_nodes,
    list_pods_all_namespaces,
    node_ip_addresses,
    node_pod_cidrs,
    pod_ips,
    service_cluster_ips,
)
from conformance.kit.cluster.ipranges import SOURCE_NODE, ServiceRangeFinder, find_node_pod_ranges
from conformance.kit.cluster.survey import detect_pool_ipam
from conformance.kit.exchanges.prefetch import ItemAnswers, Step, prefetched_by
from conformance.kit.probes.client import address_of_family, require_ok
from conformance.kit.probes.model import ROLE_HOSTPROBE, ROLE_PROBE, ProbeMap
from conformance.kit.verdicts.failures import fail_rule

# Completed pods keep status.podIP after their IP went back to the pool: not live addresses.
FINISHED_PHASES = ("Succeeded", "Failed")


def live_pod_addresses(core: client.CoreV1Api, timeouts: Timeouts) -> list[PodAddress]:
    """Every running or pending pod of the cluster with its IPs (hostNetwork flagged)."""
    addresses = []
    for pod in list_pods_all_namespaces(core, timeouts):
        if pod.status is not None and pod.status.phase in FINISHED_PHASES:
            continue
        addresses.append(
            PodAddress(
                namespace=str(pod.metadata.namespace if pod.metadata else ""),
                name=name_of(pod),
                node=str(pod.spec.node_name or "") if pod.spec else "",
                ips=pod_ips(pod),
                host_network=bool(pod.spec.host_network) if pod.spec else False,
            )
        )
    return addresses


def node_cidrs(core: client.CoreV1Api, timeouts: Timeouts) -> list[NodeCIDRs]:
    return [
        NodeCIDRs(name_of(n), node_pod_cidrs(n), node_ip_addresses(n))
        for n in list_nodes(core, timeouts)
    ]


@pytest.fixture
def nodes_with_pod_cidrs(
    core: client.CoreV1Api, timeouts: Timeouts, family: int
) -> list[NodeCIDRs]:
    """The nodes with their podCIDRs and addresses of the tested family; skips when nodes carry
    none (CNIs with their own IPAM)."""
    nodes = nodes_of_family(node_cidrs(core, timeouts), family)
    reason = pod_cidr_skip_reason(nodes)
    if reason:
        pytest.skip(f"IPv{family}: {reason}")
    return nodes


def fail(rule: str, expected: str, findings_text: str) -> None:
    fail_rule(rule, expected=expected, observed=findings_text)


def fail_on_findings(findings: Sequence[Finding], rule: str, expected: str) -> None:
    """Fail the check with ``findings`` (one line each) as what was observed, if there are any."""
    if findings:
        fail(rule, expected, describe_findings(findings))


def test_required_family_on_every_pod_and_node(
    probe_map: ProbeMap, family: int, discovery: Discovery
) -> None:
    """Every IP family the cluster declares (node podCIDRs, the default/kubernetes Service's
    ipFamilies, ServiceCIDRs), or that --ip-family names, is required: every probe pod in the
    pod network MUST have an IP of that family and every tested node an address of it."""
    why = discovery.family_plan.why_required(family)
    if family not in probe_map.required_families:
        pytest.skip(f"IPv{family} is not required: {why}; the run follows the pods' IPs")
    pods = [
        p.describe()
        for p in probe_map.probes
        if p.role != ROLE_HOSTPROBE and address_of_family(p.pod_ips, family) is None
    ]
    nodes = sorted(
        node
        for node in {p.node for p in probe_map.probes}
        if address_of_family(probe_map.node_addresses.get(node, ()), family) is None
    )
    if pods or nodes:
        fail(
            f"every pod and node MUST have an address of each IP family the cluster serves "
            f"(IPv{family}, {why})",
            f"an IPv{family} address on every pod-network probe and every tested node",
            "; ".join(
                [f"pods without one: {', '.join(pods)}"] * bool(pods)
                + [f"nodes without one: {', '.join(nodes)}"] * bool(nodes)
            ),
        )


@pytest.mark.usefixtures("probe_map")  # the probes add pods on every selected node
def test_pod_ips_unique(core: client.CoreV1Api, timeouts: Timeouts, family: int) -> None:
    """Every pod IP in the cluster (all namespaces, hostNetwork pods excluded) MUST be unique."""
    duplicates = find_duplicate_pod_ips(pods_of_family(live_pod_addresses(core, timeouts), family))
    fail_on_findings(
        duplicates,
        "every pod MUST have its own IP address",
        "no IP held by two live pods",
    )


def outside_every_range(
    findings: Sequence[PodIPOutsideNodeCIDRs], nodes: Sequence[NodeCIDRs]
) -> tuple[list[PodIPOutsideNodeCIDRs], list[str]]:
    """The findings whose IP lies in no node's range at all, and, as text, those inside another
    node's range (borrowed, as Calico IPAM does when a node's blocks are full)."""
    networks = [(n.node, ipaddress.ip_network(c)) for n in nodes for c in n.pod_cidrs]
    outside: list[PodIPOutsideNodeCIDRs] = []
    borrowed: list[str] = []
    for finding in findings:
        ip = ipaddress.ip_address(finding.ip)
        lender = next((node for node, net in networks if ip in net), None)
        if lender is None:
            outside.append(finding)
        else:
            borrowed.append(f"{finding.pod.ref} on {finding.pod.node}: {ip} from {lender}'s range")
    return outside, borrowed


@pytest.mark.node_cidr  # a gate may leave it out: -m "not node_cidr"
def test_pod_ips_inside_node_pod_cidrs(
    core: client.CoreV1Api,
    api_client: client.ApiClient,
    timeouts: Timeouts,
    family: int,
    probe_map: ProbeMap,
    request: pytest.FixtureRequest,
) -> None:
    """Each pod IP MUST lie inside its node's pod ranges: the per-node ranges the IPAM
    publishes (Cilium's CiliumNodes, Calico's IPAM blocks affine to the node), else the node's
    spec.podCIDRs."""
    ranges = find_node_pod_ranges(api_client, node_cidrs(core, timeouts), timeouts)
    nodes = nodes_of_family(ranges.nodes(), family)
    request.node.user_properties.append(("netconform.pod_range_source", ranges.source))
    if not any(n.pod_cidrs for n in nodes):
        unread = f" ({'; '.join(ranges.unreadable)} could not be read)" if ranges.unreadable else ""
        if family in probe_map.required_families and any(n.pod_cidrs for n in ranges.nodes()):
            # Ranges of another family are published, none of this required one: its pod IPs
            # cannot be judged, which is no pass.
            raise CouldNotTest(
                f"IPv{family} is required, but {ranges.source} names no IPv{family} pod range "
                f"on any node{unread}: the IPv{family} pod IPs cannot be judged"
            )
        pytest.skip(
            f"IPv{family}: no per-node pod range is known: {ranges.source} names none{unread}"
        )
    if ranges.source == SOURCE_NODE:
        # An IPAM with pools of its own and no per-node ranges we can read: podCIDRs say nothing.
        ipam = detect_pool_ipam(api_client, timeouts)
        if ipam is not None:
            pytest.skip(ipam.reason())
    pods = pods_of_family(live_pod_addresses(core, timeouts), family)
    report = check_pod_ips_in_node_cidrs(pods, nodes)
    outside = list(report.outside)
    listed = {n.node for n in nodes}
    # A pod on a node with no range of this family (while other nodes have one): its IP comes
    # from no range of its node, which the rule does not allow.
    outside += [
        PodIPOutsideNodeCIDRs(u.pod, u.ip, ()) for u in report.unchecked if u.pod.node in listed
    ]
    unknown = [u for u in report.unchecked if u.pod.node not in listed]
    if unknown:
        raise CouldNotTest(
            f"{len(unknown)} pod IP(s) on nodes the node list no longer names (deleted "
            "meanwhile?) could not be judged: " + "; ".join(u.describe() for u in unknown[:10])
        )
    if ranges.borrows:
        outside, borrowed = outside_every_range(outside, nodes)
        if borrowed:
            request.node.user_properties.append(
                ("netconform.borrowed_pod_ips", "; ".join(borrowed))
            )
    if outside and ranges.unreadable:
        # The IPAM's own ranges may be the ones these IPs came from: no verdict without them.
        raise ClusterError(
            f"{len(outside)} pod IP(s) lie outside the {ranges.source} of their node, but the "
            f"IPAM's own ranges could not be read: {'; '.join(ranges.unreadable)}"
        )
    fail_on_findings(
        outside,
        "a pod's IP MUST come from its node's pod ranges",
        f"every pod IP inside the pod ranges of the node it runs on ({ranges.source})",
    )


def test_node_pod_cidrs_disjoint(nodes_with_pod_cidrs: list[NodeCIDRs]) -> None:
    """Nodes' podCIDRs MUST NOT overlap each other."""
    overlaps = find_overlapping_node_cidrs(nodes_with_pod_cidrs)
    fail_on_findings(
        overlaps,
        "node pod ranges MUST be disjoint",
        "no two nodes share pod addresses",
    )


@pytest.fixture(scope="module")
def service_ranges(
    api_client: client.ApiClient, probe_map: ProbeMap, timeouts: Timeouts
) -> ServiceRangeFinder:
    """The service-range sources, each asked at most once for the module's items (the dry-run
    Service is validated in the run namespace, never stored)."""
    return ServiceRangeFinder(api_client, probe_map.namespace, timeouts)


def test_node_pod_cidrs_outside_service_range(
    core: client.CoreV1Api,
    timeouts: Timeouts,
    family: int,
    nodes_with_pod_cidrs: list[NodeCIDRs],
    service_ranges: ServiceRangeFinder,
    request: pytest.FixtureRequest,
) -> None:
    """Nodes' podCIDRs MUST NOT overlap the service range (from ServiceCIDR objects, kubeadm's
    kubeadm-config, the kube-apiserver pod's --service-cluster-ip-range, or the API server's
    refusal of a ClusterIP outside it)."""
    found = service_ranges.range_of(family)
    request.node.user_properties.append(
        ("netconform.service_range_source", found.source or "unknown")
    )
    if found.source is not None:
        ranges, source = list(found.cidrs), found.source
    else:
        # The range is unknown; an overlap with the one address known to be in it still counts.
        ips = of_family(service_cluster_ips(core, timeouts), family)
        ranges = [str(ipaddress.ip_network(ip)) for ip in ips]
        source = "the ClusterIPs of service default/kubernetes (the range itself is unknown)"
        if not find_cidrs_overlapping_service_range(nodes_with_pod_cidrs, ranges):
            checked = f"; only default/kubernetes' ClusterIP {', '.join(ips)} was checked" * bool(
                ips
            )
            pytest.skip(f"IPv{family} service range unknown: {found.why_unknown()}{checked}")
    overlaps = find_cidrs_overlapping_service_range(nodes_with_pod_cidrs, ranges)
    fail_on_findings(
        overlaps,
        "pod ranges MUST NOT overlap the service range",
        f"node podCIDRs disjoint from {', '.join(ranges)} ({source})",
    )


def test_node_addresses_outside_pod_cidrs(nodes_with_pod_cidrs: list[NodeCIDRs]) -> None:
    """Node addresses MUST NOT lie inside any node's podCIDRs."""
    inside = find_node_addresses_in_pod_cidrs(nodes_with_pod_cidrs)
    fail_on_findings(
        inside,
        "pod ranges MUST NOT contain node addresses",
        "every node address outside every podCIDR",
    )


def address_steps(params: Mapping[str, Any], probe_map: ProbeMap, nonce: str) -> list[Step]:
    """The probe pod's interfaces and their addresses, seen from inside."""
    probe = probe_map.get(ROLE_PROBE, params["probe_node"])
    return [Step("addresses", probe.name, probe.container().name, {"op": "addresses"})]


@prefetched_by(address_steps)
def test_pod_ip_is_interface_address(
    probe_node: str, probe_map: ProbeMap, answers: ItemAnswers
) -> None:
    """The IPs the API reports for a pod (status.podIPs) MUST be addresses of the pod's own
    network interfaces."""
    probe = probe_map.get(ROLE_PROBE, probe_node)
    container = probe.container().name
    answer = require_ok(
        answers["addresses"],
        pod=probe.name,
        container=container,
        what="addresses",
    )
    interface_ips = {
        str(ipaddress.ip_interface(text).ip)
        for interface in answer.get("interfaces", [])
        for text in interface.get("addresses", [])
    }
    missing = [ip for ip in probe.pod_ips if str(ipaddress.ip_address(ip)) not in interface_ips]
    if not probe.pod_ips or missing:
        fail_rule(
            "a pod's reported IP MUST be the address it has inside",
            expected=f"status.podIPs {list(probe.pod_ips)} on the pod's interfaces",
            observed=f"missing {missing or 'all (no podIPs reported)'}; "
            f"interfaces hold {sorted(interface_ips)}",
            pods=[probe.describe()],
            nodes=[probe_node],
        )
