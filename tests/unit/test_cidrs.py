"""CIDR analysis: property checks against plain ipaddress arithmetic, plus the failure text."""

from __future__ import annotations

import ipaddress
from itertools import combinations

import pytest
import urllib3
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes.client.exceptions import ApiException

from conformance.kit.base.errors import ClusterError
from conformance.kit.base.settings import Timeouts
from conformance.kit.cluster import cidrs
from conformance.kit.cluster import survey as cluster
from conformance.kit.cluster.cidrs import (
    CIDRParseError,
    NodeCIDRs,
    PodAddress,
    check_pod_ips_in_node_cidrs,
    describe_findings,
    find_cidrs_overlapping_service_range,
    find_duplicate_pod_ips,
    find_node_addresses_in_pod_cidrs,
    find_overlapping_node_cidrs,
    nodes_without_pod_cidrs,
    parse_cidr_list,
    pod_cidr_skip_reason,
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Small address spaces so generated CIDRs and IPs collide often enough to matter.
ipv4_networks = st.builds(
    lambda base, prefix: ipaddress.ip_network((base << 16, prefix), strict=False),
    st.integers(0xA00, 0xA03),
    st.integers(14, 26),
)
ipv6_networks = st.builds(
    lambda base, prefix: ipaddress.ip_network(
        ((0xFD00 << 112) | (base << 80), prefix), strict=False
    ),
    st.integers(0, 3),
    st.integers(44, 64),
)
networks = st.one_of(ipv4_networks, ipv6_networks)
ipv4_addresses = st.integers((0xA00 << 16), (0xA04 << 16) - 1).map(ipaddress.IPv4Address)
ipv6_addresses = st.integers(0, 3).flatmap(
    lambda base: st.integers(0, 2**18).map(
        lambda low: ipaddress.IPv6Address((0xFD00 << 112) | (base << 80) | low)
    )
)
addresses = st.one_of(ipv4_addresses, ipv6_addresses)
node_names = st.sampled_from([f"node-{i}" for i in range(1, 7)])


@st.composite
def node_lists(draw: st.DrawFn) -> list[NodeCIDRs]:
    names = draw(st.lists(node_names, min_size=1, max_size=6, unique=True))
    return [
        NodeCIDRs(
            node=name,
            pod_cidrs=tuple(str(n) for n in draw(st.lists(networks, max_size=3))),
            internal_ips=tuple(str(a) for a in draw(st.lists(addresses, max_size=2))),
        )
        for name in names
    ]


@st.composite
def pod_lists(draw: st.DrawFn) -> list[PodAddress]:
    count = draw(st.integers(0, 12))
    return [
        PodAddress(
            namespace="ns",
            name=f"pod-{index}",
            node=draw(node_names),
            ips=tuple(str(a) for a in draw(st.lists(addresses, min_size=1, max_size=2))),
            host_network=draw(st.booleans()),
        )
        for index in range(count)
    ]


def cidr_entries(nodes: list[NodeCIDRs]) -> list[tuple[str, Network]]:
    return [(n.node, ipaddress.ip_network(c)) for n in nodes for c in n.pod_cidrs]


@settings(max_examples=150, deadline=None)
@given(node_lists())
def test_overlap_agrees_with_ipaddress_overlaps(nodes: list[NodeCIDRs]) -> None:
    expected = {
        frozenset({(node_a, str(net_a)), (node_b, str(net_b))})
        for (node_a, net_a), (node_b, net_b) in combinations(cidr_entries(nodes), 2)
        if node_a != node_b and net_a.version == net_b.version and net_a.overlaps(net_b)
    }
    found = find_overlapping_node_cidrs(nodes)
    observed = [frozenset({(f.node_a, f.cidr_a), (f.node_b, f.cidr_b)}) for f in found]
    assert set(observed) == expected
    assert len(observed) == len(set(observed)), "each overlapping pair reported once"


@settings(max_examples=100, deadline=None)
@given(node_lists(), st.lists(networks, min_size=1, max_size=2))
def test_service_overlap_agrees_with_ipaddress(
    nodes: list[NodeCIDRs], services: list[Network]
) -> None:
    expected = {
        (node, str(net), str(service))
        for node, net in cidr_entries(nodes)
        for service in services
        if net.version == service.version and net.overlaps(service)
    }
    found = find_cidrs_overlapping_service_range(nodes, [str(s) for s in services])
    assert {(f.node, f.pod_cidr, f.service_cidr) for f in found} == expected


@settings(max_examples=100, deadline=None)
@given(node_lists())
def test_node_addresses_in_pod_cidrs_agrees_with_ipaddress(nodes: list[NodeCIDRs]) -> None:
    expected = {
        (node.node, address, owner, str(net))
        for node in nodes
        for address in node.internal_ips
        for owner, net in cidr_entries(nodes)
        if ipaddress.ip_address(address) in net
    }
    found = find_node_addresses_in_pod_cidrs(nodes)
    assert {(f.address_node, f.address, f.cidr_node, f.pod_cidr) for f in found} == expected


@settings(max_examples=100, deadline=None)
@given(pod_lists())
def test_duplicates_are_exactly_ips_of_two_or_more_pod_network_pods(pods: list[PodAddress]) -> None:
    holders: dict[str, set[str]] = {}
    for pod in pods:
        if not pod.host_network:
            for ip in pod.ips:
                holders.setdefault(ip, set()).add(pod.ref)
    expected = {ip: refs for ip, refs in holders.items() if len(refs) > 1}
    found = find_duplicate_pod_ips(pods)
    assert {f.ip: {p.ref for p in f.pods} for f in found} == expected
    assert all(not p.host_network for f in found for p in f.pods)


@settings(max_examples=100, deadline=None)
@given(pod_lists(), node_lists())
def test_containment_judges_each_ip_against_its_own_family(
    pods: list[PodAddress], nodes: list[NodeCIDRs]
) -> None:
    cidrs_of = {n.node: [ipaddress.ip_network(c) for c in n.pod_cidrs] for n in nodes}
    report = check_pod_ips_in_node_cidrs(pods, nodes)
    outside = {(f.pod.ref, f.ip) for f in report.outside}
    unchecked = {(u.pod.ref, u.ip) for u in report.unchecked}
    for pod in pods:
        for text in pod.ips:
            key = (pod.ref, text)
            if pod.host_network:
                assert key not in outside | unchecked
                continue
            ip = ipaddress.ip_address(text)
            same_family = [n for n in cidrs_of.get(pod.node, []) if n.version == ip.version]
            if not same_family:
                assert key in unchecked
            else:
                assert (key in outside) == (not any(ip in n for n in same_family))
    assert report.checked == sum(
        1
        for pod in pods
        if not pod.host_network
        for text in pod.ips
        if any(n.version == ipaddress.ip_address(text).version for n in cidrs_of.get(pod.node, []))
    )


def test_ipv6_pod_ip_is_judged_only_against_ipv6_cidrs() -> None:
    node = NodeCIDRs("node-1", ("10.244.1.0/24", "fd00:10:244:1::/64"))
    inside = PodAddress("ns", "good", "node-1", ("10.244.1.5", "fd00:10:244:1::5"))
    wrong_v6 = PodAddress("ns", "bad", "node-1", ("10.244.1.6", "fd00:10:244:2::6"))
    report = check_pod_ips_in_node_cidrs([inside, wrong_v6], [node])
    assert report.checked == 4
    assert [(f.pod.name, f.ip, f.node_cidrs) for f in report.outside] == [
        ("bad", "fd00:10:244:2::6", ("fd00:10:244:1::/64",))
    ]
    line = report.outside[0].describe()
    assert "ns/bad (node node-1)" in line
    assert "fd00:10:244:2::6" in line
    assert "IPv6 podCIDRs fd00:10:244:1::/64" in line
    assert "10.244.1.0/24" not in line


def test_ip_of_a_family_without_cidr_is_unchecked_not_passed() -> None:
    node = NodeCIDRs("node-1", ("10.244.1.0/24",))
    pod = PodAddress("ns", "dual", "node-1", ("10.244.1.5", "fd00::5"))
    stray = PodAddress("ns", "stray", "node-9", ("10.244.9.5",))
    report = check_pod_ips_in_node_cidrs([pod, stray], [node])
    assert report.checked == 1
    assert not report.outside
    reasons = [u.describe() for u in report.unchecked]
    assert reasons == [
        "pod ns/dual (node node-1) IP fd00::5 not checked: node node-1 has no IPv6 podCIDR",
        "pod ns/stray (node node-9) IP 10.244.9.5 not checked: node 'node-9' is not known",
    ]


def test_duplicate_description_names_every_holder() -> None:
    pods = [
        PodAddress("ns", "b", "node-2", ("10.244.0.7",)),
        PodAddress("ns", "a", "node-1", ("10.244.0.7",)),
        PodAddress("kube-system", "proxy", "node-1", ("10.244.0.7",), host_network=True),
        PodAddress("ns", "c", "node-1", ("fd00::7", "fd00:0::7")),  # one pod, one IP twice
    ]
    (finding,) = find_duplicate_pod_ips(pods)
    assert finding.describe() == (
        "pod IP 10.244.0.7 is held by 2 pods: ns/a (node node-1), ns/b (node node-2); "
        "expected every pod IP to belong to exactly one pod"
    )


def test_overlap_description_and_same_node_entries() -> None:
    nodes = [
        NodeCIDRs("node-1", ("10.244.0.0/16", "10.244.0.0/16")),
        NodeCIDRs("node-2", ("10.244.1.0/24",)),
        NodeCIDRs("node-3", ("10.244.0.0/16",)),
        NodeCIDRs("node-4", ("10.245.0.0/24",)),
    ]
    lines = [f.describe() for f in find_overlapping_node_cidrs(nodes)]
    assert lines == [
        "podCIDR 10.244.0.0/16 of node node-1 overlaps podCIDR 10.244.0.0/16 of node node-3; "
        "expected the podCIDRs of different nodes to be disjoint",
        "podCIDR 10.244.0.0/16 of node node-1 overlaps podCIDR 10.244.1.0/24 of node node-2; "
        "expected the podCIDRs of different nodes to be disjoint",
        "podCIDR 10.244.0.0/16 of node node-3 overlaps podCIDR 10.244.1.0/24 of node node-2; "
        "expected the podCIDRs of different nodes to be disjoint",
    ]


def test_service_and_node_address_descriptions() -> None:
    nodes = [
        NodeCIDRs("node-1", ("10.96.0.0/24",), ("10.96.0.1",)),
        NodeCIDRs("node-2", ("10.244.2.0/24",), ("10.96.0.9",)),
    ]
    (service,) = find_cidrs_overlapping_service_range(
        nodes, parse_cidr_list("10.96.0.0/12, fd00::/108")
    )
    assert service.describe() == (
        "podCIDR 10.96.0.0/24 of node node-1 overlaps the service range 10.96.0.0/12; "
        "expected pod and service addresses to be disjoint"
    )
    own, other = find_node_addresses_in_pod_cidrs(nodes)
    assert (
        "node node-1 address 10.96.0.1 lies inside its own podCIDR 10.96.0.0/24" in own.describe()
    )
    assert "node node-2 address 10.96.0.9 lies inside node node-1's podCIDR" in other.describe()


def test_skip_reason_only_when_no_node_carries_a_cidr() -> None:
    bare = [NodeCIDRs("node-1", ()), NodeCIDRs("node-2", ())]
    reason = pod_cidr_skip_reason(bare)
    assert reason is not None
    assert "none of the 2 nodes carries spec.podCIDRs" in reason
    partial = [NodeCIDRs("node-1", ("10.244.1.0/24",)), NodeCIDRs("node-2", ())]
    assert pod_cidr_skip_reason(partial) is None
    assert nodes_without_pod_cidrs(partial) == ["node-2"]
    assert pod_cidr_skip_reason([]) == "no nodes to check"


def test_bad_cluster_data_raises_naming_the_owner() -> None:
    with pytest.raises(CIDRParseError, match="node node-1"):
        find_overlapping_node_cidrs([NodeCIDRs("node-1", ("10.244.1.0/33",))])
    with pytest.raises(CIDRParseError, match="pod ns/p"):
        find_duplicate_pod_ips([PodAddress("ns", "p", "node-1", ("not-an-ip",))])


def test_describe_findings_limits_lines() -> None:
    nodes = [NodeCIDRs(f"node-{i}", ("10.0.0.0/8",)) for i in range(5)]
    findings = find_overlapping_node_cidrs(nodes)
    assert len(findings) == 10
    text = describe_findings(findings, limit=3)
    assert text.splitlines()[-1] == "... and 7 more"
    assert len(text.splitlines()) == 4


def test_parse_cidr_list_canonicalises() -> None:
    assert parse_cidr_list("10.96.0.1/12,,fd00:0:0::/108 ") == ("10.96.0.0/12", "fd00::/108")


# ---------------------------------------------------------------------------------------------
# IPAM that ignores node podCIDRs (Calico IPPools), found through the API without ever raising.


class _CustomObjects:
    """``list_cluster_custom_object`` answering from a table: a dict, or an exception to raise."""

    def __init__(self, answers: dict[tuple[str, str, str], object]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, str, str]] = []

    def list_cluster_custom_object(
        self, group: str, version: str, plural: str, **_: object
    ) -> object:
        self.asked.append((group, version, plural))
        answer = self.answers.get((group, version, plural), ApiException(status=404))
        if isinstance(answer, BaseException):
            raise answer
        return answer


