"""The network faults a node can carry: iptables rules inside that node's namespace, and for
``pmtu-blackhole`` the MTU of the node's uplink.

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
- ``one-way-pair-drop``: on node-1, new flows (TCP, UDP, ICMP) from its pods to node-3's pods
  (node-2's on a 2-node lab) are dropped on their way out; flows node-3 starts, their replies
  included, and every other pair pass.
- ``same-node-drop-last``: on the last node, pod -> pod traffic between its own pods is dropped.
- ``host-to-remote-pods-blocked``: on node-2, new connections from the node's own stack to
  other nodes' pods are dropped; its own pods stay reachable.
- ``pmtu-blackhole``: node-2's ``eth0`` and its fabric-side peer get MTU 1400 (pods keep
  1500), the peer stops segmenting offloaded packets (so every frame meets that MTU, as on a
  wire), and node-2 drops the ICMP "fragmentation needed" / ICMPv6 "packet too big" it would
  send: full-size packets between node-2's pods and other nodes' pods vanish in both
  directions, small ones and node-2's same-node traffic pass.
- ``dns-blackhole``: every node drops DNS queries (UDP and TCP to port 53) from its own pods,
  wherever they go: the pods' resolver never answers; everything else passes.
- ``lossy-pair``: on node-2 (node-1 on a 2-node lab), `LOSSY_PAIR_DROP` of the packets from
  its pods to node-3's pods (node-2's) are dropped at random on their way out of ``eth0``
  (iptables ``statistic --mode random``), every packet of every flow, one direction only:
  requests that way and answers to flows node-3's pods start lose a fifth, nothing else.

On IPv6 and dual-stack labs every fault is installed once per family (ip6tables for IPv6),
so it breaks its rule for each family the lab has.
"""

from __future__ import annotations

import ipaddress
import logging

from pyroute2 import IPRoute
from pyroute2.ethtool import Ethtool

from netlab.dataplane.nsexec import in_netns_thread, run_in_netns, write_sysctls
from netlab.dataplane.topology import NODE_UPLINK, plan_ipam_ranges
from netlab.spec import LabSpec, NodePlan

log = logging.getLogger(__name__)

ONE_WAY_PAIR_FAULT = "one-way-pair-drop"
LOSSY_PAIR_FAULT = "lossy-pair"
#: The share of the lossy pair's packets dropped: the loss the suite must catch every time.
LOSSY_PAIR_DROP = 0.2
SAME_NODE_LAST_FAULT = "same-node-drop-last"
HOST_TO_REMOTE_FAULT = "host-to-remote-pods-blocked"
PMTU_FAULT = "pmtu-blackhole"
DNS_BLACKHOLE_FAULT = "dns-blackhole"
DNS_PORT = 53
NODE_NETWORK_FAULTS = frozenset(
    {
        "snat-cross-node",
        "snat-same-node",
        "block-node-to-pod",
        "cross-node-blackhole",
        "udp-drop",
        ONE_WAY_PAIR_FAULT,
        SAME_NODE_LAST_FAULT,
        HOST_TO_REMOTE_FAULT,
        PMTU_FAULT,
        DNS_BLACKHOLE_FAULT,
        LOSSY_PAIR_FAULT,
    }
)
RESTORE_COMMANDS = {4: "iptables-restore", 6: "ip6tables-restore"}
PMTU_BLACKHOLE_MTU = 1400  # node-2's uplink under pmtu-blackhole; pods keep the bridge's 1500
# ICMP that tells a sender its packet was too big for the path, per family (iptables syntax).
TOO_BIG_ICMP = {
    4: "-p icmp --icmp-type fragmentation-needed",
    6: "-p ipv6-icmp --icmpv6-type packet-too-big",
}


def one_way_pair(spec: LabSpec) -> tuple[NodePlan, NodePlan]:
    """(source, destination) nodes of ``one-way-pair-drop``: node-1 and node-3 (node-2 on a
    2-node lab). On 3 nodes or more the pair is not adjacent in node order, so a ring of pairs
    (1->2->3->1) never visits it."""
    plans = spec.node_plans()
    return plans[0], plans[min(2, len(plans) - 1)]


def lossy_pair(spec: LabSpec) -> tuple[NodePlan, NodePlan]:
    """(source, destination) nodes of ``lossy-pair``: node-2 and node-3 (node-1 and node-2 on
    a 2-node lab). Not node-1, whose bridge carries the lab's cluster DNS: the pair's loss
    stays off every check but the pair's own."""
    plans = spec.node_plans()
    return (plans[1], plans[2]) if len(plans) > 2 else (plans[0], plans[1])


def second_node(spec: LabSpec) -> NodePlan:
    """The node that carries ``host-to-remote-pods-blocked`` and ``pmtu-blackhole``: node-2."""
    return spec.node_plans()[1]


