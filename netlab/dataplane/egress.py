"""Pod traffic at the cluster's edge, in every node's namespace: the masquerade of what leaves
the pod network, and the edge faults.

Every node masquerades its pods' traffic leaving the pod network to the node's own address,
as kindnet (kind's CNI) and realk8s do: ``-s <cluster CIDR> ! -d <cluster CIDR> -j
MASQUERADE`` in nat POSTROUTING, per family (the CNI bridge keeps ``ipMasq`` off: pod-to-pod
traffic is never NATed). A host outside the cluster has no route to the pod ranges, so without
it a pod could not reach such a host at all.

The edge faults, each breaking one thing on node-2:

- ``edge-egress-blocked``: node-2 drops its pods' new connections to anything outside the pod
  network, the service range and the nodes (an egress firewall): its pods cannot reach the
  outside host; everything inside the cluster passes.
- ``edge-nodeport-blocked``: node-2 drops new connections to its NodePort range whose source
  is neither a pod range nor a node (a firewall letting NodePorts be reached from inside the
  cluster only): the outside host cannot reach NodePorts at node-2; pods and nodes can.
- ``edge-no-masquerade``: node-2 lacks the masquerade rule: the outside host sees its pods'
  own addresses, has no route back to them, and their traffic to it gets no answer.

Rules are installed with one ``iptables-restore --noflush`` per node and family; they match on
addresses, ``eth0`` and ports only, so they go in before the first pod.
"""

from __future__ import annotations

import ipaddress
import logging

from netlab.dataplane.nsexec import run_in_netns
from netlab.dataplane.topology import NODE_UPLINK, node_addresses, plan_ipam_ranges
from netlab.spec import LabSpec, NodePlan

log = logging.getLogger(__name__)

EGRESS_BLOCKED_FAULT = "edge-egress-blocked"
NODEPORT_BLOCKED_FAULT = "edge-nodeport-blocked"
NO_MASQUERADE_FAULT = "edge-no-masquerade"
EDGE_FAULTS = (EGRESS_BLOCKED_FAULT, NODEPORT_BLOCKED_FAULT, NO_MASQUERADE_FAULT)
#: The node the edge faults act on.
EDGE_FAULT_NODE = "node-2"
#: kube-apiserver's default --service-node-port-range (the lab API's too).
NODE_PORT_RANGE = "30000:32767"
MASQUERADE_COMMENT = "netlab: masquerade leaving the pod network"
EGRESS_CHAIN = "NETLAB-EDGE-EGRESS"
NODEPORT_CHAIN = "NETLAB-EDGE-NODEPORTS"
RESTORE_COMMANDS = {4: "iptables-restore", 6: "ip6tables-restore"}


def _of_version(ranges: tuple[str, ...], version: int) -> list[str]:
    return [r for r in ranges if ipaddress.ip_network(r, strict=False).version == version]


def _node_addresses(spec: LabSpec, version: int) -> list[str]:
    return [
        address
        for plan in spec.node_plans()
        for address in node_addresses(plan)
        if ipaddress.ip_address(address).version == version
    ]


def egress_rules(spec: LabSpec, plan: NodePlan, version: int) -> dict[str, list[str]]:
    """iptables table -> lines (chain declarations and ``-A`` rules, iptables-restore syntax)
    of ``plan``'s node for IP ``version``: the masquerade, and the edge faults it carries."""
    cluster = _of_version(spec.cluster_cidrs, version)
    services = _of_version(spec.service_cidrs, version)
    nodes = _node_addresses(spec, version)
    faulty = plan.name == EDGE_FAULT_NODE
    nat: list[str] = []
    filter_: list[str] = []
    mangle: list[str] = []
    if not (faulty and NO_MASQUERADE_FAULT in spec.faults):
        nat += [
            f'-A POSTROUTING -s {pods} ! -d {pods} -m comment --comment "{MASQUERADE_COMMENT}" '
            "-j MASQUERADE"
            for pods in cluster
        ]
    if faulty and EGRESS_BLOCKED_FAULT in spec.faults:
        own = _of_version(tuple(plan_ipam_ranges(spec)[plan.name]), version)
        filter_ += [f":{EGRESS_CHAIN} - [0:0]"]
        filter_ += [
            f"-A FORWARD -s {pods} -o {NODE_UPLINK} -m conntrack --ctstate NEW -j {EGRESS_CHAIN}"
            for pods in own
        ]
        filter_ += [f"-A {EGRESS_CHAIN} -d {inside} -j RETURN" for inside in [*cluster, *services]]
        filter_ += [f"-A {EGRESS_CHAIN} -d {node} -j RETURN" for node in nodes]
        filter_ += [f"-A {EGRESS_CHAIN} -j DROP"]
    if faulty and NODEPORT_BLOCKED_FAULT in spec.faults:
        # Before kube-proxy's DNAT (nat PREROUTING) turns the NodePort into an endpoint.
        mangle += [f":{NODEPORT_CHAIN} - [0:0]"]
        mangle += [
            f"-A PREROUTING -i {NODE_UPLINK} -p {proto} --dport {NODE_PORT_RANGE} "
            f"-m addrtype --dst-type LOCAL -m conntrack --ctstate NEW -j {NODEPORT_CHAIN}"
            for proto in ("tcp", "udp")
        ]
        mangle += [f"-A {NODEPORT_CHAIN} -s {inside} -j RETURN" for inside in [*cluster, *nodes]]
        mangle += [f"-A {NODEPORT_CHAIN} -j DROP"]
    tables = (("nat", nat), ("filter", filter_), ("mangle", mangle))
    return {table: lines for table, lines in tables if lines}


def restore_input(rules_by_table: dict[str, list[str]]) -> str:
    """The rules as one ``iptables-restore --noflush`` document (one commit per table)."""
    lines: list[str] = []
    for table, rules in rules_by_table.items():
        lines += [f"*{table}", *rules, "COMMIT"]
    return "\n".join(lines) + "\n"


def apply_egress(spec: LabSpec) -> None:
    """Install every node's masquerade and edge-fault rules, per family."""
    for plan in spec.node_plans():
        for version in spec.families:
            rules = egress_rules(spec, plan, version)
            if rules:
                run_in_netns(
                    plan.netns,
                    [RESTORE_COMMANDS[version], "--noflush", "--wait"],
                    input_text=restore_input(rules),
                )
    edge = sorted(set(EDGE_FAULTS) & spec.faults)
    log.info(
        "egress: nodes masquerade pods leaving the pod network; edge faults %s", edge or "none"
    )
