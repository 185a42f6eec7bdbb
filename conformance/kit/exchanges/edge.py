"""Traffic across the cluster's edge, once per run: every node's probe pod to a host outside
the cluster (``--external-host``, running the edge server), and that host to every node's
NodePort.

The edge server is the probe agent itself (``agent.py serve --edge-control ADDR:PORT
--allow-connect NODES``, `edge_server_command`): pods reach its TCP and UDP listeners (and the
host's kernel answers their ICMP echoes); for traffic that must start outside the cluster a
probe pod relays one request at a time to its control listener (`Target.relay`). The suite
never talks to the outside host itself, only to the Kubernetes API, as everywhere else.

A check declares its exchanges with ``@edge_planned_by(planner)``: ``planner(check,
params, probe_map, host)`` gives one test item's `Target`s, `Unplanned` (not applicable here, or a
rule broken before any traffic) or `NoVerdict` (could not test). Once per run (any process,
`conformance.kit.base.runstate.once`) the edge pass

1. finds the outside host's address of each family: the literals given, and names resolved by
   the first tested node's probe pod (the resolver pods use);
2. finds, per family, a probe pod that reaches the edge server's control listener (every
   node's probe pod asks at once; the first node in order that got an answer relays), so a
   node whose pods cannot reach outside costs only its own checks;
3. plans every selected edge item and probes every target through `run_sweep` (tries,
   retries, pods taken away), judged by `conformance.kit.verdicts.judge` like every other check.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from time import monotonic
from typing import Any

import pytest

from conformance.kit.base.errors import ProbeCallError, SweepError
from conformance.kit.base.jsondata import JSONData
from conformance.kit.base.runstate import RunInfo, once_data
from conformance.kit.base.settings import DEFAULT_EDGE_PORT, ExternalHost
from conformance.kit.exchanges.reachability import (
    Endpoint,
    ItemPlan,
    Sweep,
    Target,
    Unplanned,
    check_name,
    marker_argument,
    run_sweep,
    target_text,
    without_address,
)
from conformance.kit.exchanges.service_targets import backends, facts_of, without_services
from conformance.kit.probes.client import ProbeClient, ProbeResponse, address_of_family
from conformance.kit.probes.lives import PodLife
from conformance.kit.probes.model import ROLE_PROBE, Probe, ProbeMap
from conformance.kit.probes.parallel import in_parallel
from conformance.kit.probes.services import NODEPORT_SERVICE
from conformance.probe_agent import AGENT_DIRECTORY

#: The marker an edge check carries; its argument is the check's planner.
EDGE_MARKER = "edge_planned_by"
#: The run-state record of the edge pass.
EDGE_RECORD = "edge"
#: Agent calls at once while looking for a relay (one per node).
MAX_PARALLEL_CALLS = 16
#: Where the edge server's own control socket goes on the outside host.
EDGE_SOCKET = "/tmp/netconform-edge.sock"
#: How a check reports the source the outside host saw (JUnit properties, `summary.json`).
SOURCE_SEEN_PROPERTY = "netconform.source_seen"
SOURCE_NAT_PROPERTY = "netconform.source_nat"
#: `SOURCE_NAT_PROPERTY` values: the pod's own IP (no NAT), a node's address (masqueraded by
#: the node), or an address of neither (NATed beyond the node, e.g. a cloud NAT gateway).
NAT_NONE = "none"
NAT_NODE = "node"
NAT_OTHER = "other"


@dataclass(frozen=True)
class NoVerdict(JSONData):
    """Why an item's exchanges cannot be made (could not test): the outside host's name did not
    resolve, no probe pod reached the edge server's control listener."""

    reason: str


@dataclass(frozen=True)
class EdgeAddress(JSONData):
    """The outside host's address of one family, where it came from, and the probe pod that
    relays requests to its edge server (or why none could)."""

    family: int
    address: str
    port: int
    #: The host name it was resolved from ("" for an address given as such).
    name: str = ""
    relay: Endpoint | None = None
    relay_error: str | None = None

    @property
    def control_port(self) -> int:
        return self.port + 1

    @property
    def control(self) -> tuple[str, int]:
        return self.address, self.control_port

    @property
    def label(self) -> str:
        """``external host 192.0.2.10``, or ``external host 192.0.2.10 (edge.example)``."""
        return f"external host {self.address}" + (f" ({self.name})" if self.name else "")


