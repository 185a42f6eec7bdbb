"""Pods on any node can communicate with all pods on all nodes without NAT: the destination sees
the source pod's own IP. Checked twice per exchange: by the destination's listener (the peer
address of the connection or datagram) and by a packet capture inside the destination pod.

The exchanges come from the run's two-pass reachability sweep (`conformance.kit.reachability`):
each test reads its own pair's outcome, so verdicts and IDs stay per pair."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from conformance.kit.agent_client import AgentClient, address_of_family
from conformance.kit.pairs import NodePair
from conformance.kit.probes import ROLE_PEER, ROLE_PROBE, Probe, ProbeMap
from conformance.kit.reachability import (
    Endpoint,
    Sweep,
    Target,
    failure_summary,
    outcomes_for,
    record_flaky,
    swept_by,
)
from conformance.kit.report import format_rule_failure

PROTOCOLS = ("tcp", "udp", "icmp")

RULE = "pods on any node MUST reach pods on every node without NAT (the source IP is preserved)"


def endpoints(probe_map: ProbeMap, pair: NodePair) -> tuple[Probe, Probe]:
    """Source: the probe pod on ``pair.src``; destination: the peer pod on the same node, or
    the probe pod on ``pair.dst``."""
    source = probe_map.get(ROLE_PROBE, pair.src)
    target = probe_map.get(ROLE_PEER if pair.same_node else ROLE_PROBE, pair.dst)
    return source, target


def targets(params: Mapping[str, Any], probe_map: ProbeMap) -> list[Target]:
    """The exchange of one test item (none when a pod lacks an IP of the family)."""
    proto, family, pair = params["proto"], params["family"], params["node_pair"]
    source, target = endpoints(probe_map, pair)
    src_ip = address_of_family(source.pod_ips, family)
    dst_ip = address_of_family(target.pod_ips, family)
    if src_ip is None or dst_ip is None:
        return []
    agent = target.agent()
    return [
        Target(
            check="test_no_snat",
            proto=proto,
            family=family,
            source=Endpoint(source.name, source.agent().container, source.node),
            destination=Endpoint(target.name, agent.container, target.node),
            host=dst_ip,
            port=agent.port(proto),
            allowed_sources=(src_ip,),
        )
    ]


@swept_by(targets)
def test_no_snat(
    proto: str,
    node_pair: NodePair,
    family: int,
    probe_map: ProbeMap,
    agents: AgentClient,
    reachability: Sweep,
    request: pytest.FixtureRequest,
) -> None:
    """A pod MUST reach a pod on the same node and on another node (tcp, udp, icmp), and the
    destination MUST see the source pod's own IP as the packets' source (no SNAT)."""
    source, target = endpoints(probe_map, node_pair)
    planned = targets({"proto": proto, "family": family, "node_pair": node_pair}, probe_map)
    if not planned:
        pytest.skip(f"no IPv{family} pod IP on {source.describe()} or {target.describe()}")
    (outcome,) = outcomes_for(reachability, planned, agents)
    result = outcome.exchange
    assert result is not None  # outcomes_for raised for outcomes without one
    src_ip, dst_ip = address_of_family(source.pod_ips, family), planned[0].host
    problems = outcome.problems()
    if problems:
        if not result.reached:
            expected = f"{dst_ip} answers {proto} from {src_ip}"
        else:
            expected = f"source {src_ip} (the pod's own IP) at the listener and in the capture"
        pytest.fail(
            format_rule_failure(
                RULE,
                expected=expected,
                observed="; ".join(problems),
                details=[
                    result.describe(),
                    "across the run: "
                    + failure_summary(reachability.failed("test_no_snat"), "test_no_snat"),
                ],
                protocol=f"{proto} over IPv{family}",
                pods=[source.describe(), target.describe()],
                nodes=[node_pair.src, node_pair.dst],
            ),
            pytrace=False,
        )
    record_flaky(request.node.user_properties, [outcome])
