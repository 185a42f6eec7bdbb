"""Traffic for the pair checks: one two-pass reachability sweep per run, shared by the items.

A check declares its exchanges with the marker ``@pytest.mark.swept_by(planner)``:
``planner(check, params, probe_map)`` turns one test item's parameters into the `Target`s it
needs (or `Unplanned` with the reason it has none); ``check`` is the item's test function's
name (`check_name`), so a check's name is written once, where it is defined. The sweep
plans every selected item once, then probes every target at once:

1. pass one, breadth-first: one try per target, every source container's targets in one agent
   ``call`` batch, the batches of all source containers concurrently (bounded thread pool);
2. pass two: only the failed targets are tried again, in rounds, until
   ``Timeouts.reach_attempts`` tries in all, with tenacity-bounded waits between rounds.

Captures run on the destinations across both passes, and the listener records and captures
are read back once at the end. Then every pair exchange is measured: `LOSS_PROBES` datagrams,
echoes or connections in one agent request, whose lost share is judged (``--max-loss``). The result (`Sweep`: each item's plan and each target's
`Outcome`) is computed once per run (`conformance.kit.base.runstate.once`) and read back by xdist
workers. What the outcomes mean is judged elsewhere, in one place for every check
(`conformance.kit.verdicts.judge`).
"""

from __future__ import annotations

import json
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from time import monotonic
from typing import Any, TypeVar

import pytest
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from conformance.kit.base.errors import ProbeCallError, SweepError
from conformance.kit.base.jsondata import JSONData
from conformance.kit.base.runstate import RunInfo, once_data
from conformance.kit.base.settings import Timeouts
from conformance.kit.probes.client import (
    ProbeClient,
    ProbeResponse,
    address_of_family,
    canonical_ip,
    require_ok,
)
from conformance.kit.probes.lives import PodLife, changed_pods, why_lost
from conformance.kit.probes.model import ROLE_HOSTPROBE, ROLE_PEER, ROLE_PROBE, Probe, ProbeMap
from conformance.kit.probes.parallel import in_parallel as calls_in_parallel
from conformance.probe_agent import call_budget

#: The marker a check carries when its exchanges come from the sweep.
SWEEP_MARKER = "swept_by"
#: Concurrent agent calls of a sweep (one per source or destination container).
MAX_PARALLEL_CALLS = 16
#: Exchanges one source container runs at once (inside one agent call).
PARALLEL_PROBES = 32
#: The agent bounds one capture at this many seconds.
MAX_CAPTURE_SECONDS = 300.0
#: The run-state record of the sweep.
SWEEP_RECORD = "reachability"
#: Bytes of a full-size TCP transfer (`Target.full_size`).
TRANSFER_BYTES = 1 << 20
#: Kinds of exchange (`Target.kind`): one exchange with an agent's listener (through its own
#: address, or a Service, NodePort or hostPort in front of it); a spread of connections
#: through a Service's address; a connection that must be refused promptly.
KIND_EXCHANGE = "exchange"
KIND_SPREAD = "spread"
KIND_REFUSAL = "refusal"
#: Connections a spread keeps open at once (inside one agent request).
SPREAD_PARALLEL = 8
#: Seconds a relayed exchange may take beyond its own timeout (the control connection).
RELAY_MARGIN = 5.0
#: Probes of one exchange's loss measurement (datagrams, echo requests or TCP connections),
#: and seconds between their starts: a hundred probes in half a second. With the default
#: ``--max-loss`` of 5 % an exchange fails from 6 lost on: a pair that loses 20 % of its
#: packets (each probe's round trip lost with a chance of 20 % or more) passes with a chance
#: of P(Binomial(100, 0.2) <= 5) = 1.9e-5, while a background loss of 0.5 % fails an exchange
#: with a chance of P(Binomial(100, 0.005) >= 6) = 1.2e-5 (docs/architecture.md, "Loss").
LOSS_PROBES = 100
LOSS_INTERVAL = 0.005
#: A loss measurement's TCP connections open at once: a connection whose SYN was lost waits a
#: second for its retransmission, the others go on.
LOSS_PARALLEL = 4
#: A measurement that lost probes while its destination's listener dropped some itself (a full
#: socket buffer, a full accept queue: the endpoint fell behind, not the network) is made
#: again, up to this many times, with this many measurements per source at once.
LOSS_REMEASURES = 2
LOSS_CALM_PARALLEL = 4


@dataclass(frozen=True)
class Endpoint(JSONData):
    """One agent taking part in an exchange: the pod, its container, and the pod's node."""

    pod: str
    container: str
    node: str

    @property
    def label(self) -> str:
        """``pod/container``; the bare name for what is no agent (a Service)."""
        return f"{self.pod}/{self.container}" if self.container else self.pod


