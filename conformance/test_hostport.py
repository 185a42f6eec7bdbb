"""hostPort: a container port mapped to a port of its node (the network model's two-container
example maps a container's port 80 to the node's port 80). Every node runs a hostPort probe
whose agent's TCP and UDP ports are mapped to host ports H and H + 1 (chosen per run,
`conformance.kit.probes.service_deployment`); it must answer at its node's InternalIP from pods on
every node and from the host network of every other node. And kubelet must keep a node's host
ports to one pod: a second pod asking for H on the same node never runs beside the first (judged
by `conformance.kit.exchanges.port_conflict`; a holder gone before the verdict is could-not-test).

The exchanges come from the run's reachability sweep (`conformance.kit.exchanges.service_targets`) and
are judged by `conformance.kit.verdicts.judge`: the answer must come from the node's hostPort probe.
"""

from __future__ import annotations

from functools import partial

import pytest
from kubernetes import client

from conformance.kit.base.errors import ProbeGoneError
from conformance.kit.base.settings import Timeouts
from conformance.kit.cluster.api import call_api, name_of
from conformance.kit.cluster.inventory import describe_pod
from conformance.kit.cluster.pairs import NodePair
from conformance.kit.exchanges.port_conflict import BROKEN, UNKNOWN, judge_port_conflict
from conformance.kit.exchanges.reachability import swept_by
from conformance.kit.exchanges.service_targets import FROM_HOST, FROM_POD, facts_of, host_port
from conformance.kit.probes.model import ROLE_HOSTPORT, ProbeMap
from conformance.kit.run.cases import PAIRS_CROSS_NODE, check_places
from conformance.kit.verdicts.failures import fail_rule
from conformance.kit.verdicts.judge import ItemExchanges

PROTOCOLS = ("tcp", "udp")

HOST_PORT_RULE = "a pod's hostPort MUST answer at its node's IP from every pod and every node"
CONFLICT_RULE = "two pods asking for the same hostPort MUST never both run on one node"


# The planners: the source node's probe pod, or its host network, to the destination node's
# InternalIP at its hostPort (`conformance.kit.exchanges.service_targets.host_port`).
@swept_by(partial(host_port, source_kind=FROM_POD))
def test_host_port_from_pods(
    proto: str, family: int, node_pair: NodePair, exchanges: ItemExchanges
) -> None:
    """A container port with a hostPort MUST answer at its node's InternalIP and that port (tcp,
    udp) to a pod on every node, its own included."""
    exchanges.assert_rule(HOST_PORT_RULE, expected="the node's hostPort probe answers")


@check_places(pairs=PAIRS_CROSS_NODE, source_kind=FROM_HOST)
@swept_by(partial(host_port, source_kind=FROM_HOST))
def test_host_port_from_hosts(
    proto: str, family: int, node_pair: NodePair, exchanges: ItemExchanges
) -> None:
    """A container port with a hostPort MUST answer at its node's InternalIP and that port (tcp,
    udp) to the host network of every other node."""
    exchanges.assert_rule(HOST_PORT_RULE, expected="the node's hostPort probe answers")


def test_host_port_conflict(
    probe_map: ProbeMap, core: client.CoreV1Api, timeouts: Timeouts, request: pytest.FixtureRequest
) -> None:
    """A pod asking for a hostPort that another pod of the node holds MUST NOT run there while
    that pod runs (kubelet refuses it, as the scheduler would not place it)."""
    facts = facts_of(probe_map)
    namespace = probe_map.namespace
    pods = {
        name_of(p): p
        for p in call_api(
            f"list pods in {namespace}", core.list_namespaced_pod, namespace, timeouts=timeouts
        ).items
    }
    clash = pods.get(facts.clash_pod)
    if clash is None or clash.spec is None:
        raise ProbeGoneError(f"pod {facts.clash_pod}, asking for a taken host port, is gone")
    node = str(clash.spec.node_name)
    holder = probe_map.get(ROLE_HOSTPORT, node)
    port = facts.host_ports[holder.name][0]
    request.node.user_properties.append(("netconform.clash", describe_pod(clash)))
    first = pods.get(holder.name)
    conflict = judge_port_conflict(holder.name, first, clash)
    request.node.user_properties.append(("netconform.conflict", conflict.why))
    if conflict.verdict == UNKNOWN:
        raise ProbeGoneError(f"on {node}, host port {port}/TCP: {conflict.why}")
    if conflict.verdict == BROKEN:
        fail_rule(
            CONFLICT_RULE,
            expected=f"{facts.clash_pod} refused (or kept from running) while {holder.name} "
            f"holds host port {port}/TCP",
            observed=f"{conflict.why} on {node}",
            protocol="tcp",
            pods=[holder.name, facts.clash_pod],
            nodes=[node],
            details=[describe_pod(p) for p in (first, clash) if p is not None],
        )
