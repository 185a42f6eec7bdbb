"""Pods in the host network of a node can communicate with all pods on all nodes without NAT:
the hostNetwork probe of every node reaches the pod-network probes of every other node, which
see an address of the source node. (Its own node's pods: `test_node_to_pod`.)

The exchanges come from the run's reachability sweep (`conformance.kit.reachability`) and are
judged by `conformance.kit.verdicts`: a source is the node's when its Node object lists it or
it sits on an interface of the node's network namespace (seen by the hostNetwork probe)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from conformance.kit.cases import PAIRS_CROSS_NODE
from conformance.kit.pairs import NodePair
from conformance.kit.probe_client import address_of_family
from conformance.kit.probes import ROLE_HOSTPROBE, ROLE_PEER, ROLE_PROBE, ProbeMap
from conformance.kit.reachability import (
    Endpoint,
    Target,
    Unplanned,
    swept_by,
    without_address,
)
from conformance.kit.verdicts import ItemExchanges

PROTOCOLS = ("tcp", "udp", "icmp")
PAIRS = PAIRS_CROSS_NODE
#: The sources are nodes' host networks (reports draw them as their own rows).
SOURCE_KIND = "host"

RULE = (
    "the host network of a node MUST reach every pod on every other node without NAT "
    "(the pod sees an address of the source node)"
)


def targets(params: Mapping[str, Any], probe_map: ProbeMap) -> Sequence[Target] | Unplanned:
    """The source node's hostNetwork probe to each pod-network probe of the destination node."""
    proto, family, pair = params["proto"], params["family"], params["node_pair"]
    host = probe_map.get(ROLE_HOSTPROBE, pair.src)
    pods = [probe_map.get(role, pair.dst) for role in (ROLE_PROBE, ROLE_PEER)]
    lacking = [pod for pod in pods if address_of_family(pod.pod_ips, family) is None]
    if lacking:
        return without_address(family, lacking, probe_map)
    planned = []
    for pod in pods:
        dst_ip = address_of_family(pod.pod_ips, family)
        assert dst_ip is not None
        container = pod.container()
        planned.append(
            Target(
                check="test_host_to_pod",
                proto=proto,
                family=family,
                source=Endpoint(host.name, host.container().name, pair.src),
                destination=Endpoint(pod.name, container.name, pair.dst),
                host=dst_ip,
                port=container.port(proto),
                allowed_sources=tuple(probe_map.node_addresses.get(pair.src, ())),
                source_is_node=True,
            )
        )
    return planned


@swept_by(targets)
def test_host_to_pod(
    proto: str, node_pair: NodePair, family: int, exchanges: ItemExchanges
) -> None:
    """The hostNetwork probe of a node MUST reach every probe pod on every other node (tcp, udp,
    icmp), and each pod MUST see a source address that belongs to the source node."""
    exchanges.assert_rule(RULE)