@dataclass(frozen=True)
class Target(JSONData):
    """One exchange a check needs: ``proto`` from ``source`` to ``host`` (``port``) where
    ``destination``'s agent listens.

    ``allowed_sources``: when set, the destination must see the traffic, and only from these
    addresses (listener and, with ``capture``, the capture). ``source_is_node``: the source
    is a node's own network stack, so every address on the source's interfaces is allowed too
    (the sweep asks the source for them). ``full_size``: the exchange carries full-size
    packets (TCP: a `TRANSFER_BYTES` transfer; UDP and ICMP: a datagram or echo of the source
    interface's MTU with Don't Fragment), and must arrive intact.

    ``kind`` (`KIND_EXCHANGE`, `KIND_SPREAD`, `KIND_REFUSAL`) says what the exchange is.
    ``servers``: the pods that may answer at ``host`` (a Service, NodePort or hostPort in front
    of them): for an exchange the one that answers must be one of them, for a spread each must
    answer at least once in ``max_tries`` tries; ``unwanted_servers`` must not answer (a
    backend that is not ready). Such targets are judged from the client's side alone: the
    answers name their server (``destination`` then names the Service, or the node).

    A spread makes at least ``min_tries`` connections, every one of which must be answered;
    ``endpoints`` (when set) are the only pods that may answer it, and at least one of
    ``one_of_servers`` must (a NodePort: an endpoint on another node than the one asked).

    ``relay``: (address, port) of an edge server's control listener (a host outside the
    cluster, ``agent.py serve --edge-control``): the source's agent hands it the request, so
    the exchange starts outside the cluster; an edge server that cannot be asked leaves the
    target without a verdict. A destination without a container (a Service, a host outside
    the cluster) has no agent to ask what it recorded.
    """

    check: str
    proto: str
    family: int
    source: Endpoint
    destination: Endpoint
    host: str
    port: int | None
    capture: bool = True
    allowed_sources: tuple[str, ...] | None = None
    source_is_node: bool = False
    full_size: bool = False
    kind: str = KIND_EXCHANGE
    servers: tuple[str, ...] | None = None
    unwanted_servers: tuple[str, ...] = ()
    max_tries: int = 0
    min_tries: int = 0
    endpoints: tuple[str, ...] | None = None
    one_of_servers: tuple[str, ...] = ()
    measure_loss: bool = True
    relay: tuple[str, int] | None = None

    @property
    def key(self) -> str:
        """Unique in a run, and the same whichever process plans it."""
        size = ":full-size" if self.full_size else ""
        kind = "" if self.kind == KIND_EXCHANGE else f":{self.kind}"
        return (
            f"{self.check}:{self.proto}{size}{kind}:{self.source.label}->{self.destination.label}"
            f"@{target_text(self.proto, self.host, self.port)}"
        )

    @property
    def pods(self) -> tuple[str, ...]:
        """The pods whose lives the verdict rests on: the source, and the servers (wanted or
        not) where a Service or port stands in front of them, else the destination when it
        is a pod (not a Service: a Service without endpoints has no container)."""
        if self.servers is not None:
            ends = self.servers
        else:
            ends = (self.destination.pod,) if self.destination.container else ()
        behind = (*(self.endpoints or ()), *self.one_of_servers, *self.unwanted_servers)
        return tuple(dict.fromkeys((self.source.pod, *ends, *behind)))

    @property
    def asks_destination(self) -> bool:
        """The destination's agent is asked what it recorded (an exchange with one agent)."""
        return (
            self.kind == KIND_EXCHANGE and self.servers is None and bool(self.destination.container)
        )

    @property
    def measures_loss(self) -> bool:
        """The exchange's loss is measured (`LOSS_PROBES` probes): every small exchange with
        an agent, unless its planner said no (``measure_loss``: a pod's loopback has no
        network in between); not full-size ones (about packet sizes), spreads or refusals, nor
        exchanges with the cluster's edge (no agent of ours at the far end to say what it
        dropped itself, and the outside is not the pod network the loss rule is about)."""
        return (
            self.kind == KIND_EXCHANGE
            and not self.full_size
            and self.measure_loss
            and self.relay is None
            and bool(self.destination.container)
        )

    @property
    def settled_by_one_try(self) -> bool:
        """One agent request decides the target: a spread is many tries in itself, and a
        refusal that times out is the failure, not a reason to try again."""
        return self.kind != KIND_EXCHANGE

    @property
    def what(self) -> str:
        """``tcp``, or for full-size exchanges ``tcp transfer of 1048576 bytes``, ``udp
        datagram of the interface MTU (DF)``..."""
        if self.kind == KIND_SPREAD:
            if self.min_tries >= self.max_tries:
                return f"{self.proto} spread of {self.max_tries} connections"
            at_least = f"{self.min_tries} to " if self.min_tries > 1 else "up to "
            return f"{self.proto} spread of {at_least}{self.max_tries} connections"
        if self.kind == KIND_REFUSAL:
            return f"{self.proto} connection"
        if not self.full_size:
            return self.proto
        return {
            "tcp": f"tcp transfer of {TRANSFER_BYTES} bytes",
            "udp": "udp datagram of the interface MTU (DF)",
            "icmp": "icmp echo of the interface MTU (DF)",
        }[self.proto]

    def describe(self) -> str:
        """``tcp probe-node-1/a -> probe-node-2/a at 10.244.1.5:8080``; relayed: ``tcp the
        edge server 192.0.2.10:18081 (asked through probe-node-1/a) -> ...``."""
        source = self.source.label
        if self.relay is not None:
            source = f"the edge server {target_text('tcp', *self.relay)} (asked through {source})"
        return (
            f"{self.what} {source} -> {self.destination.label} at "
            f"{target_text(self.proto, self.host, self.port)}"
        )


@dataclass(frozen=True)
class Unplanned(JSONData):
    """Why an item has no exchanges: not applicable here (a skip), or, with ``broken``, because
    the cluster breaks a rule before any traffic (a failure)."""

    reason: str
    broken: bool = False


def without_address(family: int, probes: Sequence[Probe], probe_map: ProbeMap) -> Unplanned:
    """Why an item has no traffic when ``probes`` lack an address of ``family``: a broken rule
    when the run requires the family (the cluster declares it, or ``--ip-family`` asks for
    it), else not applicable here."""
    names = "; ".join(p.describe() for p in probes)
    if family in probe_map.required_families:
        return Unplanned(
            f"no IPv{family} address on {names}, although IPv{family} is required",
            broken=True,
        )
    return Unplanned(f"no IPv{family} address on {names}")


def pod_to_pod(
    check: str, params: Mapping[str, Any], probe_map: ProbeMap, *, full_size: bool = False
) -> Sequence[Target] | Unplanned:
    """The exchange of a pod pair item (``proto``, ``family``, ``node_pair``): from the probe pod
    of the source node to the probe pod of the destination node (to the peer pod on the same
    node). Small packets are captured and may come only from the source pod's own IP;
    full-size ones must arrive intact."""
    proto, family, pair = params["proto"], params["family"], params["node_pair"]
    source = probe_map.get(ROLE_PROBE, pair.src)
    target = probe_map.get(ROLE_PEER if pair.same_node else ROLE_PROBE, pair.dst)
    src_ip = address_of_family(source.pod_ips, family)
    dst_ip = address_of_family(target.pod_ips, family)
    if src_ip is None or dst_ip is None:
        lacking = [p for p, ip in ((source, src_ip), (target, dst_ip)) if ip is None]
        return without_address(family, lacking, probe_map)
    container = target.container()
    return [
        Target(
            check=check,
            proto=proto,
            family=family,
            source=Endpoint(source.name, source.container().name, source.node),
            destination=Endpoint(target.name, container.name, target.node),
            host=dst_ip,
            port=container.port(proto),
            capture=not full_size,
            allowed_sources=None if full_size else (src_ip,),
            full_size=full_size,
        )
    ]


