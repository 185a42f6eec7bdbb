"""Traffic for the pair checks: one two-pass reachability sweep per run, shared by the items.

A check declares its exchanges with the marker ``@pytest.mark.swept_by(planner)``:
``planner(params, probe_map)`` turns one test item's parameters into the `Target`s it needs
(or `Unplanned` with the reason it has none). The sweep plans every selected item once, then
probes every target at once:

1. pass one, breadth-first: one try per target, every source container's targets in one agent
   ``call`` batch, the batches of all source containers concurrently (bounded thread pool);
2. pass two: only the failed targets are tried again, in rounds, until
   ``Timeouts.reach_attempts`` tries in all, with tenacity-bounded waits between rounds.

Captures run on the destinations across both passes, and the listener records and captures
are read back once at the end. The result (`Sweep`: each item's plan and each target's
`Outcome`) is computed once per run (`conformance.kit.runstate.once`) and read back by xdist
workers. What the outcomes mean is judged elsewhere, in one place for every check
(`conformance.kit.verdicts`).
"""

from __future__ import annotations

import json
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from time import monotonic
from typing import Any

import pytest
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from conformance.kit.deploy import PodLife, changed_pods, why_lost
from conformance.kit.errors import ProbeCallError, SweepError
from conformance.kit.parallel import in_parallel as calls_in_parallel
from conformance.kit.probe_client import (
    ProbeClient,
    ProbeResponse,
    address_of_family,
    canonical_ip,
    require_ok,
)
from conformance.kit.probes import ROLE_HOSTPROBE, ROLE_PEER, ROLE_PROBE, Probe, ProbeMap
from conformance.kit.runstate import RunInfo, once
from conformance.kit.serial import JSONData
from conformance.kit.settings import Timeouts
from conformance.probe_agent import call_budget

