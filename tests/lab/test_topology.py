"""The lab network: address plan, node identity, build/destroy, reachability, and what each
network fault changes (and what it leaves alone)."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from pyroute2 import IPRoute

from netlab.dataplane import topology as topology_module
from netlab.dataplane.cleanup import lab_netns_names
from netlab.dataplane.cni import handed_out_ranges
from netlab.dataplane.netfaults import node_fault_rules
from netlab.dataplane.nsexec import read_sysctl, run_in_netns
from netlab.dataplane.topology import (
    FABRIC_BRIDGE,
    Topology,
    TopologyError,
    build_topology,
    check_topology_faults,
    node_infos,
    node_routes,
    plan_ipam_ranges,
    published_pod_cidrs,
)
from netlab.spec import LabSpec, LabSpecError, NodePlan

pytestmark = pytest.mark.needs_lab

if TYPE_CHECKING:
    from network_kit import LabPod, NetworkKit


def spec_with(name: str, *faults: str, nodes: int = 3, ip_family: str = "ipv4") -> LabSpec:
    return LabSpec(name=name, nodes=nodes, faults=frozenset(faults), ip_family=ip_family)


# --- address plan (no namespaces) ----------------------------------------------------------------


def test_without_faults_ipam_ranges_and_published_cidrs_are_the_node_pod_cidrs() -> None:
    spec = spec_with("taplan")
    plans = spec.node_plans()
    assert plan_ipam_ranges(spec) == {plan.name: list(plan.pod_cidrs) for plan in plans}
    assert published_pod_cidrs(spec) == {plan.name: plan.pod_cidrs for plan in plans}


def test_overlapping_pod_cidrs_publishes_an_overlap_but_keeps_ranges_disjoint() -> None:
    spec = spec_with("taplan", "overlapping-pod-cidrs")
    published = published_pod_cidrs(spec)
    first = ipaddress.ip_network(published["node-1"][0])
    second = ipaddress.ip_network(published["node-2"][0])
    assert first.overlaps(second)
    ranges = [ipaddress.ip_network(r[0]) for r in plan_ipam_ranges(spec).values()]
    assert not any(a.overlaps(b) for i, a in enumerate(ranges) for b in ranges[i + 1 :])
    # Every pod address stays inside its node's published podCIDR: only overlap is broken.
    for name, node_ranges in plan_ipam_ranges(spec).items():
        assert ipaddress.ip_network(node_ranges[0]).subnet_of(
            ipaddress.ip_network(published[name][0])  # type: ignore[arg-type]
        )


def test_ip_outside_node_cidr_moves_one_ipam_range_out_of_its_published_cidr() -> None:
    spec = spec_with("taplan", "ip-outside-node-cidr")
    published = published_pod_cidrs(spec)
    ranges = plan_ipam_ranges(spec)
    outside = [
        name
        for name in ranges
        if not ipaddress.ip_network(ranges[name][0]).subnet_of(
            ipaddress.ip_network(published[name][0])  # type: ignore[arg-type]
        )
    ]
    assert outside == ["node-3"]
    cluster = ipaddress.ip_network(spec.cluster_cidr)
    assert ipaddress.ip_network(ranges["node-3"][0]).subnet_of(cluster)  # type: ignore[arg-type]
    # Routes follow the real range, so connectivity still works.
    assert (ranges["node-3"][0], "172.18.0.4") in node_routes(spec, spec.node_plans()[0])


@pytest.mark.parametrize(
    ("faults", "nodes", "message"),
    [
        pytest.param(("overlapping-pod-cidrs",), 1, "at least 2 nodes", id="overlap-needs-2"),
        pytest.param(("ip-outside-node-cidr",), 1, None, id="outside-on-1-node-fits"),
        pytest.param(("one-way-pair-drop",), 1, "at least 2 nodes", id="one-way-needs-2"),
        pytest.param(("one-way-pair-drop",), 2, None, id="one-way-on-2-nodes-fits"),
        pytest.param(("lossy-pair",), 1, "at least 2 nodes", id="lossy-pair-needs-2"),
        pytest.param(("host-to-remote-pods-blocked",), 1, "at least 2 nodes", id="host-needs-2"),
        pytest.param(("pmtu-blackhole",), 1, "at least 2 nodes", id="pmtu-needs-2"),
        pytest.param(("same-node-drop-last",), 1, None, id="same-node-on-1-node-fits"),
    ],
)
def test_faults_that_cannot_fit_the_lab_are_refused(
    faults: tuple[str, ...], nodes: int, message: str | None
) -> None:
    spec = spec_with("taplan", *faults, nodes=nodes)
    if message is None:
        check_topology_faults(spec)
    else:
        with pytest.raises(LabSpecError, match=message) as refused:
            check_topology_faults(spec)
        assert "\n" not in str(refused.value)


@pytest.mark.parametrize("ip_family", ["ipv4", "ipv6"])
def test_family_missing_on_node_is_refused_with_one_line_unless_dual_stack(ip_family: str) -> None:
    with pytest.raises(LabSpecError, match="needs a dual-stack lab") as refused:
        check_topology_faults(spec_with("taplan", "family-missing-on-node", ip_family=ip_family))
    assert "\n" not in str(refused.value)
    check_topology_faults(spec_with("taplan", "family-missing-on-node", ip_family="dual"))


def test_family_missing_on_node_takes_ipv6_from_node_2s_ipam_only() -> None:
    spec = spec_with("taplan", "family-missing-on-node", ip_family="dual")
    ranges = plan_ipam_ranges(spec)
    handed = {
        plan.name: handed_out_ranges(spec, plan, ranges[plan.name]) for plan in spec.node_plans()
    }
    assert handed == {
        "node-1": ["10.244.0.0/24", "fd00:10:244::/64"],
        "node-2": ["10.244.1.0/24"],
        "node-3": ["10.244.2.0/24", "fd00:10:244:2::/64"],
    }
    # The API and the routes keep node-2's IPv6 podCIDR: only its pods miss the family.
    assert published_pod_cidrs(spec)["node-2"] == ("10.244.1.0/24", "fd00:10:244:1::/64")
    assert ("fd00:10:244:1::/64", "fd00:172:18::3") in node_routes(spec, spec.node_plans()[0])


def test_ip_outside_node_cidr_needs_a_spare_range() -> None:
    spec = LabSpec(
        name="taplan",
        nodes=2,
        cluster_cidr="10.244.0.0/23",
        faults=frozenset({"ip-outside-node-cidr"}),
    )
    with pytest.raises(LabSpecError, match="needs room"):
        check_topology_faults(spec)


def test_node_infos_carry_kubelet_style_labels_and_versions() -> None:
    spec = spec_with("taplan", "overlapping-pod-cidrs")
    infos = node_infos(spec)
    assert [info.name for info in infos] == ["node-1", "node-2", "node-3"]
    assert [info.internal_ip for info in infos] == ["172.18.0.2", "172.18.0.3", "172.18.0.4"]
    assert infos[1].pod_cidrs == published_pod_cidrs(spec)["node-2"]
    for info in infos:
        assert info.labels["kubernetes.io/hostname"] == info.name
        assert info.labels["kubernetes.io/os"] == "linux"
        assert info.labels["kubernetes.io/arch"] in {"amd64", "arm64", "arm", "ppc64le", "s390x"}
        assert info.labels["node-role.kubernetes.io/worker"] == ""
        assert info.kernel_version
        assert info.os_image
        assert info.container_runtime_version.startswith("runc://")


def test_network_not_ready_fault_breaks_node_2s_network_only() -> None:
    infos = node_infos(spec_with("tanotready", "network-not-ready-on-node"))
    assert [bool(info.network_errors) for info in infos] == [False, True, False]
    assert infos[1].network_errors == (
        "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady "
        "message:Network plugin returns error: cni plugin not initialized",
    )


# --- building ------------------------------------------------------------------------------------


def test_three_node_topology_builds_and_is_removed_completely(lab_name: str) -> None:
    spec = spec_with(lab_name)
    started = time.monotonic()
    with Topology(spec):
        elapsed = time.monotonic() - started
        assert lab_netns_names(lab_name) == sorted(
            [spec.fabric_netns, *(plan.netns for plan in spec.node_plans())]
        )
        with IPRoute(netns=spec.fabric_netns, flags=0) as fabric:
            bridge = fabric.link_lookup(ifname=FABRIC_BRIDGE)[0]
            ports = {
                link.get("ifname") for link in fabric.get_links() if link.get("master") == bridge
            }
        assert ports == {"node-1", "node-2", "node-3"}
        for plan in spec.node_plans():
            assert read_sysctl(plan.netns, "net.ipv4.ip_forward") == "1"
            assert read_sysctl(plan.netns, "net.ipv6.conf.all.forwarding") == "1"
            routes = run_in_netns(plan.netns, ["ip", "-4", "route"]).stdout
            for destination, gateway in node_routes(spec, plan):
                assert f"{destination} via {gateway} dev eth0" in routes
    print(f"building 3 nodes took {elapsed:.2f} s")  # a figure, not an assertion
    assert lab_netns_names(lab_name) == []


def test_failed_build_removes_everything_it_made(
    lab_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = spec_with(lab_name)
    real_build_node = topology_module._build_node

    def fail_on_node_2(spec: LabSpec, plan: object) -> None:
        if getattr(plan, "name", "") == "node-2":
            raise OSError("injected failure")
        real_build_node(spec, plan)  # type: ignore[arg-type]

    monkeypatch.setattr(topology_module, "_build_node", fail_on_node_2)
    with pytest.raises(OSError, match="injected"):
        build_topology(spec)
    assert lab_netns_names(lab_name) == []


def test_build_refuses_to_run_over_leftovers(lab_name: str) -> None:
    spec = spec_with(lab_name, nodes=1)
    with Topology(spec), pytest.raises(TopologyError, match="already exists"):
        build_topology(spec)
    assert lab_netns_names(lab_name) == []


def test_nodes_reach_each_other_over_the_fabric(
    lab_name: str, built_lab: Callable[[LabSpec], LabSpec], network_kit: NetworkKit
) -> None:
    spec = built_lab(spec_with(lab_name))
    first, second, third = spec.node_plans()
    network_kit.serve(second.netns)
    network_kit.serve(third.netns)
    for target in (second, third):
        answer = network_kit.probe(first.netns, "tcp", target.internal_ip)
        assert answer.ok, f"{first.name} -> {target.name}: {answer.error}"
        assert answer.peer_seen == first.internal_ip


# --- pod traffic and faults ----------------------------------------------------------------------


class PodLayout:
    """Two pods on node-1 (a, b) and one on node-2 (c), each running an echo server; every pod
    has one address per family of the lab."""

    def __init__(self, spec: LabSpec, kit: NetworkKit) -> None:
        ranges = plan_ipam_ranges(spec)
        self.node1, self.node2 = spec.node_plans()[:2]
        self.a: LabPod = kit.add_pod(spec, self.node1, ranges["node-1"], 10)
        self.b: LabPod = kit.add_pod(spec, self.node1, ranges["node-1"], 11)
        self.c: LabPod = kit.add_pod(spec, self.node2, ranges["node-2"], 10)
        for pod in (self.a, self.b, self.c):
            kit.serve(pod.netns)


def node_ip(plan: NodePlan, version: int) -> str:
    return next(ip for ip in plan.internal_ips if ipaddress.ip_address(ip).version == version)


def observe(kit: NetworkKit, layout: PodLayout, version: int) -> dict[str, str | None]:
    """Path -> the source address the destination saw over IPv``version`` (None: no answer)."""
    a, b, c = (pod.ip_of(version) for pod in (layout.a, layout.b, layout.c))
    paths = {
        "tcp same-node a->b": (layout.a.netns, "tcp", b),
        "udp same-node a->b": (layout.a.netns, "udp", b),
        "tcp cross-node a->c": (layout.a.netns, "tcp", c),
        "udp cross-node a->c": (layout.a.netns, "udp", c),
        "tcp cross-node c->a": (layout.c.netns, "tcp", a),
        "tcp node-1->local a": (layout.node1.netns, "tcp", a),
        "tcp node-1->remote c": (layout.node1.netns, "tcp", c),
        "tcp node-2->remote a": (layout.node2.netns, "tcp", a),
    }
    seen = {}
    for path, (netns, proto, host) in paths.items():
        answer = kit.probe(netns, proto, host, timeout=0.7)
        seen[path] = answer.peer_seen if answer.ok else None
    return seen


def healthy_view(layout: PodLayout, version: int) -> dict[str, str | None]:
    a, c = layout.a.ip_of(version), layout.c.ip_of(version)
    return {
        "tcp same-node a->b": a,
        "udp same-node a->b": a,
        "tcp cross-node a->c": a,
        "udp cross-node a->c": a,
        "tcp cross-node c->a": c,
        # the node reaches local pods from cni0
        "tcp node-1->local a": layout.a.gateway_of(version),
        "tcp node-1->remote c": node_ip(layout.node1, version),
        "tcp node-2->remote a": node_ip(layout.node2, version),
    }


def fault_changes(layout: PodLayout, fault: str, version: int) -> dict[str, str | None]:
    """The paths a fault must change, and to what (every other path must stay healthy)."""
    if fault == "snat-cross-node":
        return {
            "tcp cross-node a->c": node_ip(layout.node1, version),
            "udp cross-node a->c": node_ip(layout.node1, version),
            "tcp cross-node c->a": node_ip(layout.node2, version),
        }
    if fault == "snat-same-node":
        gateway = layout.a.gateway_of(version)
        return {"tcp same-node a->b": gateway, "udp same-node a->b": gateway}
    if fault == "block-node-to-pod":
        return {"tcp node-1->local a": None}
    if fault == "cross-node-blackhole":
        return {
            "tcp cross-node a->c": None,
            "udp cross-node a->c": None,
            "tcp cross-node c->a": None,
        }
    if fault == "udp-drop":
        return {"udp same-node a->b": None, "udp cross-node a->c": None}
    raise AssertionError(f"no expectation written for {fault}")


FAMILY_LABS = [pytest.param(family, id=family) for family in ("ipv4", "ipv6", "dual")]


@pytest.mark.parametrize("ip_family", FAMILY_LABS)
def test_healthy_lab_keeps_pod_addresses_on_every_path(
    ip_family: str,
    lab_name: str,
    built_lab: Callable[[LabSpec], LabSpec],
    network_kit: NetworkKit,
) -> None:
    spec = built_lab(spec_with(lab_name, nodes=2, ip_family=ip_family))
    layout = PodLayout(spec, network_kit)
    for version in spec.families:
        seen = observe(network_kit, layout, version)
        assert seen == healthy_view(layout, version), f"IPv{version} paths on a {ip_family} lab"


NETWORK_FAULTS = [
    "snat-cross-node",
    "snat-same-node",
    "block-node-to-pod",
    "cross-node-blackhole",
    "udp-drop",
]


@pytest.mark.parametrize("ip_family", ["ipv4", "dual"])
@pytest.mark.parametrize("fault", NETWORK_FAULTS)
def test_each_network_fault_changes_only_its_paths(
    fault: str,
    ip_family: str,
    lab_name: str,
    built_lab: Callable[[LabSpec], LabSpec],
    network_kit: NetworkKit,
) -> None:
    """On a dual-stack lab the fault breaks its rule in both families (iptables and
    ip6tables), and every other path of each family stays healthy."""
    spec = built_lab(spec_with(lab_name, fault, nodes=2, ip_family=ip_family))
    layout = PodLayout(spec, network_kit)
    for version in spec.families:
        assert node_fault_rules(spec, spec.node_plans()[0], version), (
            f"{fault} installed no IPv{version} rule"
        )
        expected = healthy_view(layout, version) | fault_changes(layout, fault, version)
        seen = observe(network_kit, layout, version)
        assert seen == expected, f"{fault} on a {ip_family} lab, IPv{version} paths"


@pytest.mark.parametrize("ip_family", ["ipv4", "dual"])
def test_ip_outside_node_cidr_pods_are_reachable_across_nodes(
    ip_family: str,
    lab_name: str,
    built_lab: Callable[[LabSpec], LabSpec],
    network_kit: NetworkKit,
) -> None:
    spec = built_lab(spec_with(lab_name, "ip-outside-node-cidr", nodes=2, ip_family=ip_family))
    ranges = plan_ipam_ranges(spec)
    node1, node2 = spec.node_plans()
    near = network_kit.add_pod(spec, node1, ranges["node-1"], 10)
    stray = network_kit.add_pod(spec, node2, ranges["node-2"], 10)
    network_kit.serve(stray.netns)
    for version, published in zip(spec.families, node2.pod_cidrs, strict=True):
        stray_ip = stray.ip_of(version)
        assert ipaddress.ip_address(stray_ip) not in ipaddress.ip_network(published), (
            f"ip-outside-node-cidr: {stray_ip} of node-2 is inside its podCIDR {published}"
        )
        answer = network_kit.probe(near.netns, "tcp", stray_ip)
        assert answer.ok, f"IPv{version} {near.ip_of(version)} -> {stray_ip}: {answer.error}"
        assert answer.peer_seen == near.ip_of(version)


# --- IPv6 and dual stack -------------------------------------------------------------------------


def test_dual_stack_plan_has_a_range_route_and_address_per_family() -> None:
    spec = spec_with("taplan", ip_family="dual")
    first, second, third = spec.node_plans()
    assert plan_ipam_ranges(spec)["node-1"] == ["10.244.0.0/24", "fd00:10:244::/64"]
    assert sorted(node_routes(spec, first)) == sorted(
        [
            ("10.244.1.0/24", "172.18.0.3"),
            ("fd00:10:244:1::/64", "fd00:172:18::3"),
            ("10.244.2.0/24", "172.18.0.4"),
            ("fd00:10:244:2::/64", "fd00:172:18::4"),
        ]
    )
    infos = node_infos(spec)
    assert infos[1].addresses == ("172.18.0.3", "fd00:172:18::3")
    assert infos[1].internal_ip == "172.18.0.3"
    assert infos[2].pod_cidrs == third.pod_cidrs == ("10.244.2.0/24", "fd00:10:244:2::/64")
    v6 = spec_with("taplan", ip_family="ipv6")
    assert node_routes(v6, v6.node_plans()[0])[0] == ("fd00:10:244:1::/64", "fd00:172:18::3")
    assert node_infos(v6)[0].addresses == ("fd00:172:18::2",)
    assert second.internal_ips == ("172.18.0.3", "fd00:172:18::3")


@pytest.mark.parametrize("ip_family", ["ipv6", "dual"])
def test_ipam_faults_break_their_rule_in_every_family(ip_family: str) -> None:
    overlap = spec_with("taplan", "overlapping-pod-cidrs", ip_family=ip_family)
    published = published_pod_cidrs(overlap)
    assert len(published["node-2"]) == len(overlap.families)
    for first, second in zip(published["node-1"], published["node-2"], strict=True):
        assert ipaddress.ip_network(first).overlaps(ipaddress.ip_network(second)), (
            f"overlapping-pod-cidrs: node-2's {second} does not overlap node-1's {first}"
        )
    outside = spec_with("taplan", "ip-outside-node-cidr", ip_family=ip_family)
    ranges = plan_ipam_ranges(outside)["node-3"]
    node3 = outside.node_plans()[2]
    assert len(ranges) == len(node3.pod_cidrs) == len(outside.families)
    for real, cidr, cluster in zip(ranges, node3.pod_cidrs, outside.cluster_cidrs, strict=True):
        assert not ipaddress.ip_network(real).overlaps(ipaddress.ip_network(cidr))
        assert ipaddress.ip_network(real).subnet_of(ipaddress.ip_network(cluster))  # type: ignore[arg-type]
    # Routes lead to the real ranges, per family.
    assert (ranges[-1], node_ip(node3, 6)) in node_routes(outside, outside.node_plans()[0])


def test_network_fault_rules_exist_per_family_and_ipv4_rules_are_unchanged() -> None:
    ipv4 = spec_with("taplan", "snat-cross-node", "udp-drop")
    dual = spec_with("taplan", "snat-cross-node", "udp-drop", ip_family="dual")
    ipv6 = spec_with("taplan", "snat-cross-node", "udp-drop", ip_family="ipv6")
    plan = ipv4.node_plans()[0]
    assert node_fault_rules(dual, dual.node_plans()[0], 4) == node_fault_rules(ipv4, plan)
    v6_rules = node_fault_rules(dual, dual.node_plans()[0], 6)
    assert v6_rules == node_fault_rules(ipv6, ipv6.node_plans()[0])  # the primary family
    assert (
        "-A POSTROUTING -s fd00:10:244::/64 -d fd00:10:244:1::/64 -o eth0 -j MASQUERADE"
        in (v6_rules["nat"])
    )
    assert all("10.244." not in rule for rules in v6_rules.values() for rule in rules)


@pytest.mark.parametrize("ip_family", ["ipv6", "dual"])
def test_ipv6_topology_addresses_are_usable_at_once_and_nodes_reach_each_other(
    ip_family: str,
    lab_name: str,
    built_lab: Callable[[LabSpec], LabSpec],
    network_kit: NetworkKit,
) -> None:
    started = time.monotonic()
    spec = built_lab(spec_with(lab_name, ip_family=ip_family))
    print(f"building a 3-node {ip_family} topology took {time.monotonic() - started:.2f} s")
    first, *others = spec.node_plans()
    with IPRoute(netns=spec.fabric_netns, flags=0) as fabric:
        bridge = fabric.link_lookup(ifname=FABRIC_BRIDGE)[0]
        on_bridge = {a.get_attr("IFA_ADDRESS") for a in fabric.get_addr(index=bridge)}
    assert set(spec.fabric_gateways) <= on_bridge
    for plan in spec.node_plans():
        assert read_sysctl(plan.netns, "net.ipv6.conf.all.forwarding") == "1"
        shown = run_in_netns(plan.netns, ["ip", "-6", "addr", "show", "dev", "eth0"]).stdout
        assert "tentative" not in shown, f"{plan.name} eth0 keeps a tentative address: {shown}"
        assert f"{node_ip(plan, 6)}/64" in shown
        v4 = run_in_netns(plan.netns, ["ip", "-4", "addr", "show", "dev", "eth0"]).stdout
        assert ("inet " in v4) == (4 in spec.families), f"{plan.name} eth0 IPv4: {v4}"
        routes = run_in_netns(plan.netns, ["ip", "-6", "route"]).stdout
        for destination, gateway in node_routes(spec, plan):
            if ipaddress.ip_network(destination).version == 6:
                assert f"{destination} via {gateway} dev eth0" in routes
    for target in others:
        network_kit.serve(target.netns)
        answer = network_kit.probe(first.netns, "tcp", node_ip(target, 6))
        assert answer.ok, f"{first.name} -> {target.name} over IPv6: {answer.error}"
        assert answer.peer_seen == node_ip(first, 6)