V1_POOLS = ("crd.projectcalico.org", "v1", "ippools")
V3_POOLS = ("projectcalico.org", "v3", "ippools")
POOL = {"metadata": {"name": "default-ipv4-ippool"}, "spec": {"cidr": "192.168.0.0/16"}}


def detect(
    monkeypatch: pytest.MonkeyPatch, answers: dict[tuple[str, str, str], object]
) -> tuple[cluster.PoolIPAM | None, list[tuple[str, str, str]]]:
    fake = _CustomObjects(answers)
    monkeypatch.setattr(cluster.client, "CustomObjectsApi", lambda api: fake)
    return cluster.detect_pool_ipam(None, Timeouts()), fake.asked  # type: ignore[arg-type]


def test_calico_ippools_are_found(monkeypatch: pytest.MonkeyPatch) -> None:
    found, asked = detect(monkeypatch, {V1_POOLS: {"items": [POOL, {"metadata": {}}]}})
    assert found is not None
    assert asked == [V1_POOLS]
    assert found.ipam == "Calico IPAM"
    reason = found.reason()
    assert "default-ipv4-ippool (192.168.0.0/16)" in reason
    assert "2 ippools.crd.projectcalico.org/v1" in reason
    assert "node podCIDR rule does not apply" in reason


@pytest.mark.parametrize(
    "v1_answer",
    [
        ApiException(status=404),  # not served: the v3 API is asked next
        ApiException(status=403),  # forbidden: the same
        ApiException(status=500),  # any other failure: the same, never raised
        urllib3.exceptions.MaxRetryError(None, "/apis", "connection refused"),
        {"items": []},  # the CRD exists but holds no pool
    ],
)
def test_v3_pools_found_whatever_v1_says(
    monkeypatch: pytest.MonkeyPatch, v1_answer: object
) -> None:
    found, asked = detect(monkeypatch, {V1_POOLS: v1_answer, V3_POOLS: {"items": [POOL]}})
    assert asked == [V1_POOLS, V3_POOLS]
    assert found is not None
    assert found.resource == "ippools.projectcalico.org/v3"