def host_to_pods(
    check: str, params: Mapping[str, Any], probe_map: ProbeMap, source: str, destination: str
) -> Sequence[Target] | Unplanned:
    """The exchanges from the host network of node ``source`` to the probe and peer pods of
    node ``destination`` (``proto`` and ``family`` from the item's parameters); the pods may
    see any address of the source node."""
    proto, family = params["proto"], params["family"]
    host = probe_map.get(ROLE_HOSTPROBE, source)
    pods = [probe_map.get(role, destination) for role in (ROLE_PROBE, ROLE_PEER)]
    lacking = [pod for pod in pods if address_of_family(pod.pod_ips, family) is None]
    if lacking:
        return without_address(family, lacking, probe_map)
    planned = []
    for pod in pods:
        dst_ip = address_of_family(pod.pod_ips, family)
        assert dst_ip is not None
        container = pod.container()
        planned.append(
            Target(
                check=check,
                proto=proto,
                family=family,
                source=Endpoint(host.name, host.container().name, source),
                destination=Endpoint(pod.name, container.name, destination),
                host=dst_ip,
                port=container.port(proto),
                allowed_sources=tuple(probe_map.node_addresses.get(source, ())),
                source_is_node=True,
            )
        )
    return planned


#: A test item's parameters (its ``callspec.params``), as planners read them.
Params = Mapping[str, Any]
#: What a planner gives for one item: its targets, or why it has none.
Planned = Sequence[Target] | Unplanned
#: ``planner(check, params, probe_map)``: the targets of one test item from its check's name
#: (`check_name`) and its parameters.
Planner = Callable[[str, Params, ProbeMap], Planned]


def check_name(item: Any) -> str:
    """The check an item belongs to: its test function's name without parameters
    (``test_no_snat`` for ``conformance/test_no_snat.py::test_no_snat[udp-node-1->node-3]``)."""
    name = getattr(item, "originalname", None)
    return str(name) if name else str(item.nodeid).rsplit("::", 1)[-1].split("[", 1)[0]


@dataclass(frozen=True)
class Loss(JSONData):
    """One exchange's loss measurement: probes sent, and lost (not answered; for TCP also
    answered only after a segment was sent again), with how the failed ones failed."""

    sent: int
    lost: int
    retransmitted: int = 0
    errors: Mapping[str, int] = field(default_factory=dict)
    example: str | None = None
    #: What the ends dropped themselves meanwhile (datagrams a full socket buffer refused, at
    #: the destination's listener or the measuring socket; connections the destination's full
    #: accept queue did); None: not read (no probe was lost, so nothing to explain) or
    #: unreadable.
    endpoint_drops: int | None = None
    #: Measurements made: more than 1 when one lost probes while the destination dropped some.
    measurements: int = 1

    @property
    def ratio(self) -> float:
        return self.lost / self.sent if self.sent else 1.0

    def describe(self) -> str:
        """``3 of 100 probes lost (3.0 %)``, with the TCP retransmissions and errors."""
        text = f"{self.lost} of {self.sent} probes lost ({100 * self.ratio:.1f} %)"
        if self.retransmitted:
            text += f", {self.retransmitted} answered only after a TCP retransmission"
        if self.errors:
            text += "; failed: " + ", ".join(f"{e} {n}" for e, n in sorted(self.errors.items()))
        if self.example:
            text += f" (first: {self.example})"
        if self.endpoint_drops:
            text += f"; the ends themselves dropped {self.endpoint_drops} meanwhile"
        if self.measurements > 1:
            text += f" (measurement {self.measurements})"
        return text


def loss_of(response: ProbeResponse) -> Loss | None:
    """The `Loss` a measured connect or icmp response reports (None when it holds none: the
    request itself could not run)."""
    sent, lost = response.get("sent"), response.get("lost")
    if not isinstance(sent, int) or not isinstance(lost, int) or sent <= 0:
        return None
    examples = response.get("error_examples") or []
    return Loss(
        sent=sent,
        lost=lost,
        retransmitted=int(response.get("retransmitted") or 0),
        errors={str(k): int(v) for k, v in (response.get("errors") or {}).items()},
        example=str(examples[0]) if examples else None,
    )


@dataclass(frozen=True)
class Exchange(JSONData):
    """What one probed exchange showed, from both ends, over every try and look.

    Evidence only accumulates: the sources the destination reported (``peers_seen``), the
    servers that answered and the answers that were not the destination agent's, from every
    try, the loss measurement and the second look, stay; later tries and looks can only add.
    """

    attempts: int
    client_response: ProbeResponse  # the last connect/icmp response
    listener_peers: tuple[str, ...]  # sources the destination's listeners recorded
    captured_sources: tuple[str, ...]  # sources of captured packets holding the nonce
    capture_error: str | None = None
    captured: bool = True  # a capture ran on the destination for this exchange
    recorded: bool = True  # the destination's listener was asked what it recorded
    #: Looks taken: 2 when the destination's capture or listener missed an answered exchange's
    #: packet and the exchange was sent again under a fresh capture (`run_sweep`).
    captures: int = 1
    #: Sources the destination reported back in its answers (the listener's view).
    peers_seen: tuple[str, ...] = ()
    #: Pods that answered (their agents' names).
    servers_seen: tuple[str, ...] = ()
    #: Answers that were not the destination agent's answer to the probe.
    wrong_answers: tuple[str, ...] = ()
    loss: Loss | None = None

    @property
    def reached(self) -> bool:
        return bool(self.client_response.get("ok"))

    @property
    def peer_seen(self) -> str | None:
        """The source address the destination reported back to the client."""
        return canonical_ip(self.client_response.get("peer_seen"))

    @property
    def server(self) -> str | None:
        """The pod that answered, as its agent named itself (None when it did not)."""
        value = self.client_response.get("server")
        return str(value) if value else None

    def describe(self) -> str:
        return (
            f"{'reached' if self.reached else 'NOT reached'} after {self.attempts} attempt(s); "
            f"client said {json.dumps(self.client_response, sort_keys=True)}"
            + (f"; loss: {self.loss.describe()}" if self.loss is not None else "")
            + (f"; wrong answers: {list(self.wrong_answers)}" if self.wrong_answers else "")
            + (
                f"; listener recorded {list(self.listener_peers) or 'nothing'}"
                if self.recorded
                else ""
            )
            + (f"; capture saw {list(self.captured_sources) or 'nothing'}" if self.captured else "")
            + (
                " (second look: the first missed the packet at the destination)"
                if self.captures > 1
                else ""
            )
            + (f" (capture failed: {self.capture_error})" if self.capture_error else "")
        )


