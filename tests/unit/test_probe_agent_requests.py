"""The probe agent's newer requests, run for real on loopback: ephemeral listener ports,
parallel batches, listener records by nonce prefix, files only under data directories, TCP
transfers and sized UDP/ICMP probes; plus the pure pieces (call budget, nonce tokens, bounds).

Traffic goes only to 127.0.0.1 and ::1.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
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

from conformance.probe_agent import captures as agent_captures
from conformance.probe_agent import client as agent_client
from conformance.probe_agent import control as agent_control
from conformance.probe_agent import listeners as agent_listeners
from conformance.probe_agent import protocol as agent_protocol


@pytest.fixture(scope="module")
def data_dir(workdir: Path) -> Path:
    path = workdir / "data"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def agent(workdir: Path, data_dir: Path) -> Iterator[RunningAgent]:
    """An agent on ports it picked itself (serve --tcp-port 0 --udp-port 0)."""
    running = start_agent(workdir, "rq", tcp_port=0, udp_port=0, data_dirs=[data_dir])
    yield running
    assert running.stop() == 0, running.log()


def ipv6_on_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Ephemeral listener ports.


def test_port_zero_picks_one_port_per_protocol_for_both_families(agent: RunningAgent) -> None:
    info = agent.ok({"op": "info"})
    tcp, udp = info["ports"]["tcp"], info["ports"]["udp"]
    assert 0 < tcp < 65536
    assert 0 < udp < 65536
    assert f"0.0.0.0:{tcp}" in info["listeners"]["tcp"]
    assert f"0.0.0.0:{udp}" in info["listeners"]["udp"]
    if ipv6_on_loopback():
        assert info["listeners"]["tcp"] == [f"0.0.0.0:{tcp}", f"[::]:{tcp}"]
        assert info["listeners"]["udp"] == [f"0.0.0.0:{udp}", f"[::]:{udp}"]
    hosts = ["127.0.0.1", "::1"] if ipv6_on_loopback() else ["127.0.0.1"]
    requests = [
        {"op": "connect", "proto": proto, "host": host, "port": port, "nonce": nonce()}
        for host in hosts
        for proto, port in (("tcp", tcp), ("udp", udp))
    ]
    for request, response in zip(requests, agent.call(*requests), strict=True):
        assert response["ok"], (request, response)
        assert response["peer_seen"] == request["host"]


def test_two_agents_on_port_zero_get_different_ports(workdir: Path, agent: RunningAgent) -> None:
    other = start_agent(workdir, "rq2", tcp_port=0, udp_port=0)
    try:
        assert other.tcp_port != agent.tcp_port
        assert other.udp_port != agent.udp_port
    finally:
        other.stop()


def test_port_zero_retries_when_ipv6_loses_the_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """The race: IPv4 got port P, something took P for IPv6 before we did; pick again."""
    real_bind = agent_listeners._bind_listener
    refused: list[int] = []

    def bind_losing_first_ipv6(family: socket.AddressFamily, kind: int, port: int) -> socket.socket:
        if family == socket.AF_INET6 and not refused:
            refused.append(port)
            raise OSError(errno.EADDRINUSE, "taken by a racing process")
        return real_bind(family, kind, port)

    monkeypatch.setattr(agent_listeners, "_bind_listener", bind_losing_first_ipv6)
    sockets = agent_listeners.open_proto_listeners("tcp", 0)
    try:
        assert refused, "the IPv6 bind was tried"
        ports = {sock.getsockname()[1] for sock in sockets}
        assert len(ports) == 1, "IPv4 and IPv6 listen on one port"
        if len(sockets) == 2:
            assert {sock.family for sock in sockets} == {socket.AF_INET, socket.AF_INET6}
    finally:
        for sock in sockets:
            sock.close()


def test_port_zero_gives_up_after_bounded_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    real_bind = agent_listeners._bind_listener
    tries: list[int] = []

    def ipv6_always_taken(family: socket.AddressFamily, kind: int, port: int) -> socket.socket:
        if family == socket.AF_INET6:
            tries.append(port)
            raise OSError(errno.EADDRINUSE, "taken")
        return real_bind(family, kind, port)

    monkeypatch.setattr(agent_listeners, "_bind_listener", ipv6_always_taken)
    with pytest.raises(OSError, match=r"EADDRINUSE|taken") as raised:
        agent_listeners.open_proto_listeners("udp", 0)
    assert raised.value.errno == errno.EADDRINUSE
    assert len(tries) == agent_protocol.EPHEMERAL_BIND_ATTEMPTS


# ---------------------------------------------------------------------------------------------
# Parallel batches.


def test_call_budget_formula() -> None:
    waits = [{"op": "connect", "timeout": 3}] * 8 + [{"op": "seen", "wait": 10}]
    total = 8 * 3 + 10
    assert agent_protocol.call_budget(waits) == 10 + total
    assert agent_protocol.call_budget(waits, 1) == 10 + total
    assert agent_protocol.call_budget(waits, 4) == pytest.approx(10 + total / 4 + 0.75 * 10)
    assert agent_protocol.call_budget(waits, 64) == pytest.approx(10 + total / 64 + 63 / 64 * 10)
    assert agent_protocol.call_budget([{"op": "info"}], 8) == 10
    assert agent_protocol.call_budget([], 8) == 10
    assert agent_protocol.call_budget([{"op": "capture_start"}] * 2, 2) == pytest.approx(10 + 15)


def test_parallel_batch_answers_in_request_order(agent: RunningAgent) -> None:
    nonces = [nonce() for _ in range(40)]
    requests = [
        {"op": "connect", "proto": "tcp" if i % 2 else "udp", "host": "127.0.0.1", "nonce": n}
        | {"port": agent.tcp_port if i % 2 else agent.udp_port}
        for i, n in enumerate(nonces)
    ]
    seen = [{"op": "seen", "nonce": n} for n in nonces]
    responses = agent_client.send_requests(str(agent.socket_path), requests, 60, parallel=16)
    assert [r["ok"] for r in responses] == [True] * 40, responses
    records = agent_client.send_requests(str(agent.socket_path), seen, 60, parallel=16)
    assert [r["records"][0]["nonce"] for r in records] == nonces


def test_parallel_batch_runs_requests_concurrently_and_a_list_does_not(
    agent: RunningAgent,
) -> None:
    """No clock: a `seen` waiting for a nonce that a later request of the same batch sends
    finds it only when the two run at the same time."""

    def batch(value: str) -> list[dict[str, object]]:
        return [
            {"op": "seen", "nonce": value, "wait": 3},
            {
                "op": "connect",
                "proto": "udp",
                "host": "127.0.0.1",
                "port": agent.udp_port,
                "nonce": value,
            },
        ]

    together = nonce()
    seen, sent = agent_client.send_requests(str(agent.socket_path), batch(together), 30, parallel=2)
    assert sent["ok"], sent
    assert seen["records"] == [{"proto": "udp", "peer": "127.0.0.1", "nonce": together}]
    one_by_one = nonce()
    seen, sent = agent_client.send_requests(str(agent.socket_path), batch(one_by_one), 30)
    assert sent["ok"], sent
    assert seen["records"] == [], "a plain list runs one request after another"


def test_call_cli_takes_a_parallel_batch(agent: RunningAgent) -> None:
    value = nonce()
    body = {
        "parallel": 4,
        "requests": [
            {"op": "info"},
            {
                "op": "connect",
                "proto": "tcp",
                "host": "127.0.0.1",
                "port": agent.tcp_port,
                "nonce": value,
            },
            {"op": "seen", "nonce": value, "wait": 2},
        ],
    }
    done = agent.call_cli(json.dumps(body).encode())
    assert done.returncode == 0, done.stderr
    info, connect, _seen = json.loads(done.stdout)
    assert (info["op"], connect["peer_seen"]) == ("info", "127.0.0.1")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"parallel": 0, "requests": []}, "'parallel' must be between 1 and 64"),
        ({"parallel": 65, "requests": []}, "'parallel' must be between 1 and 64"),
        ({"parallel": True, "requests": []}, "'parallel' must be an integer"),
        ({"parallel": 2, "requests": {"op": "info"}}, "'requests' of a batch must be a list"),
        (
            {"parallel": 2, "requests": [{"op": "info"}] * (agent_protocol.MAX_BATCH_REQUESTS + 1)},
            f"at most {agent_protocol.MAX_BATCH_REQUESTS} requests",
        ),
    ],
)
def test_bad_batches_are_refused_whole(agent: RunningAgent, body: object, reason: str) -> None:
    done = agent.call_cli(json.dumps(body).encode())
    assert done.returncode == 2
    assert reason in done.stderr.decode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(10)
        raw.connect(str(agent.socket_path))
        raw.sendall(json.dumps(body).encode())
        raw.shutdown(socket.SHUT_WR)
        answer = json.loads(raw.makefile("rb").read())
    assert len(answer) == 1
    assert answer[0]["ok"] is False
    assert reason in answer[0]["error"]


def test_responses_beyond_the_batch_byte_bound_are_dropped_not_grown() -> None:
    encoder = agent_control.ResponseBytes(limit=100)
    first = encoder.encode({"ok": True, "op": "info", "text": "x" * 50})
    second = encoder.encode({"ok": True, "op": "info", "text": "y" * 50})
    assert json.loads(first)["ok"] is True
    dropped = json.loads(second)
    assert dropped["ok"] is False
    assert "response dropped" in dropped["error"]


def test_figures_100_connects_parallel_and_sequential(agent: RunningAgent) -> None:
    """Printed figures, not asserted: 100 TCP connects as one parallel batch and as a list."""
    requests = [
        {"op": "connect", "proto": "tcp", "host": "127.0.0.1", "port": agent.tcp_port}
        | {"nonce": nonce()}
        for _ in range(100)
    ]
    started = time.monotonic()
    parallel = agent_client.send_requests(str(agent.socket_path), requests, 120, parallel=64)
    parallel_seconds = time.monotonic() - started
    started = time.monotonic()
    sequential = agent_client.send_requests(str(agent.socket_path), requests, 120)
    sequential_seconds = time.monotonic() - started
    assert all(r["ok"] for r in parallel + sequential)
    print(
        f"\n100 tcp connects on loopback: parallel 64 {parallel_seconds * 1000:.0f} ms, "
        f"sequential {sequential_seconds * 1000:.0f} ms"
    )


# ---------------------------------------------------------------------------------------------
# Listener records by nonce prefix.


@NEEDS_NET_RAW
def test_seen_by_prefix_waits_for_expected_nonces(agent: RunningAgent) -> None:
    prefix = f"{nonce()}-"
    mine = [f"{prefix}{i:02x}" for i in range(3)]
    other = nonce()
    sends = [
        {"op": "connect", "proto": "udp", "host": "127.0.0.1", "port": agent.udp_port, "nonce": n}
        for n in mine[:2]
    ]
    sends += [
        {"op": "connect", "proto": "tcp", "host": "127.0.0.1", "port": agent.tcp_port}
        | {"nonce": n}
        for n in (mine[2], other)
    ]
    sends.append({"op": "icmp", "host": "127.0.0.1", "nonce": f"{prefix}ee"})
    waiting = {"op": "seen", "nonce_prefix": prefix, "expect_nonces": mine, "wait": 10}
    answer, *sent = agent_client.send_requests(
        str(agent.socket_path), [waiting, *sends], 60, parallel=8
    )
    assert all(response["ok"] for response in sent), sent
    assert answer["missing"] == []
    found = {(r["nonce"], r["proto"]) for r in answer["records"]}
    assert {(mine[0], "udp"), (mine[1], "udp"), (mine[2], "tcp")} <= found
    assert all(r["nonce"].startswith(prefix) for r in answer["records"])
    later = agent.ok({"op": "seen", "nonce_prefix": prefix, "wait": 2})
    assert (f"{prefix}ee", "icmp") in {(r["nonce"], r["proto"]) for r in later["records"]}
    absent = f"{prefix}ff"
    partial = agent.ok(
        {"op": "seen", "nonce_prefix": prefix, "expect_nonces": [mine[0], absent], "wait": 0.3}
    )
    assert partial["missing"] == [absent]


@pytest.mark.parametrize(
    ("request_body", "error_part"),
    [
        ({"op": "seen", "nonce": "nc-1", "nonce_prefix": "nc-"}, "only one of"),
        ({"op": "seen", "nonce": "nc-1", "expect_nonces": ["nc-1"]}, "needs 'nonce_prefix'"),
        ({"op": "seen", "nonce_prefix": "nc-", "expect_nonces": ["xx-1"]}, "starting with"),
        ({"op": "seen", "nonce_prefix": 'nc-"'}, "'nonce_prefix'"),
        ({"op": "seen", "nonce_prefix": "x" * 65}, "'nonce_prefix'"),
        ({"op": "capture_start", "nonce": "nc-1", "nonce_prefix": "nc-"}, "only one of"),
        ({"op": "capture_start"}, "missing field 'nonce'"),
    ],
)
def test_bad_prefix_requests(agent: RunningAgent, request_body: object, error_part: str) -> None:
    response = agent.one(request_body)
    assert response["ok"] is False
    assert error_part in response["error"]


def test_nonce_tokens_end_where_json_and_lines_end() -> None:
    reply = b'{"nonce": "nc-run1-00ab", "peer": "10.0.0.1"}'
    assert agent_protocol.find_nonce(reply, b"nc-run1-") == "nc-run1-00ab"
    assert agent_protocol.find_nonce(b"nc-run1-7f\n\x00padding", b"nc-run1-") == "nc-run1-7f"
    assert agent_protocol.find_nonce(b"nothing here", b"nc-") is None
    assert agent_protocol.find_nonce(b"nc-" + b"a" * 300, b"nc-") == "nc-" + "a" * 125


def test_record_book_by_prefix_reads_icmp_payloads() -> None:
    book = agent_listeners.RecordBook(limit=3)
    book.add("nc-r-1", "tcp", "10.0.0.1")
    book.add_payload(b"nc-r-2\n" + bytes(200), "icmp", "10.0.0.2")
    book.add("other-3", "udp", "10.0.0.3")
    records, missing = book.find(prefix="nc-r-", expect=["nc-r-1", "nc-r-2"])
    assert missing == []
    assert records == [
        {"proto": "tcp", "peer": "10.0.0.1", "nonce": "nc-r-1"},
        {"proto": "icmp", "peer": "10.0.0.2", "nonce": "nc-r-2"},
    ]
    book.add("nc-r-4", "udp", "10.0.0.4")  # the bound pushes the oldest record out
    records, _ = book.find(prefix="nc-r-")
    assert [r["nonce"] for r in records] == ["nc-r-2", "nc-r-4"]


def test_capture_keeps_a_bounded_number_of_packets() -> None:
    capture = agent_captures.Capture("cap-1", "nc-", True, "lo")
    row = ("udp", "10.0.0.1", "10.0.0.2", "eth0", "nc-1")
    for _ in range(agent_protocol.MAX_PACKETS_PER_PREFIX_CAPTURE + 5):
        capture.add(row)
    assert len(capture.packets) == agent_protocol.MAX_PACKETS_PER_PREFIX_CAPTURE
    assert capture.dropped == 5
    exact = agent_captures.Capture("cap-2", "nc-1", False, "lo")
    for _ in range(agent_protocol.MAX_PACKETS_PER_CAPTURE + 1):
        exact.add(row)
    assert (len(exact.packets), exact.dropped) == (agent_protocol.MAX_PACKETS_PER_CAPTURE, 1)


# ---------------------------------------------------------------------------------------------
# Files only under the data directories.


def test_files_inside_the_data_directory(agent: RunningAgent, data_dir: Path) -> None:
    path = data_dir / "sub" / "file.bin"
    path.parent.mkdir()
    written = agent.ok({"op": "write_file", "path": str(path), "size": 70_000, "seed": "s1"})
    assert written["sha256"] == agent_protocol.expected_sha256("s1", 70_000)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == written["sha256"]
    read = agent.ok({"op": "read_file", "path": str(path)})
    assert (read["sha256"], read["size"]) == (written["sha256"], 70_000)
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.bin"], "no temporary left"


def test_files_outside_the_data_directory_are_refused(
    agent: RunningAgent, data_dir: Path, workdir: Path
) -> None:
    outside = workdir / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_text("keep me")
    (data_dir / "link-out").symlink_to(outside)
    (data_dir / "file-link").symlink_to(victim)
    attempts = [
        "/etc/netconform-should-not-exist",
        str(data_dir / ".." / "outside" / "escaped"),
        str(data_dir / "link-out" / "escaped"),
        "relative/path",
        str(data_dir),
        str(data_dir) + "/",
        str(outside / "victim"),
    ]
    for path in attempts:
        for request in (
            {"op": "write_file", "path": path, "size": 10, "seed": "x"},
            {"op": "read_file", "path": path},
        ):
            response = agent.one(request)
            assert response["ok"] is False, (request, response)
            assert response["errno"] == "EACCES", (request, response)
    assert not Path("/etc/netconform-should-not-exist").exists()
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert victim.read_text() == "keep me"
    read_through_link = agent.one({"op": "read_file", "path": str(data_dir / "file-link")})
    assert read_through_link["errno"] == "EACCES"
    # Writing the link's own name replaces the link inside the data directory, never its target.
    agent.ok({"op": "write_file", "path": str(data_dir / "file-link"), "size": 5, "seed": "y"})
    assert not (data_dir / "file-link").is_symlink()
    assert victim.read_text() == "keep me"


def test_without_data_dir_file_requests_are_refused(workdir: Path) -> None:
    bare = start_agent(workdir, "nodata", tcp_port=0, udp_port=0)
    try:
        target = workdir / "nodata-file"
        write, read = bare.call(
            {"op": "write_file", "path": str(target), "size": 1, "seed": "s"},
            {"op": "read_file", "path": str(AGENT)},
        )
        for response in (write, read):
            assert (response["ok"], response["errno"]) == (False, "EACCES")
            assert "without --data-dir" in response["error"]
        assert not target.exists()
    finally:
        bare.stop()


# ---------------------------------------------------------------------------------------------
# TCP transfers and sized probes on loopback.


def test_transfer_of_one_mebibyte(agent: RunningAgent) -> None:
    value = nonce()
    size = 1 << 20
    result = agent.ok(
        {
            "op": "transfer",
            "host": "127.0.0.1",
            "port": agent.tcp_port,
            "nonce": value,
            "size": size,
            "timeout": 20,
        }
    )
    expected = agent_protocol.expected_sha256(value, size)
    assert result["bytes_sent"] == result["bytes_received"] == size
    assert result["sha256_expected"] == result["sha256_received"] == expected
    assert result["peer_seen"] == "127.0.0.1"
    lo_mtu = int(Path("/sys/class/net/lo/mtu").read_text())
    assert (result["iface"], result["mtu"], result["peer_mtu"]) == ("lo", lo_mtu, lo_mtu)
    assert 0 < result["mss"] < lo_mtu
    assert agent.ok({"op": "seen", "nonce": value})["records"] == [
        {"proto": "tcp", "peer": "127.0.0.1", "nonce": value}
    ]
    print(f"\n1 MiB transfer on loopback: {result['seconds'] * 1000:.1f} ms")


def test_transfers_from_many_sources_at_once(agent: RunningAgent) -> None:
    """Tens of concurrent transfers and probes: the listener serves them all (and says so)."""
    count = 40
    transfers = [
        {
            "op": "transfer",
            "host": "127.0.0.1",
            "port": agent.tcp_port,
            "nonce": nonce(),
            "size": 256 << 10,
            "timeout": 60,
        }
        for _ in range(count)
    ]
    probes = [
        {"op": "connect", "proto": "tcp", "host": "127.0.0.1", "port": agent.tcp_port}
        | {"nonce": nonce(), "timeout": 30}
        for _ in range(count)
    ]
    started = time.monotonic()
    responses = agent_client.send_requests(
        str(agent.socket_path), transfers + probes, 120, parallel=64
    )
    seconds = time.monotonic() - started
    failed = [r for r in responses if not r["ok"]]
    assert not failed, failed[:3]
    assert all(r["bytes_received"] == 256 << 10 for r in responses[:count])
    print(f"\n{count} transfers of 256 KiB + {count} connects, parallel 64: {seconds:.2f} s")


def test_a_short_transfer_is_reported_with_what_arrived(agent: RunningAgent) -> None:
    """The listener answers with the bytes it really got (a sender that stops early)."""
    value = nonce()
    with socket.create_connection(("127.0.0.1", agent.tcp_port), timeout=10) as raw:
        raw.sendall(f"NETCONFORM-TRANSFER {value} 1000\n".encode() + bytes(400))
        raw.shutdown(socket.SHUT_WR)
        reply = json.loads(raw.makefile("rb").readline())
    assert reply["nonce"] == value
    assert reply["bytes"] == 400
    assert reply["sha256"] == hashlib.sha256(bytes(400)).hexdigest()


@pytest.mark.parametrize(
    ("request_body", "error_part"),
    [
        (
            {
                "op": "transfer",
                "host": "127.0.0.1",
                "port": 1,
                "nonce": "n",
                "size": (64 << 20) + 1,
            },
            "'size'",
        ),
        ({"op": "transfer", "host": "127.0.0.1", "nonce": "n", "size": 10}, "'port'"),
        (
            {"op": "connect", "proto": "tcp", "host": "127.0.0.1", "port": 1, "nonce": "n"}
            | {"size": 1500},
            "for udp",
        ),
        (
            {"op": "connect", "proto": "udp", "host": "127.0.0.1", "port": 1, "nonce": "n"}
            | {"size": "big"},
            "'size'",
        ),
        (
            {"op": "connect", "proto": "udp", "host": "127.0.0.1", "port": 1, "nonce": "nonce-1"}
            | {"size": 30},
            "too small",
        ),
        ({"op": "icmp", "host": "127.0.0.1", "nonce": "n", "df": "yes"}, "'df'"),
    ],
)
def test_bad_sized_requests(agent: RunningAgent, request_body: object, error_part: str) -> None:
    response = agent.one(request_body)
    assert response["ok"] is False
    assert error_part in response["error"]


def test_transfer_to_a_closed_port_is_refused(agent: RunningAgent) -> None:
    closed, _ = free_port_pair()
    response = agent.one(
        {"op": "transfer", "host": "127.0.0.1", "port": closed, "nonce": nonce(), "size": 10}
    )
    assert (response["ok"], response["errno"]) == (False, "ECONNREFUSED")


@NEEDS_NET_RAW
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_sized_udp_and_icmp_to_the_loopback_mtu(agent: RunningAgent, host: str) -> None:
    if host == "::1" and not ipv6_on_loopback():
        pytest.skip("no IPv6 on loopback")
    lo_mtu = int(Path("/sys/class/net/lo/mtu").read_text())
    size = min(lo_mtu, 65535)
    headers = 48 if ":" in host else 28
    udp, icmp, small = agent.call(
        {"op": "connect", "proto": "udp", "host": host, "port": agent.udp_port}
        | {"nonce": nonce(), "size": "mtu", "df": True},
        {"op": "icmp", "host": host, "nonce": nonce(), "size": "mtu", "df": True},
        {"op": "connect", "proto": "udp", "host": host, "port": agent.udp_port}
        | {"nonce": nonce(), "size": 1400, "df": True},
    )
    assert udp["ok"], udp
    assert (udp["size"], udp["payload_bytes"]) == (size, size - headers)
    assert (udp["iface"], udp["mtu"], udp["peer_mtu"]) == ("lo", lo_mtu, lo_mtu)
    assert udp["peer_seen"] == host
    assert icmp["ok"], icmp
    assert (icmp["size"], icmp["reply_bytes"]) == (size, icmp["payload_bytes"])
    assert icmp["reply_bytes"] == size - headers
    assert small["ok"], small
    assert (small["size"], small["payload_bytes"]) == (1400, 1400 - headers)


def test_call_stdin_is_bounded(agent: RunningAgent) -> None:
    huge = b"[" + b'{"op": "info"},' * (agent_protocol.MAX_CONTROL_BYTES // 10) + b'{"op": "info"}]'
    done = subprocess.run(
        [sys.executable, str(CLIENT), "call", "--socket", str(agent.socket_path)],
        input=huge,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert b"more than" in done.stderr
    assert agent.ok({"op": "info"})["pid"] == agent.process.pid
    assert os.path.exists(agent.socket_path)


def oldest_python() -> str | None:
    """A working Python 3.8 interpreter on this machine (pyenv or PATH), if there is one."""
    candidates = [str(p) for p in sorted(Path.home().glob(".pyenv/versions/3.8.*/bin/python3.8"))]
    candidates += [found for found in [shutil.which("python3.8")] if found]
    for candidate in candidates:
        # A pyenv shim exists without a 3.8 selected: ask the interpreter itself.
        probe = subprocess.run(
            [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 8))"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if probe.stdout.strip() == "True":
            return candidate
    return None


def test_agent_serves_on_the_oldest_python(workdir: Path, data_dir: Path) -> None:
    """Beyond vermin's static check: the agent really runs its requests on Python 3.8."""
    python = oldest_python()
    if python is None:
        pytest.skip("no python3.8 on this machine (PATH or ~/.pyenv); vermin still checks 3.8")
    old = start_agent(workdir, "py38", tcp_port=0, udp_port=0, python=python, data_dirs=[data_dir])
    try:
        prefix = f"{nonce()}-"
        waiting = {
            "op": "seen",
            "nonce_prefix": prefix,
            "expect_nonces": [f"{prefix}tcp", f"{prefix}udp"],
            "wait": 10,
        }
        responses = agent_client.send_requests(
            str(old.socket_path),
            [
                {"op": "info"},
                waiting,
                {"op": "connect", "proto": "tcp", "host": "127.0.0.1", "port": old.tcp_port}
                | {"nonce": f"{prefix}tcp"},
                {"op": "connect", "proto": "udp", "host": "127.0.0.1", "port": old.udp_port}
                | {"nonce": f"{prefix}udp", "size": "mtu", "df": True},
                {"op": "icmp", "host": "127.0.0.1", "nonce": nonce(), "size": 1500, "df": True},
                {"op": "transfer", "host": "127.0.0.1", "port": old.tcp_port, "nonce": nonce()}
                | {"size": 1 << 20},
                {"op": "write_file", "path": str(data_dir / "py38"), "size": 1000, "seed": 3},
                {"op": "addresses"},
            ],
            60,
            parallel=8,
        )
        failed = [response for response in responses if not response["ok"]]
        assert not failed, failed
        assert responses[0]["python"].startswith("3.8.")
        assert responses[1]["missing"] == []
    finally:
        assert old.stop() == 0, old.log()
