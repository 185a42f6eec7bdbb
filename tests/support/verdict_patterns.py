"""Which checks a fault must fail: regular expressions over the suite's check IDs
(``module::name[id]``), and `Expectation`, a fault's patterns with the reason. Shared by the
detection matrix on netlab (``tests/e2e``) and the genuine-cluster tier (``tests/realk8s``), so a
fault made by hand on a genuine cluster is judged by the same patterns as its lab twin."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

# Checks are named "module::name[id]". Pair IDs read "<proto>-node-<src>->node-<dst>" (clusters
# that are not IPv4-only prefix a family), per-node IDs "<proto>-node-<n>"; every ordered pair
# of the 3 nodes is checked, and every node with itself.
#: An optional family prefix of an item ID (``ipv6-``) and any protocol of a pair check.
FAMILY = r"(?:ipv\d-)?"
PROTO = r"(?:tcp|udp|icmp)"


_GROUPS = itertools.count()


def cross_node(check: str, src: str = r"\d+", dst: str = r"\d+", proto: str = PROTO) -> str:
    """Pair items of ``check`` between two different nodes (``src``/``dst``: node numbers)."""
    g = f"s{next(_GROUPS)}"  # unique group names, so patterns can be joined with `either`
    return rf"{check}\[{FAMILY}{proto}-node-(?P<{g}>{src})->node-(?!(?P={g})\])(?:{dst})\]"


def same_node(check: str, node: str = r"\d+", proto: str = PROTO) -> str:
    """Pair items of ``check`` from a node to itself."""
    g = f"s{next(_GROUPS)}"
    return rf"{check}\[{FAMILY}{proto}-node-(?P<{g}>{node})->node-(?P={g})\]"


def either(*patterns: str) -> str:
    """Any of the patterns (each in its own group scope)."""
    return "|".join(f"(?:{p})" for p in patterns)


NO_SNAT = "test_no_snat::test_no_snat"
FULL_SIZE = "test_full_size::test_full_size_packets"
HOST_TO_POD = "test_host_to_pod::test_host_to_pod"
NODE_TO_POD = "test_node_to_pod::test_node_to_pod"
# The Service checks (issue 16): per node ("<proto>-node-<n>", or "node-<n>" without a
# protocol), or per ordered pair of nodes like the pod pairs.
CLUSTER_IP = "test_services::test_cluster_ip"
HAIRPIN = "test_services::test_hairpin"
REFUSAL = "test_services::test_no_endpoints_refused"
READINESS = "test_services::test_endpoints_follow_readiness"
NODE_PORT_PODS = "test_services::test_node_port_from_pods"
NODE_PORT_HOSTS = "test_services::test_node_port_from_hosts"
HOST_PORT_PODS = "test_hostport::test_host_port_from_pods"
HOST_PORT_HOSTS = "test_hostport::test_host_port_from_hosts"
DNS_NAMES = "test_dns::test_service_names_resolve"
DNS_HEADLESS = "test_dns::test_headless_service_resolves_to_ready_pods"
# The cluster's edge (issue 24), per node, with the lab's outside host: "<proto>-node-<n>".
EDGE_EGRESS = "test_edge::test_pod_reaches_external_host"
EDGE_NODE_PORT = "test_edge::test_node_port_from_external_host"


def on_node(check: str, node: str = r"\d+", proto: str = PROTO) -> str:
    """Per-node items of ``check`` with a protocol (``tcp-node-1``)."""
    return rf"{check}\[{FAMILY}{proto}-node-(?:{node})\]"


def of_node(check: str, node: str = r"\d+", family: str = FAMILY) -> str:
    """Per-node items of ``check`` without a protocol (``node-1``, ``ipv6-node-1``)."""
    return rf"{check}\[{family}node-(?:{node})\]"


def to_node(check: str, dst: str, proto: str = PROTO) -> str:
    """Pair items of ``check`` towards node ``dst``, from every node (itself included)."""
    return rf"{check}\[{FAMILY}{proto}-node-\d+->node-(?:{dst})\]"


def from_node(check: str, src: str, proto: str = PROTO) -> str:
    """Pair items of ``check`` from node ``src``, to every node (itself included)."""
    return rf"{check}\[{FAMILY}{proto}-node-(?:{src})->node-\d+\]"


#: The Service checks whose traffic reaches pods (DNS included: the lab's DNS is a pod).
SERVICE_TRAFFIC = rf"{CLUSTER_IP}|{HAIRPIN}|{REFUSAL}|{READINESS}|{NODE_PORT_PODS}"
SERVICE_TRAFFIC += (
    rf"|{NODE_PORT_HOSTS}|{HOST_PORT_PODS}|{HOST_PORT_HOSTS}|{DNS_NAMES}|{DNS_HEADLESS}"
)


@dataclass(frozen=True)
class Expectation:
    """The checks a fault must fail (a regular expression over "module::name[id]"), why, and
    the checks whose verdict the fault leaves open (``may``: empty unless the rule model says
    the outcome depends on chance, e.g. which of two pods sharing an IP answers ARP)."""

    pattern: str
    why: str
    may: str = ""
