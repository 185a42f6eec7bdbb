"""Data-plane faults made by hand on the genuine cluster, inside one node's network namespace
(``rk-node-N``: iptables and ``ip link``; this machine's kernel has no tc qdiscs beyond the
default, so loss is made with iptables' ``statistic`` match), each with the checks it must
fail (the same patterns as its netlab twin where it has one) and a clean removal.

A fault is a list of steps, each a command and the command that undoes it; `applied` makes
them in order and undoes them in reverse whatever happened, then checks the node is as it was
(`node_state`: its own iptables rules, its uplink's MTU).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from realk8s import RealCluster, RealK8sError, in_node
from verdict_patterns import (
    CLUSTER_IP,
    FULL_SIZE,
    HAIRPIN,
    HOST_PORT_PODS,
    HOST_TO_POD,
    NO_SNAT,
    NODE_PORT_PODS,
    READINESS,
    Expectation,
    cross_node,
    either,
    of_node,
    on_node,
    same_node,
)

UPLINK = "eth0"  # a node's link to the others (the fixture's README, "Layout")
BRIDGE = "cni0"  # the CNI bridge of a node's pods
#: The uplink MTU of the MTU blackhole; pods keep 1500, as in netlab's ``pmtu-blackhole``.
BLACKHOLE_MTU = 1400
#: Share of the lossy pair's packets dropped (issue 21: "fails 20 % loss on one pair").
LOSS = 0.2
#: Share of new connections to the Service port that are reset.
RESETS = 0.3
#: A port nothing listens on in a node's own network namespace (tcpmux: unused).
CLOSED_PORT = 1


@dataclass(frozen=True)
class Facts:
    """What the faults are written against: each node's pod range (node number -> CIDR), the
    whole pod range and the service range (the fixture's ``CLUSTER_CIDR``, ``SERVICE_CIDR``)."""

    pod_cidrs: Mapping[int, str]
    cluster_cidr: str = "10.244.0.0/16"
    service_cidr: str = "10.96.0.0/16"


@dataclass(frozen=True)
class Step:
    """One change inside a node and the command that undoes it."""

    apply: tuple[str, ...]
    undo: tuple[str, ...]


def iptables(table: str, chain: str, *rule: str) -> Step:
    """A rule inserted first in ``table``/``chain`` (before kube-proxy's jumps), deleted again."""
    return Step(
        ("iptables", "-w", "-t", table, "-I", chain, *rule),
        ("iptables", "-w", "-t", table, "-D", chain, *rule),
    )


def uplink_mtu(mtu: int) -> Step:
    return Step(
        ("ip", "link", "set", UPLINK, "mtu", str(mtu)),
        ("ip", "link", "set", UPLINK, "mtu", "1500"),
    )


def reconnect_to_api() -> Step:
    """The node's connections to the API server (kubelet's, kube-proxy's watches) closed, so
    that their clients open new ones: a TCP connection keeps the MSS it was opened with, and
    one opened before the node's MTU was lowered loses every full-size segment the API server
    sends it (a veth drops frames over its MTU), so the node's watches stall and its Service
    rules fall behind the API: a fault of the control plane, not the one made here. Nothing to
    undo: connections opened at the lower MTU work at any larger one."""
    return Step(("ss", "-K", "state", "established", "( dport = :6443 )"), ("true",))


@dataclass(frozen=True)
class NodeFault:
    """A fault of one node: what it breaks, how, which checks must (and may) fail."""

    name: str
    node: int
    summary: str
    steps: Callable[[Facts], list[Step]]
    expectation: Expectation
    #: The netlab fault that breaks the same thing (its detection-matrix patterns are these).
    twin: str | None = None
    #: Why it cannot be judged on main yet (None: it can).
    pending: str | None = None

    @property
    def id(self) -> str:
        return self.name


def _snat(facts: Facts) -> list[Step]:
    # The fixture's README: "a node masquerading pod traffic that leaves it".
    rule = ("-s", facts.cluster_cidr, "!", "-o", BRIDGE, "-j", "MASQUERADE")
    return [iptables("nat", "POSTROUTING", *rule)]


def _one_way_drop(facts: Facts) -> list[Step]:
    # netlab's one-way-pair-drop: new flows from node-1's pods to node-3's pods, on their way
    # out of node-1; replies to flows node-3 starts still leave.
    rule = ("-s", facts.pod_cidrs[1], "-d", facts.pod_cidrs[3], "-o", UPLINK)
    return [
        iptables("filter", "FORWARD", *rule, "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP")
    ]


def _host_cut(facts: Facts) -> list[Step]:
    # netlab's host-to-remote-pods-blocked: node-2's own stack (hostNetwork pods included)
    # opens no connection to other nodes' pods; replies to connections they open still leave.
    return [
        iptables(
            "filter", "OUTPUT", "-d", cidr, "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"
        )
        for node, cidr in sorted(facts.pod_cidrs.items())
        if node != 2
    ]


def _mtu_blackhole(facts: Facts) -> list[Step]:
    # netlab's pmtu-blackhole: node-2's uplink at 1400 (pods keep 1500) and the "fragmentation
    # needed" it would send dropped, so senders never learn the path MTU. Frames the other way
    # meet no MTU on a veth when they travel as one offloaded super-packet, so what a 1400-byte
    # wire would drop is dropped on the way in to node-2's pods (the node's own traffic, its
    # kubelet's included, keeps the MSS it negotiated).
    too_big = ("-p", "icmp", "--icmp-type", "fragmentation-needed", "-j", "DROP")
    inbound = ("-i", UPLINK, "-d", facts.pod_cidrs[2], "-m", "length", "--length")
    return [
        uplink_mtu(BLACKHOLE_MTU),
        reconnect_to_api(),
        iptables("filter", "OUTPUT", *too_big),
        iptables("filter", "FORWARD", *too_big),
        iptables("filter", "FORWARD", *inbound, f"{BLACKHOLE_MTU + 1}:65535", "-j", "DROP"),
    ]


def _lossy_pair(facts: Facts) -> list[Step]:
    rule = ("-s", facts.pod_cidrs[1], "-d", facts.pod_cidrs[3], "-o", UPLINK)
    random = ("-m", "statistic", "--mode", "random", "--probability", f"{LOSS}")
    return [iptables("filter", "FORWARD", *rule, *random, "-j", "DROP")]


def _service_resets(facts: Facts) -> list[Step]:
    # New TCP connections from node-2's pods to a Service's port 80 (the suite's Service; the
    # API server's is 443) sent at random, before kube-proxy's rules, to a closed port of the
    # node's own bridge address, whose kernel resets them: as netlab's twin, which sends them
    # to a closed port of an endpoint. (REJECT in FORWARD, after kube-proxy's DNAT, resets
    # nothing a client notices: its SYN is sent again a second later and gets through.)
    bridge_address = next(ipaddress.ip_network(facts.pod_cidrs[2]).hosts())
    rule = ("-s", facts.pod_cidrs[2], "-d", facts.service_cidr, "-p", "tcp", "--dport", "80")
    random = ("-m", "statistic", "--mode", "random", "--probability", f"{RESETS}")
    closed = ("-j", "DNAT", "--to-destination", f"{bridge_address}:{CLOSED_PORT}")
    return [iptables("nat", "PREROUTING", *rule, *random, *closed)]


FAULTS: tuple[NodeFault, ...] = (
    NodeFault(
        "snat-node-2",
        2,
        "node-2 masquerades its pods' traffic leaving the pod bridge (iptables nat POSTROUTING)",
        _snat,
        Expectation(
            either(cross_node(NO_SNAT, src="2"), on_node(CLUSTER_IP, "2")),
            "node-2's pods reach other nodes' pods from node-2's address: its cross-node"
            " no-SNAT pairs, every protocol, and its cluster IP spreads (the other nodes'"
            " endpoints see the node)",
        ),
        twin="snat-cross-node",
    ),
    NodeFault(
        "one-way-drop-1-to-3",
        1,
        "node-1 drops new flows from its pods to node-3's pods (iptables FORWARD, NEW)",
        _one_way_drop,
        Expectation(
            either(
                cross_node(NO_SNAT, "1", "3"),
                cross_node(FULL_SIZE, "1", "3"),
                on_node(CLUSTER_IP, "1"),
                of_node(READINESS, "1"),
            ),
            "pod traffic from node-1 to node-3 only: that direction, every protocol, small and"
            " full-size; node-1's cluster IP spreads never reach node-3's endpoint",
            may=same_node(NODE_PORT_PODS, "1"),
        ),
        twin="one-way-pair-drop",
    ),
    NodeFault(
        "host-cut-node-2",
        2,
        "node-2's own stack opens no connection to other nodes' pods (iptables OUTPUT, NEW)",
        _host_cut,
        Expectation(
            cross_node(HOST_TO_POD, src="2"),
            "node-2's host network cannot reach other nodes' pods: its host-to-pod pairs only",
        ),
        twin="host-to-remote-pods-blocked",
    ),
    NodeFault(
        "mtu-blackhole-node-2",
        2,
        f"node-2's uplink at MTU {BLACKHOLE_MTU} (pods 1500), 'fragmentation needed' dropped,"
        f" frames over {BLACKHOLE_MTU} bytes to its pods dropped (ip link, iptables)",
        _mtu_blackhole,
        Expectation(
            either(cross_node(FULL_SIZE, src="2"), cross_node(FULL_SIZE, dst="2")),
            "full-size traffic between node-2's pods and other nodes' pods, both directions",
        ),
        twin="pmtu-blackhole",
    ),
    NodeFault(
        "loss-1-to-3",
        1,
        f"node-1 drops {LOSS:.0%} of its pods' packets to node-3's pods at random (iptables"
        " statistic)",
        _lossy_pair,
        Expectation(
            either(cross_node(NO_SNAT, "1", "3"), cross_node(NO_SNAT, "3", "1")),
            "the lossy pair fails on the loss it measures, both ordered pairs, every protocol"
            " (requests one way, answers and SYN-ACKs the other); what else crosses the pair"
            " may fail (a spread or a transfer stalls on repeated losses)",
            may=either(
                cross_node(FULL_SIZE, "1", "3"),
                cross_node(FULL_SIZE, "3", "1"),
                cross_node(HOST_PORT_PODS, "1", "3"),
                cross_node(HOST_PORT_PODS, "3", "1"),
                on_node(CLUSTER_IP, "1|3"),
                on_node(HAIRPIN, "1|3"),
                of_node(READINESS, "1|3"),
                cross_node(NODE_PORT_PODS, "1|3", "1|3"),
                same_node(NODE_PORT_PODS, "1|3"),
            ),
        ),
        twin="lossy-pair",
    ),
    NodeFault(
        "service-resets-node-2",
        2,
        f"node-2 resets {RESETS:.0%} of its pods' new TCP connections to a Service's port 80"
        " (iptables nat PREROUTING: DNAT to a closed port of the node's bridge address)",
        _service_resets,
        Expectation(
            either(on_node(CLUSTER_IP, "2", proto="tcp"), on_node(HAIRPIN, "2", proto="tcp")),
            "node-2's TCP spreads through the cluster IP, its hairpin included, see resets",
            may=of_node(READINESS, "2"),
        ),
        twin="service-resets",
    ),
)


# --- the node before and after ------------------------------------------------------------------

#: Rules of kube-proxy and the CNI plugins, which change with the run's Services and pods.
_OTHERS_RULES = re.compile(r"KUBE-|CNI-")
_COUNTERS = re.compile(r"\[\d+:\d+\]")


def node_state(cluster: RealCluster, node: int) -> list[str]:
    """A node's own iptables rules (nat and filter, without kube-proxy's and the CNI plugins'
    rules and without counters) and its uplink's MTU: what a fault changes."""
    lines = [f"mtu {_mtu(cluster, node)}"]
    for table in ("nat", "filter"):
        saved = in_node(cluster, node, ["iptables-save", "-t", table]).stdout
        lines += [
            _COUNTERS.sub("", line).strip()
            for line in saved.splitlines()
            if line and not line.startswith("#") and not _OTHERS_RULES.search(line)
        ]
    return lines


def _mtu(cluster: RealCluster, node: int) -> int:
    shown = in_node(cluster, node, ["ip", "-o", "link", "show", UPLINK]).stdout
    found = re.search(r"\bmtu (\d+)", shown)
    if found is None:
        raise RealK8sError(f"no MTU in {shown!r}")
    return int(found.group(1))


@contextmanager
def applied(cluster: RealCluster, fault: NodeFault, facts: Facts) -> Iterator[list[Step]]:
    """``fault`` made inside its node for the length of the block, undone in reverse order on
    the way out whatever happened; the node must then be as it was before."""
    before = node_state(cluster, fault.node)
    steps = fault.steps(facts)
    done: list[Step] = []
    try:
        for step in steps:
            in_node(cluster, fault.node, step.apply)
            done.append(step)
        yield steps
    finally:
        for step in reversed(done):
            in_node(cluster, fault.node, step.undo)
        after = node_state(cluster, fault.node)
        if after != before:
            changed = sorted(set(before) ^ set(after))
            raise RealK8sError(f"{fault.name} was not removed cleanly: {changed}")
