"""Bad input to the probe agent (issue 17 item 7): malformed, oversized and slow requests to a
real ``serve`` process on loopback, through its TCP listener, its UDP listener, its control
socket and ``call``'s stdin. Afterwards the agent is still up, its memory stayed under a fixed
ceiling over the start figure, it answers the next real request, it started no process, and
nothing appeared outside its scratch area.

Bounded in count (hypothesis ``max_examples``) and time (every socket has a timeout; slow
clients stop after a fixed number of rounds). Network requests are only ever pointed at
127.0.0.1 and ::1: hosts are drawn from those two or from non-strings, never from free text
(which the agent would resolve through DNS).
"""

from __future__ import annotations

import json
import os
import secrets
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from running_agents import CLIENT, RunningAgent, nonce, start_agent
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from conformance.probe_agent import protocol as agent_protocol

#: How far VmRSS may grow over the figure taken after warm-up (json of a 1 MiB batch, thread
#: stacks of slow clients, Python's allocator keeping freed arenas).
RSS_CEILING_KIB = 48 * 1024
FUZZ = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class FuzzTarget:
    agent: RunningAgent
    scratch: Path  # the agent's only data directory
    outside: Path  # beside it: must stay as it is
    victim: Path  # a file in `outside` a symlink in `scratch` points at
    marker: str  # in every path a request may try to create outside
    start_rss_kib: int


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def child_pids(pid: int) -> list[str]:
    children: list[str] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with open(task / "children") as listing:
            children += listing.read().split()
    return children


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    root = tmp_path_factory.mktemp("fuzz")
    scratch, outside = root / "scratch", root / "outside"
    scratch.mkdir()
    outside.mkdir()
    victim = outside / "victim"
    victim.write_text("unchanged")
    (scratch / "link-out").symlink_to(outside)
    (scratch / "file-link").symlink_to(victim)
    agent = start_agent(root, "fz", tcp_port=0, udp_port=0, data_dirs=[scratch])
    # Warm up every path once (listeners, file ops, batches) before taking the start figure.
    warm = nonce()
    agent.call(
        {"op": "connect", "proto": "tcp", "host": "127.0.0.1", "port": agent.tcp_port}
        | {"nonce": warm},
        {"op": "connect", "proto": "udp", "host": "127.0.0.1", "port": agent.udp_port}
        | {"nonce": warm},
        {"op": "icmp", "host": "127.0.0.1", "nonce": warm},
        {"op": "write_file", "path": str(scratch / "warm"), "size": 1000, "seed": 1},
        {"op": "addresses"},
    )
    marker = f"netconform-fuzz-{secrets.token_hex(4)}"
    yield FuzzTarget(agent, scratch, outside, victim, marker, rss_kib(agent.process.pid))
    assert agent.stop() == 0, agent.log()[-3000:]


def control_exchange(path: Path, data: bytes, timeout: float = 60) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(timeout)
        raw.connect(str(path))
        raw.sendall(data)
        raw.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := raw.recv(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks)


def assert_answer_is_a_response_list(answer: bytes) -> list[dict[str, Any]]:
    responses = json.loads(answer)
    assert isinstance(responses, list)
    for response in responses:
        assert isinstance(response["ok"], bool)
        assert "op" in response
        if not response["ok"]:
            assert isinstance(response["error"], str)
            assert len(response["error"]) < 2000
    return responses


def assert_still_serving(target: FuzzTarget) -> None:
    agent = target.agent
    assert agent.process.poll() is None, agent.log()[-3000:]
    value = nonce()
    tcp, udp, seen = agent.call(
        {"op": "connect", "proto": "tcp", "host": "127.0.0.1", "port": agent.tcp_port}
        | {"nonce": value},
        {"op": "connect", "proto": "udp", "host": "127.0.0.1", "port": agent.udp_port}
        | {"nonce": value},
        {"op": "seen", "nonce": value, "wait": 2},
    )
    assert tcp["ok"], tcp
    assert udp["ok"], udp
    assert {r["proto"] for r in seen["records"]} == {"tcp", "udp"}


