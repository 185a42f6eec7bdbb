"""The edge checks' pure parts: ``--external-host`` parsing, the outside host's addresses and
relays (against agents answering offline), the targets each check plans, what a check reports
of the source the outside host saw, and the server command the suite prints."""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from local_agents import OfflineProbeClient

from conformance.kit.base.settings import (
    DEFAULT_EDGE_PORT,
    ExternalHost,
    Timeouts,
    check_external_hosts,
    parse_external_host,
)
from conformance.kit.exchanges.edge import (
    NAT_NODE,
    NAT_NONE,
    NAT_OTHER,
    SOURCE_NAT_PROPERTY,
    SOURCE_SEEN_PROPERTY,
    EdgeAddress,
    EdgeHost,
    EdgeRun,
    NoVerdict,
    edge_planned_by,
    edge_server_command,
    edge_server_instructions,
    find_relays,
    nat_of,
    node_port_from_outside,
    plan_edge_items,
    pod_to_outside,
    resolve_outside,
)
from conformance.kit.exchanges.reachability import Endpoint, Target, Unplanned, probe_request
from conformance.kit.probes.client import ExecResult
from conformance.kit.probes.model import ROLE_PEER, ROLE_PROBE, Probe, ProbeContainer, ProbeMap
from conformance.kit.probes.services import NODEPORT_SERVICE, ServiceFacts
from conformance.kit.verdicts.judge import failure_summary

# --- --external-host ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port", "family"),
    [
        ("192.0.2.10", "192.0.2.10", DEFAULT_EDGE_PORT, 4),
        ("192.0.2.10:9000", "192.0.2.10", 9000, 4),
        ("2001:db8::10", "2001:db8::10", DEFAULT_EDGE_PORT, 6),
        ("[2001:db8::10]", "2001:db8::10", DEFAULT_EDGE_PORT, 6),
        ("[2001:db8::10]:9000", "2001:db8::10", 9000, 6),
        ("edge.example.com", "edge.example.com", DEFAULT_EDGE_PORT, None),
        ("edge.example.com.:65534", "edge.example.com", 65534, None),
        ("edge-1", "edge-1", DEFAULT_EDGE_PORT, None),
    ],
)
def test_external_host_parses(text: str, host: str, port: int, family: int | None) -> None:
    parsed = parse_external_host(text)
    assert (parsed.host, parsed.port, parsed.family) == (host, port, family)
    assert parsed.control_port == port + 1
    assert parse_external_host(str(parsed)) == parsed


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "is not an IPv4 or IPv6 address or a host name"),
        ("192.0.2.10:", "names no port"),
        ("192.0.2.10:0", "must be in [1, 65534]"),
        ("192.0.2.10:65535", "must be in [1, 65534]"),
        ("192.0.2.10:http", "is not a whole number"),
        ("[192.0.2.10]:80", "in brackets is not an IPv6 address"),
        ("[2001:db8::10]80", "is not [IPv6] or [IPv6]:PORT"),
        ("2001:db8::zz", "is not an IPv6 address"),
        ("edge_host", "is not an IPv4 or IPv6 address or a host name"),
        ("-edge", "is not an IPv4 or IPv6 address or a host name"),
        ("1.2.3", "is not an IPv4 or IPv6 address or a host name"),
        ("999.1.1.1", "is not an IPv4 or IPv6 address or a host name"),
    ],
)
def test_external_host_refuses(text: str, why: str) -> None:
    with pytest.raises(pytest.UsageError, match="--external-host") as raised:
        parse_external_host(text)
    assert why in str(raised.value)


def test_external_hosts_one_address_per_family_and_one_port() -> None:
    v4, v6 = parse_external_host("192.0.2.10"), parse_external_host("2001:db8::10")
    assert check_external_hosts([v4, v6, v4]) == (v4, v6)
    with pytest.raises(pytest.UsageError, match="both IPv4 addresses"):
        check_external_hosts([v4, parse_external_host("192.0.2.11")])
    with pytest.raises(pytest.UsageError, match="one edge server, one port"):
        check_external_hosts([v4, parse_external_host("[2001:db8::10]:9000")])


# --- a probe map and agents that answer offline ------------------------------------------------

NODES = ("node-1", "node-2", "node-3")


