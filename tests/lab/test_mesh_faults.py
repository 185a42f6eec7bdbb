"""The whole rule at the packet level, on a 3-node lab with two pods per node: every ordered
node pair, same-node traffic on every node, each node's own stack to every pod, and full-size
packets between every pair. A healthy lab carries every path with the pods' own addresses;
each fault of issue 13 breaks exactly its paths, in each IP family of the lab.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from network_kit import LabPod, NetworkKit, Probe

from netlab.dataplane.netfaults import (
    LOSSY_PAIR_DROP,
    PMTU_BLACKHOLE_MTU,
    lossy_pair,
    node_fault_rules,
    one_way_pair,
    second_node,
    uplink_mtu,
)
from netlab.dataplane.nsexec import run_in_netns
from netlab.dataplane.topology import plan_ipam_ranges
from netlab.spec import LabSpec, NodePlan

pytestmark = pytest.mark.needs_lab

POD_MTU = 1500  # the pods' eth0 (and the CNI bridge's); only pmtu-blackhole shrinks an uplink
SMALL_KINDS = ("tcp", "udp", "icmp")
FULL_SIZE_KINDS = ("tcp-bulk", "udp-full", "icmp-full")
MESH_FAULTS = [
    "one-way-pair-drop",
    "same-node-drop-last",
    "host-to-remote-pods-blocked",
    "pmtu-blackhole",
]


@dataclass(frozen=True)
class MeshPath:
    """One probe of the mesh: from a namespace to an address, and what a healthy lab shows."""

    source: str  # network namespace
    kind: str
    host: str
    healthy: str  # the peer address seen, the replying address (ICMP), or "<n> bytes"


class Mesh:
    """Two pods (``first``, ``second``) per node, each running an echo server."""

    def __init__(self, spec: LabSpec, kit: NetworkKit) -> None:
        ranges = plan_ipam_ranges(spec)
        self.spec = spec
        self.nodes = spec.node_plans()
        self.first: dict[str, LabPod] = {}
        self.second: dict[str, LabPod] = {}
        for plan in self.nodes:
            self.first[plan.name] = kit.add_pod(spec, plan, ranges[plan.name], 10)
            self.second[plan.name] = kit.add_pod(spec, plan, ranges[plan.name], 11)
        for pod in [*self.first.values(), *self.second.values()]:
            kit.serve(pod.netns)

    def paths(self, version: int) -> dict[str, MeshPath]:
        """Path id -> path, for IPv``version``. Ids name the places: ``tcp node-1->node-3``,
        ``udp same node-2``, ``icmp host node-2->node-1``, ``tcp-bulk node-1->node-1``."""
        found: dict[str, MeshPath] = {}
        header = 40 if version == 6 else 20
        full_size = f"{POD_MTU - header - 8} bytes"  # UDP and ICMP: both 8-byte headers
        for source in self.nodes:
            for target in self.nodes:
                src = self.first[source.name]
                # Same node: first -> second; across nodes: first -> first.
                dst = (self.second if source is target else self.first)[target.name]
                where = f"{source.name}->{target.name}"
                src_ip, dst_ip = src.ip_of(version), dst.ip_of(version)
                for kind in SMALL_KINDS:
                    seen = dst_ip if kind == "icmp" else src_ip
                    name = f"same {source.name}" if source is target else where
                    found[f"{kind} {name}"] = MeshPath(src.netns, kind, dst_ip, seen)
                for kind in FULL_SIZE_KINDS:
                    size = f"{1 << 20} bytes" if kind == "tcp-bulk" else full_size
                    found[f"{kind} {where}"] = MeshPath(src.netns, kind, dst_ip, size)
                # The node's own stack: local pods see the bridge's address, remote pods the
                # node's own address.
                host_seen = (
                    src.gateway_of(version) if source is target else node_ip(source, version)
                )
                target_ip = self.first[target.name].ip_of(version)
                for kind in SMALL_KINDS:
                    seen = target_ip if kind == "icmp" else host_seen
                    found[f"{kind} host {where}"] = MeshPath(source.netns, kind, target_ip, seen)
        # The other direction of every same-node pair.
        for plan in self.nodes:
            back_src, back_dst = self.second[plan.name], self.first[plan.name]
            for kind in SMALL_KINDS:
                seen = back_dst.ip_of(version) if kind == "icmp" else back_src.ip_of(version)
                found[f"{kind} same {plan.name} back"] = MeshPath(
                    back_src.netns, kind, back_dst.ip_of(version), seen
                )
        return found

    def observe(self, kit: NetworkKit, version: int) -> dict[str, str | None]:
        """Path id -> what the probe saw (None: nothing arrived, or not whole)."""
        paths = self.paths(version)
        batches: dict[str, list[Probe]] = {}
        for path_id, path in paths.items():
            batches.setdefault(path.source, []).append(Probe(path_id, path.kind, path.host))
        results = kit.probe_batches(batches, timeout=1.5)
        return {
            path_id: results[path_id].peer_seen if results[path_id].ok else None
            for path_id in paths
        }


def node_ip(plan: NodePlan, version: int) -> str:
    return next(ip for ip in plan.internal_ips if ipaddress.ip_address(ip).version == version)


def healthy_view(mesh: Mesh, version: int) -> dict[str, str | None]:
    return {path_id: path.healthy for path_id, path in mesh.paths(version).items()}


def broken_paths(mesh: Mesh, fault: str, version: int) -> set[str]:
    """The paths ``fault`` must break (each shows None); every other path stays healthy."""
    paths = mesh.paths(version)
    if fault == "one-way-pair-drop":
        source, destination = one_way_pair(mesh.spec)
        where = f"{source.name}->{destination.name}"
        return {f"{kind} {where}" for kind in SMALL_KINDS + FULL_SIZE_KINDS}
    if fault == "same-node-drop-last":
        last = mesh.nodes[-1].name
        return {
            path_id
            for path_id in paths
            if path_id.startswith(tuple(f"{kind} same {last}" for kind in SMALL_KINDS))
        } | {f"{kind} {last}->{last}" for kind in FULL_SIZE_KINDS}
    if fault == "host-to-remote-pods-blocked":
        node = second_node(mesh.spec).name
        return {
            f"{kind} host {node}->{other.name}"
            for kind in SMALL_KINDS
            for other in mesh.nodes
            if other.name != node
        }
    if fault == "pmtu-blackhole":
        node = second_node(mesh.spec).name
        others = [plan.name for plan in mesh.nodes if plan.name != node]
        return {
            f"{kind} {a}->{b}"
            for kind in FULL_SIZE_KINDS
            for other in others
            for a, b in ((node, other), (other, node))
        }
    raise AssertionError(f"no expectation written for {fault}")


def difference(seen: dict[str, str | None], expected: dict[str, str | None]) -> list[str]:
    """One line per path whose observation is not the expected one."""
    return [
        f"{path_id}: expected {expected[path_id]!r}, saw {seen.get(path_id)!r}"
        for path_id in sorted(expected)
        if seen.get(path_id) != expected[path_id]
    ]


@pytest.fixture
def mesh_lab(
    built_lab: Callable[[LabSpec], LabSpec], network_kit: NetworkKit
) -> Callable[[LabSpec], Mesh]:
    """Builds a lab (torn down by ``built_lab``) with the mesh's pods and servers on it."""

    def build(spec: LabSpec) -> Mesh:
        return Mesh(built_lab(spec), network_kit)

    return build


