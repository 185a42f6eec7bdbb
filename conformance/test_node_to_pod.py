"""Agents on a node (system daemons, kubelet) can communicate with all pods on that node: the
hostNetwork probe reaches the node's pods, which see a source address of that node.

The exchanges come from the run's reachability sweep (`conformance.kit.exchanges.reachability`) and are
judged by `conformance.kit.verdicts.judge`: a source is the node's when the Node object lists it or
it sits on an interface of the node's network namespace (seen by the hostNetwork probe)."""

from __future__ import annotations

from conformance.kit.exchanges.reachability import Params, Planned, host_to_pods, swept_by
from conformance.kit.probes.model import ProbeMap
from conformance.kit.verdicts.judge import ItemExchanges

PROTOCOLS = ("tcp", "udp", "icmp")
#: The sources are nodes' host networks (reports draw them as their own rows).
SOURCE_KIND = "host"

RULE = "agents on a node MUST reach every pod on that node"


def targets(check: str, params: Params, probe_map: ProbeMap) -> Planned:
    """The node's hostNetwork probe to each of its pod-network probes."""
    node = params["probe_node"]
    return host_to_pods(check, params, probe_map, node, node)


@swept_by(targets)
def test_node_to_pod(proto: str, family: int, probe_node: str, exchanges: ItemExchanges) -> None:
    """The hostNetwork probe on a node MUST reach every probe pod on that node (tcp, udp, icmp)
    and each pod MUST see a source address that belongs to that node."""
    exchanges.assert_rule(RULE)
