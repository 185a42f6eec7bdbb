"""Every node's network is ready: its kubelet reports the container runtime's network ready, and
no taint says the node's network is unavailable or the node not ready. Judged from the Node
objects alone, on every node the user asked for, those left out of the probing for not being
ready included, after a bounded time for a condition or taint that is about to clear."""

from __future__ import annotations

import time

from kubernetes import client

from conformance.kit.base.errors import CouldNotTest
from conformance.kit.base.settings import Timeouts
from conformance.kit.cluster.discovery import Discovery, network_wait, node_network_settled
from conformance.kit.cluster.nodes import (
    NETWORK_NOT_READY,
    describe_ready,
    network_evidence,
    node_is_ready,
)
from conformance.kit.verdicts.failures import fail_rule

RULE = "every node's network MUST be ready"
#: A node the run left out because its network is not ready is accounted for by this check's
#: failure there (exit 1), not an unexplained gap (exit 2).
ACCOUNTS_FOR = (NETWORK_NOT_READY,)


def test_node_network_ready(
    cluster_node: str, node_api: client.CoreV1Api, discovered: Discovery, timeouts: Timeouts
) -> None:
    """Every node's network MUST be ready: the node's Ready condition MUST NOT report the
    container runtime's network as not ready (NetworkReady=false, NetworkPluginNotReady), and
    the node MUST NOT carry the node.kubernetes.io/network-unavailable or
    node.kubernetes.io/not-ready taint, within a bounded time."""
    wait = network_wait(discovered, cluster_node, timeouts.node_ready, time.time())
    node = node_network_settled(node_api, cluster_node, wait, timeouts)
    evidence = network_evidence(node)
    if evidence:
        left_out = discovered.excluded.get(cluster_node)
        fail_rule(
            RULE,
            expected="a Ready condition without NetworkReady=false and no network-unavailable "
            f"or not-ready taint (given up to {timeouts.node_ready:.0f}s to clear)",
            observed="; ".join(evidence),
            nodes=[cluster_node],
            details=["the run left the node out of its probes"] if left_out else [],
        )
    if not node_is_ready(node):
        # No network verdict: the kubelet does not say (it stopped reporting, or not yet).
        raise CouldNotTest(
            f"node {cluster_node} is not Ready ({describe_ready(node)}): whether its network "
            "is ready is not reported"
        )
