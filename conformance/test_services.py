"""Services: a stable virtual IP in front of the pods a selector picks, implemented on every node
(kube-proxy's iptables or IPVS rules, or a CNI that replaces kube-proxy). The run's Service
``netconform-probes`` selects one peer probe per node; every node's probe pod is a client.

- its cluster IP answers every connection over TCP and UDP in every family it has, every
  endpoint answers within a bounded number of connections, and sees the client pod's own IP;
- a pod reaches itself through its own Service (hairpin), every connection answered;
- endpoints follow readiness: a backend turned unready gets no new connection within a bound,
  and answers again once ready (`conformance.kit.exchanges.readiness`);
- a Service without endpoints refuses a TCP connection at once (within 2 s);
- its NodePort answers every connection at every tested node's InternalIP, from pods and from
  the host network of other nodes, from endpoints on other nodes too (externalTrafficPolicy
  Cluster).

The exchanges come from the run's reachability sweep (spreads of connections through the
cluster IP, `conformance.kit.exchanges.service_targets`) and are judged by `conformance.kit.verdicts.judge`.
"""

from __future__ import annotations

from functools import partial

import pytest
from kubernetes import client

from conformance.kit.base.runstate import RunInfo
from conformance.kit.cluster.discovery import Discovery
from conformance.kit.cluster.pairs import NodePair
from conformance.kit.exchanges.flip_outcome import ReadinessFlip
from conformance.kit.exchanges.prefetch import ItemAnswers
from conformance.kit.exchanges.reachability import Params, Planned, Sweep, swept_by
from conformance.kit.exchanges.readiness import flip_readiness, flip_readiness_once
from conformance.kit.exchanges.service_targets import (
    FROM_HOST,
    FROM_POD,
    cluster_ip_spread,
    hairpin_spread,
    node_port,
    refusal,
)
from conformance.kit.probes.client import ProbeClient
from conformance.kit.probes.model import ProbeMap
from conformance.kit.probes.services import SERVICE
from conformance.kit.run.cases import PAIRS_CROSS_NODE, check_places
from conformance.kit.verdicts.judge import (
    ItemExchanges,
    assert_readiness_followed,
    flip_answered,
)

PROTOCOLS = ("tcp", "udp")

CLUSTER_IP_RULE = (
    "pods MUST reach a Service at its cluster IP: every connection is answered, every ready "
    "endpoint answers, and sees the client pod's own IP"
)
HAIRPIN_RULE = "a pod MUST reach itself through its own Service"
READINESS_RULE = "a Service's endpoints MUST follow readiness"
REFUSAL_RULE = "a Service without endpoints MUST refuse a connection at once"
NODEPORT_RULE = (
    "a NodePort Service MUST answer at every node's InternalIP, from its endpoints on every node"
)
NODEPORT_EXPECTED = (
    "every connection answered by an endpoint of the Service, one of them on another node than "
    "the one asked (externalTrafficPolicy Cluster)"
)


# --- the cluster IP ---------------------------------------------------------------------------


def cluster_ip_targets(check: str, params: Params, probe_map: ProbeMap) -> Planned:
    """The node's probe pod to the Service's cluster IP: connections until every endpoint
    answered; the client pod's own IP the only source allowed."""
    return cluster_ip_spread(check, params, probe_map)


@swept_by(cluster_ip_targets)
def test_cluster_ip(proto: str, family: int, probe_node: str, exchanges: ItemExchanges) -> None:
    """From a pod on every node, a Service's cluster IP MUST answer every connection (tcp,
    udp, every family the Service has) from its endpoints, every ready endpoint (one on each
    node) MUST answer within a bounded number of connections, and each MUST see the client
    pod's own IP (no SNAT)."""
    exchanges.assert_rule(
        CLUSTER_IP_RULE,
        expected=f"every connection answered by an endpoint of {SERVICE}, every endpoint at "
        "least once, seeing only the client pod's own IP",
    )


# --- hairpin ----------------------------------------------------------------------------------


