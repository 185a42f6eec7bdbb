"""Proof of detection: the whole suite, run as a user runs it, against 3-node netlabs.

On a healthy lab every check passes (or skips for a reason other than "could not test"), the run
exits 0 and leaves nothing behind; on a lab with a fault (or two), exactly the checks of the
broken rules fail, at least one does, nothing errors and the run exits 1. The labs boot and run in a bounded pool,
``POOL_SIZE`` at a time; every lab is torn down, also when its run fails.

``NETCONFORM_MATRIX_DOC=docs/detection-matrix.md pytest tests/e2e/test_detection_matrix.py``
also writes the matrix document from the run.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from labrun import LabCase, LabError, SuiteRun, leftover_namespaces, run_on_lab, unexpected_verdicts
from matrixdoc import write_matrix_doc
from verdict_patterns import (
    CLUSTER_IP,
    DNS_HEADLESS,
    DNS_NAMES,
    EDGE_EGRESS,
    EDGE_NODE_PORT,
    FULL_SIZE,
    HAIRPIN,
    HOST_PORT_HOSTS,
    HOST_PORT_PODS,
    HOST_TO_POD,
    NO_SNAT,
    NODE_PORT_HOSTS,
    NODE_PORT_PODS,
    NODE_TO_POD,
    READINESS,
    REFUSAL,
    SERVICE_TRAFFIC,
    Expectation,
    cross_node,
    either,
    from_node,
    of_node,
    on_node,
    same_node,
    to_node,
)
from verdict_patterns import PROTO as _PROTO

from conformance.kit.netpol.scenarios import scenario_ids

pytestmark = pytest.mark.needs_lab

POOL_SIZE = 3  # labs booted and tested at once: the 2-core CI machine's sweet spot
DOC_VARIABLE = "NETCONFORM_MATRIX_DOC"

# Fault -> the checks that must fail, and only they: the checks of the rule the fault breaks.
EXPECTED_FAILURES: dict[str, Expectation] = {
    "snat-cross-node": Expectation(
        either(cross_node(NO_SNAT), on_node(CLUSTER_IP)),
        "pod -> other node's pod is masqueraded: cross-node no-SNAT pairs, every protocol, and"
        " every node's cluster IP spread (the other nodes' endpoints see the node's address)",
    ),
    "snat-same-node": Expectation(
        either(same_node(NO_SNAT), on_node(CLUSTER_IP)),
        "pod -> pod on the same node is masqueraded: same-node no-SNAT pairs, every protocol, and"
        " every node's cluster IP spread (its own node's endpoint sees the bridge's address)",
    ),
    "overlapping-pod-cidrs": Expectation(
        r"test_pod_ips::test_node_pod_cidrs_disjoint\b",
        "two nodes publish overlapping podCIDRs",
    ),
    "duplicate-pod-ip": Expectation(
        rf"test_pod_ips::test_pod_ips_unique\b|{same_node(NO_SNAT)}|{same_node(FULL_SIZE)}",
        "pods on a node share one IP; a same-node pair then sends to its own address",
        # The pods of a node share the IP: which one answers ARP, and so whether traffic into
        # a node (a request, or the reply to the node's own probe) reaches the intended pod,
        # is chance, for every pair and every host-network probe.
        may=either(
            cross_node(NO_SNAT),
            cross_node(FULL_SIZE),
            HOST_TO_POD,
            NODE_TO_POD,
            SERVICE_TRAFFIC,
            EDGE_EGRESS,
            EDGE_NODE_PORT,
        ),
    ),
    "ip-outside-node-cidr": Expectation(
        r"test_pod_ips::test_pod_ips_inside_node_pod_cidrs\b",
        "one node's pods get IPs outside its podCIDR (routes still lead there)",
    ),
    "split-netns": Expectation(
        r"test_localhost::|test_sandbox::test_sandbox_survives_container_restart\b",
        "a pod's second container has its own network namespace: localhost, interfaces and"
        " port space are not shared (nor localhost after a restart), on every node",
    ),
    "unshared-emptydir": Expectation(
        r"test_shared_volumes::",
        "each container (init included) gets its own emptyDir copy",
    ),
    "block-node-to-pod": Expectation(
        rf"{NODE_TO_POD}\[",
        "a node's own stack cannot open connections to its pods, every protocol",
    ),
    "cross-node-blackhole": Expectation(
        either(
            cross_node(NO_SNAT),
            cross_node(FULL_SIZE),
            on_node(CLUSTER_IP),
            of_node(READINESS),
            of_node(DNS_NAMES, "2|3"),
            of_node(DNS_HEADLESS, "2|3"),
        ),
        "pod <-> pod traffic between nodes is dropped: every cross-node pod pair, every protocol,"
        " small and full-size; the cluster IP's other endpoints (spread, readiness); the lab's"
        " DNS, a pod of node-1, from the other nodes (a pod to another node's hostPort leaves"
        " masqueraded to its node's address, which the drop does not match)",
        # A NodePort may send a connection to an endpoint on a third node (or from a node's own
        # address to another node's endpoint), and hairpin's connections may go to another
        # node's endpoint: whether a try crosses, and is dropped, is chance (in the lab, most of
        # a pod's connections to its own Service stay with itself: 34 to 37 of 39 in one run).
        may=either(NODE_PORT_PODS, NODE_PORT_HOSTS, HAIRPIN),
    ),
    "sandbox-reset": Expectation(
        r"test_sandbox::test_sandbox_survives_container_restart\b",
        "a container restart gives the pod a new network namespace and IP, on every node",
    ),
    "wrong-self-ip": Expectation(
        rf"test_pod_ips::test_pod_ip_is_interface_address\b|{NO_SNAT}|{NODE_TO_POD}"
        rf"|{HOST_TO_POD}|{FULL_SIZE}|{CLUSTER_IP}|{HAIRPIN}|{READINESS}|{NODE_PORT_PODS}"
        rf"|{NODE_PORT_HOSTS}|{EDGE_NODE_PORT}",
        "the API reports an IP no pod has: the pod lacks it, and every check that reaches a pod"
        " at its reported IP finds nobody there (Services: their endpoints are the reported IPs,"
        " from pods, hosts and the outside host)",
    ),
    "udp-drop": Expectation(
        either(
            cross_node(NO_SNAT, proto="udp"),
            same_node(NO_SNAT, proto="udp"),
            cross_node(FULL_SIZE, proto="udp"),
            same_node(FULL_SIZE, proto="udp"),
            on_node(CLUSTER_IP, proto="udp"),
            on_node(HAIRPIN, proto="udp"),
            same_node(NODE_PORT_PODS, proto="udp"),
            same_node(HOST_PORT_PODS, proto="udp"),
            of_node(DNS_NAMES),
            of_node(DNS_HEADLESS),
        ),
        "UDP between pods is dropped, same node and cross node, small and full-size; UDP through"
        " a cluster IP (hairpin included), a pod's NodePort and hostPort on its own node (DNAT to"
        " a pod); DNS queries to the lab's DNS (a pod). A pod's hostPort on another node is"
        " reached masqueraded to the pod's node address, which the drop does not match",
        # A pod's NodePort on another node is masqueraded to that node's address: whether the
        # drop sees pod-to-pod traffic depends on where the endpoint is.
        may=either(
            cross_node(NODE_PORT_PODS, proto="udp"), cross_node(NODE_PORT_HOSTS, proto="udp")
        ),
    ),
    "one-way-pair-drop": Expectation(
        either(
            cross_node(NO_SNAT, "1", "3"),
            cross_node(FULL_SIZE, "1", "3"),
            on_node(CLUSTER_IP, "1"),
            of_node(READINESS, "1"),
        ),
        "pod traffic from node-1 to node-3 only (not in the old ring) is dropped: that one"
        " direction, every protocol, small and full-size; node-1's cluster IP spreads never"
        " reach node-3's endpoint",
        # node-1's pods to node-1's NodePort, node-1's peer to its own Service (hairpin: every
        # connection is judged): a try sent to node-3's endpoint is dropped, if one is.
        may=either(same_node(NODE_PORT_PODS, "1"), on_node(HAIRPIN, "1")),
    ),
    "same-node-drop-last": Expectation(
        either(
            same_node(NO_SNAT, "3"),
            same_node(FULL_SIZE, "3"),
            on_node(CLUSTER_IP, "3"),
            on_node(HAIRPIN, "3"),
            of_node(READINESS, "3"),
            same_node(HOST_PORT_PODS, "3"),
        ),
        "pod traffic inside the last node is dropped: its same-node pairs; its cluster IP"
        " spreads (its own endpoint), hairpin and hostPort from its own pods",
        # node-3's pods to node-3's NodePort: a try sent to node-3's own endpoint is dropped.
        may=same_node(NODE_PORT_PODS, "3"),
    ),
    "host-to-remote-pods-blocked": Expectation(
        cross_node(HOST_TO_POD, src="2"),
        "node-2's host network cannot reach other nodes' pods: its host-to-pod pairs only",
    ),
    "pmtu-blackhole": Expectation(
        either(cross_node(FULL_SIZE, src="2"), cross_node(FULL_SIZE, dst="2")),
        "node-2's uplink MTU is below the pods' and 'fragmentation needed' is dropped: full-size"
        " traffic between node-2's pods and other nodes' pods, both directions",
    ),
    "network-not-ready-on-node": Expectation(
        r"test_node_network::test_node_network_ready\[node-2\]",
        "node-2's network plugin is not ready (Ready=False: NetworkReady=false,"
        " NetworkPluginNotReady; not-ready taints): the node network check names it; the probes"
        " go to node-1 and node-3 only, whose checks all pass",
    ),
    "family-missing-on-node": Expectation(
        either(
            r"test_pod_ips::test_required_family_on_every_pod_and_node\[ipv6\]",
            cross_node(NO_SNAT, src="2", proto="ipv6-" + _PROTO),
            cross_node(NO_SNAT, dst="2", proto="ipv6-" + _PROTO),
            same_node(NO_SNAT, "2", proto="ipv6-" + _PROTO),
            cross_node(FULL_SIZE, src="2", proto="ipv6-" + _PROTO),
            cross_node(FULL_SIZE, dst="2", proto="ipv6-" + _PROTO),
            same_node(FULL_SIZE, "2", proto="ipv6-" + _PROTO),
            cross_node(HOST_TO_POD, dst="2", proto="ipv6-" + _PROTO),
            rf"{NODE_TO_POD}\[ipv6-{_PROTO}-node-2\]",
            on_node(CLUSTER_IP, "2", proto="ipv6-" + _PROTO),
            on_node(HAIRPIN, "2", proto="ipv6-" + _PROTO),
            of_node(REFUSAL, "2", family="ipv6-"),
            of_node(READINESS, "2", family="ipv6-"),
            from_node(NODE_PORT_PODS, "2", proto="ipv6-" + _PROTO),
            from_node(HOST_PORT_PODS, "2", proto="ipv6-" + _PROTO),
            to_node(HOST_PORT_PODS, "2", proto="ipv6-" + _PROTO),
            to_node(HOST_PORT_HOSTS, "2", proto="ipv6-" + _PROTO),
            on_node(EDGE_EGRESS, "2", proto="ipv6-" + _PROTO),
        ),
        "node-2's pods get no IPv6 address on a dual-stack lab (whose nodes' podCIDRs declare"
        " IPv6, so --ip-family auto requires it, as dual does): the required-family check, and"
        " every IPv6 check with a pod of node-2 at either end (Services: node-2's clients, and"
        " its hostPort probe; the edge: node-2's pod to the outside host)",
    ),
    # The Service faults of the lab (issue 16), each breaking one behaviour of Services.
    "no-hairpin": Expectation(
        on_node(HAIRPIN),
        "the bridge leaves hairpin mode off: a pod reaching itself through its Service, on every"
        " node, tcp and udp",
    ),
    "stale-endpoints": Expectation(
        of_node(READINESS),
        "the proxy keeps endpoints that are not ready: the unready backend still answers every"
        " node's spreads",
    ),
    "nodeport-missing-on-node": Expectation(
        either(
            to_node(NODE_PORT_PODS, "2"),
            to_node(NODE_PORT_HOSTS, "2"),
            on_node(EDGE_NODE_PORT, "2"),
        ),
        "node-2 serves no NodePorts: every NodePort item towards node-2, from pods, hosts and the"
        " outside host",
        # Seen twice in CI runs of the IPv6 lab on a loaded machine (2026-12-05, load 20-40):
        # node-2's refusal by a Service without endpoints came after 3.1 s (a SYN sent again),
        # not at once; the fault does not touch that rule and the healthy labs pass it. Cause
        # not found: left to chance here, named in the closing note.
        may=of_node(REFUSAL, "2", family="ipv6-"),
    ),
    "service-masquerade": Expectation(
        on_node(CLUSTER_IP),
        "pod-to-ClusterIP traffic is masqueraded: every node's cluster IP spread (the endpoints"
        " see a node address); hairpin and NodePorts masquerade anyway",
    ),
    "dns-wrong-address": Expectation(
        either(of_node(DNS_NAMES), of_node(DNS_HEADLESS)),
        "the DNS answers Service names with wrong addresses: the names, headless included, from"
        " every node",
    ),
    "hostport-unmapped": Expectation(
        either(to_node(HOST_PORT_PODS, "2"), to_node(HOST_PORT_HOSTS, "2")),
        "node-2 has no portmap: every hostPort item towards node-2, from pods and hosts",
    ),
    # Issue 21: the pods' resolver, and the sandbox itself.
    "dns-blackhole": Expectation(
        either(of_node(DNS_NAMES), of_node(DNS_HEADLESS)),
        "every node drops its pods' DNS queries: the resolver the pods' resolv.conf names never"
        " answers, for every name, headless included, from every node",
    ),
    "sandbox-reset-same-ip": Expectation(
        r"test_sandbox::test_sandbox_survives_container_restart\b",
        "a container restart gives the pod a new network namespace with the same IP (and, as"
        " kubelet does, restarts the other container into it), on every node",
    ),
    # Issue 24: the cluster's edge, with the lab's outside host (a namespace on the fabric).
    "edge-egress-blocked": Expectation(
        on_node(EDGE_EGRESS, "2"),
        "node-2 drops its pods' new connections beyond the cluster: its pod to the outside host,"
        " every protocol; everything inside the cluster passes",
    ),
    "edge-no-masquerade": Expectation(
        on_node(EDGE_EGRESS, "2"),
        "node-2 does not masquerade its pods' traffic leaving the pod network: the outside host"
        " sees a pod IP it has no route back to, so node-2's pod gets no answer, every protocol",
    ),
    "edge-nodeport-blocked": Expectation(
        on_node(EDGE_NODE_PORT, "2"),
        "node-2 drops NodePort connections from outside the cluster: the outside host at"
        " node-2's NodePort, tcp and udp; pods and nodes still reach it",
    ),
    # Issue 21: loss measured and judged, every Service connection judged.
    "lossy-pair": Expectation(
        either(
            cross_node(NO_SNAT, "2", "3"),
            cross_node(NO_SNAT, "3", "2"),
        ),
        "20 % of the packets from node-2's pods to node-3's pods are dropped: both ordered pairs"
        " of node-2 and node-3, every protocol, lose more than 5 % of their 100 probes (requests"
        " one way, answers and SYN-ACKs the other way); node-3's pods at node-2's hostPort are"
        " not touched (nodes masquerade pod traffic leaving the pod network: node-2's pod"
        " answers node-3's address, not a pod)",
        # A TCP connection through a Service or a NodePort to an endpoint across the pair
        # fails only when its SYN (or SYN-ACK) is lost three times in 5 s: chance. A 1 MiB
        # transfer across the pair may stall on repeated losses.
        may=either(
            cross_node(FULL_SIZE, "2", "3"),
            cross_node(FULL_SIZE, "3", "2"),
            on_node(CLUSTER_IP, "2|3", proto="tcp"),
            on_node(HAIRPIN, "2|3", proto="tcp"),
            same_node(NODE_PORT_PODS, "2", proto="tcp"),
            cross_node(NODE_PORT_PODS, "3", "2", proto="tcp"),
        ),
    ),
    "service-resets": Expectation(
        either(
            on_node(CLUSTER_IP, proto="tcp"),
            on_node(HAIRPIN, proto="tcp"),
            cross_node(NODE_PORT_PODS, proto="tcp"),
            same_node(NODE_PORT_PODS, proto="tcp"),
            cross_node(NODE_PORT_HOSTS, proto="tcp"),
        ),
        "30 % of new TCP connections to a Service are reset: every TCP spread through a cluster"
        " IP (hairpin included) or a NodePort, from every node (at least 39 connections each,"
        " every one judged); the readiness check's failed connections are explained by its flip",
    ),
}


# Labs that break no rule but differ from kubeadm's layout: every check passes or skips for
# its named reason, and the run exits 0. DNS must be tested where kubelet names a cluster DNS,
# whatever its Service is called, and skipped only where kubelet configures none.
@dataclass(frozen=True)
class Variant:
    """What the DNS checks must do on the lab (``dns``: passed or skipped), the skip reason's
    start where they skip, and why."""

    dns: str
    why: str
    reason: str = ""


VARIANTS: dict[str, Variant] = {
    "dns-service-renamed": Variant(
        "passed",
        "the cluster DNS sits behind kube-system/rke2-coredns-rke2-coredns, as on RKE2; the pods'"
        " resolv.conf names its address, so DNS is tested and holds",
    ),
    "no-cluster-dns": Variant(
        "skipped",
        "kubelets have no clusterDNS (as realk8s): ClusterFirst pods get the node's own"
        " resolv.conf, so the DNS checks skip, naming kubelet",
        reason="kubelet configures no cluster DNS on any tested node",
    ),
}
VARIANT_CASES: tuple[LabCase, ...] = tuple(LabCase((name,)) for name in VARIANTS)
DNS_CHECK = re.compile(rf"(?:{DNS_NAMES}|{DNS_HEADLESS})\[")
EDGE_CHECK = re.compile(rf"(?:{EDGE_EGRESS}|{EDGE_NODE_PORT})\[")

# Two faults at once: each must be caught as if alone (the union of their checks).
COMBINATIONS: tuple[tuple[str, str], ...] = (
    ("snat-cross-node", "unshared-emptydir"),
    ("duplicate-pod-ip", "block-node-to-pod"),
    ("split-netns", "overlapping-pod-cidrs"),
)

# IPv6-only and dual-stack labs: healthy, and faults caught in every family the lab has.
HEALTHY_CASES: tuple[LabCase, ...] = tuple(LabCase((), f) for f in ("ipv4", "ipv6", "dual"))
FAMILY_FAULT_CASES: tuple[LabCase, ...] = (
    LabCase(("snat-cross-node",), "dual"),
    LabCase(("ip-outside-node-cidr",), "dual"),
    LabCase(("block-node-to-pod",), "ipv6"),
    LabCase(("service-masquerade",), "dual"),
    LabCase(("nodeport-missing-on-node",), "ipv6"),
    LabCase(("edge-egress-blocked",), "dual"),
    LabCase(("edge-nodeport-blocked",), "ipv6"),
    # A declared family missing: IPv6 under the default --ip-family auto (the nodes' podCIDRs
    # declare it), and with the user asking for both families.
    LabCase(("family-missing-on-node",), "dual"),
    LabCase(("family-missing-on-node",), "dual", ("--ip-family", "dual")),
)
DUAL_ONLY_FAULTS = frozenset({"family-missing-on-node"})
#: The NetworkPolicy family is proven by its own cases (NETPOL_FAULT_CASES): the data-plane
#: faults above would break its cells too (a blackholed pair is closed whatever the policies
#: say), so their labs run the rest of the suite.
WITHOUT_NETPOL = "not netpol"
FAULT_CASES: tuple[LabCase, ...] = tuple(
    replace(case, marker=WITHOUT_NETPOL)
    for case in (
        *(LabCase((fault,)) for fault in EXPECTED_FAILURES if fault not in DUAL_ONLY_FAULTS),
        *(LabCase(pair) for pair in COMBINATIONS),
        *FAMILY_FAULT_CASES,
    )
)

# The NetworkPolicy faults of the lab (issue 24): the family alone (-m netpol) on each, which must
# fail exactly the scenarios below, and in them only cells the fault explains.
NETPOL_CHECK = "test_network_policy::test_network_policy"
NETPOL_CANARY = "test_network_policy::test_network_policy_enforced"
NOT_ENFORCED = "NetworkPolicy not enforced by this cluster"
Cell = Mapping[str, Any]


def _wrong(cell: Cell) -> bool:
    return bool(cell["observed"] != ("open" if cell["expected_allowed"] else "blocked"))


def _opened(cell: Cell) -> bool:
    """Denied by the policies, yet delivered: answered (open), or recorded by the destination
    without an answer reaching the client in time (reached; a busy node answers late)."""
    return not cell["expected_allowed"] and cell["observed"] != "blocked"


def _closed(cell: Cell) -> bool:
    """Allowed by the policies, yet not answered."""
    return bool(cell["expected_allowed"]) and cell["observed"] != "open"


def _ns(pod: object) -> str:
    return str(pod).split("/", 1)[0]


@dataclass(frozen=True)
class NetpolExpectation:
    """The scenarios a NetworkPolicy fault must fail (and only they; ``canary``: the
    enforcement canary too), what every wrong cell of theirs must be, and why."""

    scenarios: tuple[str, ...]
    cells: Callable[[Cell], bool]
    why: str
    canary: bool = False


NETPOL_FAILURES: dict[str, NetpolExpectation] = {
    "netpol-ignored-on-node": NetpolExpectation(
        (
            "default-deny-ingress",
            "default-deny-egress",
            "match-expressions",
            "named-ports",
            "port-range",
            "egress-to-cidr",
            "replies-allowed",
            "policy-updated",
            "policy-deleted",
            "pod-labels-changed",
            "namespace-labels-changed",
        ),
        lambda c: _opened(c) and "node-2" in (c["source_node"], c["destination_node"]),
        "node-2 isolates nothing: every denied cell into (ingress) or out of (egress) node-2's"
        " pods opens, the canary's too; scenarios isolating only pod a (node-1) hold",
        canary=True,
    ),
    "netpol-egress-ignored": NetpolExpectation(
        ("default-deny-egress", "egress-to-cidr", "policy-types-default", "replies-allowed"),
        lambda c: _opened(c) and _ns(c["source"]) == "x",
        "no pod is isolated for egress: every scenario with egress rules opens cells out of x",
    ),
    "netpol-named-ports-unresolved": NetpolExpectation(
        ("named-ports",),
        lambda c: _closed(c) and c["port"] == 8081 and _ns(c["destination"]) == "x",
        "named ports match nothing: port 8081 into x, named in the policy, stays closed",
    ),
    "netpol-except-ignored": NetpolExpectation(
        ("ip-block-except",),
        lambda c: _opened(c) and (c["source"], c["destination"]) == ("y/b", "x/a"),
        "ipBlock except ignored: the excepted pod y/b reaches x/a",
    ),
    "netpol-namespace-selector-as-pod-selector": NetpolExpectation(
        (
            "namespace-selector",
            "peer-selectors-and",
            "peers-or",
            "match-expressions",
            "replies-allowed",
            "policy-updated",
            "namespace-labels-changed",
        ),
        lambda c: _closed(c) and _ns(c["source"]) != _ns(c["destination"]),
        "a namespaceSelector is matched against pod labels of the policy's namespace: every"
        " cell a namespaceSelector allows from another namespace stays closed",
    ),
    "netpol-peer-and-as-or": NetpolExpectation(
        ("peer-selectors-and", "match-expressions"),
        lambda c: _opened(c) and _ns(c["destination"]) == "x",
        "a peer's two selectors ORed: pods matching only one of them reach x",
    ),
    "netpol-labels-not-followed": NetpolExpectation(
        ("pod-labels-changed", "namespace-labels-changed"),
        lambda c: _closed(c) and _ns(c["destination"]) == "x",
        "labels kept as first seen: the newly labelled pod (namespace) stays closed out of x",
    ),
    "netpol-deleted-policy-enforced": NetpolExpectation(
        tuple(scenario_ids()),
        lambda c: True,
        "deleted policies stay enforced: the canary's default deny in x, y and z outlives it and"
        " every scenario's policies outlive theirs (allow-all-union's allow-all too), so every"
        " scenario sees cells closed by stale denials and opened by stale allowances",
    ),
    "netpol-replies-dropped": NetpolExpectation(
        tuple(s for s in scenario_ids() if s != "allow-all-union"),
        lambda c: _closed(c) and c["observed"] == ("reached" if c["proto"] == "udp" else "blocked"),
        "replies judged as new connections: every allowed cell whose reply enters (leaves) a pod"
        " isolated for ingress (egress) and not allowed that way gets no answer; the"
        " destination's record tells the reply path: a UDP request was delivered (reached), a"
        " TCP SYN-ACK lost leaves the connection unopened (blocked); only the allow-all union"
        " holds",
    ),
}
#: Faults whose scenarios no other fault of the group fails share one lab: every failed
#: scenario and wrong cell is then explained by exactly one of them, as alone. The others
#: (scenarios in common, or most of the table) have a lab each.
NETPOL_SHARED_LAB = (
    "netpol-egress-ignored",
    "netpol-named-ports-unresolved",
    "netpol-except-ignored",
    "netpol-peer-and-as-or",
    "netpol-labels-not-followed",
)
NETPOL_FAULT_CASES: tuple[LabCase, ...] = (
    LabCase(NETPOL_SHARED_LAB, marker="netpol"),
    *(LabCase((f,), marker="netpol") for f in NETPOL_FAILURES if f not in NETPOL_SHARED_LAB),
)
# A lab serving NetworkPolicies but enforcing none: one verdict, exit 0; exit 1 when required.
NOT_ENFORCED_CASES: tuple[LabCase, ...] = (
    LabCase(network_policy=False, marker="netpol"),
    LabCase(network_policy=False, marker="netpol", suite_args=("--require-network-policy",)),
)
CASES: tuple[LabCase, ...] = (
    *HEALTHY_CASES,
    *VARIANT_CASES,
    *FAULT_CASES,
    *NETPOL_FAULT_CASES,
    *NOT_ENFORCED_CASES,
)
#: What the pytest process exits with (docs/exit-codes.md): every rule held on a healthy lab,
#: a broken rule under a data-plane fault.
HEALTHY_EXIT = 0
FAULT_EXIT = 1


def case_id(case: LabCase) -> str:
    return case.id


def expected_patterns(
    faults: tuple[str, ...],
) -> tuple[list[re.Pattern[str]], list[re.Pattern[str]]]:
    """The checks ``faults`` must fail and may fail: the union over the faults, one pattern per
    fault (kept apart so each pattern's back-references keep their numbers)."""
    must = [re.compile(EXPECTED_FAILURES[fault].pattern) for fault in faults]
    may = [re.compile(EXPECTED_FAILURES[f].may) for f in faults if EXPECTED_FAILURES[f].may]
    return must, may


class Matrix:
    """The selected cases, submitted at once to a bounded pool of lab runs."""

    def __init__(self, cases: list[LabCase], report_root: Path) -> None:
        self.started = time.monotonic()
        self.wall_seconds = 0.0
        self.pool = ThreadPoolExecutor(max_workers=POOL_SIZE, thread_name_prefix="matrix")
        self.futures: dict[LabCase, Future[SuiteRun]] = {
            case: self.pool.submit(run_on_lab, case, report_root / case.id) for case in cases
        }

    def result(self, case: LabCase) -> SuiteRun:
        return self.futures[case].result()

    def close(self) -> None:
        """Wait for the labs under way (each tears itself down); never start the rest."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.wall_seconds = time.monotonic() - self.started


def _selected_cases(session: pytest.Session, module: object) -> list[LabCase]:
    cases: list[LabCase] = []
    for item in session.items:
        if getattr(item, "module", None) is not module:
            continue
        callspec = getattr(item, "callspec", None)
        case = callspec.params.get("case") if callspec else None
        if isinstance(case, LabCase) and case not in cases:
            cases.append(case)
    return cases


@pytest.fixture(scope="module")
def matrix(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Matrix]:
    """Every selected case's lab run, started in the pool; torn down (and checked) at the end."""
    cases = _selected_cases(request.session, request.module)
    running = Matrix(cases, tmp_path_factory.mktemp("matrix"))
    try:
        yield running
    finally:
        running.close()
    runs = {
        case: future.result()
        for case, future in running.futures.items()
        if future.done() and not future.cancelled() and future.exception() is None
    }
    left = [ns for run in runs.values() for ns in leftover_namespaces(run.lab)]
    assert not left, f"matrix labs left namespaces behind: {left}"
    print(
        f"matrix: {len(running.futures)} labs in {running.wall_seconds:.0f} s, {POOL_SIZE} at a time"
    )
    doc = os.environ.get(DOC_VARIABLE)
    if doc and len(runs) == len(CASES):  # the whole matrix ran, every lab came up
        write_matrix_doc(Path(doc), runs, running.wall_seconds, POOL_SIZE)


@pytest.mark.parametrize("case", HEALTHY_CASES, ids=case_id)
def test_healthy_lab_passes_every_check_and_leaves_nothing(case: LabCase, matrix: Matrix) -> None:
    run = matrix.result(case)
    print(
        f"{case.id}: boot {run.boot_seconds:.0f} s, suite {run.suite_seconds:.0f} s, {run.ran} ran"
    )
    failed, errors = run.ids("failed"), run.ids("error")
    assert (failed, errors) == ([], []), (
        f"a healthy lab must pass: failed {failed}, errored {errors}\n{run.output[-6000:]}"
    )
    assert (run.returncode, run.exitstatus) == (HEALTHY_EXIT, HEALTHY_EXIT), (
        f"a healthy lab exits {HEALTHY_EXIT}: the process exited {run.returncode}, the summary "
        f"says {run.exitstatus}\n{run.output[-3000:]}"
    )
    assert run.ran >= 50, f"only {run.ran} checks ran:\n{run.output[-3000:]}"
    for check in run.cases:
        if check.outcome == "skipped":
            assert "COULD NOT TEST" not in check.message, f"{check.test_id}: {check.message}"
    assert run.properties.get("netconform.node_count") == "3", run.properties
    # The edge checks ran against the lab's outside host, in every family of the lab.
    edge = [c.test_id for c in run.cases if EDGE_CHECK.search(c.test_id)]
    families = {"ipv4": 1, "ipv6": 1, "dual": 2}[case.family]
    assert len(edge) == 15 * families, f"edge checks: {edge}"
    assert set(edge) <= set(run.ids("passed")), f"edge checks: {edge}"
    assert (run.report_dir / "summary.json").read_text().strip() not in ("", "{}", "[]")
    assert run.leftovers == [], f"the run left objects behind in the cluster: {run.leftovers}"


@pytest.mark.parametrize("case", VARIANT_CASES, ids=case_id)
def test_variants_break_no_rule_and_dns_follows_the_pods_resolver(
    case: LabCase, matrix: Matrix
) -> None:
    run = matrix.result(case)
    variant = VARIANTS[case.faults[0]]
    print(
        f"{case.id}: boot {run.boot_seconds:.0f} s, suite {run.suite_seconds:.0f} s, {run.ran} ran"
    )
    failed, errors = run.ids("failed"), run.ids("error")
    assert (failed, errors) == ([], []), (
        f"{case.id} breaks no rule: failed {failed}, errored {errors}\n{run.output[-6000:]}"
    )
    assert run.exitstatus == 0, f"{case.id}: exit {run.exitstatus}\n{run.output[-3000:]}"
    dns = [check for check in run.cases if DNS_CHECK.search(check.test_id)]
    assert len(dns) >= 6, f"{case.id}: DNS checks {[c.test_id for c in dns]}"
    off = [
        f"{c.test_id}: {c.outcome} {c.message}"
        for c in dns
        if c.outcome != variant.dns or not c.message.startswith(variant.reason)
    ]
    assert not off, f"{case.id} ({variant.why}):\n  " + "\n  ".join(off)
    assert run.leftovers == [], f"{case.id}: the run left objects behind: {run.leftovers}"


@pytest.mark.parametrize("case", FAULT_CASES, ids=case_id)
def test_faults_fail_exactly_the_checks_of_their_rules(case: LabCase, matrix: Matrix) -> None:
    try:
        run = matrix.result(case)
    except LabError as error:
        pytest.fail(f"{case.id}: {error}", pytrace=False)
    label = case.id
    faults = case.faults
    print(f"{label}: boot {run.boot_seconds:.0f} s, suite {run.suite_seconds:.0f} s, {run.ran} ran")
    errors = run.ids("error")
    assert not errors, f"{label}: checks errored: {errors}\n{run.output[-6000:]}"
    caught = bool(run.ids("failed"))
    assert caught, f"{label}: the suite caught nothing:\n{run.output[-3000:]}"
    off = unexpected_verdicts(run.cases, *expected_patterns(faults))
    why = "; ".join(f"{f}: {EXPECTED_FAILURES[f].why}" for f in faults)
    assert not off, f"{label}: verdicts off the expectation ({why}):\n  " + "\n  ".join(off)
    assert (run.returncode, run.exitstatus) == (FAULT_EXIT, FAULT_EXIT), (
        f"{label}: a broken rule exits {FAULT_EXIT}: the process exited {run.returncode}, the "
        f"summary says {run.exitstatus}\n{run.output[-3000:]}"
    )
    assert run.leftovers == [], f"{label}: the run left objects behind: {run.leftovers}"


def truth_tables(run: SuiteRun) -> dict[str, list[Mapping[str, Any]]]:
    """Test ID -> its judged tables, from the run's ``summary.json``."""
    summary = json.loads((run.report_dir / "summary.json").read_text())
    return {
        str(test["nodeid"]).rsplit("/", 1)[-1].replace(".py::", "::"): list(
            test.get("truth_tables") or ()
        )
        for test in summary["tests"]
    }


@pytest.mark.parametrize("case", NETPOL_FAULT_CASES, ids=case_id)
def test_netpol_faults_fail_exactly_their_scenarios_and_cells(
    case: LabCase, matrix: Matrix
) -> None:
    try:
        run = matrix.result(case)
    except LabError as error:
        pytest.fail(f"{case.id}: {error}", pytrace=False)
    expectations = {fault: NETPOL_FAILURES[fault] for fault in case.faults}
    why = "; ".join(f"{fault}: {e.why}" for fault, e in expectations.items())
    print(
        f"{case.id}: boot {run.boot_seconds:.0f} s, suite {run.suite_seconds:.0f} s, {run.ran} ran"
    )
    assert not run.ids("error"), f"{case.id}: errored {run.ids('error')}\n{run.output[-6000:]}"
    want = sorted(
        {f"{NETPOL_CHECK}[{s}]" for e in expectations.values() for s in e.scenarios}
        | ({NETPOL_CANARY} if any(e.canary for e in expectations.values()) else set())
    )
    assert sorted(run.ids("failed")) == want, (
        f"{case.id} ({why}): failed {sorted(run.ids('failed'))}, expected {want}"
        f"\n{run.output[-3000:]}"
    )

    def explained(test: str, cell: Cell) -> bool:
        """A wrong cell of a scenario one of the lab's faults fails, as that fault fails it."""
        if test == NETPOL_CANARY:
            return any(e.canary and e.cells(cell) for e in expectations.values())
        scenario = test.partition("[")[2].rstrip("]")
        return any(scenario in e.scenarios and e.cells(cell) for e in expectations.values())

    off = [
        f"{test} step {table['step']}: {cell}"
        for test, tables in truth_tables(run).items()
        for table in tables
        for cell in table["cells_detail"]
        if _wrong(cell) and not explained(test, cell)
    ]
    assert not off, f"{case.id} ({why}): cells off the expectation:\n  " + "\n  ".join(off[:40])
    assert (run.returncode, run.exitstatus) == (FAULT_EXIT, FAULT_EXIT), run.output[-3000:]
    assert run.leftovers == [], f"{case.id}: the run left objects behind: {run.leftovers}"


@pytest.mark.parametrize("case", NOT_ENFORCED_CASES, ids=case_id)
def test_netpol_not_enforced_gets_one_verdict(case: LabCase, matrix: Matrix) -> None:
    run = matrix.result(case)
    required = "--require-network-policy" in case.suite_args
    print(f"{case.id}: boot {run.boot_seconds:.0f} s, suite {run.suite_seconds:.0f} s")
    assert not run.ids("error"), f"{case.id}: errored {run.ids('error')}\n{run.output[-6000:]}"
    assert run.ids("failed") == ([NETPOL_CANARY] if required else []), run.output[-3000:]
    skipped = [c for c in run.cases if c.outcome == "skipped"]
    assert len(skipped) == len(run.cases) - (1 if required else 0), run.output[-3000:]
    assert all(c.message.startswith(NOT_ENFORCED) for c in skipped), [c.message for c in skipped]
    verdict = next(line for line in run.output.splitlines() if line.startswith("verdict: "))
    assert NOT_ENFORCED in verdict, verdict
    code = FAULT_EXIT if required else HEALTHY_EXIT
    assert (run.returncode, run.exitstatus) == (code, code), run.output[-3000:]
    assert run.leftovers == [], f"{case.id}: the run left objects behind: {run.leftovers}"