def node_fault_rules(
    spec: LabSpec, plan: NodePlan, version: int | None = None
) -> dict[str, list[str]]:
    """iptables table name -> rules (``-A ...`` lines) for the faults of ``spec`` on ``plan``'s
    node, for IP ``version`` (default: the lab's primary family; 6 means ip6tables rules).
    Empty when the node carries no network fault."""
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
    if ONE_WAY_PAIR_FAULT in faults:
        source_node, destination_node = one_way_pair(spec)
        if plan.name == source_node.name:
            # NEW only: replies to flows the destination node started still leave; conntrack
            # tracks UDP and ICMP echo flows as well as TCP.
            filter_ += [
                f"-A FORWARD -s {source} -d {destination} -o {NODE_UPLINK} "
                "-m conntrack --ctstate NEW -j DROP"
                for source in own
                for destination in ranges[destination_node.name]
            ]
    if LOSSY_PAIR_FAULT in faults:
        source_node, destination_node = lossy_pair(spec)
        if plan.name == source_node.name:
            # Every packet, not only NEW ones: loss inside flows, as a bad link has it.
            filter_ += [
                f"-A FORWARD -s {source} -d {destination} -o {NODE_UPLINK} "
                f"-m statistic --mode random --probability {LOSSY_PAIR_DROP} -j DROP"
                for source in own
                for destination in ranges[destination_node.name]
            ]
    if SAME_NODE_LAST_FAULT in faults and plan.name == spec.node_plans()[-1].name:
        # Bridged pod -> pod frames pass FORWARD (br_netfilter); the node's own traffic to its
        # pods is OUTPUT and stays untouched.
        filter_ += [
            f"-A FORWARD -s {source} -d {destination} -j DROP"
            for source in own
            for destination in own
        ]
    if HOST_TO_REMOTE_FAULT in faults and plan.name == second_node(spec).name:
        # OUTPUT is the node's own stack only (hostNetwork pods included); NEW keeps replies
        # to connections that remote pods open to the node.
        filter_ += [
            f"-A OUTPUT -d {destination} -m conntrack --ctstate NEW -j DROP"
            for destination in others
        ]
    if PMTU_FAULT in faults and plan.name == second_node(spec).name:
        # The node's own "too big" answers to forwarded pod packets (OUTPUT), and any it
        # would forward: the senders never learn the path MTU.
        filter_ += [f"-A {chain} {TOO_BIG_ICMP[family]} -j DROP" for chain in ("OUTPUT", "FORWARD")]
    if DNS_BLACKHOLE_FAULT in faults:
        # A query to the cluster DNS's Service address is DNATed to the DNS pod and forwarded,
        # routed or bridged (br_netfilter): FORWARD sees it on the node its pod sits on.
        filter_ += [
            f"-A FORWARD -s {source} -p {proto} --dport {DNS_PORT} -j DROP"
            for source in own
            for proto in ("udp", "tcp")
        ]
    return {table: rules for table, rules in (("nat", nat), ("filter", filter_)) if rules}


def iptables_restore_input(rules_by_table: dict[str, list[str]]) -> str:
    """The rules as one ``iptables-restore --noflush`` document (one atomic commit per table)."""
    lines: list[str] = []
    for table, rules in rules_by_table.items():
        lines += [f"*{table}", *rules, "COMMIT"]
    return "\n".join(lines) + "\n"


def uplink_mtu(spec: LabSpec, plan: NodePlan) -> int | None:
    """The MTU a fault sets on ``plan``'s uplink (``eth0`` and its fabric-side peer), or None
    when the uplink keeps the default."""
    if PMTU_FAULT in spec.faults and plan.name == second_node(spec).name:
        return PMTU_BLACKHOLE_MTU
    return None


def _set_mtu_here(ifname: str, mtu: int) -> None:
    """Runs on a thread inside the namespace holding ``ifname``."""
    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], mtu=mtu)


def _stop_segmentation_offload_here(ifname: str) -> None:
    """Make ``ifname`` cut offloaded (GSO/TSO) packets into wire-size frames before sending.

    veth pairs and bridges pass a 64 KiB TCP super-packet along whole, and only a frame's own
    size meets the peer's MTU check; with segmentation done here the frames are 1500-byte
    ones, which the smaller MTU behind this port then drops, as a real link would."""
    ethtool = Ethtool()
    try:
        features = ethtool.get_features(ifname)
        for name, feature in features.features.items():
            if name.endswith("segmentation") or name == "tx-gso-list":
                feature.enable = False
        ethtool.set_features(ifname, features)
    finally:
        ethtool.close()


def apply_uplink_mtu(spec: LabSpec, plan: NodePlan) -> int | None:
    """Set the fault MTU of ``plan``'s uplink on both ends of its veth (``eth0`` in the node,
    the port named after the node in the fabric); return it, or None when there is none."""
    mtu = uplink_mtu(spec, plan)
    if mtu is None:
        return None
    in_netns_thread(plan.netns, lambda: _set_mtu_here(NODE_UPLINK, mtu))

    def fabric_port() -> None:
        _set_mtu_here(plan.name, mtu)
        _stop_segmentation_offload_here(plan.name)

    in_netns_thread(spec.fabric_netns, fabric_port)
    log.info("node %s: uplink MTU %d (pmtu-blackhole)", plan.name, mtu)
    return mtu


def apply_node_faults(spec: LabSpec, plan: NodePlan) -> list[str]:
    """Install the network faults of ``spec`` in ``plan``'s node namespace (and its uplink's
    fabric port); return the iptables rules.

    No rule depends on the CNI bridge existing (rules match on addresses and ``eth0``), so
    this is safe before the first pod.
    """
    apply_uplink_mtu(spec, plan)
    rules: list[str] = []
    for version in spec.families:
        rules_by_table = node_fault_rules(spec, plan, version)
        if not rules_by_table:
            continue
        if spec.faults & {"snat-same-node", "udp-drop", SAME_NODE_LAST_FAULT, DNS_BLACKHOLE_FAULT}:
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