def hairpin_targets(check: str, params: Params, probe_map: ProbeMap) -> Planned:
    """The node's peer probe (an endpoint) to its own Service's cluster IP, until it answered
    itself."""
    return hairpin_spread(check, params, probe_map)


@swept_by(hairpin_targets)
def test_hairpin(proto: str, family: int, probe_node: str, exchanges: ItemExchanges) -> None:
    """A pod that is an endpoint of a Service MUST reach itself through the Service's cluster
    IP (hairpin; tcp, udp), on every node, every connection answered by an endpoint."""
    exchanges.assert_rule(
        HAIRPIN_RULE,
        expected="every connection through the cluster IP answered by an endpoint, the pod "
        "itself among them",
    )


# --- no endpoints -----------------------------------------------------------------------------


def refusal_targets(check: str, params: Params, probe_map: ProbeMap) -> Planned:
    """The node's probe pod to the cluster IP of a Service whose selector matches no pod."""
    return refusal(check, params, probe_map)


@swept_by(refusal_targets)
def test_no_endpoints_refused(family: int, probe_node: str, exchanges: ItemExchanges) -> None:
    """A TCP connection to a Service without any ready endpoint MUST be refused at once (a reset
    or an ICMP unreachable, within 2 s), never left to time out, from a pod on every node."""
    exchanges.assert_rule(
        REFUSAL_RULE,
        expected="the connection is refused within 2 s (ECONNREFUSED, EHOSTUNREACH...)",
    )


# --- readiness --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def readiness_flip(
    run_info: RunInfo,
    probe_map: ProbeMap,
    probe_client: ProbeClient,
    api_client: client.ApiClient,
    discovery: Discovery,
    reachability: Sweep,
    prefetch: dict[str, ItemAnswers],
) -> ReadinessFlip:
    """The run's readiness flip, after the sweep and the prefetch (which must see every
    backend ready); a `CouldNotTest` when it could not be made."""
    return flip_readiness_once(
        run_info,
        partial(
            flip_readiness,
            probe_map,
            probe_client,
            client.DiscoveryV1Api(api_client),
            discovery.families,
            answered=flip_answered,
            check=test_endpoints_follow_readiness.__name__,
        ),
    )


def test_endpoints_follow_readiness(
    family: int, probe_node: str, readiness_flip: ReadinessFlip, request: pytest.FixtureRequest
) -> None:
    """When an endpoint of a Service turns unready, new connections from a pod on every node
    MUST stop reaching it within a bounded time of its EndpointSlice saying so (the other
    endpoints still answering), and MUST reach it again once it is ready."""
    assert_readiness_followed(
        READINESS_RULE, readiness_flip, probe_node, family, request.node.user_properties
    )


# --- NodePort ---------------------------------------------------------------------------------


# The planners: the source node's probe pod, or its host network, to the destination node's
# InternalIP at the NodePort (`conformance.kit.exchanges.service_targets.node_port`).
@swept_by(partial(node_port, source_kind=FROM_POD))
def test_node_port_from_pods(
    proto: str, family: int, node_pair: NodePair, exchanges: ItemExchanges
) -> None:
    """A NodePort Service MUST answer every connection at the InternalIP of every node (tcp,
    udp) to a pod on every node, its own included, from its endpoints, those on other nodes
    too (externalTrafficPolicy Cluster)."""
    exchanges.assert_rule(NODEPORT_RULE, expected=NODEPORT_EXPECTED)


@check_places(pairs=PAIRS_CROSS_NODE, source_kind=FROM_HOST)
@swept_by(partial(node_port, source_kind=FROM_HOST))
def test_node_port_from_hosts(
    proto: str, family: int, node_pair: NodePair, exchanges: ItemExchanges
) -> None:
    """A NodePort Service MUST answer every connection at the InternalIP of every node (tcp,
    udp) to the host network of every other node, from its endpoints, those on other nodes
    too (externalTrafficPolicy Cluster)."""
    exchanges.assert_rule(NODEPORT_RULE, expected=NODEPORT_EXPECTED)