# ---------------------------------------------------------------------------------------------
# Strategies.

JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
LOOPBACK = st.sampled_from(["127.0.0.1", "::1"])


def paths_to_try(target: FuzzTarget) -> st.SearchStrategy[str]:
    marker = target.marker
    return st.one_of(
        st.sampled_from(
            [
                f"/etc/{marker}",
                f"/tmp/{marker}",
                f"{target.scratch}/../{marker}",
                f"{target.scratch}/link-out/{marker}",
                f"{target.scratch}/file-link",
                f"{target.outside}/victim",
                "/proc/self/mem",
                "/dev/zero",
                str(target.scratch),
                f"{target.scratch}/ok-{marker}",
                f"../{marker}",
                marker,
            ]
        ),
        st.text(max_size=40).map(lambda text: text.replace("\0", "")),
    )


def requests(target: FuzzTarget) -> st.SearchStrategy[dict[str, Any]]:
    fields: dict[str, st.SearchStrategy[Any]] = {
        "proto": st.sampled_from(["tcp", "udp", "sctp", ""]) | JUNK,
        "host": LOOPBACK | JUNK,
        "port": st.sampled_from([target.agent.tcp_port, target.agent.udp_port])
        | st.integers(-5, 70_000)
        | JUNK,
        "nonce": st.text(max_size=140) | JUNK,
        "nonce_prefix": st.text(max_size=70) | JUNK,
        "expect_nonces": st.lists(st.text(max_size=20), max_size=4) | JUNK,
        "size": st.sampled_from(["mtu", "big"]) | st.integers(-5, 70_000) | JUNK,
        "df": st.booleans() | JUNK,
        "timeout": st.floats(-1, 1) | JUNK,
        "wait": st.floats(-1, 0.3) | JUNK,
        "path": paths_to_try(target) | JUNK,
        "seed": st.text(max_size=10) | st.integers() | JUNK,
        "capture_id": st.text(max_size=10) | JUNK,
        "min_packets": st.integers() | JUNK,
        "parallel": st.integers(-2, 100) | JUNK,
        # Measured requests: bounded here (40 probes 20 ms apart at most), the agent's own
        # bounds checked with values far beyond them.
        "count": st.integers(-5, 40) | st.sampled_from([1001, 2**40]) | JUNK,
        "interval": st.floats(-1, 0.02) | st.sampled_from([0.0, 121.0]) | JUNK,
    }
    # No capture_start: it would sniff the machine's own interfaces.
    ops = st.sampled_from(
        [
            "info",
            "addresses",
            "try_bind",
            "connect",
            "icmp",
            "transfer",
            "seen",
            "capture_result",
            "write_file",
            "read_file",
            "exec",
            "__init__",
            "handle",
            "",
        ]
    )
    return st.fixed_dictionaries({"op": ops | JUNK}, optional=fields)


# ---------------------------------------------------------------------------------------------
# The control socket.


def test_control_socket_takes_fuzzed_batches(target: FuzzTarget) -> None:
    @FUZZ
    @given(
        batch=st.one_of(
            st.lists(requests(target), max_size=5),
            st.fixed_dictionaries(
                {"requests": st.lists(requests(target), max_size=5)},
                optional={"parallel": st.integers(-2, 80) | JUNK},
            ),
            requests(target),
            JUNK,
        )
    )
    def check(batch: object) -> None:
        answer = control_exchange(target.agent.socket_path, json.dumps(batch).encode())
        responses = assert_answer_is_a_response_list(answer)
        if isinstance(batch, list):
            assert len(responses) == len(batch)

    check()
    assert_still_serving(target)


