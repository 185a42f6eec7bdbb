"""Pods reach pods with full-size packets: what fits the pod's own interface must cross the
pod network intact, whatever the path (an overlay's or an uplink's smaller MTU, with
"fragmentation needed" dropped, is the classic silent break). For every ordered pair of
nodes, same-node included: a TCP transfer of 1 MiB arrives complete and byte-identical within
the probe timeout, and a UDP datagram and an ICMP echo as large as the source interface's MTU,
sent with Don't Fragment, arrive intact.

The exchanges come from the run's reachability sweep (`conformance.kit.exchanges.reachability`) and are
judged by `conformance.kit.verdicts.judge`; a failure gives the sizes tried and the MTUs each side
reports."""

from __future__ import annotations

from conformance.kit.cluster.pairs import NodePair
from conformance.kit.exchanges.reachability import (
    TRANSFER_BYTES,
    Params,
    Planned,
    pod_to_pod,
    swept_by,
)
from conformance.kit.probes.model import ProbeMap
from conformance.kit.verdicts.judge import ItemExchanges

PROTOCOLS = ("tcp", "udp", "icmp")

RULE = (
    "pods MUST reach pods on every node with full-size packets: what fits the source pod's "
    "interface MTU arrives intact"
)


def targets(check: str, params: Params, probe_map: ProbeMap) -> Planned:
    """The probe pod of the source node to the probe pod of the destination node (the peer pod
    on the same node), with full-size packets."""
    return pod_to_pod(check, params, probe_map, full_size=True)


@swept_by(targets)
def test_full_size_packets(
    proto: str, node_pair: NodePair, family: int, exchanges: ItemExchanges
) -> None:
    """A pod MUST reach a pod on the same node and on every other node with full-size packets:
    a TCP transfer of 1 MiB arrives complete and byte-identical, and a UDP datagram and an
    ICMP echo sized to the source pod's interface MTU, sent with Don't Fragment, arrive
    intact."""
    exchanges.assert_rule(
        RULE,
        expected={
            "tcp": f"{TRANSFER_BYTES} bytes over TCP arrive complete and byte-identical",
            "udp": "a UDP datagram of the source interface's MTU (DF set) arrives whole",
            "icmp": "an ICMP echo of the source interface's MTU (DF set) comes back whole",
        }[proto],
    )