@pytest.mark.parametrize("ip_family", ["ipv4", "ipv6", "dual"])
def test_healthy_lab_carries_every_path_of_the_mesh(
    ip_family: str, lab_name: str, mesh_lab: Callable[[LabSpec], Mesh], network_kit: NetworkKit
) -> None:
    mesh = mesh_lab(LabSpec(name=lab_name, nodes=3, ip_family=ip_family))
    for version in mesh.spec.families:
        seen = mesh.observe(network_kit, version)
        wrong = difference(seen, healthy_view(mesh, version))
        print(f"IPv{version}: {len(seen)} paths probed, {len(wrong)} off")
        assert not wrong, f"healthy {ip_family} lab, IPv{version}:\n" + "\n".join(wrong)


@pytest.mark.parametrize("ip_family", ["ipv4", "dual"])
@pytest.mark.parametrize("fault", MESH_FAULTS)
def test_each_mesh_fault_breaks_only_its_paths(
    fault: str,
    ip_family: str,
    lab_name: str,
    mesh_lab: Callable[[LabSpec], Mesh],
    network_kit: NetworkKit,
) -> None:
    """On a dual-stack lab the fault breaks its paths in both families, and every other path
    of each family stays healthy."""
    mesh = mesh_lab(LabSpec(name=lab_name, nodes=3, ip_family=ip_family, faults=frozenset({fault})))
    for version in mesh.spec.families:
        broken = broken_paths(mesh, fault, version)
        expected = healthy_view(mesh, version) | dict.fromkeys(broken)
        seen = mesh.observe(network_kit, version)
        wrong = difference(seen, expected)
        print(f"{fault} IPv{version}: {len(broken)} of {len(seen)} paths broken as expected")
        assert not wrong, f"{fault} on a {ip_family} lab, IPv{version}:\n" + "\n".join(wrong)