@dataclass(frozen=True)
class Outcome(JSONData):
    """What the sweep saw for one target.

    ``error`` set: the agents could not be asked (could not test, no verdict). Otherwise
    ``exchange`` holds both ends' view; ``first_error`` is the first try's failure (None when
    the first try was answered); ``allowed_sources`` the addresses the destination may see,
    resolved (None: any).
    """

    target: Target
    nonce: str
    attempts: int = 0
    exchange: Exchange | None = None
    first_error: str | None = None
    error: str | None = None
    max_attempts: int = 1
    allowed_sources: tuple[str, ...] | None = None

    @property
    def reached(self) -> bool:
        return self.exchange is not None and self.exchange.reached

    def describe(self) -> str:
        """The target and what happened, for failure text."""
        seen = self.exchange.describe() if self.exchange is not None else f"error: {self.error}"
        return f"{self.target.describe()}: {seen}"


@dataclass(frozen=True)
class ItemPlan(JSONData):
    """One test item's planned target keys, or why it has none."""

    nodeid: str
    keys: tuple[str, ...] = ()
    unplanned: Unplanned | None = None


@dataclass(frozen=True)
class Sweep(JSONData):
    """One run's sweep: every item's plan and every target's outcome (by target key)."""

    items: Mapping[str, ItemPlan] = field(default_factory=dict)
    outcomes: Mapping[str, Outcome] = field(default_factory=dict)
    #: Wall-clock seconds the sweep took (planning included).
    seconds: float = 0.0

    def of_check(self, check: str) -> list[Outcome]:
        """Every outcome of ``check`` in the run."""
        return [o for o in self.outcomes.values() if o.target.check == check]

    def loss_totals(self) -> dict[str, int]:
        """Exchanges whose loss was measured, and their probes sent and lost."""
        losses = [
            o.exchange.loss
            for o in self.outcomes.values()
            if o.exchange is not None and o.exchange.loss is not None
        ]
        return {
            "measured": len(losses),
            "probes": sum(loss.sent for loss in losses),
            "probes_lost": sum(loss.lost for loss in losses),
        }


# --- planning ----------------------------------------------------------------------------------


def swept_by(planner: Planner) -> pytest.MarkDecorator:
    """The ``swept_by`` marker carrying ``planner``, to decorate a check with.

    (``pytest.mark.swept_by(planner)`` would not do: pytest takes a lone callable argument for
    the function to decorate, hence ``with_args``.)"""
    return pytest.mark.swept_by.with_args(planner)


def marker_argument(item: Any, marker_name: str) -> Any:
    """The first argument of an item's marker ``marker_name`` (None when it has no such marker,
    or one without arguments). Items are read duck-typed, so plain objects do in unit tests."""
    get_marker = getattr(item, "get_closest_marker", None)
    marker = get_marker(marker_name) if get_marker is not None else None
    if marker is None or not marker.args:
        return None
    return marker.args[0]


def planner_of(item: Any) -> Planner | None:
    """The planner an item's ``swept_by`` marker names (None when it has no such marker)."""
    planner: Planner | None = marker_argument(item, SWEEP_MARKER)
    return planner


def plan_item(item: Any, probe_map: ProbeMap) -> tuple[ItemPlan, list[Target]] | None:
    """The plan of one item (None when it is not swept, or is a placeholder case whose
    parameters are None: cluster unavailable, not applicable)."""
    planner = planner_of(item)
    callspec = getattr(item, "callspec", None)
    if planner is None or callspec is None:
        return None
    params = callspec.params
    if any(value is None for value in params.values()):
        return None
    planned = planner(check_name(item), params, probe_map)
    nodeid = str(item.nodeid)
    if isinstance(planned, Unplanned):
        return ItemPlan(nodeid, unplanned=planned), []
    targets = list(planned)
    return ItemPlan(nodeid, keys=tuple(t.key for t in targets)), targets


def plan_for_items(
    items: Iterable[Any], probe_map: ProbeMap
) -> tuple[dict[str, ItemPlan], list[Target]]:
    """Every swept item's plan, and their targets in collection order without duplicates."""
    plans: dict[str, ItemPlan] = {}
    targets: dict[str, Target] = {}
    for item in items:
        found = plan_item(item, probe_map)
        if found is None:
            continue
        plan, planned = found
        plans.setdefault(plan.nodeid, plan)
        for target in planned:
            targets.setdefault(target.key, target)
    return plans, list(targets.values())


# --- the agent requests of an exchange ---------------------------------------------------------


def target_text(proto: str, host: str, port: int | None) -> str:
    """``host:port`` (``[v6]:port``) for tcp/udp, the bare address for icmp."""
    if proto == "icmp":
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def probe_request(target: Target, nonce: str, timeout: float) -> dict[str, Any]:
    """The agent request of one network attempt for ``target``: an ICMP (ICMPv6 for an IPv6
    address) echo, or a TCP/UDP exchange with the listener at ``host``:``port``; full-size:
    a TCP transfer, or a datagram or echo as large as the interface MTU with Don't Fragment.
    With a ``relay``, that request wrapped for the edge server to make."""
    if target.relay is not None:
        host, port = target.relay
        inner = probe_request(replace(target, relay=None), nonce, timeout)
        return {
            "op": "relay",
            "host": host,
            "port": port,
            "request": inner,
            "timeout": timeout + RELAY_MARGIN,
        }
    request: dict[str, Any] = {"host": target.host, "nonce": nonce, "timeout": timeout}
    if target.kind == KIND_SPREAD:
        # Until every wanted and unwanted server answered: while the unwanted stay silent,
        # every try is made, so a stale endpoint has every chance to show.
        expect = [*(target.servers or ()), *target.unwanted_servers]
        request.update(
            op="spread",
            proto=target.proto,
            port=target.port,
            expect_servers=expect,
            max_tries=target.max_tries,
            parallel=SPREAD_PARALLEL,
        )
        if target.min_tries > 1:
            request["min_tries"] = min(target.min_tries, target.max_tries)
        return request
    if target.proto == "icmp":
        request["op"] = "icmp"
    elif target.full_size and target.proto == "tcp":
        request.update(op="transfer", port=target.port, size=TRANSFER_BYTES)
    else:
        request.update(op="connect", proto=target.proto, port=target.port)
    if target.full_size and target.proto in ("udp", "icmp"):
        request.update(size="mtu", df=True)
    return request


