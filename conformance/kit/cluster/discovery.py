"""The run's plan, read from the cluster once per run: which nodes are tested and why every
other node is not (`conformance.kit.cluster.nodes`), which IP families are tested and required
(`conformance.kit.cluster.families`), and until when nodes that were not ready yet were waited for.

The first process of the run that collects a conformance check computes it
(`conformance.kit.base.runstate.once`); every other one, xdist workers included, reads it back, so
all parametrize alike even when a node turns Ready meanwhile. Cluster errors never raise here:
they are kept in ``error``, and every check that needs the cluster errors with them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from conformance.kit.base.errors import ClusterError
from conformance.kit.base.jsondata import JSONData
from conformance.kit.base.settings import Settings, Timeouts
from conformance.kit.cluster.api import call_api, make_api_client, name_of
from conformance.kit.cluster.families import (
    SOURCE_KUBERNETES_SERVICE,
    SOURCE_SERVICE_CIDRS,
    FamilyPlan,
    declared_families,
    plan_families,
)
from conformance.kit.cluster.inventory import (
    declared_service_cidrs,
    kubernetes_service_families,
    list_nodes,
    list_pods_all_namespaces,
    node_pod_cidrs,
    pod_network_families,
)
from conformance.kit.cluster.nodes import (
    READINESS_KINDS,
    Exclusion,
    explain,
    network_evidence,
    node_is_ready,
    select_nodes,
)
from conformance.kit.cluster.pairs import natural_key
from conformance.kit.cluster.waiting import wait_on_list

#: The run-state record of the discovery (`conformance.kit.base.runstate`).
DISCOVERY_RECORD = "discovery"


@dataclass(frozen=True)
class Discovery(JSONData):
    """What the run learned about the cluster before its first check."""

    #: The nodes the probes go to, in name order.
    nodes: tuple[str, ...] = ()
    #: Every other node, with why it is left out.
    excluded: Mapping[str, Exclusion] = field(default_factory=dict)
    family_plan: FamilyPlan = field(default_factory=FamilyPlan)
    #: The nodes ``test_node_network_ready`` judges: those tested and those the suite left out
    #: on its own judgement (every node the user did not narrow away).
    checked: tuple[str, ...] = ()
    #: Until when (seconds since the epoch) nodes that were not ready yet were waited for; None
    #: when none had to be.
    ready_deadline: float | None = None
    #: Why the cluster cannot be tested (unreadable, no node can carry probes).
    error: str | None = None
    #: An option that turned out wrong once the cluster was read (an unknown --exclude-node).
    usage_error: str | None = None

    @property
    def families(self) -> tuple[int, ...]:
        """The IP versions the run tests."""
        return self.family_plan.tested

    @property
    def required_families(self) -> tuple[int, ...]:
        """The IP versions every pod and node must have an address of."""
        return self.family_plan.required

    def explain_excluded(self) -> str:
        return explain(self.excluded)

    def exclusion_lines(self) -> list[str]:
        """One line per node left out, sorted by node, for the terminal summary."""
        return [
            f"node {name} left out: {why.describe()}"
            for name, why in sorted(self.excluded.items(), key=lambda item: natural_key(item[0]))
        ]


def _source(name: str, read: Callable[[], tuple[str, ...]], unread: list[str]) -> tuple[str, ...]:
    """What a family source says; a source that cannot be read (RBAC refuses it) is noted in
    ``unread`` rather than ending the run: the nodes' podCIDRs declare the families of nearly
    every cluster, and the verdict names the gap."""
    try:
        return read()
    except ClusterError as exc:
        unread.append(f"{name} ({exc})")
        return ()


def _settled_nodes(core: client.CoreV1Api, settings: Settings, timeouts: Timeouts) -> list[Any]:
    """The nodes once none of those the user asked for is left out for not being ready (or its
    network not being ready), or as they are after ``Timeouts.node_ready``: a node that just
    turned Ready may carry the not-ready taint a few seconds more."""
    wait_on_list(
        "nodes",
        core.list_node,
        done=lambda objects: not select_nodes(objects.values(), settings).waiting_on(),
        timeout=settings.timeouts.node_ready,
        timeouts=timeouts,
    )
    return list_nodes(core, timeouts)


def discover(settings: Settings) -> Discovery:
    """Read nodes, the declared IP families and, where no node has a podCIDR, the pods'
    families, to plan the run. Never raises for cluster errors."""
    timeouts = replace(settings.timeouts, api_retry=settings.timeouts.discovery)
    deadline = None
    try:
        api = make_api_client(settings)
        core = client.CoreV1Api(api)
        nodes = list_nodes(core, timeouts)
        selection = select_nodes(nodes, settings)
        if selection.waiting_on():
            deadline = time.time() + settings.timeouts.node_ready
            nodes = _settled_nodes(core, settings, timeouts)
            selection = select_nodes(nodes, settings)
        unread: list[str] = []
        declared = declared_families(
            (cidr for node in nodes for cidr in node_pod_cidrs(node)),
            _source(
                SOURCE_KUBERNETES_SERVICE,
                lambda: kubernetes_service_families(core, timeouts),
                unread,
            ),
            _source(SOURCE_SERVICE_CIDRS, lambda: declared_service_cidrs(api, timeouts), unread),
        )
        observed: tuple[int, ...] = ()
        if settings.ip_family == "auto" and not any(map(node_pod_cidrs, nodes)):
            # The CNI allocates pod IPs itself: the pods show which families it hands out.
            observed = pod_network_families(list_pods_all_namespaces(core, timeouts))
    except (ClusterError, ApiException) as exc:
        return Discovery(error=f"cannot read the cluster: {exc}")
    usage_error = None
    if selection.unknown:
        known = ", ".join(sorted(map(name_of, nodes), key=natural_key)) or "none"
        usage_error = (
            f"--exclude-node: no node named {', '.join(selection.unknown)} (the cluster's "
            f"nodes: {known})"
        )
    checked = {*selection.names, *(n for n, why in selection.excluded.items() if not why.narrowed)}
    return Discovery(
        nodes=selection.names,
        excluded=selection.excluded,
        family_plan=plan_families(settings.ip_family, declared, observed, unread),
        checked=tuple(sorted(checked, key=natural_key)),
        ready_deadline=deadline,
        error=None
        if selection.selected
        else "no node can carry probes: " + (selection.explain() if nodes else "no nodes"),
        usage_error=usage_error,
    )


# --- one node's network ------------------------------------------------------------------------


def node_network_settled(
    core: client.CoreV1Api, name: str, timeout: float, timeouts: Timeouts
) -> client.V1Node:
    """Node ``name`` once it is Ready and nothing says its network is not ready, or as it is
    after ``timeout`` seconds (at once when ``timeout`` is 0). `ClusterError` when the node is
    gone or cannot be read."""
    selector = f"metadata.name={name}"

    def settled(objects: Mapping[str, client.V1Node]) -> bool:
        node = objects.get(name)
        return node is not None and node_is_ready(node) and not network_evidence(node)

    found = None
    if timeout > 0:
        found = wait_on_list(
            f"node {name}",
            core.list_node,
            field_selector=selector,
            done=settled,
            timeout=timeout,
            timeouts=timeouts,
        )
    if found is None:  # not settled within the time: look once more, as it is now
        listed = call_api(
            f"list node {name}", core.list_node, field_selector=selector, timeouts=timeouts
        )
        found = {name_of(n): n for n in listed.items}
    if name not in found:
        raise ClusterError(f"node {name} is gone (it was listed when the run started)")
    node: client.V1Node = found[name]
    return node


def network_wait(discovery: Discovery, name: str, bound: float, now: float) -> float:
    """How long to give node ``name`` for its network to turn ready before it is judged: the
    whole ``bound`` for a node the discovery found ready; what is left of the discovery's own
    wait (often nothing) for one it already waited for."""
    why = discovery.excluded.get(name)
    if why is not None and why.kind in READINESS_KINDS and discovery.ready_deadline is not None:
        return max(0.0, discovery.ready_deadline - now)
    return bound
