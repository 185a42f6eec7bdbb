"""The probe agent, run for real as a subprocess on loopback, without root (traffic goes only to
loopback). Where it needs root, without NET_RAW and in network namespaces:
``tests/lab/test_probe_agent_netns.py``.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from running_agents import (
    AGENT,
    CLIENT,
    NEEDS_NET_RAW,
    RunningAgent,
    free_port_pair,
    nonce,
    start_agent,
)

from conformance.probe_agent import AGENT_DIRECTORY, agent_files
from conformance.probe_agent import client as agent_client
from conformance.probe_agent import netinfo as agent_netinfo
from conformance.probe_agent import protocol as agent_protocol
from conformance.probe_agent import services as agent_services

# ---------------------------------------------------------------------------------------------
# Static properties of the shipped file.


#: The oldest Python the agent promises to run on (its docstring and docs/architecture.md say so).
OLDEST_PYTHON = "3.8"
VERMIN = Path(sys.executable).with_name("vermin")


def run_vermin(*paths: Path) -> subprocess.CompletedProcess[str]:
    if not VERMIN.exists():
        pytest.fail("vermin is missing: install the dev extra (.venv/bin/pip install -e .[dev])")
    return subprocess.run(
        [str(VERMIN), "--no-tips", "--violations", f"-t={OLDEST_PYTHON}-", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


#: Every file shipped to the pods (the ConfigMap's keys): the agent's modules and its client.
SHIPPED = [AGENT_DIRECTORY / name for name in agent_files()]


def test_agent_runs_on_the_oldest_python_it_promises() -> None:
    """vermin knows library APIs (``str.removeprefix`` is 3.9), not only grammar; it checks
    every shipped file."""
    assert {AGENT, CLIENT, AGENT_DIRECTORY / "protocol.py"} <= set(SHIPPED)
    done = run_vermin(*SHIPPED)
    assert done.returncode == 0, (
        f"the agent needs a newer Python than {OLDEST_PYTHON}:\n{done.stdout}"
    )
    assert f"The oldest Python it supports is {OLDEST_PYTHON}" in AGENT.read_text()
    assert f"**{OLDEST_PYTHON} or newer**" in CLIENT.read_text()


def test_the_client_and_the_agent_share_their_bounds_and_socket() -> None:
    assert agent_client.MAX_CONTROL_BYTES == agent_protocol.MAX_CONTROL_BYTES
    assert agent_client.MAX_BATCH_RESPONSE_BYTES == agent_protocol.MAX_BATCH_RESPONSE_BYTES
    assert agent_client.DEFAULT_SOCKET == agent_protocol.DEFAULT_SOCKET
    assert agent_client.DEFAULT_CALL_TIMEOUT >= agent_protocol.MAX_CAPTURE_SECONDS


def test_vermin_catches_a_newer_api(tmp_path: Path) -> None:
    """The check above can fail: a 3.9 string method is a violation for 3.8."""
    newer = tmp_path / "newer.py"
    newer.write_text('print("nc-1".removeprefix("nc-"))\n')
    done = run_vermin(newer)
    assert done.returncode != 0
    assert "removeprefix" in done.stdout


@pytest.mark.parametrize("module", SHIPPED, ids=lambda path: path.name)
def test_agent_is_stdlib_only_and_parses_as_python_3_8(module: Path) -> None:
    """Imports at import time name the standard library only (scapy is imported inside the
    first capture); siblings are imported relatively (they are a package in the repository
    and a plain directory in a pod)."""
    source = module.read_text()
    tree = ast.parse(source, feature_version=(3, 8))
    top_level: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_level.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            top_level.add(node.module.split(".")[0])
    assert top_level <= set(sys.stdlib_module_names) | {"__future__"}, top_level
    assert "from __future__ import annotations" in source
    docstring = ast.get_docstring(tree)
    assert docstring, f"{module.name} says its job in its docstring"


def test_the_client_imports_none_of_the_agent() -> None:
    """Every exec starts the client: it stays one small file."""
    tree = ast.parse(CLIENT.read_text())
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level]


def test_the_kit_imports_only_the_protocol() -> None:
    """The kit (and so the suite) loads the agent's protocol, not the program."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import conformance.kit as kit\n"
        "for module in pkgutil.walk_packages(kit.__path__, 'conformance.kit.'):\n"
        "    importlib.import_module(module.name)\n"
        "print(sorted(name for name in sys.modules if name.startswith('conformance.probe_agent')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(done.stdout.replace("'", '"')) == [
        "conformance.probe_agent",
        "conformance.probe_agent.protocol",
    ]