#: The marker a check carries when its exchanges come from the sweep.
MARKER = "swept_by"
#: Concurrent agent calls of a sweep (one per source or destination container).
MAX_PARALLEL_CALLS = 16
#: Exchanges one source container runs at once (inside one agent call).
PARALLEL_PROBES = 32
#: The agent bounds one capture at this many seconds.
MAX_CAPTURE_SECONDS = 300.0
#: The run-state record of the sweep.
RECORD = "reachability"
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
        return (self.source.pod, *ends, *self.unwanted_servers)

    @property
    def asks_destination(self) -> bool:
        """The destination's agent is asked what it recorded (an exchange with one agent)."""
        return (
            self.kind == KIND_EXCHANGE and self.servers is None and bool(self.destination.container)
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
            return f"{self.proto} spread of up to {self.max_tries} connections"
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


#: ``planner(params, probe_map)``: the targets of one test item from its parameters.
Planner = Callable[[Mapping[str, Any], ProbeMap], "Sequence[Target] | Unplanned"]


@dataclass(frozen=True)
class Exchange(JSONData):
    """What one probed exchange showed, from both ends."""

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


# --- planning ----------------------------------------------------------------------------------


def swept_by(planner: Planner) -> pytest.MarkDecorator:
    """The ``swept_by`` marker carrying ``planner``, to decorate a check with.

    (``pytest.mark.swept_by(planner)`` would not do: pytest takes a lone callable argument for
    the function to decorate, hence ``with_args``.)"""
    return pytest.mark.swept_by.with_args(planner)


def planner_of(item: Any) -> Planner | None:
    """The planner an item's ``swept_by`` marker names (None when it has no such marker).
    Items are read duck-typed, so plain objects do in unit tests."""
    get_marker = getattr(item, "get_closest_marker", None)
    marker = get_marker(MARKER) if get_marker is not None else None
    if marker is None or not marker.args:
        return None
    planner: Planner = marker.args[0]
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
    planned = planner(params, probe_map)
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
) -> Exchange:
    """The `Exchange` from the client's last response and what the destination recorded for the
    exchange's nonce (listener records; captured packets, None without a capture)."""
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
    return Exchange(
        attempts=attempts,
        client_response=response,
        listener_peers=tuple(sorted(peers)),
        captured_sources=tuple(sorted(sources)),
        capture_error=capture_error,
        captured=packets is not None,
        recorded=target.asks_destination,
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

    @property
    def pending(self) -> bool:
        if self.error is not None:
            return False
        if self.target.settled_by_one_try:
            return self.attempts == 0
        return not self.response.get("ok")

    def allowed_sources(self) -> tuple[str, ...] | None:
        allowed = self.target.allowed_sources
        if allowed is None:
            return None
        return tuple(sorted(set(allowed) | set(self.own_addresses)))


def _by(
    states: Iterable[_State], key: Callable[[_State], Endpoint]
) -> dict[Endpoint, list[_State]]:
    groups: dict[Endpoint, list[_State]] = {}
    for state in states:
        groups.setdefault(key(state), []).append(state)
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
) -> list[Outcome]:
    """Probe every target: pass one (one try each), pass two (retries of the failed ones, up to
    ``reach_attempts`` tries in all), then read back listener records and captures.

    An exchange that was answered but is missing from the destination's capture or listener
    records is sent once more (with ``recapture``) under fresh captures, and that second look is
    the one judged (`Exchange.captures` says so): a sniffer or raw socket on a saturated node
    drops packets when its socket buffer fills. Where another host answers in the
    destination's place, the second look misses it too, and that is the verdict.

    Agent calls go out one batch per container, ``max_parallel`` containers at a time, each
    through its own API client; inside a source's batch the agent runs `PARALLEL_PROBES`
    exchanges at once. A container that cannot be asked (`ProbeCallError`) makes its targets'
    outcomes carry ``error``; nothing else is retried or hidden.

    With ``pods`` (the probe pods' lives, `conformance.kit.deploy.pod_lives`), the pods are
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
        groups: Mapping[Endpoint, list[_State]],
        work: Callable[[ProbeClient, Endpoint, list[_State]], None],
    ) -> None:
        def could_not_ask(group: list[_State], exc: ProbeCallError) -> None:
            for state in group:
                state.error = state.error or str(exc)

        calls_in_parallel(client, groups, work, could_not_ask, max_parallel=workers)

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
    )

    def probe(own: ProbeClient, endpoint: Endpoint, group: list[_State]) -> None:
        requests = [probe_request(s.target, s.nonce, timeouts.probe) for s in group]
        # A spread is many connections in one request: its exec lasts as long as it may.
        lasting = call_budget(requests, PARALLEL_PROBES) + timeouts.exec_overhead
        answers = own.call(
            endpoint.pod,
            endpoint.container,
            requests,
            parallel=PARALLEL_PROBES,
            timeout=max(timeouts.exec_budget(len(requests), PARALLEL_PROBES), lasting),
        )
        for state, answer in zip(group, answers, strict=True):
            state.attempts += 1
            state.response = answer
            if answer.get("relay_error"):  # the edge server was not asked: no verdict
                state.error = f"the edge server could not be asked: {answer['relay_error']}"
            if state.attempts == 1 and not answer.get("ok"):
                state.first_error = _error_text(answer)

    def probe_rounds(phase: list[_State]) -> None:
        def one_round() -> list[_State]:
            in_parallel(_by((s for s in phase if s.pending), lambda s: s.target.source), probe)
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
            state.exchange = exchange_of(
                state.target,
                attempts=state.attempts,
                response=state.response,
                records=records.get(state.nonce, []),
                packets=packets.get(state.nonce, []) if state.target.capture else None,
                capture_error=capture_error if state.target.capture else None,
            )

    # Two phases: first the exchanges a capture watches, whose captures are then read (and so
    # stopped); only then the rest, 1 MiB transfers and full-size packets among them, whose
    # floods of small ACKs would otherwise crowd the sniffers' sockets and cost captured packets.
    for phase in (
        [s for s in states if s.target.capture and s.error is None],
        [s for s in states if not s.target.capture and s.error is None],
    ):
        probe_rounds(phase)
        in_parallel(
            _by(
                (s for s in phase if s.error is None and s.target.asks_destination),
                lambda s: s.target.destination,
            ),
            collect,
        )
        # Exchanges through a Service, NodePort or hostPort are judged by what the client got.
        for state in phase:
            if state.error is None and not state.target.asks_destination:
                state.exchange = exchange_of(
                    state.target,
                    attempts=state.attempts,
                    response=state.response,
                    records=[],
                    packets=None,
                    capture_error=None,
                )
    missed = [s for s in states if s.error is None and _witness_missed(s.exchange)]
    if recapture and missed:
        again = run_sweep(
            client, [s.target for s in missed], max_parallel=max_parallel, recapture=False
        )
        for state, second in zip(missed, again, strict=True):
            state.nonce = second.nonce
            state.error = second.error
            if second.exchange is not None:
                state.exchange = replace(second.exchange, captures=2)
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

    return once(
        run,
        RECORD,
        compute,
        encode=Sweep.to_dict,
        decode=Sweep.from_dict,
        error=lambda cause: SweepError(f"the reachability sweep failed: {cause}"),
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
            raise ValueError(f"{item.nodeid} carries no {MARKER} marker")
        plan, targets = found
        extra = {o.target.key: o for o in run_sweep(client, targets)}
        sweep = Sweep(items={plan.nodeid: plan}, outcomes={**sweep.outcomes, **extra})
    if plan.unplanned is not None:
        return [], plan.unplanned
    return [sweep.outcomes[key] for key in plan.keys], None
