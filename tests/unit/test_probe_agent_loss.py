"""The probe agent's loss measurement (issue 21): ``connect`` and ``icmp`` with ``count``,
each probe sent once and counted, TCP retransmissions on either end counted as lost, answers
that are not the agent's counted as wrong; the listener records a nonce once however many
probes carry it; a plain ``connect`` says how long it took; a spread makes ``min_tries``.

Real agents on loopback, fake listeners (a socket in the test) where an answer must be wrong
or carry a retransmission. Real loss (root: iptables ``statistic`` drops inside a pair of
private network namespaces) is in ``tests/lab/test_probe_agent_netns.py``."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from running_agents import (
    NEEDS_NET_RAW,
    RunningAgent,
    accepting,
    free_port_pair,
    measure,
    nonce,
    round_robin,
    start_agent,
)

from conformance.probe_agent import listeners as agent_listeners
from conformance.probe_agent import measured as agent_measured
from conformance.probe_agent import protocol as agent_protocol

LOSS_FIELDS = ("count", "sent", "answered", "lost", "errors", "error_examples", "seconds")


@pytest.fixture(scope="module")
def measuring_agent(workdir: Path) -> Iterator[RunningAgent]:
    tcp_port, udp_port = free_port_pair()
    agent = start_agent(workdir, "meter", tcp_port=tcp_port, udp_port=udp_port)
    yield agent
    agent.stop()


# --- every probe counted --------------------------------------------------------------------


@pytest.mark.parametrize("proto", ["tcp", "udp", pytest.param("icmp", marks=NEEDS_NET_RAW)])
def test_a_hundred_probes_on_loopback_lose_none(measuring_agent: RunningAgent, proto: str) -> None:
    port = measuring_agent.tcp_port if proto == "tcp" else measuring_agent.udp_port
    answer = measure(measuring_agent, proto, port, count=100, interval=0.002)
    assert answer["ok"], answer
    assert all(key in answer for key in LOSS_FIELDS), answer
    assert (answer["count"], answer["sent"], answer["answered"], answer["lost"]) == (
        100,
        100,
        100,
        0,
    )
    assert answer["errors"] == {}
    if proto != "tcp":  # the measuring socket dropped nothing itself (SO_RXQ_OVFL)
        assert answer["socket_drops"] == 0
    if proto == "icmp":
        # Echo replies name no server: where they came from instead.
        assert (answer["reply_from"], answer["replies_from"]) == ("127.0.0.1", ["127.0.0.1"])
        assert "servers" not in answer
        assert answer["filtered"] is True  # root here: a raw socket, filtered by BPF
    else:
        assert answer["peers"] == ["127.0.0.1"]
        assert answer["servers"] == {"meter": 100}
        assert (answer["peer_seen"], answer["server"]) == ("127.0.0.1", "meter")
        assert answer["retransmitted"] == 0
        assert answer["wrong_answers"] == 0


def test_the_listener_records_a_nonce_once_however_many_probes_carry_it(
    measuring_agent: RunningAgent,
) -> None:
    value = nonce()
    measuring_agent.ok(
        {
            "op": "connect",
            "proto": "udp",
            "host": "127.0.0.1",
            "port": measuring_agent.udp_port,
            "nonce": value,
            "count": 50,
            "interval": 0.002,
        }
    )
    seen = measuring_agent.ok({"op": "seen", "nonce": value})
    assert seen["records"] == [{"proto": "udp", "peer": "127.0.0.1", "nonce": value}]


def test_the_record_book_keeps_each_record_once_and_drops_the_least_recently_seen() -> None:
    book = agent_listeners.RecordBook(limit=3)
    for name in ("a", "b", "a", "c", "a", "d"):
        book.add(name, "udp", "10.0.0.1")
    # "a" was seen again after "b": "b" is the one dropped for "d".
    records, _ = book.find(prefix="")
    assert [r["nonce"] for r in records] == ["c", "a", "d"]


def test_refused_probes_are_all_lost_and_say_why(measuring_agent: RunningAgent) -> None:
    closed, closed_udp = free_port_pair()
    for proto, port in (("tcp", closed), ("udp", closed_udp)):
        answer = measure(measuring_agent, proto, port, count=20, interval=0.002)
        assert answer["ok"] is False
        assert answer["errno"] == "ECONNREFUSED"
        assert (answer["sent"], answer["answered"], answer["lost"]) == (20, 0, 20)
        assert "none of 20 probes answered" in answer["error"]


def test_a_silent_destination_gets_no_more_probes_after_the_timeout(
    measuring_agent: RunningAgent,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # takes the datagrams, never answers
        answer = measure(
            measuring_agent, "udp", silent.getsockname()[1], count=200, interval=0.05, timeout=0.5
        )
    assert answer["ok"] is False
    assert answer["errno"] == "ETIMEDOUT"
    assert 5 <= answer["sent"] < 30  # stopped about 0.5 s in, not after 10 s of probes
    assert answer["lost"] == answer["sent"]
    assert answer["seconds"] < 3


def test_answers_queued_by_the_deadline_count_whenever_they_are_read() -> None:
    """A measuring thread that waited for the CPU (or the GIL) past its deadline still takes
    the answers that came in time: they are in its socket's queue, not lost."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ours,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as theirs,
    ):
        ours.bind(("127.0.0.1", 0))
        theirs.bind(("127.0.0.1", 0))
        ours.connect(theirs.getsockname())
        theirs.connect(ours.getsockname())
        taken: list[bytes] = []
        tally = agent_measured.Tally("test")

        def send(index: int) -> None:
            if index == 49:  # every answer queued once the last probe is out
                for answer in range(50):
                    theirs.send(str(answer).encode())

        def take(data: bytes, _address: object) -> None:
            if not taken:  # the thread waits for the CPU past its deadline
                threading.Event().wait(0.3)
            taken.append(data)

        agent_measured._paced(ours, tally, 50, 0.0001, 0.05, send, take, lambda: len(taken) == 50)
    assert tally.sent == 50
    assert sorted(int(t) for t in taken) == list(range(50))


