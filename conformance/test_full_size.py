"""Pods reach pods with full-size packets: what fits the pod's own interface must cross the
pod network intact, whatever the path (an overlay's or an uplink's smaller MTU, with
"fragmentation needed" dropped, is the classic silent break). For every ordered pair of
nodes, same-node included: a TCP transfer of 1 MiB arrives complete and byte-identical within
the probe timeout, and a UDP datagram and an ICMP echo as large as the source interface's MTU,
sent with Don't Fragment, arrive intact.

The exchanges come from the run's reachability sweep (`conformance.kit.reachability`) and are
judged by `conformance.kit.verdicts`; a failure gives the sizes tried and the MTUs each side
reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from conformance.kit.pairs import NodePair
from conformance.kit.probe_client import address_of_family
from conformance.kit.probes import ROLE_PEER, ROLE_PROBE, ProbeMap
from conformance.kit.reachability import (
    TRANSFER_BYTES,
    Endpoint,
    Target,
    Unplanned,
    swept_by,
    without_address,
)
from conformance.kit.verdicts import ItemExchanges

PROTOCOLS = ("tcp", "udp", "icmp")

RULE = (
    "pods MUST reach pods on every node with full-size packets: what fits the source pod's "
    "interface MTU arrives intact"
)


def targets(params: Mapping[str, Any], probe_map: ProbeMap) -> Sequence[Target] | Unplanned:
    """The probe pod of the source node to the probe pod of the destination node (the peer pod
    on the same node), with full-size packets."""
    proto, family, pair = params["proto"], params["family"], params["node_pair"]
    source = probe_map.get(ROLE_PROBE, pair.src)
    target = probe_map.get(ROLE_PEER if pair.same_node else ROLE_PROBE, pair.dst)
    src_ip = address_of_family(source.pod_ips, family)
    dst_ip = address_of_family(target.pod_ips, family)
    if src_ip is None or dst_ip is None:
        lacking = [p for p, ip in ((source, src_ip), (target, dst_ip)) if ip is None]
        return without_address(family, lacking, probe_map)
    container = target.container()
    return [
        Target(
            check="test_full_size_packets",
            proto=proto,
            family=family,
            source=Endpoint(source.name, source.container().name, source.node),
            destination=Endpoint(target.name, container.name, target.node),
            host=dst_ip,
            port=container.port(proto),
            capture=False,
            full_size=True,
        )
    ]


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