def probe_map(*, families: Sequence[int] = (4,), services: bool = True) -> ProbeMap:
    probes = []
    for index, node in enumerate(NODES, start=1):
        ips = tuple(
            f"10.244.{index}.5" if family == 4 else f"fd00:10:244:{index}::5" for family in families
        )
        peer_ips = tuple(ip[:-1] + "6" for ip in ips)
        pair = (ProbeContainer("a", 8080, 8081), ProbeContainer("b", 8082, 8083))
        probes.append(Probe(f"probe-{node}", ROLE_PROBE, node, pair, ips))
        probes.append(
            Probe(f"peer-{node}", ROLE_PEER, node, (ProbeContainer("agent", 8080, 8081),), peer_ips)
        )
    addresses = {
        node: tuple(
            f"172.18.0.{i + 1}" if family == 4 else f"fd00:172:18::{i + 1}" for family in families
        )
        for i, node in enumerate(NODES, start=1)
    }
    facts = ServiceFacts(node_ports={"tcp": 30080, "udp": 30081}, internal_ips=addresses)
    return ProbeMap(
        namespace="netconform-test",
        probes=tuple(probes),
        node_addresses=addresses,
        services=facts if services else None,
    )


class ScriptedAgents(OfflineProbeClient):
    """Answers every agent request from ``answer(pod, request)``; records what was asked."""

    def __init__(self, answer: Any) -> None:
        super().__init__(None, "netconform-test", Timeouts())  # type: ignore[arg-type]
        self.answer = answer
        self.asked: list[tuple[str, dict[str, Any]]] = []

    def answer_exec(
        self, pod: str, command: list[str], stdin: str | None, timeout: float
    ) -> ExecResult:
        body = json.loads(stdin or "[]")
        requests = body["requests"] if isinstance(body, dict) else body
        responses = []
        for request in requests:
            self.asked.append((pod, request))
            responses.append({"op": request.get("op"), **self.answer(pod, request)})
        return ExecResult(json.dumps(responses), "", 0)


def given(*texts: str) -> tuple[ExternalHost, ...]:
    return tuple(parse_external_host(text) for text in texts)


def test_literals_are_taken_as_given_and_names_resolved_by_the_first_probe_pod() -> None:
    def answer(pod: str, request: Mapping[str, Any]) -> dict[str, Any]:
        assert request == {"op": "resolve", "name": "edge.example", "family": 0}
        assert pod == "probe-node-1"
        return {"ok": True, "addresses": ["192.0.2.99", "2001:db8::10", "2001:db8::11"]}

    agents = ScriptedAgents(answer)
    host = resolve_outside(given("192.0.2.10", "edge.example"), probe_map(), agents)
    assert [(a.family, a.address, a.name) for a in host.addresses] == [
        (4, "192.0.2.10", ""),  # the literal wins its family
        (6, "2001:db8::10", "edge.example"),
    ]
    assert host.resolve_errors == ()
    assert host.addresses[0].label == "external host 192.0.2.10"
    assert host.addresses[1].label == "external host 2001:db8::10 (edge.example)"


def test_a_name_that_does_not_resolve_leaves_its_items_without_a_verdict() -> None:
    agents = ScriptedAgents(
        lambda pod, request: {"ok": False, "errno": "EAI_NONAME", "error": "Name unknown"}
    )
    host = resolve_outside(given("edge.example"), probe_map(), agents)
    assert host.addresses == ()
    lacking = host.lacking(4)
    assert isinstance(lacking, NoVerdict)
    assert "edge.example did not resolve in probe-node-1 (the pods' resolver): EAI_NONAME" in (
        lacking.reason
    )


def relaying(refusing: set[str]) -> ScriptedAgents:
    """Agents whose relay reaches the edge server except from the pods in ``refusing``."""

    def answer(pod: str, request: Mapping[str, Any]) -> dict[str, Any]:
        assert request["op"] == "relay"
        assert request["request"] == {"op": "info"}
        if pod in refusing:
            error = f"edge server {request['host']}:{request['port']}: ETIMEDOUT"
            return {"ok": False, "error": error, "relay_error": error}
        return {"ok": True, "edge": {"control": []}}

    return ScriptedAgents(answer)


def test_the_first_node_whose_pod_reaches_the_control_port_relays() -> None:
    host = resolve_outside(given("192.0.2.10"), probe_map(), relaying(set()))
    agents = relaying({"probe-node-1"})
    found = find_relays(host, probe_map(), agents)
    (outside,) = found.addresses
    assert outside.relay == Endpoint("probe-node-2", "a", "node-2")
    assert outside.relay_error is None
    assert {pod for pod, _ in agents.asked} == {"probe-node-1", "probe-node-2", "probe-node-3"}
    assert all(request["port"] == 18081 for _, request in agents.asked)


