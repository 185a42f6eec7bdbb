"""Pods on any node can communicate with all pods on all nodes without NAT: the destination sees
the source pod's own IP. Checked twice per exchange: by the destination's listener (the peer
address of the connection or datagram) and by a packet capture inside the destination pod.

The exchanges come from the run's reachability sweep (`conformance.kit.exchanges.reachability`) and are
judged by `conformance.kit.verdicts.judge`; each test item holds one ordered pair of nodes, and every
ordered pair is checked (same-node: the node's probe pod to its peer pod)."""

from __future__ import annotations

from conformance.kit.cluster.pairs import NodePair
from conformance.kit.exchanges.reachability import Params, Planned, pod_to_pod, swept_by
from conformance.kit.probes.model import ProbeMap
from conformance.kit.verdicts.judge import ItemExchanges

PROTOCOLS = ("tcp", "udp", "icmp")

RULE = "pods on any node MUST reach pods on every node without NAT (the source IP is preserved)"


def targets(check: str, params: Params, probe_map: ProbeMap) -> Planned:
    """The probe pod of the source node to the probe pod of the destination node (the peer pod
    on the same node); the source pod's own IP is the only source allowed, at the listener and
    in the capture."""
    return pod_to_pod(check, params, probe_map)


@swept_by(targets)
def test_no_snat(proto: str, node_pair: NodePair, family: int, exchanges: ItemExchanges) -> None:
    """A pod MUST reach a pod on the same node and on another node (tcp, udp, icmp), and the
    destination MUST see the source pod's own IP as the packets' source (no SNAT)."""
    exchanges.assert_rule(RULE)
