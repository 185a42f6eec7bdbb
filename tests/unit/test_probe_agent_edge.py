"""The agent as the edge server (``serve --edge-control``) and the ``relay`` op that asks it,
run for real on loopback: a probe agent relays requests to an edge agent's TCP control
listener, which connects only where ``--allow-connect`` lets it."""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from polling import eventually

from conformance.probe_agent import AGENT_FILE
from conformance.probe_agent import client as agent_client
from conformance.probe_agent import edge as agent_edge
from conformance.probe_agent import protocol as agent_protocol

AGENT = AGENT_FILE.resolve()
Response = dict[str, Any]


def free_port() -> int:
    """A port free for TCP and UDP on every address right now."""
    for _ in range(20):
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as tcp:
            tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            tcp.bind(("::", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp:
                udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                try:
                    udp.bind(("::", port))
                except OSError:
                    continue
                return port
    raise AssertionError("no port free for both TCP and UDP")


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    socket_path: Path
    log_path: Path
    port: int

    def call(self, *requests: object) -> list[Response]:
        return agent_client.send_requests(str(self.socket_path), requests, 30.0)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def serve(workdir: Path, name: str, *extra: str) -> Served:
    port = free_port()
    socket_path = workdir / f"{name}.sock"
    log_path = workdir / f"{name}.log"
    command = [sys.executable, str(AGENT), "serve", "--tcp-port", str(port)]
    command += ["--udp-port", str(port), "--socket", str(socket_path), *extra]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
    served = Served(process, socket_path, log_path, port)

    def answers() -> bool:
        if process.poll() is not None:
            pytest.fail(f"{name} exited {process.returncode}: {served.log()}")
        try:
            return bool(served.call({"op": "info"})[0]["ok"])
        except OSError:
            return False

    assert eventually(answers, 15), served.log()
    return served


def stop(served: Served) -> None:
    served.process.terminate()
    served.process.wait(10)


@dataclass
class EdgePair:
    probe: Served  # a probe pod's agent: relays
    edge: Served  # the edge server
    control: int  # its control port


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgePair]:
    workdir = tmp_path_factory.mktemp("edge")
    probe = serve(workdir, "probe")
    control = free_port()
    edge = serve(
        workdir,
        "edge",
        "--edge-control",
        f"127.0.0.1:{control}",
        "--allow-connect",
        "127.0.0.1",
        "--allow-connect",
        "::1/128,192.0.2.0/24",
    )
    try:
        yield EdgePair(probe, edge, control)
    finally:
        stop(probe)
        stop(edge)


def nonce() -> str:
    return f"nc-{secrets.token_hex(6)}"


def relay(pair: EdgePair, request: Response, **fields: Any) -> Response:
    wrapped = {"op": "relay", "host": "127.0.0.1", "port": pair.control, "request": request}
    (answer,) = pair.probe.call({**wrapped, **fields})
    return answer


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_relayed_connect_is_made_by_the_edge_server(pair: EdgePair, proto: str) -> None:
    token = nonce()
    connect = {"op": "connect", "proto": proto, "host": "127.0.0.1", "port": pair.probe.port}
    answer = relay(pair, {**connect, "nonce": token})
    assert answer["ok"], answer
    assert answer["op"] == "relay"
    assert answer["relayed_by"] == f"127.0.0.1:{pair.control}"
    assert answer["peer_seen"] == "127.0.0.1"
    # The probe agent's own listener recorded the edge server's connection.
    (seen,) = pair.probe.call({"op": "seen", "nonce": token, "wait": 2})
    assert [r["proto"] for r in seen["records"]] == [proto]


def test_a_relayed_failure_is_the_network_s_and_not_a_relay_error(pair: EdgePair) -> None:
    closed = free_port()
    request = {"op": "connect", "proto": "tcp", "host": "127.0.0.1", "port": closed}
    answer = relay(pair, {**request, "nonce": nonce()})
    assert answer["ok"] is False
    assert answer["errno"] == "ECONNREFUSED"
    assert "relay_error" not in answer, answer


@pytest.mark.parametrize(
    ("request_", "why"),
    [
        (
            {"op": "connect", "proto": "tcp", "host": "10.1.2.3", "port": 80},
            "10.1.2.3 is outside the edge server's --allow-connect "
            "(127.0.0.1/32, ::1/128, 192.0.2.0/24)",
        ),
        (
            {"op": "connect", "proto": "tcp", "host": "localhost", "port": 80},
            "the edge server connects to IP addresses only, not 'localhost'",
        ),
        ({"op": "write_file", "path": "/tmp/x", "size": 1, "seed": "a"}, "not 'write_file'"),
        ({"op": "spread", "proto": "tcp", "host": "127.0.0.1", "port": 1}, "not 'spread'"),
        ({"op": "transfer", "host": "127.0.0.1", "port": 1}, "not 'transfer'"),
        ({"op": "capture_start", "nonce_prefix": "nc-"}, "not 'capture_start'"),
    ],
)
def test_the_edge_server_refuses_what_it_is_not_for(
    pair: EdgePair, request_: Response, why: str
) -> None:
    answer = relay(pair, {**request_, "nonce": nonce()})
    assert answer["ok"] is False
    assert why in answer["relay_error"], answer
    assert answer["relay_error"].startswith(f"edge server 127.0.0.1:{pair.control} refused: ")


def test_a_relay_cannot_relay(pair: EdgePair) -> None:
    inner = {"op": "relay", "host": "127.0.0.1", "port": 1, "request": {"op": "info"}}
    answer = relay(pair, inner)
    assert answer["ok"] is False
    assert "a relayed request cannot be a relay itself" in answer["error"]


def test_edge_info_tells_only_what_a_relay_needs(pair: EdgePair) -> None:
    answer = relay(pair, {"op": "info"})
    assert answer["ok"], answer
    assert answer["edge"] == {
        "control": [f"127.0.0.1:{pair.control}"],
        "allow_connect": ["127.0.0.1/32", "::1/128", "192.0.2.0/24"],
    }
    assert answer["ports"] == {"tcp": pair.edge.port, "udp": pair.edge.port}
    assert not {"hostname", "env", "resolver", "pid"} & set(answer), answer


def test_an_edge_server_that_does_not_answer_is_a_relay_error(pair: EdgePair) -> None:
    closed = free_port()
    wrapped = {"op": "relay", "host": "127.0.0.1", "port": closed, "request": {"op": "info"}}
    (answer,) = pair.probe.call(wrapped)
    assert answer["ok"] is False
    assert answer["errno"] == "ECONNREFUSED"
    assert answer["relay_error"].startswith(f"edge server 127.0.0.1:{closed}: ECONNREFUSED")


def test_the_control_listener_is_bound_to_the_given_address_only(pair: EdgePair) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        with pytest.raises(ConnectionRefusedError):
            sock.connect(("::1", pair.control))


EDGE_ONLY = ("--edge-control", "127.0.0.1:1")


def test_edge_control_needs_allow_connect(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(AGENT), "serve", "--socket", str(tmp_path / "x.sock"), *EDGE_ONLY],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert b"--edge-control needs --allow-connect" in done.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.10:18081", ("192.0.2.10", 18081)),
        ("[2001:db8::10]:18081", ("2001:db8::10", 18081)),
    ],
)
def test_host_port_parsing(text: str, expected: tuple[str, int]) -> None:
    assert agent_edge.parse_host_port(text) == expected


@pytest.mark.parametrize(
    "text", ["192.0.2.10", "2001:db8::10:18081", "edge.example:18081", "192.0.2.10:0", "[::1]:x"]
)
def test_host_port_parsing_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"ADDR:PORT|not an IP address|brackets"):
        agent_edge.parse_host_port(text)


def test_relay_budget_covers_the_relayed_request() -> None:
    assert agent_protocol.request_wait({"op": "relay", "timeout": 12}) == 12
    assert agent_protocol.request_wait({"op": "relay"}) == agent_protocol.RELAY_TIMEOUT