@dataclass(frozen=True)
class EdgeHost(JSONData):
    """The outside host as this run reaches it: an address per family it has, and why a name
    given did not resolve."""

    given: tuple[str, ...] = ()
    addresses: tuple[EdgeAddress, ...] = ()
    resolve_errors: tuple[str, ...] = ()

    def of_family(self, family: int) -> EdgeAddress | None:
        for found in self.addresses:
            if found.family == family:
                return found
        return None

    def describe(self) -> str:
        shown = ", ".join(f"{a.address} (IPv{a.family})" for a in self.addresses) or "no address"
        return f"--external-host {' '.join(self.given)}: {shown}"

    def lacking(self, family: int) -> Unplanned | NoVerdict:
        """Why the items of ``family`` have no exchange: a name that did not resolve is could
        not test; an outside host without such an address makes them not applicable."""
        if self.resolve_errors:
            return NoVerdict(
                f"the outside host has no IPv{family} address: " + "; ".join(self.resolve_errors)
            )
        return Unplanned(
            f"the outside host has no IPv{family} address ({self.describe()}); repeat "
            f"--external-host with its IPv{family} address to check IPv{family} too"
        )


#: ``planner(check, params, probe_map, host)``: one edge item's targets (``check``: the item's
#: test function's name, `conformance.kit.exchanges.reachability.check_name`).
Planner = Callable[
    [str, Mapping[str, Any], ProbeMap, EdgeHost], "Sequence[Target] | Unplanned | NoVerdict"
]


@dataclass(frozen=True)
class EdgeRun(JSONData):
    """The run's edge pass: the outside host, every item's plan, every target's outcome, and
    the items without a verdict (node ID -> why)."""

    host: EdgeHost = field(default_factory=EdgeHost)
    sweep: Sweep = field(default_factory=Sweep)
    no_verdict: Mapping[str, str] = field(default_factory=dict)


def edge_planned_by(planner: Planner) -> pytest.MarkDecorator:
    """The ``edge_planned_by`` marker carrying ``planner`` (``with_args``: pytest takes a lone
    callable argument for the function to decorate)."""
    return pytest.mark.edge_planned_by.with_args(planner)


# --- the planners ------------------------------------------------------------------------------


def pod_to_outside(
    check: str, params: Mapping[str, Any], probe_map: ProbeMap, host: EdgeHost
) -> Sequence[Target] | Unplanned | NoVerdict:
    """From the probe pod of ``probe_node`` to the outside host's address of ``family``
    (``proto``: its TCP or UDP listener, or an ICMP echo its kernel answers). Any source is
    allowed there (NAT is): the verdict is whether it answered."""
    proto, family, node = params["proto"], params["family"], params["probe_node"]
    outside = host.of_family(family)
    if outside is None:
        return host.lacking(family)
    probe = probe_map.get(ROLE_PROBE, node)
    if address_of_family(probe.pod_ips, family) is None:
        return without_address(family, [probe], probe_map)
    return [
        Target(
            check=check,
            proto=proto,
            family=family,
            source=Endpoint(probe.name, probe.container().name, node),
            destination=Endpoint(outside.label, "", ""),
            host=outside.address,
            port=outside.port,
            capture=False,
        )
    ]


def node_port_from_outside(
    check: str, params: Mapping[str, Any], probe_map: ProbeMap, host: EdgeHost
) -> Sequence[Target] | Unplanned | NoVerdict:
    """From the outside host (asked through the family's relaying probe pod) to the NodePort
    Service at the InternalIP of ``probe_node`` of ``family``: some endpoint answers."""
    if (missing := without_services(probe_map)) is not None:
        return missing
    facts = facts_of(probe_map)
    if facts.node_port_skip is not None:
        return Unplanned(facts.node_port_skip)
    proto, family, node = params["proto"], params["family"], params["probe_node"]
    outside = host.of_family(family)
    if outside is None:
        return host.lacking(family)
    address = facts.internal_ip(node, family)
    if address is None:
        reason = f"node {node} has no IPv{family} InternalIP for NodePorts"
        if family in probe_map.required_families:
            return Unplanned(f"{reason}, although --ip-family requires IPv{family}", broken=True)
        return Unplanned(reason)
    if outside.relay is None:
        return NoVerdict(outside.relay_error or "no probe pod relays to the edge server")
    return [
        Target(
            check=check,
            proto=proto,
            family=family,
            source=Endpoint(outside.relay.pod, outside.relay.container, ""),
            destination=Endpoint(NODEPORT_SERVICE, "", node),
            host=address,
            port=facts.node_ports[proto],
            capture=False,
            servers=backends(probe_map, family),
            relay=outside.control,
        )
    ]


# --- the outside host --------------------------------------------------------------------------


