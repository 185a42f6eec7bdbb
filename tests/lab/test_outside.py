"""The host outside every node (issue 24): a namespace on the fabric, reached by the nodes as a
host of their network, answering pods only through their node's masquerade; the edge server
running there; and the edge faults of the data plane, per IP family.

Traffic stays inside the lab's namespaces: pods, nodes, the fabric and the outside host.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterator

import pytest
from network_kit import LabPod, NetworkKit, Probe
from pyroute2 import IPRoute
from root_view import lab_addresses_in, root_namespace_view

from conformance.probe_agent.edge import relay
from netlab.dataplane.cleanup import lab_netns_names, process_alive, sweep
from netlab.dataplane.egress import apply_egress
from netlab.dataplane.nsexec import in_netns_thread
from netlab.dataplane.outside import (
    EDGE_PORT,
    FABRIC_PORT,
    EdgeServer,
    build_outside,
    destroy_outside,
)
from netlab.dataplane.topology import plan_ipam_ranges
from netlab.spec import LabSpec, NodePlan

pytestmark = pytest.mark.needs_lab


def node_ip(plan: NodePlan, version: int) -> str:
    return next(ip for ip in plan.internal_ips if ipaddress.ip_address(ip).version == version)


def outside_ip(spec: LabSpec, version: int) -> str:
    return next(a for a in spec.outside_addresses if ipaddress.ip_address(a).version == version)


@pytest.fixture
def edge_lab(built_lab: Callable[[LabSpec], LabSpec]) -> Iterator[Callable[[LabSpec], LabSpec]]:
    """A lab's topology (with its faults), the nodes' egress rules and the outside host; the
    outside host goes first on teardown, then ``built_lab`` removes and sweeps the rest."""
    made: list[LabSpec] = []

    def build(spec: LabSpec) -> LabSpec:
        built_lab(spec)
        apply_egress(spec)
        build_outside(spec)
        made.append(spec)
        return spec

    yield build
    for spec in made:
        destroy_outside(spec)


def pods_per_node(spec: LabSpec, kit: NetworkKit) -> dict[str, LabPod]:
    ranges = plan_ipam_ranges(spec)
    return {plan.name: kit.add_pod(spec, plan, ranges[plan.name], 10) for plan in spec.node_plans()}


def edge_view(
    spec: LabSpec, kit: NetworkKit, pods: dict[str, LabPod], version: int
) -> dict[str, str | None]:
    """``<proto> <node>`` -> what the outside host's echo server saw of each node's pod (tcp,
    udp: the source; icmp: who replied), None when nothing came back."""
    target = outside_ip(spec, version)
    batches = {
        pod.netns: [Probe(f"{kind} {node}", kind, target) for kind in ("tcp", "udp", "icmp")]
        for node, pod in pods.items()
    }
    results = kit.probe_batches(batches, timeout=1.5)
    return {key: result.peer_seen if result.ok else None for key, result in results.items()}


def healthy_edge(spec: LabSpec, version: int, *, unmasqueraded: str = "") -> dict[str, str | None]:
    """Every node's pod reaches the outside host, seen as its node's address."""
    found: dict[str, str | None] = {}
    for plan in spec.node_plans():
        for kind in ("tcp", "udp", "icmp"):
            seen = outside_ip(spec, version) if kind == "icmp" else node_ip(plan, version)
            found[f"{kind} {plan.name}"] = seen
    return found


@pytest.mark.parametrize("ip_family", ["ipv4", "ipv6", "dual"])
def test_pods_reach_the_outside_host_masqueraded_to_their_node(
    ip_family: str, lab_name: str, edge_lab: Callable[[LabSpec], LabSpec], network_kit: NetworkKit
) -> None:
    spec = edge_lab(LabSpec(name=lab_name, nodes=3, ip_family=ip_family))
    pods = pods_per_node(spec, network_kit)
    network_kit.serve(spec.outside_netns)
    for pod in pods.values():
        network_kit.serve(pod.netns)
    for version in spec.families:
        assert edge_view(spec, network_kit, pods, version) == healthy_edge(spec, version)
        # Inside the pod network nothing is NATed: node-1's pod seen by node-2's as itself.
        inside = network_kit.probe(pods["node-1"].netns, "tcp", pods["node-2"].ip_of(version))
        assert inside.peer_seen == pods["node-1"].ip_of(version), inside


@pytest.mark.parametrize("fault", ["edge-egress-blocked", "edge-no-masquerade"])
@pytest.mark.parametrize("ip_family", ["ipv4", "dual"])
def test_egress_faults_cut_only_node_2s_pods_from_the_outside_host(
    fault: str,
    ip_family: str,
    lab_name: str,
    edge_lab: Callable[[LabSpec], LabSpec],
    network_kit: NetworkKit,
) -> None:
    spec = edge_lab(LabSpec(name=lab_name, nodes=3, ip_family=ip_family, faults=frozenset({fault})))
    pods = pods_per_node(spec, network_kit)
    network_kit.serve(spec.outside_netns)
    for pod in pods.values():
        network_kit.serve(pod.netns)
    node_1 = spec.node_plans()[0]
    network_kit.serve(node_1.netns)
    for version in spec.families:
        expected = healthy_edge(spec, version)
        expected.update({f"{kind} node-2": None for kind in ("tcp", "udp", "icmp")})
        assert edge_view(spec, network_kit, pods, version) == expected
        # Inside the cluster node-2's pods still reach pods and nodes.
        to_pod = network_kit.probe(pods["node-2"].netns, "udp", pods["node-1"].ip_of(version))
        assert to_pod.peer_seen == pods["node-2"].ip_of(version), to_pod
        to_node = network_kit.probe(pods["node-2"].netns, "tcp", node_ip(node_1, version))
        assert to_node.ok, to_node


def test_the_outside_host_hangs_on_the_fabric_only(
    lab_name: str, edge_lab: Callable[[LabSpec], LabSpec], network_kit: NetworkKit
) -> None:
    spec = edge_lab(LabSpec(name=lab_name, nodes=2, ip_family="dual"))
    assert spec.outside_netns in lab_netns_names(spec.name)

    def links_and_routes() -> tuple[list[str], list[str]]:
        with IPRoute() as ipr:
            links = [str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()]
            routes = [
                f"{route.get_attr('RTA_DST')}/{route['dst_len']}"
                for family in (2, 10)
                for route in ipr.get_routes(family=family, table=254)
            ]
        return links, routes

    links, routes = in_netns_thread(spec.outside_netns, links_and_routes)
    assert sorted(links) == ["eth0", "lo"]
    # Its own fabric networks only (and IPv6 link-local): no default route, no route to a pod
    # or service range.
    assert sorted(r for r in routes if not r.startswith("fe80:")) == sorted(
        [
            f"{ipaddress.ip_network(spec.fabric_cidr)}",
            f"{ipaddress.ip_network(spec.fabric_cidr_v6)}",
        ]
    ), routes
    fabric_links, _ = in_netns_thread(spec.fabric_netns, links_and_routes)
    assert FABRIC_PORT in fabric_links
    with IPRoute() as root:
        assert not root.link_lookup(ifname=FABRIC_PORT), "nothing of the lab in the root namespace"
    # Every node reaches it on the fabric, from its own address.
    network_kit.serve(spec.outside_netns)
    for plan in spec.node_plans():
        for address in spec.outside_addresses:
            version = ipaddress.ip_address(address).version
            seen = network_kit.probe(plan.netns, "tcp", address)
            assert seen.peer_seen == node_ip(plan, version), f"{plan.name} -> {address}: {seen}"


def test_the_edge_server_serves_the_nodes_and_nothing_else(
    lab_name: str, edge_lab: Callable[[LabSpec], LabSpec], network_kit: NetworkKit
) -> None:
    spec = edge_lab(LabSpec(name=lab_name, nodes=2, ip_family="dual"))
    node_1, node_2 = spec.node_plans()
    network_kit.serve(node_2.netns)  # an echo server: the agent's `connect` gets no JSON reply
    with EdgeServer(spec) as server:
        assert server.process is not None
        for version in spec.families:
            control = outside_ip(spec, version)

            def ask(request: dict[str, object], control: str = control) -> dict[str, object]:
                return in_netns_thread(
                    node_1.netns, lambda: relay(control, EDGE_PORT + 1, request, 5.0), timeout=15
                )

            info = ask({"op": "info"})
            assert info["ok"], info
            assert json.dumps(info["edge"], sort_keys=True) == json.dumps(
                {
                    "allow_connect": [
                        f"{a}/{32 if ipaddress.ip_address(a).version == 4 else 128}"
                        for plan in spec.node_plans()
                        for a in plan.internal_ips
                    ],
                    "control": [
                        f"[{a}]:{EDGE_PORT + 1}" if ":" in a else f"{a}:{EDGE_PORT + 1}"
                        for a in spec.outside_addresses
                    ],
                },
                sort_keys=True,
            )
            # A node is allowed (node-2's echo server is not an agent: the exchange itself
            # fails, which is a network answer, not a refusal); a pod address is not.
            to_node = ask(
                {
                    "op": "connect",
                    "proto": "tcp",
                    "host": node_ip(node_2, version),
                    "port": 7070,
                    "nonce": "nc-edge-1",
                }
            )
            assert "relay_error" not in to_node, to_node
            assert "not the agent's JSON line" in str(to_node["error"]), to_node
            pod_ip = str(ipaddress.ip_network(node_2.pod_cidrs[-1 if version == 6 else 0])[5])
            refused = ask(
                {"op": "connect", "proto": "tcp", "host": pod_ip, "port": 8080, "nonce": "nc-e2"}
            )
            assert "outside the edge server's --allow-connect" in str(refused["relay_error"])
        pid = server.process.pid
    assert not process_alive(pid), "the edge server stops with its context"


def test_the_outside_host_and_its_server_leave_the_root_namespace_untouched(
    lab_name: str, edge_lab: Callable[[LabSpec], LabSpec], network_kit: NetworkKit
) -> None:
    before = root_namespace_view()
    spec = edge_lab(LabSpec(name=lab_name, nodes=2, ip_family="dual"))
    pods = pods_per_node(spec, network_kit)
    with EdgeServer(spec):
        # A pod's traffic to the outside host, masqueraded on its way.
        answer = network_kit.probe(pods["node-1"].netns, "icmp", spec.outside_addresses[0])
        assert answer.ok, answer
        during = root_namespace_view()
    assert lab_addresses_in(during) == []
    assert during == before, "the outside host changed the root network namespace"


def test_a_sweep_kills_an_orphaned_edge_server(
    lab_name: str, edge_lab: Callable[[LabSpec], LabSpec]
) -> None:
    spec = edge_lab(LabSpec(name=lab_name, nodes=1))
    server = EdgeServer(spec)
    server.start()
    assert server.process is not None
    pid = server.process.pid
    report = sweep(spec.name, spec.state_root)
    assert pid in report.processes, report
    assert spec.outside_netns in report.namespaces, report
    server.process.wait(timeout=10)
    assert not process_alive(pid)
