"""The Service checks' kit (issue 16): the Service model and kubelet's rules
(`conformance.kit.probes.services`), the exchanges the checks plan (`conformance.kit.exchanges.service_targets`),
how they are judged (`conformance.kit.verdicts.judge`: spreads, refusals, "server S answered",
readiness), and the sweep running them against real agents on loopback."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes import client
from local_agents import LocalProbeClient
from running_agents import RunningAgent, free_port_pair, round_robin, start_agent

from conformance.kit.base.settings import Timeouts
from conformance.kit.cluster.pairs import NodePair
from conformance.kit.cluster.resolvers import cluster_domain_from_search
from conformance.kit.exchanges import readiness
from conformance.kit.exchanges.flip_outcome import Followed, ReadinessFlip
from conformance.kit.exchanges.reachability import (
    KIND_EXCHANGE,
    KIND_REFUSAL,
    KIND_SPREAD,
    Endpoint,
    Exchange,
    Outcome,
    Target,
    Unplanned,
    probe_request,
    run_sweep,
)
from conformance.kit.exchanges.readiness import endpoint_ready
from conformance.kit.exchanges.service_targets import (
    FROM_HOST,
    FROM_POD,
    cluster_ip_spread,
    hairpin_spread,
    host_port,
    node_port,
    refusal,
)
from conformance.kit.probes import client as probe_client
from conformance.kit.probes.lives import PodLife
from conformance.kit.probes.model import (
    ROLE_HOSTPORT,
    ROLE_PEER,
    Probe,
    ProbeMap,
    hostport_probe,
    planned_probes,
)
from conformance.kit.probes.podspecs import READINESS_PERIOD_FLIPPED, to_manifest
from conformance.kit.probes.services import (
    EMPTY_SERVICE,
    FAILING_CONNECTIONS_SHARE,
    HEADLESS_SERVICE,
    NODEPORT_SERVICE,
    SERVICE,
    SPREAD_CONFIDENCE,
    SPREAD_MIN_TRIES,
    ServiceFacts,
    node_port_tries,
    service_environment,
    service_names,
    service_objects,
    spread_tries,
)
from conformance.kit.verdicts.failures import Place
from conformance.kit.verdicts.judge import (
    assert_readiness_followed,
    flip_problems,
    problems,
    readiness_problems,
)

K8S_VERSION = "1.31.0"
NODES = ("node-1", "node-2", "node-3")


# --- the model -----------------------------------------------------------------------------------


def test_service_objects_are_valid_and_select_the_backends() -> None:
    services = {s.metadata.name: s for s in service_objects("ns", {"run": "r"})}
    assert list(services) == [SERVICE, HEADLESS_SERVICE, EMPTY_SERVICE, NODEPORT_SERVICE]
    for service in services.values():
        kubernetes_validate.validate(to_manifest(service), K8S_VERSION, strict=True)
        assert [(p.name, p.port, p.target_port, p.protocol) for p in service.spec.ports] == [
            ("tcp", 80, 8080, "TCP"),
            ("udp", 81, 8081, "UDP"),
        ]
    assert services[SERVICE].spec.selector == {"netconform/backend": "true"}
    assert services[EMPTY_SERVICE].spec.selector == {"netconform/backend": "none"}
    assert services[HEADLESS_SERVICE].spec.cluster_ip == "None"
    assert services[NODEPORT_SERVICE].spec.type == "NodePort"
    assert {s.spec.ip_family_policy for s in services.values()} == {"PreferDualStack"}


def test_peer_probes_are_the_backends_and_the_first_one_flips_readiness() -> None:
    from conformance.kit.base.settings import Settings
    from conformance.kit.probes.podspecs import pod_spec

    settings = Settings(kubeconfig=None, context=None)
    peers = [p for p in planned_probes(list(NODES)) if p.role == ROLE_PEER]
    assert [p.readiness_target for p in peers] == [True, False, False]
    specs = [pod_spec(p, "ns", "run", settings) for p in peers]
    assert {s.metadata.labels["netconform/backend"] for s in specs} == {"true"}
    probes = [(s.spec.containers[0].readiness_probe) for s in specs]
    assert (probes[0].period_seconds, probes[0].failure_threshold) == (READINESS_PERIOD_FLIPPED, 1)
    # The other backends are Ready once their startup probe succeeded, and never probed again.
    assert probes[1:] == [None, None]
    assert all(s.spec.containers[0].startup_probe is not None for s in specs)


def test_hostport_probe_names_and_ports() -> None:
    from conformance.kit.base.settings import Settings
    from conformance.kit.probes.podspecs import hostport_pod

    assert hostport_probe("node-1").name == "hostport-node-1"
    assert hostport_probe("node-1", 2).name == "hostport-node-1-2"
    assert len(hostport_probe("n" * 70, 3).name) <= 63
    settings = Settings(kubeconfig=None, context=None)
    pod = hostport_pod(hostport_probe("node-1"), (20000, 20001), "ns", "run", settings)
    kubernetes_validate.validate(to_manifest(pod), K8S_VERSION, strict=True)
    ports = pod.spec.containers[0].ports
    assert [(p.container_port, p.host_port, p.protocol) for p in ports] == [
        (8080, 20000, "TCP"),
        (8081, 20001, "UDP"),
    ]
    clash = hostport_pod(
        hostport_probe("node-1"), (20000, 20001), "ns", "r", settings, tcp_only=True
    )
    assert [(p.host_port, p.protocol) for p in clash.spec.containers[0].ports] == [(20000, "TCP")]
    assert pod.spec.containers[0].security_context.run_as_non_root is True


@pytest.mark.parametrize(
    ("ip", "host"), [("10.96.0.12", "10.96.0.12"), ("fd00:10:96::c", "[fd00:10:96::c]")]
)
def test_service_environment_is_what_kubelet_sets(ip: str, host: str) -> None:
    assert service_environment(SERVICE, ip) == {
        "NETCONFORM_PROBES_SERVICE_HOST": ip,
        "NETCONFORM_PROBES_SERVICE_PORT": "80",
        "NETCONFORM_PROBES_SERVICE_PORT_TCP": "80",
        "NETCONFORM_PROBES_SERVICE_PORT_UDP": "81",
        "NETCONFORM_PROBES_PORT": f"tcp://{host}:80",
        "NETCONFORM_PROBES_PORT_80_TCP": f"tcp://{host}:80",
        "NETCONFORM_PROBES_PORT_80_TCP_PROTO": "tcp",
        "NETCONFORM_PROBES_PORT_80_TCP_PORT": "80",
        "NETCONFORM_PROBES_PORT_80_TCP_ADDR": ip,
        "NETCONFORM_PROBES_PORT_81_UDP": f"udp://{host}:81",
        "NETCONFORM_PROBES_PORT_81_UDP_PROTO": "udp",
        "NETCONFORM_PROBES_PORT_81_UDP_PORT": "81",
        "NETCONFORM_PROBES_PORT_81_UDP_ADDR": ip,
    }


def test_cluster_domain_and_names() -> None:
    search = ["ns1.svc.example.org", "svc.example.org", "example.org"]
    assert cluster_domain_from_search(search, "ns1") == "example.org"
    assert cluster_domain_from_search(["ns1.svc.cluster.local."], "ns1") == "cluster.local"
    assert cluster_domain_from_search(["corp.example"], "ns1") is None
    assert service_names("ns1", "cluster.local") == (
        SERVICE,
        f"{SERVICE}.ns1",
        f"{SERVICE}.ns1.svc.cluster.local",
    )


@given(backends=st.integers(1, 200), expected=st.integers(1, 200))
def test_spread_tries_bound_the_chance_of_missing_an_endpoint(backends: int, expected: int) -> None:
    expected = min(expected, backends)
    tries = spread_tries(backends, expected)
    assert 1 <= tries <= 4096
    if tries < 4096:
        # Union bound over the expected endpoints, each missed with (1 - 1/backends)^tries.
        missed = expected * (1 - 1 / backends) ** tries if backends > 1 else 0.0
        assert missed <= math.exp(-SPREAD_CONFIDENCE) * 1.0001
    assert spread_tries(backends, expected) >= spread_tries(backends, 1)


# --- planning --------------------------------------------------------------------------------------


def service_map(*, families: tuple[int, ...] = (4,), **facts: Any) -> ProbeMap:
    """Probes on three nodes with addresses, and the Services as a cluster made them."""
    probes: list[Probe] = []
    for index, probe in enumerate(planned_probes(list(NODES))):
        ips = tuple(
            f"10.244.{NODES.index(probe.node)}.{index}" if f == 4 else f"fd00::{index}"
            for f in families
        )
        probes.append(
            Probe(
                probe.name,
                probe.role,
                probe.node,
                probe.containers,
                ips,
                "",
                probe.readiness_target,
            )
        )
    for node in NODES:
        hostport = hostport_probe(node)
        probes.append(
            Probe(hostport.name, ROLE_HOSTPORT, node, hostport.containers, ("10.244.9.9",))
        )
    defaults: dict[str, Any] = {
        "cluster_ips": {SERVICE: ("10.96.0.12",), EMPTY_SERVICE: ("10.96.0.13",)},
        "node_ports": {"tcp": 30080, "udp": 30081},
        "host_ports": {f"hostport-{n}": (20000, 20001) for n in NODES},
        "internal_ips": {n: (f"172.18.0.{i + 2}",) for i, n in enumerate(NODES)},
    }
    return ProbeMap(
        namespace="ns", probes=tuple(probes), services=ServiceFacts(**{**defaults, **facts})
    )


def test_cluster_ip_spread_expects_every_backend_and_the_clients_own_ip() -> None:
    probe_map = service_map()
    (target,) = cluster_ip_spread(
        "test_cluster_ip", {"proto": "udp", "family": 4, "probe_node": "node-2"}, probe_map
    )
    assert target.kind == KIND_SPREAD
    assert (target.host, target.port, target.proto) == ("10.96.0.12", 81, "udp")
    assert target.servers == ("peer-node-1", "peer-node-2", "peer-node-3")
    assert target.allowed_sources == (probe_map.get("probe", "node-2").pod_ips[0],)
    assert target.source == Endpoint("probe-node-2", "a", "node-2")
    assert target.endpoints == target.servers  # only they may answer
    # Every connection is judged: at least SPREAD_MIN_TRIES of them, whatever answered first.
    assert (target.min_tries, target.max_tries) == (SPREAD_MIN_TRIES, spread_tries(3, 3))
    request = probe_request(target, "nc-1", 5.0)
    assert request["op"] == "spread"
    assert request["expect_servers"] == ["peer-node-1", "peer-node-2", "peer-node-3"]
    assert request["min_tries"] == SPREAD_MIN_TRIES
    assert (
        "no IPv6 cluster IP"
        in cluster_ip_spread(
            "c", {"proto": "tcp", "family": 6, "probe_node": "node-1"}, probe_map
        ).reason
    )  # type: ignore[union-attr]


def test_hairpin_refusal_and_missing_services() -> None:
    probe_map = service_map()
    params = {"proto": "tcp", "family": 4, "probe_node": "node-3"}
    (hairpin,) = hairpin_spread("test_hairpin", params, probe_map)
    assert hairpin.source.pod == "peer-node-3"
    assert hairpin.servers == ("peer-node-3",)
    assert hairpin.endpoints == ("peer-node-1", "peer-node-2", "peer-node-3")
    assert hairpin.min_tries == SPREAD_MIN_TRIES <= hairpin.max_tries
    assert hairpin.allowed_sources is None
    (refused,) = refusal("test_no_endpoints_refused", params, probe_map)
    assert (refused.kind, refused.host, refused.port) == (KIND_REFUSAL, "10.96.0.13", 80)
    assert probe_request(refused, "nc-1", 5.0)["op"] == "connect"
    bare = ProbeMap(namespace="ns", probes=probe_map.probes)
    assert isinstance(hairpin_spread("c", params, bare), Unplanned)


def test_node_port_and_host_port_targets() -> None:
    probe_map = service_map()
    params = {"proto": "udp", "family": 4, "node_pair": NodePair("node-1", "node-3")}
    (from_pod,) = node_port("c", params, probe_map, FROM_POD)
    assert (from_pod.host, from_pod.port, from_pod.kind) == ("172.18.0.4", 30081, KIND_SPREAD)
    # externalTrafficPolicy Cluster: every connection answered by an endpoint, at least one of
    # them on another node than node-3, whose NodePort is asked.
    assert from_pod.servers == ()
    assert from_pod.endpoints == ("peer-node-1", "peer-node-2", "peer-node-3")
    assert from_pod.one_of_servers == ("peer-node-1", "peer-node-2")
    assert from_pod.min_tries == from_pod.max_tries == node_port_tries(3, 1)
    assert probe_request(from_pod, "nc-1", 5.0)["expect_servers"] == []  # every try is made
    assert from_pod.destination == Endpoint(NODEPORT_SERVICE, "", "node-3")
    assert set(from_pod.pods) == {"probe-node-1", "peer-node-1", "peer-node-2", "peer-node-3"}
    (from_host,) = node_port("c", params, probe_map, FROM_HOST)
    assert from_host.source.pod == "hostprobe-node-1"
    (hostport,) = host_port("c", params, probe_map, FROM_POD)
    assert (hostport.host, hostport.port, hostport.servers) == (
        "172.18.0.4",
        20001,
        ("hostport-node-3",),
    )
    assert not hostport.asks_destination
    skipped = service_map(node_port_skip="the API server refused a NodePort Service")
    assert node_port("c", params, skipped, FROM_POD) == Unplanned(
        "the API server refused a NodePort Service"
    )
    no_v6 = node_port("c", {**params, "family": 6}, service_map(families=(4, 6)), FROM_POD)
    assert isinstance(no_v6, Unplanned)
    assert "no IPv6 InternalIP" in no_v6.reason


# --- verdicts ------------------------------------------------------------------------------------


def outcome_of(
    target: Target, response: dict[str, Any], allowed: tuple[str, ...] | None = None
) -> Outcome:
    exchange = Exchange(
        attempts=1,
        client_response={"ok": True, **response},
        listener_peers=(),
        captured_sources=(),
        captured=False,
        recorded=False,
    )
    return Outcome(
        target=target, nonce="nc-1", attempts=1, exchange=exchange, allowed_sources=allowed
    )


def spread_target(**fields: Any) -> Target:
    defaults: dict[str, Any] = {
        "check": "test_cluster_ip",
        "proto": "tcp",
        "family": 4,
        "source": Endpoint("probe-node-1", "a", "node-1"),
        "destination": Endpoint(SERVICE, "", ""),
        "host": "10.96.0.12",
        "port": 80,
        "capture": False,
        "kind": KIND_SPREAD,
        "servers": ("peer-node-1", "peer-node-2"),
        "max_tries": 40,
    }
    return Target(**{**defaults, **fields})


def test_a_spread_holds_when_every_endpoint_answered_seeing_the_client() -> None:
    answered = {
        "tries": 5,
        "servers": {"peer-node-1": 3, "peer-node-2": 2},
        "peers": {"peer-node-1": ["10.244.0.2"], "peer-node-2": ["10.244.0.2"]},
        "errors": {},
    }
    assert problems(outcome_of(spread_target(), answered, ("10.244.0.2",))) == []
    masqueraded = {
        **answered,
        "peers": {"peer-node-1": ["10.244.0.1"], "peer-node-2": ["10.244.0.2"]},
    }
    assert problems(outcome_of(spread_target(), masqueraded, ("10.244.0.2",))) == [
        "peer-node-1 saw source ['10.244.0.1']"
    ]
    missing = {**answered, "servers": {"peer-node-1": 5}}
    (found,) = problems(outcome_of(spread_target(), missing))
    assert found == "peer-node-2 never answered in 5 connections (answered: peer-node-1 5)"


def test_every_connection_of_a_spread_is_judged() -> None:
    """A connection through a cluster IP, hairpin or NodePort that failed is a broken rule,
    even when every endpoint answered the others; only the readiness flip explains one."""
    reset = {
        "tries": 40,
        "servers": {"peer-node-1": 20, "peer-node-2": 8},
        "errors": {"ECONNREFUSED": 12},
        "error_examples": ["tcp 10.96.0.12 port 80: connection refused"],
    }
    (found,) = problems(outcome_of(spread_target(), reset))
    assert found.startswith("12 of 40 connections failed, each a broken connection through ")
    assert "failed: ECONNREFUSED 12 (first: tcp 10.96.0.12 port 80: connection refused)" in found
    assert problems(outcome_of(spread_target(), reset), explained="the readiness flip") == []
    assert flip_problems(outcome_of(spread_target(), reset)) == []


def test_only_the_services_endpoints_may_answer_a_spread() -> None:
    target = spread_target(endpoints=("peer-node-1", "peer-node-2"))
    stray = {"tries": 40, "servers": {"peer-node-1": 20, "peer-node-2": 19, "intruder": 1}}
    assert problems(outcome_of(target, stray)) == [
        "intruder, not an endpoint of netconform-probes, answered 1 of 40 connections "
        "(answered: intruder 1, peer-node-1 20, peer-node-2 19)"
    ]


def test_a_node_port_answering_only_from_local_endpoints_fails_every_time() -> None:
    """externalTrafficPolicy Cluster: the node asked forwards to endpoints on other nodes too;
    one answering only from its own endpoint fails, whatever the chance."""
    target = spread_target(
        servers=(),
        endpoints=("peer-node-1", "peer-node-2", "peer-node-3"),
        one_of_servers=("peer-node-1", "peer-node-2"),
        destination=Endpoint(NODEPORT_SERVICE, "", "node-3"),
        min_tries=40,
    )
    local_only = {"tries": 40, "servers": {"peer-node-3": 40}}
    assert problems(outcome_of(target, local_only)) == [
        "none of peer-node-1 and peer-node-2 answered in 40 connections (answered: peer-node-3 40)"
    ]
    cluster = {"tries": 40, "servers": {"peer-node-3": 14, "peer-node-1": 26}}
    assert problems(outcome_of(target, cluster)) == []
    assert node_port_tries(3, 1) == SPREAD_MIN_TRIES  # (1/3)^40 is far below 1e-6
    assert node_port_tries(2, 1) == SPREAD_MIN_TRIES
    assert node_port_tries(100, 99) > SPREAD_MIN_TRIES  # (99/100)^t < 1e-6 needs t >= 1375
    assert (99 / 100) ** node_port_tries(100, 99) < 1e-6


def test_the_spread_minimum_catches_a_service_resetting_30_percent() -> None:
    assert SPREAD_MIN_TRIES == 39
    assert (1 - FAILING_CONNECTIONS_SHARE) ** SPREAD_MIN_TRIES < 1e-6
    assert (1 - FAILING_CONNECTIONS_SHARE) ** (SPREAD_MIN_TRIES - 1) >= 1e-6


def test_a_spread_fails_when_an_unready_endpoint_answers() -> None:
    target = spread_target(servers=("peer-node-2",), unwanted_servers=("peer-node-1",))
    stale = {"tries": 9, "servers": {"peer-node-1": 4, "peer-node-2": 5}}
    assert problems(outcome_of(target, stale)) == [
        "peer-node-1 (not ready) answered 4 of 9 connections (answered: peer-node-1 4, "
        "peer-node-2 5)"
    ]
    assert problems(outcome_of(target, {"tries": 9, "servers": {"peer-node-2": 9}})) == []
    assert probe_request(target, "nc-1", 5)["expect_servers"] == ["peer-node-2", "peer-node-1"]


@pytest.mark.parametrize(
    ("response", "found"),
    [
        ({"ok": False, "errno": "ECONNREFUSED", "error": "refused", "seconds": 0.004}, []),
        ({"ok": False, "errno": "EHOSTUNREACH", "error": "unreachable", "seconds": 1.9}, []),
        # After 3 s of ARP: refused, but not at once.
        (
            {"ok": False, "errno": "EHOSTUNREACH", "error": "No route to host", "seconds": 3.07},
            [
                "not refused at once: EHOSTUNREACH after 3.1s (at once is within 2s; a "
                "refusal this late is a dead end, e.g. ARP giving up): No route to host"
            ],
        ),
        (
            {"ok": False, "errno": "ECONNREFUSED", "error": "refused"},
            ["refused (ECONNREFUSED), but the agent did not say how long it took"],
        ),
        (
            {"ok": False, "errno": "ETIMEDOUT", "error": "connect timed out after 5.0s"},
            ["not refused: the connection timed out (connect timed out after 5.0s)"],
        ),
        (
            {"ok": True, "server": "peer-node-1"},
            ["peer-node-1 answered, although the Service has no ready endpoint"],
        ),
    ],
)
def test_a_service_without_endpoints_must_refuse(
    response: dict[str, Any], found: list[str]
) -> None:
    target = spread_target(kind=KIND_REFUSAL, servers=None, host="10.96.0.13")
    outcome = outcome_of(target, {})
    exchange = Exchange(1, response, (), (), captured=False, recorded=False)
    assert problems(Outcome(target, "nc-1", 1, exchange)) == found
    assert outcome.target.settled_by_one_try


def test_an_exchange_through_a_node_port_must_be_answered_by_a_backend() -> None:
    target = spread_target(kind=KIND_EXCHANGE, servers=("hostport-node-2",), max_tries=0)
    assert problems(outcome_of(target, {"server": "hostport-node-2", "peer_seen": "x"})) == []
    assert problems(outcome_of(target, {"server": "someone-else"})) == [
        "answered by someone-else, not by hostport-node-2"
    ]
    assert problems(outcome_of(target, {})) == [
        "answered by something that did not say who it is, not by hostport-node-2"
    ]


def readiness_flip(**followed: Any) -> ReadinessFlip:
    target = spread_target(servers=("peer-node-2",), unwanted_servers=("peer-node-1",))
    clean = outcome_of(target, {"tries": 40, "servers": {"peer-node-2": 40}})
    back_target = spread_target(servers=("peer-node-1",))
    back = outcome_of(back_target, {"tries": 2, "servers": {"peer-node-1": 1, "peer-node-2": 1}})
    values: dict[str, Any] = {
        "node": "node-1",
        "family": 4,
        "stopped_after": 0.8,
        "back_after": 1.1,
        "unready": clean,
        "ready": back,
        "rounds_unready": 2,
        "rounds_ready": 1,
    }
    return ReadinessFlip(
        backend="peer-node-1",
        node="node-1",
        bound=10.0,
        slice_unready_after=1.5,
        slice_ready_after=1.2,
        followed=(Followed(**{**values, **followed}),),
    )


def test_readiness_followed_and_not() -> None:
    properties: list[tuple[str, object]] = []
    assert_readiness_followed("rule", readiness_flip(), "node-1", 4, properties)
    assert properties[0][0] == "netconform.readiness"
    assert readiness_problems(readiness_flip(stopped_after=None), "node-1", 4)[0].startswith(
        "new connections still reached the unready peer-node-1 in a round started 10s or more"
    )
    assert readiness_problems(readiness_flip(back_after=None), "node-1", 4)[0].startswith(
        "peer-node-1 did not answer again, not even in a round started 10s or more after"
    )
    with pytest.raises(pytest.fail.Exception, match="endpoints MUST follow"):
        assert_readiness_followed(
            "endpoints MUST follow", readiness_flip(stopped_after=None), "node-1", 4, []
        )
    with pytest.raises(pytest.skip.Exception, match="no IPv6"):
        assert_readiness_followed(
            "r", readiness_flip(unplanned=Unplanned("no IPv6 cluster IP")), "node-1", 4, []
        )


def test_a_round_that_started_before_the_bound_never_decides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Rounds of 12 s against a bound of 10 s: the data plane catches up during the first one
    # (a spread started before it never reaches the endpoint); the second, started after the
    # bound, decides. The clock is the test's own.
    clock = [100.0]
    rounds: list[float] = []
    target = spread_target(servers=("peer-node-1",))

    def sweep(_agents: object, targets: list[Target]) -> list[Outcome]:
        rounds.append(clock[0])
        clock[0] += 12.0
        servers = {"peer-node-1": 1} if len(rounds) > 1 else {"peer-node-2": 40}
        return [outcome_of(t, {"tries": 40, "servers": servers}) for t in targets]

    monkeypatch.setattr(readiness, "monotonic", lambda: clock[0])
    monkeypatch.setattr(readiness, "run_sweep", sweep)
    monkeypatch.setattr(readiness, "ROUND_PAUSE", 0.0)
    found = readiness._rounds(
        None,  # type: ignore[arg-type]
        {("node-1", 4): target},
        lambda o: not problems(o),
        bound=10.0,
        started=100.0,
    )
    assert rounds == [100.0, 112.0]
    assert found[("node-1", 4)][1:] == (24.0, 2)
    # Never back: the round started after the bound is the last.
    rounds.clear()
    clock[0] = 100.0
    never = readiness._rounds(
        None,  # type: ignore[arg-type]
        {("node-1", 4): target},
        lambda o: False,
        bound=10.0,
        started=100.0,
    )
    assert rounds == [100.0, 112.0]
    assert never[("node-1", 4)][1:] == (None, 2)


def test_endpoint_ready_reads_the_slices() -> None:
    def slice_with(ready: bool | None) -> client.V1EndpointSlice:
        return client.V1EndpointSlice(
            address_type="IPv4",
            endpoints=[
                client.V1Endpoint(
                    addresses=["10.244.0.5"],
                    conditions=client.V1EndpointConditions(ready=ready),
                    target_ref=client.V1ObjectReference(kind="Pod", name="peer-node-1"),
                )
            ],
        )

    assert endpoint_ready({"s": slice_with(True)}, "peer-node-1") is True
    assert endpoint_ready({"s": slice_with(None)}, "peer-node-1") is True
    assert endpoint_ready({"s": slice_with(False)}, "peer-node-1") is False
    assert endpoint_ready({"s": slice_with(True)}, "peer-node-2") is None


# --- the sweep with the real agent -----------------------------------------------------------------


@pytest.fixture
def backends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, RunningAgent]]:
    """Agents "backend-1" and "backend-2" (their pod names), asked by `LocalProbeClient`."""
    monkeypatch.setattr(probe_client, "agent_socket", lambda c: str(tmp_path / f"{c}.sock"))
    agents = {}
    try:
        for name in ("backend-1", "backend-2"):
            tcp, udp = free_port_pair()
            agents[name] = start_agent(tmp_path, name, tcp_port=tcp, udp_port=udp)
        yield agents
    finally:
        for agent in agents.values():
            agent.stop()


#: The client of the local spreads: the first backend's agent.
SOURCE = Endpoint("backend-1", "backend-1", "here")


def local_client() -> LocalProbeClient:
    return LocalProbeClient(client.CoreV1Api(client.ApiClient()), "ns", Timeouts(probe=2.0))


def both_backends(port: int) -> Target:
    """A spread over both local backends behind ``port`` (a round-robin forwarder)."""
    return spread_target(
        source=SOURCE, host="127.0.0.1", port=port, servers=("backend-1", "backend-2")
    )


def test_service_exchanges_through_the_sweep(backends: dict[str, RunningAgent]) -> None:
    local, one, two = local_client(), backends["backend-1"], backends["backend-2"]
    closed, _ = free_port_pair()
    with round_robin([one.tcp_port, two.tcp_port]) as port:
        targets = [
            both_backends(port),
            spread_target(
                check="test_readiness",
                source=SOURCE,
                host="127.0.0.1",
                port=port,
                servers=("backend-1",),
                unwanted_servers=("backend-2",),
            ),
            spread_target(
                check="test_refused",
                source=SOURCE,
                host="127.0.0.1",
                port=closed,
                kind=KIND_REFUSAL,
            ),
            spread_target(
                check="test_node_port",
                source=SOURCE,
                host="127.0.0.1",
                port=two.udp_port,
                proto="udp",
                kind=KIND_EXCHANGE,
                servers=("backend-1",),
            ),
        ]
        outcomes = {o.target.check: o for o in run_sweep(local, targets)}
    assert all(o.error is None for o in outcomes.values()), outcomes
    assert problems(outcomes["test_cluster_ip"]) == []
    assert outcomes["test_refused"].attempts == 1
    assert problems(outcomes["test_refused"]) == []
    (stale,) = problems(outcomes["test_readiness"])
    assert stale.startswith("backend-2 (not ready) answered")
    assert problems(outcomes["test_node_port"]) == ["answered by backend-2, not by backend-1"]
    assert outcomes["test_node_port"].attempts == 1  # answered: not tried again


def test_a_backend_taken_away_under_the_sweep_makes_its_spreads_could_not_test(
    backends: dict[str, RunningAgent],
) -> None:
    local, one, two = local_client(), backends["backend-1"], backends["backend-2"]
    lives = {name: PodLife(name, {name: 0}) for name in backends}
    looks = [lives, {"backend-1": lives["backend-1"]}]  # backend-2 deleted meanwhile
    only_one = replace(both_backends(one.tcp_port), check="test_one", servers=("backend-1",))
    with round_robin([one.tcp_port, two.tcp_port]) as port:
        swept = run_sweep(local, [both_backends(port), only_one], pods=lambda: looks.pop(0))
    outcomes = {o.target.check: o for o in swept}
    assert outcomes["test_cluster_ip"].error == (
        "probe pod backend-2 was deleted or evicted meanwhile (during the reachability sweep)"
    )
    assert outcomes["test_one"].error is None
    assert problems(outcomes["test_one"]) == []


def test_checks_from_host_networks_say_so_beside_checks_from_pods() -> None:
    from conformance import test_hostport, test_services
    from conformance.kit.run.cases import (
        PAIRS_ALL,
        PAIRS_CROSS_NODE,
        item_place,
        place_attribute,
    )

    for module, from_hosts, from_pods in (
        (
            test_services,
            test_services.test_node_port_from_hosts,
            test_services.test_node_port_from_pods,
        ),
        (
            test_hostport,
            test_hostport.test_host_port_from_hosts,
            test_hostport.test_host_port_from_pods,
        ),
    ):
        assert place_attribute(from_hosts, module, "PAIRS", PAIRS_ALL) == PAIRS_CROSS_NODE
        assert place_attribute(from_hosts, module, "SOURCE_KIND", "pod") == "host"
        assert place_attribute(from_pods, module, "PAIRS", PAIRS_ALL) == PAIRS_ALL
        assert place_attribute(from_pods, module, "SOURCE_KIND", "pod") == "pod"
        assert place_attribute(from_pods, module, "PROTOCOLS", None) == ("tcp", "udp")
    place = item_place(
        "test_node_port_from_hosts",
        {"proto": "tcp", "family": 4, "node_pair": NodePair("node-1", "node-2")},
        "host",
    )
    assert place.properties() == [
        ("netconform.check", "test_node_port_from_hosts"),
        ("netconform.family", "ipv4"),
        ("netconform.protocol", "tcp"),
        ("netconform.source", "node-1"),
        ("netconform.destination", "node-2"),
        ("netconform.source_kind", "host"),
    ]
    # A per-node check from a host network: its node is the source and the destination.
    on_host = item_place(
        "test_node_to_pod", {"proto": "udp", "family": 6, "probe_node": "n1"}, "host"
    )
    assert on_host.properties() == [
        ("netconform.check", "test_node_to_pod"),
        ("netconform.family", "ipv6"),
        ("netconform.protocol", "udp"),
        ("netconform.node", "n1"),
        ("netconform.source", "n1"),
        ("netconform.destination", "n1"),
        ("netconform.source_kind", "host"),
    ]
    assert Place.from_dict(on_host.to_dict()) == on_host
    assert item_place("test_dns", {"cluster_node": "n2"}).to_dict() == {
        "check": "test_dns",
        "node": "n2",
    }