def resolve_outside(
    given: Sequence[ExternalHost], probe_map: ProbeMap, client: ProbeClient
) -> EdgeHost:
    """The outside host's address per family: each literal as given, then each name's first
    address of a family still missing, resolved by the first node's probe pod. A family given
    twice keeps the first."""
    found: dict[int, EdgeAddress] = {}
    errors: list[str] = []
    for entry in given:
        if entry.family is not None:
            found.setdefault(entry.family, EdgeAddress(entry.family, entry.host, entry.port))
    names = [entry for entry in given if entry.family is None]
    probes = probe_map.of_role(ROLE_PROBE)
    for entry in names:
        if not probes:
            errors.append(f"{entry.host}: no probe pod to resolve it")
            continue
        probe = probes[0]
        container = probe.container().name
        (answer,) = client.call(
            probe.name, container, [{"op": "resolve", "name": entry.host, "family": 0}]
        )
        if not answer.get("ok"):
            errors.append(
                f"{entry.host} did not resolve in {probe.name} (the pods' resolver): "
                f"{answer.get('errno') or ''} {answer.get('error')}".strip()
            )
            continue
        for text in answer.get("addresses") or []:
            family = ipaddress.ip_address(str(text)).version
            found.setdefault(family, EdgeAddress(family, str(text), entry.port, entry.host))
    return EdgeHost(
        given=tuple(str(entry) for entry in given),
        addresses=tuple(found[family] for family in sorted(found)),
        resolve_errors=tuple(errors),
    )


def find_relays(host: EdgeHost, probe_map: ProbeMap, client: ProbeClient) -> EdgeHost:
    """``host`` with, per family, the first node's probe pod (in node order) whose agent got an
    answer from the edge server's control listener; else why none did, node by node."""
    probes = probe_map.of_role(ROLE_PROBE)
    answers: dict[tuple[str, int], str | None] = {}

    requests = [
        {"op": "relay", "host": a.address, "port": a.control_port, "request": {"op": "info"}}
        for a in host.addresses
    ]

    def ask(own: ProbeClient, name: str, probe: Probe) -> None:
        replies = own.call(name, probe.container().name, requests)
        for outside, reply in zip(host.addresses, replies, strict=True):
            answers[(name, outside.family)] = _relay_problem(reply)

    def unreachable(probe: Probe, exc: ProbeCallError) -> None:
        for outside in host.addresses:  # that pod cannot relay; another may
            answers[(probe.name, outside.family)] = f"the probe pod could not be asked: {exc}"

    groups = {probe.name: probe for probe in probes}
    in_parallel(client, groups, ask, unreachable, max_parallel=MAX_PARALLEL_CALLS)
    chosen = []
    for outside in host.addresses:
        relay = next((p for p in probes if answers.get((p.name, outside.family)) is None), None)
        if relay is not None:
            endpoint = Endpoint(relay.name, relay.container().name, relay.node)
            chosen.append(_with_relay(outside, endpoint, None))
            continue
        tried = "; ".join(f"{p.node}: {answers.get((p.name, outside.family))}" for p in probes)
        why = (
            f"no probe pod got an answer from the edge server's control listener at "
            f"{target_text('tcp', *outside.control)} ({tried or 'no probe pods'}); is "
            f"`agent.py serve --edge-control {target_text('tcp', *outside.control)} ...` running "
            "there, and does the host accept connections from the pods?"
        )
        chosen.append(_with_relay(outside, None, why))
    return EdgeHost(given=host.given, addresses=tuple(chosen), resolve_errors=host.resolve_errors)


def _relay_problem(reply: ProbeResponse) -> str | None:
    """What kept a relayed ``info`` from answering (None: it answered)."""
    if reply.get("ok"):
        return None
    return str(reply.get("relay_error") or reply.get("error") or "no answer")


def _with_relay(outside: EdgeAddress, relay: Endpoint | None, error: str | None) -> EdgeAddress:
    return replace(outside, relay=relay, relay_error=error)


# --- the pass ----------------------------------------------------------------------------------


def planner_of(item: Any) -> Planner | None:
    """The planner an item's ``edge_planned_by`` marker names (None: not an edge check)."""
    planner: Planner | None = marker_argument(item, EDGE_MARKER)
    return planner


