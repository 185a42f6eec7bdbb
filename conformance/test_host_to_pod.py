"""Pods in the host network of a node can communicate with all pods on all nodes without NAT:
the hostNetwork probe of every node reaches the pod-network probes of every other node, which
see an address of the source node. (Its own node's pods: `test_node_to_pod`.)

The exchanges come from the run's reachability sweep (`conformance.kit.exchanges.reachability`) and are
judged by `conformance.kit.verdicts.judge`: a source is the node's when its Node object lists it or
it sits on an interface of the node's network namespace (seen by the hostNetwork probe)."""

from __future__ import annotations

from conformance.kit.cluster.pairs import NodePair
from conformance.kit.exchanges.reachability import Params, Planned, host_to_pods, swept_by
from conformance.kit.probes.model import ProbeMap
from conformance.kit.run.cases import PAIRS_CROSS_NODE
from conformance.kit.verdicts.judge import ItemExchanges

PROTOCOLS = ("tcp", "udp", "icmp")
PAIRS = PAIRS_CROSS_NODE
#: The sources are nodes' host networks (reports draw them as their own rows).
SOURCE_KIND = "host"

RULE = (
    "the host network of a node MUST reach every pod on every other node without NAT "
    "(the pod sees an address of the source node)"
)


def targets(check: str, params: Params, probe_map: ProbeMap) -> Planned:
    """The source node's hostNetwork probe to each pod-network probe of the destination node."""
    pair = params["node_pair"]
    return host_to_pods(check, params, probe_map, pair.src, pair.dst)


@swept_by(targets)
def test_host_to_pod(
    proto: str, node_pair: NodePair, family: int, exchanges: ItemExchanges
) -> None:
    """The hostNetwork probe of a node MUST reach every probe pod on every other node (tcp, udp,
    icmp), and each pod MUST see a source address that belongs to the source node."""
    exchanges.assert_rule(RULE)
