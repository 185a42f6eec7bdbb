"""Agents on a node (system daemons, kubelet) can communicate with all pods on that node: the
hostNetwork probe reaches the node's pods, which see a source address of that node."""

from __future__ import annotations

import ipaddress

import pytest
from kubernetes import client

from conformance.kit.agent_client import AgentClient, address_of_family, exchange, require_ok
from conformance.kit.cluster import call_api, node_ip_addresses
from conformance.kit.probes import ROLE_HOSTPROBE, ROLE_PEER, ROLE_PROBE, Probe, ProbeMap
from conformance.kit.report import format_rule_failure
from conformance.kit.settings import Timeouts

PROTOCOLS = ("tcp", "udp", "icmp")

RULE = "agents on a node MUST reach every pod on that node"


def node_own_addresses(
    core: client.CoreV1Api, agents: AgentClient, host: Probe, timeouts: Timeouts
) -> set[str]:
    """Addresses that belong to the node: its status addresses and every address on the
    interfaces of its network namespace (seen by the hostNetwork probe), e.g. a CNI bridge."""
    node = call_api(f"read node {host.node}", core.read_node, host.node, timeouts=timeouts)
    owned = set(node_ip_addresses(node))
    agent = host.agent()
    answer = require_ok(
        agents.call_one(host.name, agent.container, {"op": "addresses"}),
        pod=host.name,
        container=agent.container,
        what="list the node's addresses",
    )
    for interface in answer.get("interfaces", []):
        for text in interface.get("addresses", []):
            owned.add(str(ipaddress.ip_interface(text).ip))
    return owned


def test_node_to_pod(
    proto: str,
    family: int,
    probe_node: str,
    probe_map: ProbeMap,
    agents: AgentClient,
    core: client.CoreV1Api,
    timeouts: Timeouts,
    nonce: str,
) -> None:
    """The hostNetwork probe on a node MUST reach every probe pod on that node (tcp, udp, icmp)
    and each pod MUST see a source address that belongs to that node."""
    host = probe_map.get(ROLE_HOSTPROBE, probe_node)
    targets = [p for p in (probe_map.find(r, probe_node) for r in (ROLE_PROBE, ROLE_PEER)) if p]
    owned = node_own_addresses(core, agents, host, timeouts)
    failures: list[str] = []
    tested = 0
    for index, target in enumerate(targets):
        dst_ip = address_of_family(target.pod_ips, family)
        if dst_ip is None:
            continue
        tested += 1
        agent = target.agent()
        result = exchange(
            agents,
            proto=proto,
            source=(host.name, host.agent().container),
            destination=(target.name, agent.container),
            host=dst_ip,
            port=agent.port(proto),
            nonce=f"{nonce}-{index}",
        )
        if not result.reached:
            failures.append(f"{target.describe()} did not answer: {result.describe()}")
            continue
        seen = set(result.listener_peers) | set(result.captured_sources)
        if proto != "icmp" and result.peer_seen:
            seen.add(result.peer_seen)
        foreign = sorted(seen - owned)
        if not seen or foreign:
            failures.append(
                f"{target.describe()} saw source {sorted(seen) or 'nothing'}, "
                f"not an address of node {probe_node}: {result.describe()}"
            )
    if tested == 0:
        pytest.skip(f"no probe pod on {probe_node} has an IPv{family} address")
    if failures:
        pytest.fail(
            format_rule_failure(
                RULE,
                expected=f"every pod on {probe_node} answers {proto} from the node and sees a "
                f"source among the node's addresses {sorted(owned)}",
                observed=f"{len(failures)} of {tested} pods failed",
                protocol=proto,
                pods=[host.describe(), *(t.describe() for t in targets)],
                nodes=[probe_node],
                details=failures,
            ),
            pytrace=False,
        )