# --- fake listeners: retransmissions and answers that are not the agent's ----------------------


@contextmanager
def tcp_listener(reply: Callable[[bytes], bytes]) -> Iterator[int]:
    """A TCP listener on 127.0.0.1 answering each client's first line with ``reply(line)``."""

    def answer(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(2)
            with suppress(OSError):
                line = conn.recv(4096).split(b"\n", 1)[0]
                conn.sendall(reply(line))

    with accepting(answer) as port:
        yield port


def test_a_connection_the_listener_retransmitted_for_counts_as_lost(
    measuring_agent: RunningAgent,
) -> None:
    """The listener says it sent a segment again (a SYN-ACK that was lost): the connection was
    answered, but a packet of it was lost."""
    turn = iter(range(1000))

    def reply(line: bytes) -> bytes:
        again = 1 if next(turn) % 4 == 0 else 0
        body = {"nonce": line.decode(), "peer": "127.0.0.1", "server": "fake", "retrans": again}
        return json.dumps(body).encode() + b"\n"

    with tcp_listener(reply) as port:
        answer = measure(measuring_agent, "tcp", port, count=20, interval=0.002, parallel=1)
    assert answer["ok"], answer
    assert (answer["answered"], answer["retransmitted"], answer["lost"]) == (20, 5, 5)


def test_answers_that_are_not_the_agents_are_counted_wrong(
    measuring_agent: RunningAgent,
) -> None:
    with tcp_listener(lambda _line: b"HTTP/1.1 400 Bad Request\r\n\r\n") as port:
        answer = measure(measuring_agent, "tcp", port, count=10, interval=0.002)
    assert answer["ok"] is False
    assert (answer["wrong_answers"], answer["lost"], answer["errno"]) == (10, 10, "EPROTO")
    assert "not the agent's JSON line" in answer["error_examples"][0]
    # A plain connect says so too, so that a later try's answer cannot hide it.
    with tcp_listener(lambda _line: b"HTTP/1.1 400 Bad Request\r\n\r\n") as port:
        plain = measure(measuring_agent, "tcp", port)
    assert plain["ok"] is False
    assert plain["wrong_answer"] is True


def test_a_udp_answer_that_is_not_the_agents_is_counted_wrong(
    measuring_agent: RunningAgent,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as echo:
        echo.bind(("127.0.0.1", 0))
        echo.settimeout(3)

        def answer_garbage() -> None:
            with suppress(OSError):
                for _ in range(5):
                    _data, peer = echo.recvfrom(4096)
                    echo.sendto(b"garbage", peer)

        thread = threading.Thread(target=answer_garbage, daemon=True)
        thread.start()
        answer = measure(
            measuring_agent, "udp", echo.getsockname()[1], count=5, interval=0.01, timeout=0.5
        )
        thread.join(timeout=5)
    assert answer["ok"] is False
    assert answer["wrong_answers"] == 5


# --- what a listener dropped itself ---------------------------------------------------------


def test_drops_reads_the_listeners_own_drop_counters(
    measuring_agent: RunningAgent, tmp_path: Path
) -> None:
    answer = measuring_agent.ok({"op": "drops"})
    assert isinstance(answer["udp"], int)
    assert isinstance(answer["tcp_listen"], int)
    udp = tmp_path / "udp"
    udp.write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
        "timeout inode ref pointer drops\n"
        "  14: 00000000:1F91 00000000:0000 07 00000000:00000000 00:00000000 00000000     0"
        "        0 387951 2 00000000eec74585 17\n"
        "  15: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0"
        "        0 387952 2 00000000eec74586 99\n"
    )
    udp6 = tmp_path / "udp6"
    udp6.write_text(
        "  sl  local_address remote_address st tx_queue rx_queue tr tm->when retrnsmt   uid"
        "  timeout inode ref pointer drops\n"
        "   3: 00000000000000000000000000000000:1F91 00000000000000000000000000000000:0000 07 "
        "00000000:00000000 00:00000000 00000000     0        0 387953 2 0000000012345678 4\n"
    )
    assert agent_measured.udp_socket_drops(8081, (str(udp), str(udp6))) == 21
    assert agent_measured.udp_socket_drops(8081, (str(tmp_path / "none"),)) is None
    netstat = tmp_path / "netstat"
    netstat.write_text(
        "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPLostRetransmit\n"
        "TcpExt: 0 3 5 7\n"
        "IpExt: InNoRoutes\n"
        "IpExt: 0\n"
    )
    assert agent_measured.listen_drops(str(netstat)) == 5
    assert agent_measured.listen_drops(str(tmp_path / "none")) is None


# --- fields, budget, timing, spreads ---------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"count": 0}, "'count' must be between 1 and 1000"),
        ({"count": 1001}, "'count' must be between 1 and 1000"),
        ({"count": True}, "'count' must be an integer"),
        ({"count": 10, "interval": 0}, "'interval' must be between 0.001"),
        ({"count": 1000, "interval": 1.0}, "take longer than 120s to start"),
        ({"count": 10, "size": "mtu"}, "'size' and 'df' do not go with 'count'"),
        ({"count": 10, "parallel": 65}, "'parallel' must be between 1 and 64"),
    ],
)
def test_measured_requests_refuse_bad_fields(
    measuring_agent: RunningAgent, fields: dict[str, object], error: str
) -> None:
    answer = measure(measuring_agent, "tcp", measuring_agent.tcp_port, **fields)
    assert answer["ok"] is False, answer
    assert error in answer["error"]