def plan_edge_items(
    items: Iterable[Any], probe_map: ProbeMap, host: EdgeHost
) -> tuple[dict[str, ItemPlan], dict[str, str], list[Target]]:
    """Every edge item's plan, the items without a verdict (node ID -> why), and the targets in
    collection order without duplicates. Placeholder items (a parameter None) are left out."""
    plans: dict[str, ItemPlan] = {}
    no_verdict: dict[str, str] = {}
    targets: dict[str, Target] = {}
    for item in items:
        planner = planner_of(item)
        callspec = getattr(item, "callspec", None)
        if planner is None or callspec is None:
            continue
        if any(value is None for value in callspec.params.values()):
            continue
        nodeid = str(item.nodeid)
        planned = planner(check_name(item), callspec.params, probe_map, host)
        if isinstance(planned, NoVerdict):
            no_verdict[nodeid] = planned.reason
        elif isinstance(planned, Unplanned):
            plans[nodeid] = ItemPlan(nodeid, unplanned=planned)
        else:
            plans[nodeid] = ItemPlan(nodeid, keys=tuple(t.key for t in planned))
            for target in planned:
                targets.setdefault(target.key, target)
    return plans, no_verdict, list(targets.values())


def edge_pass(
    given: Sequence[ExternalHost],
    items: Iterable[Any],
    probe_map: ProbeMap,
    client: ProbeClient,
    *,
    pods: Callable[[], Mapping[str, PodLife] | None] | None = None,
) -> EdgeRun:
    """The outside host's addresses and relays, then every edge item's exchanges."""
    started = monotonic()
    host = find_relays(resolve_outside(given, probe_map, client), probe_map, client)
    plans, no_verdict, targets = plan_edge_items(items, probe_map, host)
    outcomes = run_sweep(client, targets, pods=pods)
    return EdgeRun(
        host=host,
        sweep=Sweep(
            items=plans,
            outcomes={o.target.key: o for o in outcomes},
            seconds=round(monotonic() - started, 3),
        ),
        no_verdict=no_verdict,
    )


def edge_pass_once(
    run: RunInfo,
    given: Sequence[ExternalHost],
    items: Iterable[Any],
    probe_map: ProbeMap,
    client: ProbeClient,
    *,
    pods: Callable[[], Mapping[str, PodLife] | None] | None = None,
) -> EdgeRun:
    """`edge_pass` on the first call in the whole run (any process); later calls read it back.
    A pass that failed is not repeated: every later caller gets the same `SweepError`."""
    return once_data(
        run,
        EDGE_RECORD,
        lambda: edge_pass(given, items, probe_map, client, pods=pods),
        EdgeRun,
        lambda cause: SweepError(f"the edge pass failed: {cause}"),
    )


# --- what a check reports ----------------------------------------------------------------------


def nat_of(
    seen: str, source_ips: Sequence[str], node_addresses: Mapping[str, Sequence[str]]
) -> str:
    """How the outside host saw a pod's traffic: `NAT_NONE` (the pod's own IP), `NAT_NODE` (an
    address of a node: masqueraded by it) or `NAT_OTHER` (neither: NATed beyond the nodes)."""
    if seen in source_ips:
        return NAT_NONE
    if any(seen in addresses for addresses in node_addresses.values()):
        return NAT_NODE
    return NAT_OTHER


def edge_server_command(
    allow: Sequence[str], hosts: Sequence[ExternalHost] = (), agent: str = "agent.py"
) -> str:
    """The command that starts the edge server on the outside host: TCP and UDP listeners on
    its port, a control listener on each of its addresses (``hosts``; ``ADDR`` for a name or
    none given) at the port after, allowed to connect to ``allow`` (the tested nodes'
    InternalIPs) and nowhere else."""
    port = hosts[0].port if hosts else DEFAULT_EDGE_PORT
    addresses = [h.host for h in hosts if h.family is not None] or ["ADDR"]
    words = ["python3", agent, "serve", "--tcp-port", str(port), "--udp-port", str(port)]
    words += ["--socket", EDGE_SOCKET]
    for address in addresses:
        words += ["--edge-control", target_text("tcp", address, port + 1)]
    words += ["--allow-connect", ",".join(allow) or "NODE_ADDRESSES"]
    return shlex.join(words)


def edge_server_instructions(allow: Sequence[str], hosts: Sequence[ExternalHost] = ()) -> str:
    """What to run where, for people: copy the agent, start it, name the host."""
    port = hosts[0].port if hosts else DEFAULT_EDGE_PORT
    return (
        f"on a host outside the cluster, copy the directory {AGENT_DIRECTORY} there (the agent's "
        f"modules; python3 3.8 or newer, standard library only) and run in it "
        f"`{edge_server_command(allow, hosts)}` (ADDR: the host's address "
        f"the pods reach; TCP and UDP port {port} and TCP port {port + 1} must accept the pods, "
        f"and the host must reach the nodes' NodePorts); then name it with --external-host "
        f"{str(hosts[0]) if hosts else 'ADDR'}"
    )
