"""Agents on a node (system daemons, kubelet) can communicate with all pods on that node: the
hostNetwork probe reaches the node's pods, which see a source address of that node.

The exchanges come from the run's reachability sweep (`conformance.kit.reachability`) and are
judged by `conformance.kit.verdicts`: a source is the node's when the Node object lists it or
it sits on an interface of the node's network namespace (seen by the hostNetwork probe)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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
#: The sources are nodes' host networks (reports draw them as their own rows).
SOURCE_KIND = "host"

RULE = "agents on a node MUST reach every pod on that node"


def targets(params: Mapping[str, Any], probe_map: ProbeMap) -> Sequence[Target] | Unplanned:
    """The exchanges of one test item: the node's hostNetwork probe to each of its pod-network
    probes that has an IP of the family."""
    proto, family, node = params["proto"], params["family"], params["probe_node"]
    host = probe_map.get(ROLE_HOSTPROBE, node)
    planned = []
    pods = [probe_map.get(role, node) for role in (ROLE_PROBE, ROLE_PEER)]
    lacking = [pod for pod in pods if address_of_family(pod.pod_ips, family) is None]
    if lacking:
        return without_address(family, lacking, probe_map)
    for pod in pods:
        dst_ip = address_of_family(pod.pod_ips, family)
        assert dst_ip is not None
        container = pod.container()
        planned.append(
            Target(
                check="test_node_to_pod",
                proto=proto,
                family=family,
                source=Endpoint(host.name, host.container().name, node),
                destination=Endpoint(pod.name, container.name, node),
                host=dst_ip,
                port=container.port(proto),
                allowed_sources=tuple(probe_map.node_addresses.get(node, ())),
                source_is_node=True,
            )
        )
    return planned


@swept_by(targets)
def test_node_to_pod(proto: str, family: int, probe_node: str, exchanges: ItemExchanges) -> None:
    """The hostNetwork probe on a node MUST reach every probe pod on that node (tcp, udp, icmp)
    and each pod MUST see a source address that belongs to that node."""
    exchanges.assert_rule(RULE)