def loss_request(target: Target, nonce: str, timeout: float, probes: int) -> dict[str, Any]:
    """The agent request measuring ``target``'s loss: ``probes`` datagrams, echo requests or
    TCP connections `LOSS_INTERVAL` apart, each waiting ``timeout`` for its answer."""
    request = probe_request(target, nonce, timeout)
    request.update(count=probes, interval=LOSS_INTERVAL)
    if target.proto == "tcp":
        request["parallel"] = LOSS_PARALLEL
    return request


def collect_queries(
    prefix: str,
    capture_id: str | None,
    expect: Sequence[str],
    capture_expect: Sequence[str],
    wait: float,
) -> list[dict[str, Any]]:
    """One destination's queries after probing: its listener records of the sweep's nonces
    (``prefix``), then its capture's packets. Each waits (at most ``wait``) only for the nonces
    of exchanges that were answered: a packet that never came will not come later."""
    queries: list[dict[str, Any]] = [
        {
            "op": "seen",
            "nonce_prefix": prefix,
            "expect_nonces": list(expect),
            # ICMP is recorded by a raw socket beside the kernel's echo: give it a moment.
            "wait": min(1.0, wait) if expect else 0.0,
        }
    ]
    if capture_id is not None:
        queries.append(
            {
                "op": "capture_result",
                "capture_id": capture_id,
                "expect_nonces": list(capture_expect),
                "wait": wait if capture_expect else 0.0,
            }
        )
    return queries


