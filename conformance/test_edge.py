"""The cluster's edge: traffic between the pods and a host outside the pod network and the
cluster, named with ``--external-host`` and running the edge server (``agent.py serve
--edge-control``; without the option these checks skip, and the skip reason says what to run
there and how).

- a pod on every node reaches the outside host (tcp, udp, icmp; every family the host has an
  address of); the source the host saw is reported, not judged: NAT is allowed at the edge;
- the run's NodePort Service answers the outside host at every node's InternalIP.

The exchanges come from the run's edge pass (`conformance.kit.exchanges.edge`) and are judged by
`conformance.kit.verdicts.judge`, as every reachability check is.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from kubernetes import client

from conformance.kit.base.errors import CouldNotTest
from conformance.kit.base.runstate import RunInfo
from conformance.kit.base.settings import ExternalHost, Settings
from conformance.kit.cluster.discovery import Discovery
from conformance.kit.exchanges.edge import (
    SOURCE_NAT_PROPERTY,
    SOURCE_SEEN_PROPERTY,
    EdgeRun,
    edge_pass_once,
    edge_planned_by,
    edge_server_instructions,
    nat_of,
    node_port_from_outside,
    pod_to_outside,
)
from conformance.kit.probes.client import ProbeClient
from conformance.kit.probes.lives import PodLife, pod_lives
from conformance.kit.probes.model import ROLE_PROBE, ProbeMap
from conformance.kit.probes.service_deployment import internal_ips
from conformance.kit.run.cases import check_places
from conformance.kit.verdicts.judge import ItemExchanges

PROTOCOLS = ("tcp", "udp", "icmp")

EGRESS_RULE = (
    "a pod MUST reach addresses outside the pod network and the cluster (its source may be "
    "NATed there)"
)
NODEPORT_RULE = (
    "a NodePort Service MUST answer at every node's InternalIP to a host outside the cluster"
)


@pytest.fixture(scope="session")
def external_hosts(
    settings: Settings, discovery: Discovery, core: client.CoreV1Api
) -> tuple[ExternalHost, ...]:
    """The outside host the user named; without one every edge check skips, saying what to run
    on such a host (the edge server, allowed to reach the tested nodes) and how to name it."""
    if not settings.external_hosts:
        try:
            found = internal_ips(core, discovery.nodes, settings.timeouts)
        except CouldNotTest:
            found = {}
        allow = [address for node in discovery.nodes for address in found.get(node, ())]
        pytest.skip(
            "no host outside the cluster named (--external-host ADDR[:PORT]): "
            + edge_server_instructions(allow)
        )
    return settings.external_hosts


@pytest.fixture(scope="session")
def edge_run(
    external_hosts: tuple[ExternalHost, ...],
    request: pytest.FixtureRequest,
    run_info: RunInfo,
    probe_map: ProbeMap,
    probe_client: ProbeClient,
) -> EdgeRun:
    """The run's edge pass over every selected edge check: computed once in the whole run
    (xdist workers included), read back everywhere else."""

    def pods() -> Mapping[str, PodLife] | None:
        return pod_lives(probe_client.core, probe_map.namespace, probe_client.timeouts)

    try:
        return edge_pass_once(
            run_info, external_hosts, request.session.items, probe_map, probe_client, pods=pods
        )
    except CouldNotTest as exc:
        raise CouldNotTest(f"edge pass: {exc}") from exc


@pytest.fixture
def edge_exchanges(
    external_hosts: tuple[ExternalHost, ...],
    edge_run: EdgeRun,
    request: pytest.FixtureRequest,
    settings: Settings,
) -> ItemExchanges:
    """This test item's own exchanges from the edge pass, judged by ``assert_rule``; a setup
    error (could not test) when the pass could not make them."""
    nodeid = request.node.nodeid
    if nodeid in edge_run.no_verdict:
        raise CouldNotTest(edge_run.no_verdict[nodeid])
    plan = edge_run.sweep.items.get(nodeid)
    if plan is None:
        raise CouldNotTest(f"the run's edge pass planned nothing for {nodeid}")
    return ItemExchanges(
        outcomes=[edge_run.sweep.outcomes[key] for key in plan.keys],
        unplanned=plan.unplanned,
        sweep=edge_run.sweep,
        user_properties=request.node.user_properties,
        strict=settings.strict,
    )


@edge_planned_by(pod_to_outside)
def test_pod_reaches_external_host(
    external_hosts: tuple[ExternalHost, ...],
    proto: str,
    family: int,
    probe_node: str,
    edge_exchanges: ItemExchanges,
    edge_run: EdgeRun,
    probe_map: ProbeMap,
) -> None:
    """A pod on every node MUST reach a host outside the pod network and the cluster (tcp, udp,
    icmp; every family the host has an address of); the source the host saw may be NATed.

    The source is reported, not judged (``netconform.source_seen`` and
    ``netconform.source_nat``: ``none``, the pod's own IP; ``node``, a node's address;
    ``other``, neither, NATed beyond the nodes); icmp echoes do not say it."""
    for outcome in edge_exchanges.outcomes:
        seen = outcome.exchange.peer_seen if outcome.exchange is not None else None
        if outcome.reached and seen:
            pod_ips = probe_map.get(ROLE_PROBE, probe_node).pod_ips
            nat = nat_of(seen, pod_ips, probe_map.node_addresses)
            edge_exchanges.user_properties.append((SOURCE_SEEN_PROPERTY, seen))
            edge_exchanges.user_properties.append((SOURCE_NAT_PROPERTY, nat))
    expected = "the outside host's edge server answers (any source address)"
    outside = edge_run.host.of_family(family)
    if outside is not None and outside.relay is None:
        # Whether the pods or the outside host are to blame, the person on call must ask.
        expected += f"; and no probe pod reached its control port either: {outside.relay_error}"
    edge_exchanges.assert_rule(EGRESS_RULE, expected=expected)


@check_places(protocols=("tcp", "udp"))
@edge_planned_by(node_port_from_outside)
def test_node_port_from_external_host(
    external_hosts: tuple[ExternalHost, ...],
    proto: str,
    family: int,
    probe_node: str,
    edge_exchanges: ItemExchanges,
) -> None:
    """A NodePort Service MUST answer at the InternalIP of every node (tcp, udp) to a host
    outside the cluster: some endpoint of the Service answers the outside host."""
    edge_exchanges.assert_rule(NODEPORT_RULE, expected="an endpoint of the Service answers")
