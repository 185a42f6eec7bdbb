"""The network faults a node can carry, as iptables rules inside that node's namespace.

Every rule matches on addresses (the node's own IPAM ranges, the other nodes' ranges) and on
the fabric uplink ``eth0``, never on the CNI bridge, so the rules can be installed before the
CNI bridge plugin creates ``cni0`` on the first pod ADD. Same-node pod traffic is bridged; it
reaches iptables because the topology turns ``bridge-nf-call-iptables`` on in every node.

Each fault breaks one rule of the network model and nothing else:

- ``snat-cross-node``: pod -> other node's pod leaves ``eth0`` masqueraded to the node IP.
- ``snat-same-node``: pod -> pod on the same node is masqueraded to the bridge gateway.
- ``block-node-to-pod``: new connections from the node's own stack to its pods are dropped.
- ``cross-node-blackhole``: pod <-> pod traffic between nodes is dropped.
- ``udp-drop``: UDP between pods (same node and cross node) is dropped.

On IPv6 and dual-stack labs every fault is installed once per family (ip6tables for IPv6),
so it breaks its rule for each family the lab has.
"""

from __future__ import annotations

import ipaddress
import logging

from netlab.dataplane.nsexec import run_in_netns, write_sysctls
from netlab.dataplane.topology import NODE_UPLINK, plan_ipam_ranges
from netlab.spec import LabSpec, NodePlan

log = logging.getLogger(__name__)

NODE_NETWORK_FAULTS = frozenset(
    {"snat-cross-node", "snat-same-node", "block-node-to-pod", "cross-node-blackhole", "udp-drop"}
)


RESTORE_COMMANDS = {4: "iptables-restore", 6: "ip6tables-restore"}


def node_fault_rules(
    spec: LabSpec, plan: NodePlan, version: int | None = None
) -> dict[str, list[str]]:
    """iptables table name -> rules (``-A ...`` lines) for the faults of ``spec`` on ``plan``'s
    node, for IP ``version`` (default: the lab's primary family; 6 means ip6tables rules).
    Empty when the lab carries no network fault."""
    family = spec.families[0] if version is None else version
    ranges = {
        name: [r for r in node_ranges if ipaddress.ip_network(r).version == family]
        for name, node_ranges in plan_ipam_ranges(spec).items()
    }
    own = ranges[plan.name]
    others = [r for name, node_ranges in ranges.items() if name != plan.name for r in node_ranges]
    every = [r for node_ranges in ranges.values() for r in node_ranges]
    nat: list[str] = []
    filter_: list[str] = []
    faults = spec.faults
    if "snat-cross-node" in faults:
        nat += [
            f"-A POSTROUTING -s {source} -d {destination} -o {NODE_UPLINK} -j MASQUERADE"
            for source in own
            for destination in others
        ]
    if "snat-same-node" in faults:
        # Bridged pod -> pod frames pass POSTROUTING (br_netfilter); MASQUERADE picks the
        # bridge's address, so the peer sees the gateway instead of the pod.
        nat += [
            f"-A POSTROUTING -s {source} -d {destination} -j MASQUERADE"
            for source in own
            for destination in own
        ]
    if "block-node-to-pod" in faults:
        # OUTPUT is the node's own stack only; NEW keeps replies to pod-initiated traffic.
        filter_ += [
            f"-A OUTPUT -d {destination} -m conntrack --ctstate NEW -j DROP" for destination in own
        ]
    if "cross-node-blackhole" in faults:
        filter_ += [
            f"-A FORWARD -s {source} -d {destination} -o {NODE_UPLINK} -j DROP"
            for source in own
            for destination in others
        ]
        filter_ += [
            f"-A FORWARD -s {source} -d {destination} -i {NODE_UPLINK} -j DROP"
            for source in others
            for destination in own
        ]
    if "udp-drop" in faults:
        # FORWARD sees both routed (cross-node) and bridged (same-node) pod traffic.
        filter_ += [
            f"-A FORWARD -p udp -s {source} -d {destination} -j DROP"
            for source in every
            for destination in own
        ]
    return {table: rules for table, rules in (("nat", nat), ("filter", filter_)) if rules}


def iptables_restore_input(rules_by_table: dict[str, list[str]]) -> str:
    """The rules as one ``iptables-restore --noflush`` document (one atomic commit per table)."""
    lines: list[str] = []
    for table, rules in rules_by_table.items():
        lines += [f"*{table}", *rules, "COMMIT"]
    return "\n".join(lines) + "\n"


def apply_node_faults(spec: LabSpec, plan: NodePlan, bridge_name: str = "cni0") -> list[str]:
    """Install the network faults of ``spec`` in ``plan``'s node namespace; return the rules.

    ``bridge_name`` is accepted for callers that know the CNI bridge; no rule depends on it
    existing (rules match on addresses and ``eth0``), so this is safe before the first pod.
    """
    del bridge_name  # kept in the signature for the node agent; see docstring
    rules: list[str] = []
    for version in spec.families:
        rules_by_table = node_fault_rules(spec, plan, version)
        if not rules_by_table:
            continue
        if "snat-same-node" in spec.faults or "udp-drop" in spec.faults:
            # Already on from the topology; re-asserted because these faults depend on it.
            call = "iptables" if version == 4 else "ip6tables"
            write_sysctls(plan.netns, {f"net.bridge.bridge-nf-call-{call}": "1"})
        run_in_netns(
            plan.netns,
            [RESTORE_COMMANDS[version], "--noflush", "--wait"],
            input_text=iptables_restore_input(rules_by_table),
        )
        rules += [rule for table_rules in rules_by_table.values() for rule in table_rules]
    if not rules:
        return []
    log.info("node %s: %d fault rules installed (%s)", plan.name, len(rules), sorted(spec.faults))
    return rules


def apply_lab_faults(spec: LabSpec) -> None:
    """apply_node_faults for every node of the lab."""
    for plan in spec.node_plans():
        apply_node_faults(spec, plan)