def test_a_measured_requests_budget_covers_its_probes() -> None:
    request = {"op": "connect", "timeout": 5, "count": 100, "interval": 0.01}
    assert agent_protocol.request_wait(request) == pytest.approx(6.0)
    assert agent_protocol.request_wait({"op": "icmp", "timeout": 2, "count": 1}) == 2.0
    assert agent_protocol.request_wait({"op": "icmp", "count": "x"}) == 3.0


def test_a_plain_connect_says_how_long_it_took(measuring_agent: RunningAgent) -> None:
    closed, _ = free_port_pair()
    refused = measure(measuring_agent, "tcp", closed)
    assert refused["errno"] == "ECONNREFUSED"
    assert 0 <= refused["seconds"] < 1
    answered = measure(measuring_agent, "tcp", measuring_agent.tcp_port)
    assert answered["ok"]
    assert 0 <= answered["seconds"] < 1


def test_a_spread_makes_at_least_min_tries(workdir: Path) -> None:
    tcp_port, udp_port = free_port_pair()
    backend = start_agent(workdir, "backend-min", tcp_port=tcp_port, udp_port=udp_port)
    try:
        with round_robin([backend.tcp_port]) as port:
            request = {
                "op": "spread",
                "proto": "tcp",
                "host": "127.0.0.1",
                "port": port,
                "nonce": nonce(),
                "expect_servers": ["backend-min"],
                "max_tries": 30,
                "parallel": 1,
                "timeout": 2,
            }
            early = backend.ok(request)
            judged = backend.ok({**request, "nonce": nonce(), "min_tries": 12})
            capped = backend.ok({**request, "nonce": nonce(), "min_tries": 100})
    finally:
        backend.stop()
    assert early["tries"] == 1  # stops once every expected server answered
    assert judged["tries"] == 12  # ... but not before min_tries
    assert capped["tries"] == 30  # max_tries bounds it
    assert judged["servers"] == {"backend-min": 12}
