"""Agents on a node (system daemons, kubelet) can communicate with all pods on that node: the
hostNetwork probe reaches the node's pods, which see a source address of that node.

The exchanges come from the run's two-pass reachability sweep (`conformance.kit.reachability`);
the node's interface addresses from the staged prefetch (`conformance.kit.prefetch`), its status
addresses from one node list per process."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

import pytest
from kubernetes import client

from conformance.kit.agent_client import (
    AgentClient,
    AgentResponse,
    address_of_family,
    require_ok,
)
from conformance.kit.cluster import call_api, list_nodes, name_of, node_ip_addresses
from conformance.kit.prefetch import Prefetch, Step, prefetched_by
from conformance.kit.probes import ROLE_HOSTPROBE, ROLE_PEER, ROLE_PROBE, Probe, ProbeMap
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
from conformance.kit.settings import Timeouts

PROTOCOLS = ("tcp", "udp", "icmp")

RULE = "agents on a node MUST reach every pod on that node"


@pytest.fixture(scope="session")
def node_status_addresses(core: client.CoreV1Api, timeouts: Timeouts) -> dict[str, set[str]]:
    """Every node's status addresses (IP literals), from one list per process."""
    return {name_of(n): set(node_ip_addresses(n)) for n in list_nodes(core, timeouts)}


def host_address_steps(params: Mapping[str, Any], probe_map: ProbeMap, nonce: str) -> list[Step]:
    """The addresses on the interfaces of the node's network namespace, seen by its
    hostNetwork probe."""
    host = probe_map.get(ROLE_HOSTPROBE, params["probe_node"])
    return [Step("node addresses", host.name, host.agent().container, {"op": "addresses"})]


def node_own_addresses(
    status_addresses: Mapping[str, set[str]],
    core: client.CoreV1Api,
    host: Probe,
    interfaces_answer: AgentResponse,
    timeouts: Timeouts,
) -> set[str]:
    """Addresses that belong to the node: its status addresses and every address on the
    interfaces of its network namespace (seen by the hostNetwork probe), e.g. a CNI bridge."""
    if host.node in status_addresses:
        owned = set(status_addresses[host.node])
    else:  # a node the list did not show (added since): read it
        node = call_api(f"read node {host.node}", core.read_node, host.node, timeouts=timeouts)
        owned = set(node_ip_addresses(node))
    agent = host.agent()
    answer = require_ok(
        interfaces_answer,
        pod=host.name,
        container=agent.container,
        what="list the node's addresses",
    )
    for interface in answer.get("interfaces", []):
        for text in interface.get("addresses", []):
            owned.add(str(ipaddress.ip_interface(text).ip))
    return owned


def targets(params: Mapping[str, Any], probe_map: ProbeMap) -> list[Target]:
    """The exchanges of one test item: the node's hostNetwork probe to each of its pod-network
    probes that has an IP of the family. The check judges the sources itself (node addresses)."""
    proto, family, node = params["proto"], params["family"], params["probe_node"]
    host = probe_map.get(ROLE_HOSTPROBE, node)
    planned = []
    for role in (ROLE_PROBE, ROLE_PEER):
        pod = probe_map.find(role, node)
        dst_ip = address_of_family(pod.pod_ips, family) if pod else None
        if pod is None or dst_ip is None:
            continue
        agent = pod.agent()
        planned.append(
            Target(
                check="test_node_to_pod",
                proto=proto,
                family=family,
                source=Endpoint(host.name, host.agent().container, node),
                destination=Endpoint(pod.name, agent.container, node),
                host=dst_ip,
                port=agent.port(proto),
            )
        )
    return planned


@swept_by(targets)
@prefetched_by(host_address_steps)
def test_node_to_pod(
    proto: str,
    family: int,
    probe_node: str,
    probe_map: ProbeMap,
    agents: AgentClient,
    core: client.CoreV1Api,
    timeouts: Timeouts,
    reachability: Sweep,
    prefetch: Prefetch,
    node_status_addresses: dict[str, set[str]],
    request: pytest.FixtureRequest,
) -> None:
    """The hostNetwork probe on a node MUST reach every probe pod on that node (tcp, udp, icmp)
    and each pod MUST see a source address that belongs to that node."""
    host = probe_map.get(ROLE_HOSTPROBE, probe_node)
    pods = [p for p in (probe_map.find(r, probe_node) for r in (ROLE_PROBE, ROLE_PEER)) if p]
    planned = targets({"proto": proto, "family": family, "probe_node": probe_node}, probe_map)
    if not planned:
        pytest.skip(f"no probe pod on {probe_node} has an IPv{family} address")
    outcomes = outcomes_for(reachability, planned, agents)
    owned = node_own_addresses(
        node_status_addresses,
        core,
        host,
        prefetch.answers(request.node)["node addresses"],
        timeouts,
    )
    by_name = {p.name: p for p in pods}
    failures: list[str] = []
    for outcome in outcomes:
        result = outcome.exchange
        assert result is not None  # outcomes_for raised for outcomes without one
        pod = by_name[outcome.target.destination.pod]
        if not result.reached:
            failures.append(f"{pod.describe()} did not answer: {result.describe()}")
            continue
        recorded = set(result.listener_peers) | set(result.captured_sources)
        if not recorded:
            # An answer came, but not from this pod: another pod holds its IP (or a proxy).
            failures.append(
                f"{pod.describe()} recorded nothing (no listener record, no capture) although "
                f"something answered at its IP: {result.describe()}"
            )
            continue
        seen = set(recorded)
        if proto != "icmp" and result.peer_seen:
            seen.add(result.peer_seen)
        foreign = sorted(seen - owned)
        if foreign:
            failures.append(
                f"{pod.describe()} saw source {sorted(seen) or 'nothing'}, "
                f"not an address of node {probe_node}: {result.describe()}"
            )
    if failures:
        unreachable = reachability.failed("test_node_to_pod")
        pytest.fail(
            format_rule_failure(
                RULE,
                expected=f"every pod on {probe_node} answers {proto} from the node and sees a "
                f"source among the node's addresses {sorted(owned)}",
                observed=f"{len(failures)} of {len(outcomes)} pods failed",
                protocol=f"{proto} over IPv{family}",
                pods=[host.describe(), *(p.describe() for p in pods)],
                nodes=[probe_node],
                details=[
                    *failures,
                    "unanswered across the run: "
                    + failure_summary(unreachable, "test_node_to_pod"),
                ],
            ),
            pytrace=False,
        )
    record_flaky(request.node.user_properties, outcomes, lambda o: o.target.destination.pod)