def test_deterministic_bytes_match_expected_digest() -> None:
    for size in (0, 1, 65536, 65537, 200_001):
        data = agent_protocol.deterministic_bytes("seed-1", size)
        assert len(data) == size
        assert hashlib.sha256(data).hexdigest() == agent_protocol.expected_sha256("seed-1", size)
    assert agent_protocol.deterministic_bytes("a", 64) != agent_protocol.deterministic_bytes(
        "b", 64
    )


def test_call_without_serve_process_exits_non_zero(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(CLIENT), "call", "--socket", str(tmp_path / "absent.sock")],
        input=b'[{"op": "info"}]',
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 3
    assert b"no answer from a serve process" in done.stderr
    assert b"ENOENT" in done.stderr
    assert done.stdout == b""
    ping = subprocess.run(
        [sys.executable, str(CLIENT), "ping", "--socket", str(tmp_path / "absent.sock")],
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert ping.returncode == 1


def test_ping_wait_answers_once_a_late_serve_process_starts(tmp_path: Path) -> None:
    """The readiness probe's first ping runs at container start, before the agent listens."""
    socket_path = tmp_path / "late.sock"
    ping = subprocess.Popen(
        [sys.executable, str(CLIENT), "ping", "--socket", str(socket_path), "--wait", "20"],
        stderr=subprocess.PIPE,
    )
    tcp_port, udp_port = free_port_pair()
    agent = start_agent(tmp_path, "late", tcp_port=tcp_port, udp_port=udp_port)
    try:
        assert ping.wait(timeout=30) == 0, ping.stderr.read() if ping.stderr else ""
    finally:
        ping.kill()
        agent.stop()
    bounded = subprocess.run(
        [sys.executable, str(CLIENT), "ping", "--socket", str(socket_path), "--wait", "0.3"],
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert bounded.returncode == 1, "with no serve process, ping --wait gives up after its bound"
    assert b"no answer from a serve process" in bounded.stderr


# ---------------------------------------------------------------------------------------------
# On loopback, in this network namespace (listeners on free ports, traffic to 127.0.0.1/::1).


@pytest.fixture(scope="module")
def loopback_agent(workdir: Path) -> Iterator[RunningAgent]:
    tcp_port, udp_port = free_port_pair()
    agent = start_agent(workdir, "lo-a", tcp_port=tcp_port, udp_port=udp_port, data_dirs=[workdir])
    yield agent
    assert agent.stop() == 0, agent.log()
    assert not agent.socket_path.exists(), "serve removes its control socket on SIGTERM"


@pytest.fixture(scope="module")
def second_loopback_agent(workdir: Path) -> Iterator[RunningAgent]:
    """Another agent in the same network namespace, as container b of a pod."""
    tcp_port, udp_port = free_port_pair()
    agent = start_agent(workdir, "lo-b", tcp_port=tcp_port, udp_port=udp_port, data_dirs=[workdir])
    yield agent
    agent.stop()


def test_info(loopback_agent: RunningAgent) -> None:
    info = loopback_agent.ok({"op": "info"})
    assert info["pid"] == loopback_agent.process.pid
    assert info["netns"] == os.readlink("/proc/self/ns/net")
    # The namespace's cookie (never reused, unlike the inode): this process's own namespace.
    assert info["netns_cookie"] == agent_services.netns_cookie()
    assert isinstance(info["netns_cookie"], int)
    assert info["hostname"] == socket.gethostname()
    assert info["env"]["POD_NAME"] == "lo-a"
    assert info["env"]["POD_IP"] is None or isinstance(info["env"]["POD_IP"], str)
    assert f"0.0.0.0:{loopback_agent.tcp_port}" in info["listeners"]["tcp"]
    assert f"0.0.0.0:{loopback_agent.udp_port}" in info["listeners"]["udp"]
    assert info["ports"] == {"tcp": loopback_agent.tcp_port, "udp": loopback_agent.udp_port}


def test_addresses_include_loopback(loopback_agent: RunningAgent) -> None:
    interfaces = loopback_agent.ok({"op": "addresses"})["interfaces"]
    by_name = {entry["name"]: entry for entry in interfaces}
    assert "127.0.0.1/8" in by_name["lo"]["addresses"]
    assert by_name["lo"]["index"] == socket.if_nametoindex("lo")
    assert all(set(entry) == {"name", "index", "mac", "mtu", "addresses"} for entry in interfaces)
    assert by_name["lo"]["mtu"] == int(Path("/sys/class/net/lo/mtu").read_text())


def test_proc_fallback_agrees_with_netlink() -> None:
    # The fallback sees only the primary IPv4 address of an interface, every IPv6 one.
    netlink = {e["name"]: e for e in agent_netinfo.interfaces_from_netlink()}
    proc = {e["name"]: e for e in agent_netinfo.interfaces_from_proc()}
    assert set(netlink) == set(proc)
    for name, entry in proc.items():
        assert (entry["index"], entry["mac"], entry["mtu"]) == (
            netlink[name]["index"],
            netlink[name]["mac"],
            netlink[name]["mtu"],
        )
        assert set(entry["addresses"]) <= set(netlink[name]["addresses"])
        assert {a for a in entry["addresses"] if ":" in a} == {
            a for a in netlink[name]["addresses"] if ":" in a
        }


def test_tcp_and_udp_connect_record_the_nonce(loopback_agent: RunningAgent) -> None:
    tcp_nonce, udp_nonce = nonce(), nonce()
    tcp, udp, seen_tcp, seen_udp = loopback_agent.call(
        {
            "op": "connect",
            "proto": "tcp",
            "host": "127.0.0.1",
            "port": loopback_agent.tcp_port,
            "nonce": tcp_nonce,
            "timeout": 3,
        },
        {
            "op": "connect",
            "proto": "udp",
            "host": "127.0.0.1",
            "port": loopback_agent.udp_port,
            "nonce": udp_nonce,
            "timeout": 3,
        },
        {"op": "seen", "nonce": tcp_nonce},
        {"op": "seen", "nonce": udp_nonce},
    )
    # Timed, so that a refusal at once tells itself from one after seconds.
    assert isinstance(tcp.pop("seconds"), float)
    assert tcp == {
        "ok": True,
        "op": "connect",
        "peer_seen": "127.0.0.1",
        "local": "127.0.0.1",
        "server": "lo-a",
    }
    assert udp["ok"], udp
    assert udp["peer_seen"] == "127.0.0.1"
    assert seen_tcp["records"] == [{"proto": "tcp", "peer": "127.0.0.1", "nonce": tcp_nonce}]
    assert seen_udp["records"] == [{"proto": "udp", "peer": "127.0.0.1", "nonce": udp_nonce}]
    assert f"listener tcp nonce={tcp_nonce} peer=127.0.0.1" in loopback_agent.log()
    assert "request op=connect proto=tcp" in loopback_agent.log()


def test_ipv6_loopback_connect(loopback_agent: RunningAgent) -> None:
    if not any(":" in entry for entry in loopback_agent.ok({"op": "info"})["listeners"]["udp"]):
        pytest.skip("no IPv6 in this kernel")
    value = nonce()
    udp = loopback_agent.ok(
        {
            "op": "connect",
            "proto": "udp",
            "host": "::1",
            "port": loopback_agent.udp_port,
            "nonce": value,
        }
    )
    assert udp["peer_seen"] == "::1"
    assert loopback_agent.ok({"op": "seen", "nonce": value})["records"] == [
        {"proto": "udp", "peer": "::1", "nonce": value}
    ]


@NEEDS_NET_RAW
def test_icmp_echo_to_loopback_is_recorded(loopback_agent: RunningAgent) -> None:
    value = nonce()
    echo, seen = loopback_agent.call(
        {"op": "icmp", "host": "127.0.0.1", "nonce": value, "timeout": 3},
        {"op": "seen", "nonce": value, "wait": 2},
    )
    assert echo["ok"], echo
    assert echo["reply_from"] == "127.0.0.1"
    assert {"proto": "icmp", "peer": "127.0.0.1", "nonce": value} in seen["records"]


def test_second_agent_sees_first_agents_ports_taken(
    loopback_agent: RunningAgent, second_loopback_agent: RunningAgent
) -> None:
    value = nonce()
    taken_tcp, taken_udp, free, via_loopback = second_loopback_agent.call(
        {"op": "try_bind", "proto": "tcp", "host": "127.0.0.1", "port": loopback_agent.tcp_port},
        {"op": "try_bind", "proto": "udp", "host": "0.0.0.0", "port": loopback_agent.udp_port},
        {"op": "try_bind", "proto": "tcp", "host": "127.0.0.1", "port": 0},
        {
            "op": "connect",
            "proto": "tcp",
            "host": "127.0.0.1",
            "port": loopback_agent.tcp_port,
            "nonce": value,
        },
    )
    assert taken_tcp == {"ok": True, "op": "try_bind", "bound": False, "errno": "EADDRINUSE"}
    assert taken_udp == {"ok": True, "op": "try_bind", "bound": False, "errno": "EADDRINUSE"}
    assert free == {"ok": True, "op": "try_bind", "bound": True, "errno": None}
    assert via_loopback["peer_seen"] == "127.0.0.1"
    assert loopback_agent.ok({"op": "seen", "nonce": value})["records"] == [
        {"proto": "tcp", "peer": "127.0.0.1", "nonce": value}
    ]


def test_serve_on_taken_ports_exits_with_a_message(
    workdir: Path, loopback_agent: RunningAgent
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(AGENT),
            "serve",
            "--tcp-port",
            str(loopback_agent.tcp_port),
            "--udp-port",
            str(loopback_agent.udp_port),
            "--socket",
            str(workdir / "taken.sock"),
        ],
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 1
    assert b"serve cannot start: EADDRINUSE" in done.stderr


def test_write_and_read_file_hashes(
    workdir: Path, loopback_agent: RunningAgent, second_loopback_agent: RunningAgent
) -> None:
    path = str(workdir / "shared-file")
    written = loopback_agent.ok({"op": "write_file", "path": path, "size": 300_000, "seed": 7})
    expected = agent_protocol.expected_sha256("7", 300_000)
    assert written["sha256"] == expected
    assert written["size"] == 300_000
    read = second_loopback_agent.ok({"op": "read_file", "path": path})
    assert (read["sha256"], read["size"]) == (expected, 300_000)
    empty = loopback_agent.ok({"op": "write_file", "path": path, "size": 0, "seed": "x"})
    assert empty["sha256"] == hashlib.sha256(b"").hexdigest()
    missing = second_loopback_agent.one({"op": "read_file", "path": str(workdir / "absent")})
    assert missing["ok"] is False
    assert missing["errno"] == "ENOENT"
    assert "ENOENT" in missing["error"]


@pytest.mark.parametrize(
    ("request_body", "error_part"),
    [
        (42, "must be a JSON object"),
        ({}, "unknown op None"),
        ({"op": "teleport"}, "unknown op 'teleport'"),
        (
            {"op": "connect", "proto": "sctp", "host": "127.0.0.1", "port": 1, "nonce": "n"},
            "'proto'",
        ),
        (
            {"op": "connect", "proto": "tcp", "host": "127.0.0.1", "nonce": "n"},
            "missing field 'port'",
        ),
        (
            {"op": "connect", "proto": "tcp", "host": "127.0.0.1", "port": 70000, "nonce": "n"},
            "'port'",
        ),
        (
            {"op": "connect", "proto": "tcp", "host": "127.0.0.1", "port": 1, "nonce": "a b"},
            "'nonce'",
        ),
        (
            {
                "op": "connect",
                "proto": "tcp",
                "host": "127.0.0.1",
                "port": 1,
                "nonce": "n",
                "timeout": True,
            },
            "'timeout'",
        ),
        ({"op": "try_bind", "proto": "tcp", "host": "no-such-host", "port": 1}, "IP address"),
        ({"op": "icmp", "host": "name.invalid", "nonce": "n", "timeout": 1}, "cannot resolve"),
        ({"op": "write_file", "path": "/proc/version", "size": 1, "seed": "s"}, "outside"),
        ({"op": "write_file", "path": "/tmp/x", "size": -1, "seed": "s"}, "'size'"),
        ({"op": "write_file", "path": "/tmp/x", "size": 1, "seed": None}, "'seed'"),
        ({"op": "seen"}, "missing field 'nonce'"),
        ({"op": "capture_result", "capture_id": "cap-999"}, "unknown capture_id"),
        ({"op": "capture_start", "nonce": "n", "iface": "nosuchif0"}, "no interface"),
    ],
)
def test_bad_requests_answer_ok_false(
    loopback_agent: RunningAgent, request_body: object, error_part: str
) -> None:
    response = loopback_agent.one(request_body)
    assert response["ok"] is False
    assert error_part in response["error"]


def test_refused_connections_name_the_errno(loopback_agent: RunningAgent) -> None:
    closed_tcp, closed_udp = free_port_pair()
    tcp, udp = loopback_agent.call(
        {"op": "connect", "proto": "tcp", "host": "127.0.0.1", "port": closed_tcp, "nonce": "n"},
        {"op": "connect", "proto": "udp", "host": "127.0.0.1", "port": closed_udp, "nonce": "n"},
    )
    assert (tcp["ok"], tcp["errno"]) == (False, "ECONNREFUSED")
    assert (udp["ok"], udp["errno"]) == (False, "ECONNREFUSED")
    assert loopback_agent.ok({"op": "info"})["pid"] == loopback_agent.process.pid


def test_call_cli_round_trip_and_input_errors(loopback_agent: RunningAgent) -> None:
    value = nonce()
    batch = [
        {"op": "info"},
        {
            "op": "connect",
            "proto": "udp",
            "host": "127.0.0.1",
            "port": loopback_agent.udp_port,
            "nonce": value,
        },
        {"op": "seen", "nonce": value},
    ]
    done = loopback_agent.call_cli(json.dumps(batch).encode())
    assert done.returncode == 0, done.stderr
    info, connect, seen = json.loads(done.stdout)
    assert (info["op"], connect["peer_seen"], seen["records"]) == (
        "info",
        "127.0.0.1",
        [{"proto": "udp", "peer": "127.0.0.1", "nonce": value}],
    )
    not_json = loopback_agent.call_cli(b"{op")
    assert not_json.returncode == 2
    assert b"not JSON" in not_json.stderr
    not_list = loopback_agent.call_cli(b'"info"')
    assert not_list.returncode == 2
    single = loopback_agent.call_cli(b'{"op": "info"}')
    assert single.returncode == 0
    assert json.loads(single.stdout)[0]["op"] == "info"
    assert json.loads(loopback_agent.call_cli(b"[]").stdout) == []
    assert loopback_agent.ping_cli() == 0


def test_sigterm_stops_serve_and_removes_socket(workdir: Path) -> None:
    tcp_port, udp_port = free_port_pair()
    agent = start_agent(workdir, "short", tcp_port=tcp_port, udp_port=udp_port)
    assert agent.stop() == 0
    assert not agent.socket_path.exists()
    assert "signal 15: stopping" in agent.log()