def test_pmtu_blackhole_shrinks_both_ends_of_node_2s_uplink_only(
    lab_name: str, built_lab: Callable[[LabSpec], LabSpec]
) -> None:
    spec = built_lab(LabSpec(name=lab_name, nodes=3, faults=frozenset({"pmtu-blackhole"})))
    for plan in spec.node_plans():
        shrunk = plan.name == "node-2"
        expected = PMTU_BLACKHOLE_MTU if shrunk else POD_MTU
        assert uplink_mtu(spec, plan) == (PMTU_BLACKHOLE_MTU if shrunk else None)
        uplink = run_in_netns(plan.netns, ["ip", "-o", "link", "show", "eth0"]).stdout
        port = run_in_netns(spec.fabric_netns, ["ip", "-o", "link", "show", plan.name]).stdout
        assert f" mtu {expected} " in uplink, f"{plan.name} eth0: {uplink}"
        assert f" mtu {expected} " in port, f"fabric port {plan.name}: {port}"


# --- rules without namespaces --------------------------------------------------------------------


def rules_on(spec: LabSpec, version: int = 4) -> dict[str, list[str]]:
    """Node name -> its filter rules for the lab's faults."""
    return {
        plan.name: node_fault_rules(spec, plan, version).get("filter", [])
        for plan in spec.node_plans()
    }


@pytest.mark.parametrize(
    ("fault", "nodes", "carrier"),
    [
        pytest.param("one-way-pair-drop", 3, "node-1", id="one-way-3-nodes"),
        pytest.param("one-way-pair-drop", 2, "node-1", id="one-way-2-nodes"),
        pytest.param("same-node-drop-last", 3, "node-3", id="same-node-last-of-3"),
        pytest.param("same-node-drop-last", 1, "node-1", id="same-node-last-of-1"),
        pytest.param("host-to-remote-pods-blocked", 3, "node-2", id="host-to-remote"),
        pytest.param("pmtu-blackhole", 3, "node-2", id="pmtu"),
        pytest.param("lossy-pair", 3, "node-2", id="lossy-pair-3-nodes"),
        pytest.param("lossy-pair", 2, "node-1", id="lossy-pair-2-nodes"),
    ],
)
def test_mesh_fault_rules_sit_on_one_node(fault: str, nodes: int, carrier: str) -> None:
    for ip_family in ("ipv4", "dual"):
        spec = LabSpec(name="nbplan", nodes=nodes, ip_family=ip_family, faults=frozenset({fault}))
        for version in spec.families:
            rules = rules_on(spec, version)
            assert rules[carrier], f"{fault}: no IPv{version} rule on {carrier}"
            assert all(not found for name, found in rules.items() if name != carrier), rules


