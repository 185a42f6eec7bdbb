"""The lab's edge in pure form: the outside host's addresses and edge server command, the
nodes' masquerade and the edge faults' rules, per family (the packets are in
``tests/lab/test_outside.py`` and the detection matrix)."""

from __future__ import annotations

import shlex

import pytest

from conformance.kit.base.settings import ExternalHost
from conformance.kit.exchanges.edge import edge_server_command
from netlab.dataplane.cleanup import NETNS_SUFFIX
from netlab.dataplane.egress import MASQUERADE_COMMENT, egress_rules
from netlab.dataplane.outside import edge_server_argv, external_host_values
from netlab.spec import LabSpec, LabSpecError

MASQ_V4 = (
    f'-A POSTROUTING -s 10.244.0.0/16 ! -d 10.244.0.0/16 -m comment --comment "{MASQUERADE_COMMENT}"'
    " -j MASQUERADE"
)
MASQ_V6 = (
    f"-A POSTROUTING -s fd00:10:244::/56 ! -d fd00:10:244::/56 -m comment --comment "
    f'"{MASQUERADE_COMMENT}" -j MASQUERADE'
)


def test_the_outside_host_takes_each_fabric_range_s_last_address() -> None:
    spec = LabSpec(name="x", ip_family="dual")
    assert spec.outside_addresses == ("172.18.255.254", "fd00:172:18:0:ffff:ffff:ffff:fffe")
    assert spec.outside_netns == "netlab-x-outside"
    assert all(
        address not in spec.outside_addresses
        for plan in spec.node_plans()
        for address in plan.internal_ips
    )
    assert external_host_values(spec) == [
        "172.18.255.254:18080",
        "[fd00:172:18:0:ffff:ffff:ffff:fffe]:18080",
    ]
    assert NETNS_SUFFIX.match("outside")


def test_a_fabric_keeps_room_for_the_outside_host() -> None:
    with pytest.raises(LabSpecError, match="room for fewer than 5 nodes"):
        LabSpec(nodes=5, fabric_cidr="172.18.0.0/29")
    assert LabSpec(nodes=4, fabric_cidr="172.18.0.0/29").outside_addresses == ("172.18.0.6",)


def test_the_lab_runs_the_command_the_suite_prints() -> None:
    spec = LabSpec(name="x", nodes=2, ip_family="dual")
    argv = edge_server_argv(spec, python="python3")
    nodes = [address for plan in spec.node_plans() for address in plan.internal_ips]
    printed = shlex.split(
        edge_server_command(nodes, [ExternalHost(a) for a in spec.outside_addresses])
    )
    # The same program and arguments; only the control socket's place differs.
    socket_at = printed.index("--socket")
    lab_socket_at = argv.index("--socket")
    assert printed[:socket_at] == ["python3", "agent.py", *argv[2:lab_socket_at]]
    assert printed[socket_at + 2 :] == argv[lab_socket_at + 2 :]


@pytest.mark.parametrize(("family", "masq"), [("ipv4", [MASQ_V4]), ("ipv6", [MASQ_V6])])
def test_healthy_nodes_only_masquerade_what_leaves_the_pod_network(
    family: str, masq: list[str]
) -> None:
    spec = LabSpec(nodes=3, ip_family=family)
    version = 4 if family == "ipv4" else 6
    for plan in spec.node_plans():
        assert egress_rules(spec, plan, version) == {"nat": masq}


def test_no_masquerade_leaves_node_2_without_the_rule_in_every_family() -> None:
    spec = LabSpec(nodes=3, ip_family="dual", faults=frozenset({"edge-no-masquerade"}))
    node_1, node_2, _ = spec.node_plans()
    assert egress_rules(spec, node_2, 4) == {}
    assert egress_rules(spec, node_2, 6) == {}
    assert egress_rules(spec, node_1, 4) == {"nat": [MASQ_V4]}


def test_egress_blocked_drops_node_2_s_pods_beyond_the_cluster_only() -> None:
    spec = LabSpec(nodes=3, faults=frozenset({"edge-egress-blocked"}))
    node_1, node_2, _ = spec.node_plans()
    assert "filter" not in egress_rules(spec, node_1, 4)
    assert egress_rules(spec, node_2, 4)["filter"] == [
        ":NETLAB-EDGE-EGRESS - [0:0]",
        "-A FORWARD -s 10.244.1.0/24 -o eth0 -m conntrack --ctstate NEW -j NETLAB-EDGE-EGRESS",
        "-A NETLAB-EDGE-EGRESS -d 10.244.0.0/16 -j RETURN",
        "-A NETLAB-EDGE-EGRESS -d 10.96.0.0/12 -j RETURN",
        "-A NETLAB-EDGE-EGRESS -d 172.18.0.2 -j RETURN",
        "-A NETLAB-EDGE-EGRESS -d 172.18.0.3 -j RETURN",
        "-A NETLAB-EDGE-EGRESS -d 172.18.0.4 -j RETURN",
        "-A NETLAB-EDGE-EGRESS -j DROP",
    ]


def test_nodeport_blocked_drops_outside_sources_before_the_dnat_on_node_2() -> None:
    spec = LabSpec(nodes=2, ip_family="ipv6", faults=frozenset({"edge-nodeport-blocked"}))
    node_1, node_2 = spec.node_plans()
    assert "mangle" not in egress_rules(spec, node_1, 6)
    assert egress_rules(spec, node_2, 6)["mangle"] == [
        ":NETLAB-EDGE-NODEPORTS - [0:0]",
        "-A PREROUTING -i eth0 -p tcp --dport 30000:32767 -m addrtype --dst-type LOCAL "
        "-m conntrack --ctstate NEW -j NETLAB-EDGE-NODEPORTS",
        "-A PREROUTING -i eth0 -p udp --dport 30000:32767 -m addrtype --dst-type LOCAL "
        "-m conntrack --ctstate NEW -j NETLAB-EDGE-NODEPORTS",
        "-A NETLAB-EDGE-NODEPORTS -s fd00:10:244::/56 -j RETURN",
        "-A NETLAB-EDGE-NODEPORTS -s fd00:172:18::2 -j RETURN",
        "-A NETLAB-EDGE-NODEPORTS -s fd00:172:18::3 -j RETURN",
        "-A NETLAB-EDGE-NODEPORTS -j DROP",
    ]


@pytest.mark.parametrize(
    "fault", ["edge-egress-blocked", "edge-nodeport-blocked", "edge-no-masquerade"]
)
def test_edge_faults_need_a_second_node(fault: str) -> None:
    from netlab.dataplane.topology import check_topology_faults

    with pytest.raises(LabSpecError, match="needs at least 2 nodes"):
        check_topology_faults(LabSpec(nodes=1, faults=frozenset({fault})))