@pytest.mark.parametrize(
    "answer",
    [
        ApiException(status=404),
        ApiException(status=503),
        urllib3.exceptions.MaxRetryError(None, "/apis", "connection refused"),
        {"items": []},
        {"kind": "Status"},  # no items at all
        "not json",
    ],
)
def test_no_pools_means_no_pool_ipam(monkeypatch: pytest.MonkeyPatch, answer: object) -> None:
    found, asked = detect(monkeypatch, {V1_POOLS: answer, V3_POOLS: answer})
    assert found is None
    assert asked == [V1_POOLS, V3_POOLS]


def test_a_forbidden_pool_list_without_pools_elsewhere_is_could_not_test(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # RBAC refusing the list leaves open whether Calico IPAM runs: never read as "absent".
    with pytest.raises(ClusterError, match=r"list ippools\.crd\.projectcalico\.org"):
        detect(monkeypatch, {V1_POOLS: ApiException(status=403)})


def test_family_filters_keep_only_that_family() -> None:
    node = NodeCIDRs("n1", ("10.244.0.0/24", "fd00:10:244::/64"), ("172.18.0.2", "fd00:172:18::2"))
    pod = PodAddress("ns", "p", "n1", ("10.244.0.5", "fd00:10:244::5"))
    assert cidrs.of_family(["10.96.0.1", "fd00:10:96::1", "10.96.0.0/12"], 6) == ("fd00:10:96::1",)
    (v6,) = cidrs.nodes_of_family([node], 6)
    assert (v6.pod_cidrs, v6.internal_ips) == (("fd00:10:244::/64",), ("fd00:172:18::2",))
    (v4,) = cidrs.pods_of_family([pod], 4)
    assert v4.ips == ("10.244.0.5",)
    assert v4.ref == "ns/p"
    # An IPv4-only node has nothing of IPv6: the podCIDR checks of that family skip.
    (empty,) = cidrs.nodes_of_family([NodeCIDRs("n2", ("10.244.1.0/24",))], 6)
    assert cidrs.pod_cidr_skip_reason([empty]) is not None
