"""The probe agent's Service operations (issue 16): listener replies naming their server,
``spread`` over a virtual address, ``resolve`` through the pod's own resolver, ``env`` and
``set_ready`` with the readiness ``ping``. Real agents on loopback; ``resolve`` through a
resolver needs private namespaces (root): ``tests/lab/test_probe_agent_resolver.py``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from running_agents import RunningAgent, free_port_pair, nonce, round_robin, start_agent

from conformance.probe_agent import protocol as agent_protocol
from conformance.probe_agent import services as agent_services


@contextmanager
def agent_named(workdir: Path, name: str) -> Iterator[RunningAgent]:
    tcp_port, udp_port = free_port_pair()
    agent = start_agent(workdir, name, tcp_port=tcp_port, udp_port=udp_port)
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture(scope="module")
def backends(workdir: Path) -> Iterator[tuple[RunningAgent, RunningAgent]]:
    """Two agents, as the endpoints of one Service."""
    with agent_named(workdir, "backend-1") as one, agent_named(workdir, "backend-2") as two:
        yield one, two


def spread_request(port: int, expect: list[str], **fields: object) -> dict[str, object]:
    return {
        "op": "spread",
        "proto": "tcp",
        "host": "127.0.0.1",
        "port": port,
        "nonce": nonce(),
        "expect_servers": expect,
        "max_tries": 20,
        "timeout": 2,
        **fields,
    }


# --- listeners name their server --------------------------------------------------------------


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_connect_answers_which_server_answered(
    backends: tuple[RunningAgent, RunningAgent], proto: str
) -> None:
    one, _ = backends
    port = one.tcp_port if proto == "tcp" else one.udp_port
    answer = one.ok(
        {"op": "connect", "proto": proto, "host": "127.0.0.1", "port": port, "nonce": nonce()}
    )
    assert answer["server"] == "backend-1"
    assert answer["peer_seen"] == "127.0.0.1"


# --- spread -------------------------------------------------------------------------------------


def test_spread_stops_once_every_expected_server_answered(
    backends: tuple[RunningAgent, RunningAgent],
) -> None:
    one, two = backends
    with round_robin([one.tcp_port, two.tcp_port]) as port:
        answer = one.ok(spread_request(port, ["backend-1", "backend-2"], parallel=1))
    assert answer["tries"] == 2, answer
    assert answer["servers"] == {"backend-1": 1, "backend-2": 1}
    assert answer["peers"] == {"backend-1": ["127.0.0.1"], "backend-2": ["127.0.0.1"]}
    assert answer["missing"] == []
    assert answer["errors"] == {}


def test_spread_makes_every_try_when_a_server_never_answers(
    backends: tuple[RunningAgent, RunningAgent],
) -> None:
    one, two = backends
    with round_robin([one.tcp_port, two.tcp_port]) as port:
        answer = one.ok(spread_request(port, ["backend-1", "ghost"], max_tries=12, parallel=4))
    assert answer["tries"] == 12
    assert sum(answer["servers"].values()) == 12
    assert answer["missing"] == ["ghost"]


def test_spread_without_expected_servers_makes_every_try(
    backends: tuple[RunningAgent, RunningAgent],
) -> None:
    one, _ = backends
    answer = one.ok(spread_request(one.tcp_port, [], max_tries=7, parallel=3))
    assert answer["tries"] == 7
    assert answer["servers"] == {"backend-1": 7}


def test_spread_over_udp(backends: tuple[RunningAgent, RunningAgent]) -> None:
    one, _ = backends
    answer = one.ok(spread_request(one.udp_port, ["backend-1"], proto="udp", parallel=1))
    assert answer["servers"] == {"backend-1": 1}
    assert answer["tries"] == 1


def test_spread_counts_failed_tries_by_errno(backends: tuple[RunningAgent, RunningAgent]) -> None:
    one, _ = backends
    closed, _ = free_port_pair()
    answer = one.ok(spread_request(closed, ["backend-1"], max_tries=5))
    assert answer["tries"] == 5
    assert answer["servers"] == {}
    assert answer["missing"] == ["backend-1"]
    assert answer["errors"] == {"ECONNREFUSED": 5}
    assert len(answer["error_examples"]) == 3


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"max_tries": 0}, "'max_tries' must be between 1"),
        ({"max_tries": agent_protocol.MAX_SPREAD_TRIES + 1}, "'max_tries' must be between 1"),
        ({"parallel": 33}, "'parallel' must be between 1 and 32"),
        ({"expect_servers": "backend-1"}, "'expect_servers' must be a list"),
        ({"expect_servers": [""]}, "'expect_servers' must be a list"),
        ({"nonce": "n" * 124}, "holds at most 123"),
        ({"proto": "icmp"}, "'proto' must be 'tcp' or 'udp'"),
    ],
)
def test_spread_refuses_bad_fields(
    backends: tuple[RunningAgent, RunningAgent], fields: dict[str, object], error: str
) -> None:
    one, _ = backends
    answer = one.one(spread_request(one.tcp_port, ["backend-1"], **fields))
    assert answer["ok"] is False, answer
    assert error in answer["error"]


def test_spread_budget_covers_its_waves_and_is_bounded() -> None:
    request = {"op": "spread", "timeout": 2, "max_tries": 10, "parallel": 4}
    assert agent_protocol.request_wait(request) == 6.0  # 3 waves of 2 s
    huge = {"op": "spread", "timeout": 5, "max_tries": 4096, "parallel": 1}
    assert agent_protocol.request_wait(huge) == agent_protocol.SPREAD_SECONDS + 5
    assert agent_protocol.request_wait({"op": "spread", "max_tries": "x"}) == 0.0
    assert agent_protocol.call_budget([request], 1) == agent_protocol.CALL_MARGIN + 6.0


# --- env, set_ready and the readiness ping ------------------------------------------------------


def test_env_answers_the_variables_with_a_prefix(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NETCONFORM_PROBES_SERVICE_HOST", "10.96.0.7")
    monkeypatch.setenv("NETCONFORM_PROBES_SERVICE_PORT", "80")
    monkeypatch.setenv("OTHER_SERVICE_HOST", "10.96.0.8")
    with agent_named(workdir, "env-agent") as agent:
        variables = agent.ok({"op": "env", "prefix": "NETCONFORM_PROBES_"})["variables"]
        missing = agent.one({"op": "env"})
    assert variables == {
        "NETCONFORM_PROBES_SERVICE_HOST": "10.96.0.7",
        "NETCONFORM_PROBES_SERVICE_PORT": "80",
    }
    assert missing["ok"] is False
    assert "missing field 'prefix'" in missing["error"]


def test_set_ready_flips_what_the_readiness_ping_says(
    backends: tuple[RunningAgent, RunningAgent],
) -> None:
    _, two = backends
    assert two.ok({"op": "info"})["ready"] is True
    assert two.ping_cli() == 0
    try:
        assert two.ok({"op": "set_ready", "ready": False})["ready"] is False
        assert two.ok({"op": "info"})["ready"] is False
        assert two.ping_cli() == 1
        # Unready for kubelet, still serving: a stale endpoint must still answer.
        assert (
            two.ok(
                {
                    "op": "connect",
                    "proto": "tcp",
                    "host": "127.0.0.1",
                    "port": two.tcp_port,
                    "nonce": nonce(),
                }
            )["server"]
            == "backend-2"
        )
    finally:
        two.ok({"op": "set_ready", "ready": True})
    assert two.ping_cli() == 0
    bad = two.one({"op": "set_ready", "ready": "no"})
    assert bad["ok"] is False
    assert "'ready' must be true or false" in bad["error"]


# --- resolve ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"family": 5}, "'family' must be 4, 6 or 0"),
        ({"name": ""}, "'name' must be 1..253"),
        ({"name": "a b"}, "'name' must be 1..253"),
        ({"name": "x" * 254}, "'name' must be 1..253"),
    ],
)
def test_resolve_refuses_bad_fields(
    backends: tuple[RunningAgent, RunningAgent], fields: dict[str, object], error: str
) -> None:
    one, _ = backends
    answer = one.one({"op": "resolve", "name": "localhost", **fields})
    assert answer["ok"] is False, answer
    assert error in answer["error"]


def test_resolv_conf_as_kubelet_writes_it(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text(
        "# written by kubelet\nsearch ns1.svc.cluster.local svc.cluster.local cluster.local\n"
        "nameserver 10.96.0.10\noptions ndots:5\n"
    )
    assert agent_services.read_resolv_conf(str(path)) == {
        "nameservers": ["10.96.0.10"],
        "search": ["ns1.svc.cluster.local", "svc.cluster.local", "cluster.local"],
        "options": ["ndots:5"],
    }
    assert agent_services.read_resolv_conf(str(tmp_path / "missing")) is None