def test_control_socket_takes_malformed_and_oversized_bytes(target: FuzzTarget) -> None:
    @FUZZ
    @given(data=st.binary(max_size=2048))
    def check(data: bytes) -> None:
        assert_answer_is_a_response_list(control_exchange(target.agent.socket_path, data))

    check()
    limit = agent_protocol.MAX_CONTROL_BYTES
    for data, reason in (
        (b"[" + b'{"op": "info"},' * (limit // 15) + b"{}]", "larger than"),
        (b"[" * 200_000 + b"]" * 200_000, "not JSON"),  # nesting deeper than the parser goes
        (b"[" * 100_000, "not JSON"),
        (b'{"op": "info", "x": ' + b"9" * 100_000 + b"}", "not JSON"),
        (b"\xff\xfe" * 1000, "not JSON"),
        (b'[{"op": "info"}, NaN, 1e999999]', "a request must be a JSON object"),
        (json.dumps({"op": "x" * 500_000}).encode(), "unknown op"),
    ):
        responses = assert_answer_is_a_response_list(
            control_exchange(target.agent.socket_path, data)
        )
        assert any(reason in str(r.get("error")) for r in responses), (reason, responses)
        assert all(len(json.dumps(r)) < 4000 for r in responses), "no request is echoed whole"
    assert_still_serving(target)


def test_slow_control_clients_do_not_block_real_requests(target: FuzzTarget) -> None:
    slow = []
    try:
        for _ in range(4):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.settimeout(10)
            client.connect(str(target.agent.socket_path))
            client.sendall(b'[{"op": "in')  # and never the rest
            slow.append(client)
        assert target.agent.ok({"op": "info"})["pid"] == target.agent.process.pid
    finally:
        for client in slow:
            client.close()
    assert_still_serving(target)


def test_call_stdin_takes_fuzzed_input(target: FuzzTarget) -> None:
    @settings(max_examples=12, deadline=None)
    @given(
        data=st.one_of(
            st.binary(max_size=512),
            st.lists(requests(target), max_size=3).map(lambda b: json.dumps(b).encode()),
        )
    )
    def check(data: bytes) -> None:
        done = subprocess.run(
            [sys.executable, str(CLIENT), "call", "--socket", str(target.agent.socket_path)],
            input=data,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert done.returncode in (0, 2), done.stderr
        assert b"Traceback" not in done.stderr
        if done.returncode == 0:
            assert_answer_is_a_response_list(done.stdout)

    check()
    assert_still_serving(target)


# ---------------------------------------------------------------------------------------------
# The TCP and UDP listeners.


def tcp_exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        try:
            raw.sendall(data)
            raw.shutdown(socket.SHUT_WR)
        except OSError:
            return b""  # the listener closed first (it reads a bounded header)
        chunks = []
        try:
            while chunk := raw.recv(4096):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


def test_tcp_listener_takes_fuzzed_bytes(target: FuzzTarget) -> None:
    port = target.agent.tcp_port

    @FUZZ
    @given(
        data=st.one_of(
            st.binary(max_size=1024),
            st.builds(
                lambda nonce_text, size, tail: (
                    f"NETCONFORM-TRANSFER {nonce_text} {size}\n".encode() + tail
                ),
                st.text(max_size=20),
                st.one_of(st.integers(-5, 2000), st.text(max_size=8)),
                st.binary(max_size=300),
            ),
        )
    )
    def check(data: bytes) -> None:
        answer = tcp_exchange(port, data)
        if answer:
            reply = json.loads(answer.split(b"\n", 1)[0])
            assert isinstance(reply, dict)

    check()
    for data in (
        b"x" * (1 << 20),  # a header line that never ends
        b"NETCONFORM-TRANSFER nc-1 67108864\n",  # 64 MiB announced, nothing sent
        b"NETCONFORM-TRANSFER nc-1 67108865\n" + bytes(1000),  # over the bound
        b"\n" * 1000,
    ):
        tcp_exchange(port, data)
    assert_still_serving(target)


def test_slow_tcp_clients_are_cut_and_do_not_block_others(target: FuzzTarget) -> None:
    """Thirty clients trickle one byte per round and never end their line: each is cut after
    the listener's read timeout; a real probe is answered meanwhile."""
    slow: list[socket.socket] = []
    cut: set[int] = set()
    try:
        for _ in range(30):
            client = socket.create_connection(("127.0.0.1", target.agent.tcp_port), timeout=10)
            client.setblocking(False)
            slow.append(client)
        assert_still_serving(target)
        deadline = time.monotonic() + agent_protocol.LISTENER_READ_TIMEOUT + 5
        next_byte = time.monotonic()
        while len(cut) < len(slow) and time.monotonic() < deadline:
            if time.monotonic() >= next_byte:  # one byte a second from every open client
                next_byte += 1.0
                for index, client in enumerate(slow):
                    if index not in cut:
                        try:
                            client.send(b"n")
                        except OSError:
                            cut.add(index)
            open_clients = [c for i, c in enumerate(slow) if i not in cut]
            pause = max(0.0, next_byte - time.monotonic())
            readable, _, _ = select.select(open_clients, [], [], pause)
            for client in readable:
                try:
                    if client.recv(4096) == b"":
                        cut.add(slow.index(client))
                except OSError:
                    cut.add(slow.index(client))
        assert len(cut) == len(slow), f"{len(slow) - len(cut)} slow clients were never cut"
    finally:
        for client in slow:
            client.close()
    assert_still_serving(target)


def test_udp_listener_takes_fuzzed_datagrams(target: FuzzTarget) -> None:
    port = target.agent.udp_port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.settimeout(5)

        @FUZZ
        @given(data=st.binary(max_size=2048))
        def check(data: bytes) -> None:
            sender.sendto(data, ("127.0.0.1", port))
            reply, _ = sender.recvfrom(4096)
            answer = json.loads(reply)
            assert answer["bytes"] == len(data)

        check()
        biggest = os.urandom(65507)
        sender.sendto(biggest, ("127.0.0.1", port))
        reply, _ = sender.recvfrom(4096)
        assert json.loads(reply)["bytes"] == len(biggest)
        for _ in range(2000):  # a burst; the listener may drop some, it must not fall over
            sender.sendto(b"\x00" * 1000, ("127.0.0.1", port))
    assert_still_serving(target)


# ---------------------------------------------------------------------------------------------
# Nothing written or run outside the scratch area; memory bounded. (Last in this module.)


def test_file_requests_never_leave_the_scratch_area(target: FuzzTarget) -> None:
    marker = target.marker
    tries = [
        f"/etc/{marker}",
        f"/tmp/{marker}",
        f"{target.scratch}/../{marker}",
        f"{target.scratch}/link-out/{marker}",
        f"{target.outside}/victim",
        f"{target.scratch}/link-out/victim",
    ]
    for path in tries:
        for request in (
            {"op": "write_file", "path": path, "size": 100, "seed": "x"},
            {"op": "read_file", "path": path},
        ):
            response = target.agent.one(request)
            assert (response["ok"], response.get("errno")) == (False, "EACCES"), response
    linked = target.agent.ok(
        {"op": "write_file", "path": f"{target.scratch}/file-link", "size": 10, "seed": "y"}
    )
    assert linked["size"] == 10


def test_afterwards_nothing_outside_changed_and_the_agent_is_whole(target: FuzzTarget) -> None:
    marker = target.marker
    for place in (Path("/etc"), Path("/tmp"), target.scratch.parent, target.outside):
        assert not any(marker in name for name in os.listdir(place)), place
    assert sorted(os.listdir(target.outside)) == ["victim"]
    assert target.victim.read_text() == "unchanged"
    pid = target.agent.process.pid
    assert child_pids(pid) == [], "a request made the agent start a process"
    # Handler threads of cut clients end on their own; the count comes back down (bounded).
    settling = Retrying(
        stop=stop_after_delay(15),
        wait=wait_fixed(0.2),
        retry=retry_if_result(lambda count: count > 24),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else -1,
    )
    threads = settling(lambda: thread_count(pid))
    assert threads <= 24, f"{threads} threads linger in the agent"
    rss = rss_kib(pid)
    print(f"\nagent VmRSS: {target.start_rss_kib} KiB after warm-up, {rss} KiB after the fuzzing")
    assert rss <= target.start_rss_kib + RSS_CEILING_KIB
    assert_still_serving(target)