def test_no_relay_says_what_every_node_got() -> None:
    host = resolve_outside(given("192.0.2.10"), probe_map(), relaying(set()))
    found = find_relays(host, probe_map(), relaying({f"probe-{n}" for n in NODES}))
    (outside,) = found.addresses
    assert outside.relay is None
    assert outside.relay_error is not None
    assert outside.relay_error.startswith(
        "no probe pod got an answer from the edge server's control listener at 192.0.2.10:18081"
        " (node-1: edge server 192.0.2.10:18081: ETIMEDOUT; node-2: "
    )


# --- the targets -------------------------------------------------------------------------------


def outside_host(*addresses: str, relay: bool = True) -> EdgeHost:
    return EdgeHost(
        given=addresses,
        addresses=tuple(
            EdgeAddress(
                6 if ":" in a else 4,
                a,
                DEFAULT_EDGE_PORT,
                "",
                Endpoint("probe-node-1", "a", "node-1") if relay else None,
                None if relay else "no probe pod got an answer",
            )
            for a in addresses
        ),
    )


def params(proto: str, family: int, node: str) -> dict[str, Any]:
    return {"proto": proto, "family": family, "probe_node": node}


def test_a_pod_reaches_the_outside_host_from_every_node_any_source_allowed() -> None:
    host = outside_host("192.0.2.10")
    (target,) = pod_to_outside("c", params("udp", 4, "node-2"), probe_map(), host)  # type: ignore[misc]
    assert target == Target(
        check="c",
        proto="udp",
        family=4,
        source=Endpoint("probe-node-2", "a", "node-2"),
        destination=Endpoint("external host 192.0.2.10", "", ""),
        host="192.0.2.10",
        port=DEFAULT_EDGE_PORT,
        capture=False,
    )
    assert target.allowed_sources is None
    assert not target.asks_destination
    assert target.pods == ("probe-node-2",)
    assert probe_request(target, "nc-1", 3.0) == {
        "op": "connect",
        "proto": "udp",
        "host": "192.0.2.10",
        "port": DEFAULT_EDGE_PORT,
        "nonce": "nc-1",
        "timeout": 3.0,
    }


def test_a_family_the_outside_host_lacks_is_not_applicable() -> None:
    planned = pod_to_outside(
        "c", params("tcp", 6, "node-1"), probe_map(families=(4, 6)), outside_host("192.0.2.10")
    )
    assert isinstance(planned, Unplanned)
    assert not planned.broken
    assert planned.reason.startswith("the outside host has no IPv6 address")


def test_the_nodeport_from_outside_is_relayed_to_every_node_s_internal_ip() -> None:
    host = outside_host("2001:db8::10")
    planned = node_port_from_outside(
        "n", params("tcp", 6, "node-3"), probe_map(families=(6,)), host
    )
    (target,) = planned  # type: ignore[misc]
    assert target.relay == ("2001:db8::10", DEFAULT_EDGE_PORT + 1)
    assert target.source == Endpoint("probe-node-1", "a", "")
    assert target.destination == Endpoint(NODEPORT_SERVICE, "", "node-3")
    assert (target.host, target.port) == ("fd00:172:18::4", 30080)
    assert target.servers == ("peer-node-1", "peer-node-2", "peer-node-3")
    assert target.describe() == (
        "tcp the edge server [2001:db8::10]:18081 (asked through probe-node-1/a) -> "
        f"{NODEPORT_SERVICE} at [fd00:172:18::4]:30080"
    )
    request = probe_request(target, "nc-2", 3.0)
    assert request == {
        "op": "relay",
        "host": "2001:db8::10",
        "port": DEFAULT_EDGE_PORT + 1,
        "timeout": 8.0,
        "request": {
            "op": "connect",
            "proto": "tcp",
            "host": "fd00:172:18::4",
            "port": 30080,
            "nonce": "nc-2",
            "timeout": 3.0,
        },
    }
    # A failed NodePort from outside is counted against the NodePort's node, not the relay's.
    assert failure_summary([_failed(target)], "n").startswith("node-3 is in the 1 failed pair")


def _failed(target: Target) -> Any:
    from conformance.kit.exchanges.reachability import Outcome

    return Outcome(target=target, nonce="nc-3")


def test_without_a_relay_the_nodeport_from_outside_cannot_be_tested() -> None:
    planned = node_port_from_outside(
        "n", params("udp", 4, "node-1"), probe_map(), outside_host("192.0.2.10", relay=False)
    )
    assert planned == NoVerdict("no probe pod got an answer")


def test_nodeport_from_outside_without_services_is_not_applicable() -> None:
    planned = node_port_from_outside(
        "n", params("udp", 4, "node-1"), probe_map(services=False), outside_host("192.0.2.10")
    )
    assert isinstance(planned, Unplanned)
    assert "made no Services" in planned.reason