def test_one_way_pair_drop_targets_a_pair_the_ring_never_visits() -> None:
    three = LabSpec(name="nbplan", nodes=3, faults=frozenset({"one-way-pair-drop"}))
    assert [plan.name for plan in one_way_pair(three)] == ["node-1", "node-3"]
    ring = {("node-1", "node-2"), ("node-2", "node-3"), ("node-3", "node-1")}
    assert (one_way_pair(three)[0].name, one_way_pair(three)[1].name) not in ring
    (rule,) = rules_on(three)["node-1"]
    assert rule == (
        "-A FORWARD -s 10.244.0.0/24 -d 10.244.2.0/24 -o eth0 -m conntrack --ctstate NEW -j DROP"
    )
    two = LabSpec(name="nbplan", nodes=2, faults=frozenset({"one-way-pair-drop"}))
    assert [plan.name for plan in one_way_pair(two)] == ["node-1", "node-2"]


def test_lossy_pair_drops_a_fifth_of_one_directions_packets() -> None:
    three = LabSpec(name="nbplan", nodes=3, ip_family="dual", faults=frozenset({"lossy-pair"}))
    assert [plan.name for plan in lossy_pair(three)] == ["node-2", "node-3"]
    (rule,) = rules_on(three)["node-2"]
    # Every packet of every flow, not only new ones; out of node-2's uplink towards node-3's
    # pods only: the way back and every other pair keep all their packets.
    assert rule == (
        "-A FORWARD -s 10.244.1.0/24 -d 10.244.2.0/24 -o eth0 "
        f"-m statistic --mode random --probability {LOSSY_PAIR_DROP} -j DROP"
    )
    assert LOSSY_PAIR_DROP == 0.2
    (rule6,) = rules_on(three, 6)["node-2"]
    assert "--probability 0.2 -j DROP" in rule6
    two = LabSpec(name="nbplan", nodes=2, faults=frozenset({"lossy-pair"}))
    assert [plan.name for plan in lossy_pair(two)] == ["node-1", "node-2"]


def test_pmtu_blackhole_drops_too_big_icmp_per_family() -> None:
    spec = LabSpec(name="nbplan", nodes=3, ip_family="dual", faults=frozenset({"pmtu-blackhole"}))
    node2 = spec.node_plans()[1]
    assert node_fault_rules(spec, node2, 4)["filter"] == [
        "-A OUTPUT -p icmp --icmp-type fragmentation-needed -j DROP",
        "-A FORWARD -p icmp --icmp-type fragmentation-needed -j DROP",
    ]
    assert node_fault_rules(spec, node2, 6)["filter"] == [
        "-A OUTPUT -p ipv6-icmp --icmpv6-type packet-too-big -j DROP",
        "-A FORWARD -p ipv6-icmp --icmpv6-type packet-too-big -j DROP",
    ]
    assert [uplink_mtu(spec, plan) for plan in spec.node_plans()] == [None, 1400, None]


def test_dns_blackhole_drops_every_nodes_pods_queries_per_family() -> None:
    spec = LabSpec(name="nbplan", nodes=3, ip_family="dual", faults=frozenset({"dns-blackhole"}))
    for plan in spec.node_plans():
        for version, cidr in zip((4, 6), plan.pod_cidrs, strict=True):
            assert node_fault_rules(spec, plan, version)["filter"] == [
                f"-A FORWARD -s {cidr} -p udp --dport 53 -j DROP",
                f"-A FORWARD -s {cidr} -p tcp --dport 53 -j DROP",
            ]
