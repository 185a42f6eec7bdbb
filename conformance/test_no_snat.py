"""Pods on any node can communicate with all pods on all nodes without NAT: the destination sees
the source pod's own IP. Checked twice per exchange: by the destination's listener (the peer
address of the connection or datagram) and by a packet capture inside the destination pod.

The exchanges come from the run's reachability sweep (`conformance.kit.reachability`) and are
judged by `conformance.kit.verdicts`; each test item holds one ordered pair of nodes, and every
ordered pair is checked (same-node: the node's probe pod to its peer pod)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from conformance.kit.pairs import NodePair
from conformance.kit.probe_client import address_of_family
from conformance.kit.probes import ROLE_PEER, ROLE_PROBE, Probe, ProbeMap
from conformance.kit.reachability import (
    Endpoint,
    Target,
    Unplanned,
    swept_by,
    without_address,
)
from conformance.kit.verdicts import ItemExchanges

PROTOCOLS = ("tcp", "udp", "icmp")

RULE = "pods on any node MUST reach pods on every node without NAT (the source IP is preserved)"


def endpoints(probe_map: ProbeMap, pair: NodePair) -> tuple[Probe, Probe]:
    """Source: the probe pod on ``pair.src``; destination: the peer pod on the same node, or
    the probe pod on ``pair.dst``."""
    source = probe_map.get(ROLE_PROBE, pair.src)
    target = probe_map.get(ROLE_PEER if pair.same_node else ROLE_PROBE, pair.dst)
    return source, target


def targets(params: Mapping[str, Any], probe_map: ProbeMap) -> Sequence[Target] | Unplanned:
    """The exchange of one test item: the source pod's own IP is the only source allowed."""
    proto, family, pair = params["proto"], params["family"], params["node_pair"]
    source, target = endpoints(probe_map, pair)
    src_ip = address_of_family(source.pod_ips, family)
    dst_ip = address_of_family(target.pod_ips, family)
    if src_ip is None or dst_ip is None:
        lacking = [p for p, ip in ((source, src_ip), (target, dst_ip)) if ip is None]
        return without_address(family, lacking, probe_map)
    container = target.container()
    return [
        Target(
            check="test_no_snat",
            proto=proto,
            family=family,
            source=Endpoint(source.name, source.container().name, source.node),
            destination=Endpoint(target.name, container.name, target.node),
            host=dst_ip,
            port=container.port(proto),
            allowed_sources=(src_ip,),
        )
    ]


@swept_by(targets)
def test_no_snat(proto: str, node_pair: NodePair, family: int, exchanges: ItemExchanges) -> None:
    """A pod MUST reach a pod on the same node and on another node (tcp, udp, icmp), and the
    destination MUST see the source pod's own IP as the packets' source (no SNAT)."""
    exchanges.assert_rule(RULE)