def by_nonce(entries: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Records or packets grouped by the nonce they carry."""
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for entry in entries:
        grouped.setdefault(str(entry.get("nonce")), []).append(entry)
    return grouped


def exchange_of(
    target: Target,
    *,
    attempts: int,
    response: ProbeResponse,
    records: Sequence[Mapping[str, Any]],
    packets: Sequence[Mapping[str, Any]] | None,
    capture_error: str | None,
    answers: Iterable[ProbeResponse] = (),
) -> Exchange:
    """The `Exchange` from the client's last response and what the destination recorded for the
    exchange's nonce (listener records; captured packets, None without a capture); ``answers``
    are every response of the exchange (each try, the loss measurement), whose evidence is
    kept whatever the last one says."""
    peers = {
        canonical_ip(r.get("peer")) or str(r.get("peer"))
        for r in records
        if str(r.get("proto", "")).startswith(target.proto)  # icmp covers icmpv6
    }
    sources = {
        canonical_ip(p.get("src")) or str(p.get("src"))
        for p in packets or ()
        if canonical_ip(p.get("dst")) == canonical_ip(target.host)
    }
    exchanged = [response, *answers] if target.kind == KIND_EXCHANGE else []
    seen, servers, wrong = evidence_of(exchanged)
    measured = [a for a in exchanged if a.get("count")]
    return Exchange(
        attempts=attempts,
        client_response=response,
        listener_peers=tuple(sorted(peers)),
        captured_sources=tuple(sorted(sources)),
        capture_error=capture_error,
        captured=packets is not None,
        recorded=target.asks_destination,
        peers_seen=seen,
        servers_seen=servers,
        wrong_answers=wrong,
        loss=loss_of(measured[-1]) if measured else None,
    )


def evidence_of(
    responses: Iterable[ProbeResponse],
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """What agent responses say about who answered: the sources the destination reported, the
    servers that answered, and answers that were not the destination agent's."""
    peers: set[str] = set()
    servers: set[str] = set()
    wrong: list[str] = []
    for response in responses:
        for peer in [response.get("peer_seen"), *(response.get("peers") or ())]:
            if peer:
                peers.add(canonical_ip(peer) or str(peer))
        named = [response.get("server"), *(response.get("servers") or {})]
        servers.update(str(name) for name in named if name)
        if response.get("wrong_answer"):
            wrong.append(str(response.get("error")))
        if response.get("wrong_answers"):
            examples = [e for e in response.get("error_examples") or () if "answered" in str(e)]
            wrong.append(
                f"{response['wrong_answers']} of {response.get('sent')} probes answered by "
                f"something other than the agent" + (f" ({examples[0]})" if examples else "")
            )
    return tuple(sorted(peers)), tuple(sorted(servers)), tuple(dict.fromkeys(wrong))


def merge_looks(first: Exchange, second: Exchange) -> Exchange:
    """One exchange from two looks: the first look's answer and tries, the evidence of both (a
    source seen in either, a capture that worked in either, any wrong answer)."""
    captures = [e for e in (first, second) if e.captured and e.capture_error is None]
    return replace(
        first,
        listener_peers=tuple(sorted({*first.listener_peers, *second.listener_peers})),
        captured_sources=tuple(sorted({*first.captured_sources, *second.captured_sources})),
        capture_error=None if captures or not first.captured else first.capture_error,
        captures=first.captures + second.captures,
        peers_seen=tuple(sorted({*first.peers_seen, *second.peers_seen})),
        servers_seen=tuple(sorted({*first.servers_seen, *second.servers_seen})),
        wrong_answers=tuple(dict.fromkeys((*first.wrong_answers, *second.wrong_answers))),
    )


# --- the sweep ---------------------------------------------------------------------------------


def _capture_budget(targets: Sequence[Target], timeouts: Timeouts, max_parallel: int) -> float:
    """Seconds a capture must live: every round of tries (each a wave of source calls,
    ``max_parallel`` at a time, each running its exchanges `PARALLEL_PROBES` at a time), the
    waits between rounds and the reading back; bounded by what the agent allows."""
    per_source = Counter(t.source.label for t in targets)
    busiest = max(per_source.values(), default=1)
    waves = -(-len(per_source) // max(1, max_parallel))
    lanes = -(-busiest // PARALLEL_PROBES)
    tries = timeouts.reach_attempts * waves * lanes * (timeouts.probe + 1)
    return min(MAX_CAPTURE_SECONDS, tries + 2 * timeouts.exec_overhead + timeouts.capture_wait)


class _StillFailing(Exception):
    """A round of pass two left targets unanswered: try another (tenacity retries on it)."""


@dataclass
class _State:
    target: Target
    nonce: str
    attempts: int = 0
    response: ProbeResponse = field(default_factory=dict)
    first_error: str | None = None
    error: str | None = None
    exchange: Exchange | None = None
    own_addresses: tuple[str, ...] = ()
    #: Every try's response, and the loss measurement's (evidence is kept from each).
    answers: list[ProbeResponse] = field(default_factory=list)
    loss: ProbeResponse | None = None
    wants_loss: bool = False
    #: Earlier loss measurements (their evidence counts, the last one's loss is judged), and
    #: what the destination dropped itself during the last one.
    earlier_losses: list[ProbeResponse] = field(default_factory=list)
    endpoint_drops: int | None = None
    #: What the destination recorded and captured for the nonce (`collect`).
    records: list[Mapping[str, Any]] = field(default_factory=list)
    packets: list[Mapping[str, Any]] | None = None
    capture_error: str | None = None

    @property
    def pending(self) -> bool:
        if self.error is not None:
            return False
        if self.target.settled_by_one_try:
            return self.attempts == 0
        return not self.response.get("ok")

    @property
    def measuring(self) -> bool:
        """The loss measurement is due: wanted, not made, and the target has a verdict to come."""
        return self.wants_loss and self.loss is None and self.error is None

    @property
    def lost_probes(self) -> bool:
        """The last loss measurement lost probes (or told nothing)."""
        measured = loss_of(self.loss) if self.loss is not None else None
        return measured is None or measured.lost > 0

    @property
    def doubtful(self) -> bool:
        """The last measurement lost probes while the destination's listener dropped some:
        whose the loss was, the network's or the listener's, is unknown."""
        measured = loss_of(self.loss) if self.loss is not None else None
        return bool(self.error is None and measured and measured.lost and self.endpoint_drops)

    def measure_again(self) -> None:
        if self.loss is not None:
            self.earlier_losses.append(self.loss)
        self.loss = None

    def allowed_sources(self) -> tuple[str, ...] | None:
        allowed = self.target.allowed_sources
        if allowed is None:
            return None
        return tuple(sorted(set(allowed) | set(self.own_addresses)))

    def take(self, answer: ProbeResponse, *, loss: bool, where: Endpoint) -> None:
        """One agent response for this target: a try, or its loss measurement."""
        if loss:
            self.loss = answer
            if loss_of(answer) is None:
                self.error = (
                    f"measure the loss: agent answered {_error_text(answer)!r} "
                    f"[pod {where.pod}, container {where.container}]"
                )
            return
        self.attempts += 1
        self.response = answer
        self.answers.append(answer)
        if self.attempts == 1 and not answer.get("ok"):
            self.first_error = _error_text(answer)

    def build_exchange(self) -> Exchange:
        exchange = exchange_of(
            self.target,
            attempts=self.attempts,
            response=self.response,
            records=self.records,
            packets=self.packets if self.target.capture else None,
            capture_error=self.capture_error if self.target.capture else None,
            answers=[
                *self.answers,
                *self.earlier_losses,
                *([self.loss] if self.loss is not None else []),
            ],
        )
        if exchange.loss is None:
            return exchange
        loss = replace(
            exchange.loss,
            endpoint_drops=self.endpoint_drops,
            measurements=len(self.earlier_losses) + 1,
        )
        return replace(exchange, loss=loss)


@dataclass(frozen=True)
class _Work:
    """One request of a round: a try of ``state``'s target, or (``loss``) its measurement."""

    state: _State
    loss: bool = False


T = TypeVar("T")


def _by(items: Iterable[T], key: Callable[[T], Endpoint]) -> dict[Endpoint, list[T]]:
    groups: dict[Endpoint, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


def _error_text(response: ProbeResponse) -> str:
    errno = response.get("errno")
    error = str(response.get("error") or "no answer")
    return f"{errno} {error}" if errno and str(errno) not in error else error


def interface_addresses(answer: ProbeResponse) -> tuple[str, ...]:
    """The IP addresses on the interfaces an ``addresses`` answer lists (link-local included)."""
    found = {
        canonical_ip(text.split("/", 1)[0])
        for interface in answer.get("interfaces", [])
        for text in interface.get("addresses", [])
    }
    return tuple(sorted(ip for ip in found if ip))


def read_drops(
    client: ProbeClient, ends: Mapping[Endpoint, Sequence[Any]], workers: int
) -> dict[Endpoint, ProbeResponse]:
    """What each destination agent's listeners dropped themselves so far (``drops``); a
    container that cannot be asked, or an agent that cannot tell, is left out (unknown)."""
    found: dict[Endpoint, ProbeResponse] = {}

    def read(own: ProbeClient, endpoint: Endpoint, _group: Sequence[Any]) -> None:
        (answer,) = own.call(endpoint.pod, endpoint.container, [{"op": "drops"}])
        if answer.get("ok"):
            found[endpoint] = answer

    calls_in_parallel(client, ends, read, lambda _group, _exc: None, max_parallel=workers)
    return found


def drops_between(
    before: ProbeResponse | None, after: ProbeResponse | None, proto: str
) -> int | None:
    """What a destination's ``proto`` listener dropped between two ``drops`` readings (ICMP:
    0, the kernel answers echoes itself); None when either reading is missing."""
    if proto == "icmp":
        return 0
    key = "udp" if proto == "udp" else "tcp_listen"
    first, last = (before or {}).get(key), (after or {}).get(key)
    if not isinstance(first, int) or not isinstance(last, int):
        return None
    return max(0, last - first)


def _witness_missed(exchange: Exchange | None) -> bool:
    """Answered, yet absent from the destination's capture or its listener's records."""
    if exchange is None or not exchange.reached:
        return False
    capture_missed = (
        exchange.captured and exchange.capture_error is None and not exchange.captured_sources
    )
    return capture_missed or (exchange.recorded and not exchange.listener_peers)


def run_sweep(
    client: ProbeClient,
    targets: Sequence[Target],
    *,
    max_parallel: int = MAX_PARALLEL_CALLS,
    nonce_prefix: str | None = None,
    pods: Callable[[], Mapping[str, PodLife] | None] | None = None,
    recapture: bool = True,
    loss_probes: int = LOSS_PROBES,
) -> list[Outcome]:
    """Probe every target: pass one (one try each), pass two (retries of the failed ones, up to
    ``reach_attempts`` tries in all), then read back listener records and captures; and
    measure the loss of every answered exchange that `Target.measures_loss` (``loss_probes``
    probes; 0: none), in a round of its own (one batch per source) once the others ended.

    An exchange that was answered but is missing from the destination's capture or listener
    records is sent once more (with ``recapture``) under fresh captures, and what that second
    look saw is added to the first (`merge_looks`, `Exchange.captures` counts the looks): a
    sniffer or raw socket on a saturated node drops packets when its socket buffer fills, and
    a NAT the first look saw must not be forgotten because the second was clean. Where
    another host answers in the destination's place, the second look misses it too, and that
    is the verdict.

    Agent calls go out one batch per container, ``max_parallel`` containers at a time, each
    through its own API client; inside a source's batch the agent runs `PARALLEL_PROBES`
    exchanges at once. A container that cannot be asked (`ProbeCallError`) makes its targets'
    outcomes carry ``error``; nothing else is retried or hidden.

    With ``pods`` (the probe pods' lives, `conformance.kit.probes.lives.pod_lives`), the pods are
    looked at before and after: an exchange with a pod that was evicted, deleted or replaced,
    or whose container restarted meanwhile, carries ``error`` too (what its ends saw is not
    evidence about the network), never a verdict.
    """
    timeouts = client.timeouts
    # One prefix per sweep, one nonce per exchange: a destination's capture and listener
    # records are asked once for the prefix and sorted by nonce.
    prefix = nonce_prefix or f"nc-{secrets.token_hex(4)}-"
    states = [_State(target=t, nonce=f"{prefix}{index:x}") for index, t in enumerate(targets)]
    if not states:
        return []
    workers = max(1, min(max_parallel, len(states)))
    before = pods() if pods is not None else None

    def in_parallel(
        groups: Mapping[Endpoint, list[T]],
        work: Callable[[ProbeClient, Endpoint, list[T]], None],
        state_of: Callable[[T], _State],
    ) -> None:
        def could_not_ask(group: list[T], exc: ProbeCallError) -> None:
            for item in group:
                state = state_of(item)
                state.error = state.error or str(exc)

        calls_in_parallel(client, groups, work, could_not_ask, max_parallel=workers)

    def itself(state: _State) -> _State:
        return state

    # Before any traffic, one call per container: a node's own addresses where it is the source
    # of host-network exchanges (its stack may use any of them), and the capture watching every
    # exchange towards it (the nonces share the sweep's prefix), read once at the end.
    budget = _capture_budget([t for t in targets if t.capture], timeouts, workers)
    captures: dict[Endpoint, str] = {}
    sources = _by((s for s in states if s.target.source_is_node), lambda s: s.target.source)
    watched = _by((s for s in states if s.target.capture), lambda s: s.target.destination)

    def prepare(own: ProbeClient, endpoint: Endpoint, _group: list[_State]) -> None:
        requests: list[dict[str, Any]] = []
        if endpoint in sources:
            requests.append({"op": "addresses"})
        if endpoint in watched:
            requests.append({"op": "capture_start", "nonce_prefix": prefix, "timeout": budget})
        answers = iter(own.call(endpoint.pod, endpoint.container, requests))
        if endpoint in sources:
            try:
                addresses = require_ok(
                    next(answers),
                    pod=endpoint.pod,
                    container=endpoint.container,
                    what="list the node's addresses",
                )
            except ProbeCallError as exc:
                for state in sources[endpoint]:
                    state.error = state.error or str(exc)
            else:
                for state in sources[endpoint]:
                    state.own_addresses = interface_addresses(addresses)
        if endpoint in watched:
            answer = next(answers)
            if answer.get("ok"):
                captures[endpoint] = str(answer["capture_id"])
            else:
                for state in watched[endpoint]:
                    state.error = state.error or (
                        f"start packet capture: agent answered error {answer.get('error')!r} "
                        f"[pod {endpoint.pod}, container {endpoint.container}]"
                    )

    in_parallel(
        {e: sources.get(e, []) + watched.get(e, []) for e in dict.fromkeys([*sources, *watched])},
        prepare,
        itself,
    )

    def probe(
        own: ProbeClient, endpoint: Endpoint, group: list[_Work], parallel: int = PARALLEL_PROBES
    ) -> None:
        requests = [
            loss_request(w.state.target, w.state.nonce, timeouts.probe, loss_probes)
            if w.loss
            else probe_request(w.state.target, w.state.nonce, timeouts.probe)
            for w in group
        ]
        # A spread is many connections in one request: its exec lasts as long as it may.
        lasting = call_budget(requests, parallel) + timeouts.exec_overhead
        answers = own.call(
            endpoint.pod,
            endpoint.container,
            requests,
            parallel=parallel,
            timeout=max(timeouts.exec_budget(len(requests), parallel), lasting),
        )
        for work, answer in zip(group, answers, strict=True):
            work.state.take(answer, loss=work.loss, where=endpoint)
            if answer.get("relay_error"):  # the edge server was not asked: no verdict
                work.state.error = f"the edge server could not be asked: {answer['relay_error']}"

    def measure(
        batch: list[_State], parallel: int, before: Mapping[Endpoint, ProbeResponse] | None = None
    ) -> None:
        """One round of loss measurements (one batch per source), between two readings of
        what each destination's listener dropped itself (the first one read here unless
        given; the second only where a measurement lost probes: elsewhere there is nothing to
        explain)."""
        if before is None:
            before = read_drops(client, _by(batch, lambda s: s.target.destination), workers)
        in_parallel(
            _by((_Work(s, loss=True) for s in batch), lambda w: w.state.target.source),
            lambda own, endpoint, group: probe(own, endpoint, group, parallel),
            lambda w: w.state,
        )
        lossy = [s for s in batch if s.lost_probes]
        after = read_drops(client, _by(lossy, lambda s: s.target.destination), workers)
        for state in batch:
            end = state.target.destination
            theirs = drops_between(before.get(end), after.get(end), state.target.proto)
            # And what the measuring socket dropped itself (this end fell behind).
            mine = (state.loss or {}).get("socket_drops")
            known = [n for n in (theirs, mine) if isinstance(n, int)]
            state.endpoint_drops = sum(known) if known else None

    def probe_rounds(phase: list[_State]) -> None:
        def one_round() -> list[_State]:
            work = [_Work(s) for s in phase if s.pending]
            in_parallel(_by(work, lambda w: w.state.target.source), probe, lambda w: w.state)
            return [s for s in phase if s.pending]

        # Pass one is the first round; pass two the later ones, for what still fails.
        if one_round() and timeouts.reach_attempts > 1:
            try:
                for attempt in Retrying(
                    retry=retry_if_exception_type(_StillFailing),
                    stop=stop_after_attempt(timeouts.reach_attempts - 1),
                    wait=wait_exponential(multiplier=0.5, max=2.0),
                ):
                    with attempt:
                        if one_round():
                            raise _StillFailing
            except RetryError:
                pass  # bounded: what still fails after reach_attempts tries is a verdict

    def collect(own: ProbeClient, endpoint: Endpoint, group: list[_State]) -> None:
        answered = [s.nonce for s in group if s.response.get("ok")]
        capture_id = captures.get(endpoint) if any(s.target.capture for s in group) else None
        queries = collect_queries(
            prefix,
            capture_id,
            answered,
            [s.nonce for s in group if s.response.get("ok") and s.target.capture],
            timeouts.capture_wait,
        )
        answers = own.call(endpoint.pod, endpoint.container, queries)
        seen = require_ok(
            answers[0], pod=endpoint.pod, container=endpoint.container, what="read records"
        )
        records = by_nonce(seen.get("records", []))
        packets: dict[str, list[Mapping[str, Any]]] = {}
        capture_error = None
        if capture_id is not None:
            if answers[1].get("ok"):
                packets = by_nonce(answers[1].get("packets", []))
            else:
                capture_error = str(answers[1].get("error"))
        for state in group:
            state.records = list(records.get(state.nonce, []))
            state.packets = list(packets.get(state.nonce, []))
            state.capture_error = capture_error

    # Two phases: first the exchanges a capture watches, whose captures are then read (and so
    # stopped); only then the rest, 1 MiB transfers and full-size packets among them, whose
    # floods of small ACKs would otherwise crowd the sniffers' sockets and cost captured packets.
    # Then the loss measurements, in a round of their own: a hundred probes an exchange, which
    # no sniffer should parse and no transfer or spread should compete with for the listeners.
    captured = [s for s in states if s.target.capture and s.error is None]
    uncaptured = [s for s in states if not s.target.capture and s.error is None]
    probe_rounds(captured)
    in_parallel(
        _by(
            (s for s in captured if s.error is None and s.target.asks_destination),
            lambda s: s.target.destination,
        ),
        collect,
        itself,
    )
    probe_rounds(uncaptured)
    for state in states:
        # An exchange never answered has its verdict; its loss would say nothing more.
        state.wants_loss = (
            loss_probes > 0 and state.target.measures_loss and bool(state.response.get("ok"))
        )
    measured = [s for s in states if s.measuring]
    # The phase's records, and (its traffic done) what the measured destinations dropped
    # themselves so far, at once.
    with ThreadPoolExecutor(max_workers=1) as reader:
        reading = reader.submit(
            read_drops, client, _by(measured, lambda s: s.target.destination), workers
        )
        in_parallel(
            _by(
                (s for s in uncaptured if s.error is None and s.target.asks_destination),
                lambda s: s.target.destination,
            ),
            collect,
            itself,
        )
        dropped_before = reading.result()
    if measured:
        measure(measured, PARALLEL_PROBES, dropped_before)
    for _ in range(LOSS_REMEASURES):
        # Probes lost while the destination dropped some itself: measure again, calmer.
        doubtful = [s for s in measured if s.doubtful]
        if not doubtful:
            break
        for state in doubtful:
            state.measure_again()
        measure(doubtful, LOSS_CALM_PARALLEL)
    for state in states:
        if state.error is None:
            state.exchange = state.build_exchange()
    missed = [s for s in states if s.error is None and _witness_missed(s.exchange)]
    if recapture and missed:
        again = run_sweep(
            client,
            [s.target for s in missed],
            max_parallel=max_parallel,
            recapture=False,
            loss_probes=0,
        )
        for state, second in zip(missed, again, strict=True):
            state.nonce = second.nonce
            state.error = second.error
            if second.exchange is not None and state.exchange is not None:
                state.exchange = merge_looks(state.exchange, second.exchange)
    after = pods() if pods is not None and before is not None else None
    if before is not None and after is not None:
        changed = changed_pods(before, after)
        for state in states:
            # A Service's or port's backends too: one taken away cannot answer its share.
            why = why_lost(state.target.pods, before, changed)
            if why is not None:  # the cause, also of an exec that failed because of it
                state.error = f"{why} (during the reachability sweep)"
    return [
        Outcome(
            target=state.target,
            nonce=state.nonce,
            attempts=state.attempts,
            exchange=state.exchange if state.error is None else None,
            first_error=state.first_error,
            error=state.error,
            max_attempts=timeouts.reach_attempts,
            allowed_sources=state.allowed_sources(),
        )
        for state in states
    ]


# --- once per run ------------------------------------------------------------------------------


def sweep_once(
    run: RunInfo,
    items: Iterable[Any],
    probe_map: ProbeMap,
    client: ProbeClient,
    *,
    pods: Callable[[], Mapping[str, PodLife] | None] | None = None,
) -> Sweep:
    """Plan every swept item and probe every target, on the first call in the whole run (any
    process); later calls read the result back. A sweep that failed is not repeated: every
    later caller gets the same `SweepError`. ``pods``: see `run_sweep`."""

    def compute() -> Sweep:
        started = monotonic()
        plans, targets = plan_for_items(items, probe_map)
        outcomes = run_sweep(client, targets, pods=pods)
        return Sweep(
            items=plans,
            outcomes={o.target.key: o for o in outcomes},
            seconds=round(monotonic() - started, 3),
        )

    return once_data(
        run,
        SWEEP_RECORD,
        compute,
        Sweep,
        lambda cause: SweepError(f"the reachability sweep failed: {cause}"),
    )


def outcomes_for_item(
    sweep: Sweep, item: Any, probe_map: ProbeMap, client: ProbeClient
) -> tuple[list[Outcome], Unplanned | None]:
    """The outcomes of ``item``'s targets from the sweep, or why it has none. An item the sweep
    did not plan (a correct run never leaves one) is planned and swept on its own now."""
    plan = sweep.items.get(str(item.nodeid))
    if plan is None:
        found = plan_item(item, probe_map)
        if found is None:
            raise ValueError(f"{item.nodeid} carries no {SWEEP_MARKER} marker")
        plan, targets = found
        extra = {o.target.key: o for o in run_sweep(client, targets)}
        sweep = Sweep(items={plan.nodeid: plan}, outcomes={**sweep.outcomes, **extra})
    if plan.unplanned is not None:
        return [], plan.unplanned
    return [sweep.outcomes[key] for key in plan.keys], None
