"""Pods on any node can communicate with all pods on all nodes without NAT: the destination sees
the source pod's own IP. Checked twice per exchange: by the destination's listener (the peer
address of the connection or datagram) and by a packet capture inside the destination pod."""

from __future__ import annotations

import pytest

from conformance.kit.agent_client import AgentClient, address_of_family, exchange
from conformance.kit.pairs import NodePair
from conformance.kit.probes import ROLE_PEER, ROLE_PROBE, Probe, ProbeMap
from conformance.kit.report import format_rule_failure

PROTOCOLS = ("tcp", "udp", "icmp")

RULE = "pods on any node MUST reach pods on every node without NAT (the source IP is preserved)"


def endpoints(probe_map: ProbeMap, pair: NodePair) -> tuple[Probe, Probe]:
    """Source: the probe pod on ``pair.src``; destination: the peer pod on the same node, or
    the probe pod on ``pair.dst``."""
    source = probe_map.get(ROLE_PROBE, pair.src)
    target = probe_map.get(ROLE_PEER if pair.same_node else ROLE_PROBE, pair.dst)
    return source, target


def test_no_snat(
    proto: str,
    node_pair: NodePair,
    family: int,
    probe_map: ProbeMap,
    agents: AgentClient,
    nonce: str,
) -> None:
    """A pod MUST reach a pod on the same node and on another node (tcp, udp, icmp), and the
    destination MUST see the source pod's own IP as the packets' source (no SNAT)."""
    source, target = endpoints(probe_map, node_pair)
    src_ip = address_of_family(source.pod_ips, family)
    dst_ip = address_of_family(target.pod_ips, family)
    if src_ip is None or dst_ip is None:
        pytest.skip(f"no IPv{family} pod IP on {source.describe()} or {target.describe()}")
    agent = target.agent()
    result = exchange(
        agents,
        proto=proto,
        source=(source.name, source.agent().container),
        destination=(target.name, agent.container),
        host=dst_ip,
        port=agent.port(proto),
        nonce=nonce,
    )
    pods = [source.describe(), target.describe()]
    nodes = [node_pair.src, node_pair.dst]
    if not result.reached:
        pytest.fail(
            format_rule_failure(
                RULE,
                expected=f"{dst_ip} answers {proto} from {src_ip}",
                observed=f"no answer after {result.attempts} attempt(s): "
                f"{result.client_response.get('error')}",
                details=[result.describe()],
                protocol=proto,
                pods=pods,
                nodes=nodes,
            ),
            pytrace=False,
        )
    seen_by_listener = set(result.listener_peers)
    if proto != "icmp" and result.peer_seen:
        seen_by_listener.add(result.peer_seen)
    problems = []
    if seen_by_listener != {src_ip}:
        problems.append(f"listener saw source {sorted(seen_by_listener) or 'nothing'}")
    if result.capture_error is not None:
        problems.append(f"capture failed: {result.capture_error}")
    elif set(result.captured_sources) != {src_ip}:
        problems.append(
            f"capture in {target.name} saw source {list(result.captured_sources) or 'nothing'}"
        )
    if problems:
        pytest.fail(
            format_rule_failure(
                RULE,
                expected=f"source {src_ip} (the pod's own IP) at the listener and in the capture",
                observed="; ".join(problems),
                details=[result.describe()],
                protocol=proto,
                pods=pods,
                nodes=nodes,
            ),
            pytrace=False,
        )