class Item:
    """A collected test item as the edge pass reads it."""

    def __init__(self, nodeid: str, planner: Any, values: dict[str, Any]) -> None:
        self.nodeid = nodeid
        self.callspec = type("CallSpec", (), {"params": values})()
        self._marker = edge_planned_by(planner).mark

    def get_closest_marker(self, name: str) -> Any:
        return self._marker if name == self._marker.name else None


def test_items_are_planned_skipped_or_left_without_a_verdict() -> None:

    host = outside_host("192.0.2.10", relay=False)
    items = [
        Item("t::a[tcp-node-1]", pod_to_outside, params("tcp", 4, "node-1")),
        Item("t::a[tcp-node-1]again", pod_to_outside, params("tcp", 4, "node-1")),
        Item("t::a[ipv6-tcp-node-1]", pod_to_outside, params("tcp", 6, "node-1")),
        Item("t::n[tcp-node-2]", node_port_from_outside, params("tcp", 4, "node-2")),
        Item("t::a[placeholder]", pod_to_outside, {"proto": None}),
    ]
    plans, no_verdict, targets = plan_edge_items(items, probe_map(), host)
    assert sorted(plans) == ["t::a[ipv6-tcp-node-1]", "t::a[tcp-node-1]", "t::a[tcp-node-1]again"]
    assert plans["t::a[ipv6-tcp-node-1]"].unplanned is not None
    assert no_verdict == {"t::n[tcp-node-2]": "no probe pod got an answer"}
    assert len(targets) == 1  # the same target planned twice is probed once
    round_trip = EdgeRun(host=host, no_verdict=no_verdict)
    assert EdgeRun.from_dict(json.loads(json.dumps(round_trip.to_dict()))) == round_trip


# --- what the checks report, and the command they print ----------------------------------------


def test_the_source_seen_is_the_pod_a_node_or_neither() -> None:
    nodes = {"node-1": ("172.18.0.2",), "node-2": ("172.18.0.3", "fd00:172:18::3")}
    assert nat_of("10.244.1.5", ("10.244.1.5",), nodes) == NAT_NONE
    assert nat_of("172.18.0.3", ("10.244.1.5",), nodes) == NAT_NODE
    assert nat_of("203.0.113.7", ("10.244.1.5",), nodes) == NAT_OTHER


def test_the_printed_server_command_starts_the_agent_as_the_edge_server() -> None:
    command = edge_server_command(["172.18.0.2", "fd00::2"], given("192.0.2.10", "2001:db8::10"))
    assert shlex.split(command) == [
        "python3",
        "agent.py",
        "serve",
        "--tcp-port",
        "18080",
        "--udp-port",
        "18080",
        "--socket",
        "/tmp/netconform-edge.sock",
        "--edge-control",
        "192.0.2.10:18081",
        "--edge-control",
        "[2001:db8::10]:18081",
        "--allow-connect",
        "172.18.0.2,fd00::2",
    ]
    unnamed = edge_server_instructions(["172.18.0.2"])
    assert "--edge-control ADDR:18081 --allow-connect 172.18.0.2" in unnamed
    assert unnamed.endswith("then name it with --external-host ADDR")
    assert "copy the directory " in unnamed
    assert "conformance/probe_agent there" in unnamed


def test_the_source_seen_travels_from_the_properties_to_a_valid_summary() -> None:
    import jsonschema

    from conformance.kit.reporting.results import SummaryCollector, build_summary, summary_schema

    collector = SummaryCollector()
    egress = "conformance/test_edge.py::test_pod_reaches_external_host[tcp-node-2]"
    icmp = "conformance/test_edge.py::test_pod_reaches_external_host[icmp-node-2]"
    seen = {SOURCE_SEEN_PROPERTY: "172.18.0.3", SOURCE_NAT_PROPERTY: NAT_NODE}
    collector.record_phase(egress, "call", "passed", 0.1, rule="R", properties=seen)
    collector.record_phase(icmp, "call", "passed", 0.1, rule="R", properties={})
    by_id = {result.nodeid: result for result in collector.results()}
    assert by_id[egress].source_seen == {"address": "172.18.0.3", "nat": "node"}
    assert by_id[icmp].source_seen is None
    summary = build_summary(list(by_id.values()), facts=None, flaky={}, session_duration=1.0)
    tests_schema = {**summary_schema()["$defs"]["test"], "$defs": summary_schema()["$defs"]}
    for test in summary["tests"]:
        jsonschema.Draft202012Validator(tests_schema).validate(json.loads(json.dumps(test)))
    wrong = {**summary["tests"][0], "source_seen": {"address": "x", "nat": "maybe"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(tests_schema).validate(wrong)
