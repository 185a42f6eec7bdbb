"""Measured probes: ``count`` datagrams, echoes or connections in one request, and the drop
counters of the kernel, so that the suite counts what is lost instead of retrying it away.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import select
import selectors
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

from .exchanges import (
    icmp_checksum,
    icmp_sequence,
    open_icmp_socket,
    parse_listener_reply,
    tcp_retransmissions,
)
from .netinfo import (
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST,
    normalize_ip,
    resolve,
)
from .protocol import (
    LISTENER_RECEIVE_BUFFER,
    MAX_ERROR_EXAMPLES,
    MAX_PROBE_COUNT,
    SO_RXQ_OVFL,
    UDP_RECEIVE_BYTES,
    RequestError,
    describe_os_error,
    errno_name,
)
from .services import UNNAMED_SERVER

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    JSONDict = dict[str, Any]

# --------------------------------------------------------------------------------------------
# Measured probes: ``count`` datagrams, echoes or connections in one request, so that the
# suite counts what is lost instead of retrying it away. Probes start ``interval`` apart; each
# waits ``timeout`` for its answer; the request ends when every probe is answered or the last
# one's time is up. A destination that answered nothing within ``timeout`` of the first probe
# gets no more probes (the exchange's own tries judge an unreachable pair).


class Tally:
    """What the probes of one measured request saw: answers (who answered, which source the
    listener saw), probes lost, and how the failed ones failed."""

    def __init__(self, where: str, local: str | None = None) -> None:
        self.where = where
        self.sent = 0
        self.answered = 0
        self.retransmitted = 0  # TCP: answered connections that sent a segment again
        self.wrong = 0  # answers that were not the agent's reply to this probe
        self.errors: dict[str, int] = {}
        self.examples: list[str] = []
        self.peers: list[str] = []
        self.servers: dict[str, int] = {}
        self.first: JSONDict = {}
        self.local = local
        self.started = time.monotonic()
        #: What the measuring socket itself dropped (None: the kernel does not say).
        self.socket_drops: int | None = None

    def error(self, kind: str, text: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if len(self.examples) < MAX_ERROR_EXAMPLES:
            self.examples.append(text)

    def answer(self, reply: JSONDict, retransmitted: bool = False) -> None:
        self.answered += 1
        self.retransmitted += int(retransmitted)
        peer = normalize_ip(str(reply.get("peer")))
        if peer not in self.peers and len(self.peers) < 16:
            self.peers.append(peer)
        name = reply.get("server")
        server = name if isinstance(name, str) and name else UNNAMED_SERVER
        self.servers[server] = self.servers.get(server, 0) + 1
        if not self.first:
            self.first = {"peer_seen": peer, "server": reply.get("server")}

    def silent_for(self, timeout: float) -> bool:
        """Nothing answered within ``timeout`` of the first probe: send no more."""
        return self.answered == 0 and time.monotonic() - self.started >= timeout

    def result(self, count: int) -> JSONDict:
        """The response fields; ``RequestError`` (with them) when no probe was answered."""
        lost = self.sent - self.answered + self.retransmitted
        result: JSONDict = {
            "count": count,
            "sent": self.sent,
            "answered": self.answered,
            "lost": lost,
            "retransmitted": self.retransmitted,
            "wrong_answers": self.wrong,
            "errors": self.errors,
            "error_examples": self.examples,
            "peers": sorted(self.peers),
            "servers": self.servers,
            "socket_drops": self.socket_drops,
            "local": self.local,
            "seconds": round(time.monotonic() - self.started, 3),
        }
        result.update(self.first)
        if self.answered:
            return result
        common = max(self.errors.items(), key=lambda item: item[1])[0] if self.errors else None
        kind = common or "ETIMEDOUT"
        first = f" (first: {self.examples[0]})" if self.examples else ""
        raise RequestError(
            f"{self.where}: none of {self.sent} probes answered{first}", kind, result
        )


def udp_socket_drops(
    port: int, tables: Sequence[str] = ("/proc/net/udp", "/proc/net/udp6")
) -> int | None:
    """Datagrams the kernel dropped because the receive buffer of this network namespace's UDP
    sockets bound to ``port`` was full (the ``drops`` column): a listener that fell behind, not
    the network. None when no table could be read."""
    total, read = 0, False
    for table in tables:
        try:
            with open(table) as rows:
                lines = rows.read().splitlines()[1:]
        except OSError:
            continue
        read = True
        for line in lines:
            fields = line.split()
            if len(fields) >= 13 and fields[1].rsplit(":", 1)[-1] == f"{port:04X}":
                with contextlib.suppress(ValueError):
                    total += int(fields[-1])
    return total if read else None


def listen_drops(path: str = "/proc/net/netstat") -> int | None:
    """Connections this network namespace's TCP listeners dropped (TcpExt ListenDrops: a full
    accept queue, among others), whose SYN or SYN-ACK then goes again. None when unreadable."""
    try:
        with open(path) as counters:
            lines = [line.split() for line in counters.read().splitlines()]
    except OSError:
        return None
    # Pairs of lines: the names, then the values (no zip(strict=) before Python 3.10).
    for index in range(0, len(lines) - 1, 2):
        names, values = lines[index], lines[index + 1]
        if names and names[0] == "TcpExt:" and "ListenDrops" in names:
            with contextlib.suppress(ValueError, IndexError):
                return int(values[names.index("ListenDrops")])
    return None


def _paced(
    sock: socket.socket,
    tally: Tally,
    count: int,
    interval: float,
    timeout: float,
    send: Callable[[int], None],
    take: Callable[[bytes, Any], None],
    done: Callable[[], bool],
) -> None:
    """Send probe i at ``interval`` * i after the start (``send(i)``), take answers as they
    come (``take(data, address)``) until ``done()`` or ``timeout`` after the last probe; then
    take what is already queued: an answer that came in time but found this thread waiting
    for the CPU (or the GIL, behind a busy batch) is no lost probe. A receive error (an ICMP
    error about an earlier datagram) is counted by its errno. What the socket itself dropped
    (its buffer full: this end fell behind, not the network) is kept in ``tally.socket_drops``
    (SO_RXQ_OVFL, as the kernel counts it with each datagram)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, LISTENER_RECEIVE_BUFFER)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        tally.socket_drops = 0
    except OSError:
        pass  # unknown: tally.socket_drops stays None
    ancillary_size = socket.CMSG_SPACE(4)

    def receive(flags: int = 0) -> bool:
        try:
            data, ancillary, _flags, address = sock.recvmsg(
                UDP_RECEIVE_BYTES, ancillary_size, flags
            )
        except BlockingIOError:
            return False
        except OSError as exc:
            tally.error(errno_name(exc.errno) or "OSError", describe_os_error(exc))
            return True
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(value) >= 4:
                dropped = int(struct.unpack("=I", value[:4])[0])
                tally.socket_drops = max(tally.socket_drops or 0, dropped)
        take(data, address)
        return True

    end = None
    while True:
        now = time.monotonic()
        due = tally.started + tally.sent * interval
        if end is None and now >= due:
            if tally.sent == count or tally.silent_for(timeout):
                end = now + timeout if tally.sent == count else now
                continue
            tally.sent += 1
            try:
                send(tally.sent - 1)
            except OSError as exc:
                tally.error(errno_name(exc.errno) or "OSError", describe_os_error(exc))
            continue
        if end is not None and (now >= end or done()):
            break
        limit = due if end is None else end
        if select.select([sock], [], [], max(0.0, limit - now))[0]:
            receive()
    for _ in range(MAX_PROBE_COUNT * 4):  # bounded: others' traffic may keep coming
        if done() or not receive(socket.MSG_DONTWAIT):
            break


def measure_udp(
    host: str, port: int, nonce: str, count: int, interval: float, timeout: float
) -> JSONDict:
    """``count`` datagrams ``<nonce>\\n<i>\\n``, each sent once; the listener's answer carries the
    datagram's sha256, which says which probe it answers."""
    family, sockaddr = resolve(host, port, socket.SOCK_DGRAM)
    tally = Tally(f"udp {host} port {port}")
    probe_of: dict[str, int] = {}
    answered: set[int] = set()
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect(sockaddr)
        tally.local = normalize_ip(sock.getsockname()[0])

        def send(index: int) -> None:
            payload = f"{nonce}\n{index}\n".encode()
            probe_of[hashlib.sha256(payload).hexdigest()] = index
            sock.send(payload)

        def take(data: bytes, _address: Any) -> None:
            try:
                reply = parse_listener_reply(data, nonce, tally.where)
            except RequestError as exc:
                if data.startswith(b"{"):
                    return  # a late answer to another socket's nonce
                tally.wrong += 1  # something else answers at this address
                tally.error("EPROTO", str(exc))
                return
            index = probe_of.get(str(reply.get("sha256")))
            if index is not None and index not in answered:
                answered.add(index)
                tally.answer(reply)

        _paced(sock, tally, count, interval, timeout, send, take, lambda: len(answered) == count)
    return tally.result(count)


SO_ATTACH_FILTER = 26


def _bpf(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def only_echo_replies(sock: socket.socket, is_v6: bool, identifier: int) -> bool:
    """Let the kernel pass a raw ICMP socket only echo replies with ``identifier`` (a classic BPF
    filter): a raw socket gets a copy of every ICMP packet of the network namespace, and a
    hundred-probe measurement beside others must not lose its replies in a full buffer. False
    where the filter cannot be attached (the caller then filters alone)."""
    reply = ICMPV6_ECHO_REPLY if is_v6 else ICMP_ECHO_REPLY
    # IPv4 raw sockets see the IP header (X = its length); IPv6 ones start at ICMPv6.
    program = [_bpf(0xB1, 0) if not is_v6 else _bpf(0x01, 0)]  # ldxb 4*([0]&0xf) / ldx #0
    program += [
        _bpf(0x50, 0),  # ldb [x + 0]: the type
        _bpf(0x15, reply, 0, 3),  # jeq reply, else drop
        _bpf(0x48, 4),  # ldh [x + 4]: the identifier
        _bpf(0x15, identifier, 0, 1),  # jeq identifier, else drop
        _bpf(0x06, 0x40000),  # accept
        _bpf(0x06, 0),  # drop
    ]
    try:
        import ctypes  # stdlib, and only here: a probe image's python3 may lack libffi

        code = ctypes.create_string_buffer(b"".join(program))
        fprog = struct.pack("HL", len(program), ctypes.addressof(code))
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except (ImportError, OSError):
        return False
    return True


def measure_icmp(host: str, nonce: str, count: int, interval: float, timeout: float) -> JSONDict:
    """``count`` echo requests with consecutive sequence numbers, the nonce as payload, and an
    identifier of their own."""
    family, sockaddr = resolve(host, 0, socket.SOCK_RAW)
    is_v6 = family == socket.AF_INET6
    request_type, reply_type = (
        (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY) if is_v6 else (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY)
    )
    tally = Tally(f"icmp {host}")
    payload = nonce.encode()
    identifier = int.from_bytes(os.urandom(2), "big")
    probe_of: dict[int, int] = {}
    answered: set[int] = set()
    sock, is_raw = open_icmp_socket(family)
    with sock:
        # A raw socket without the filter still works, on its own (and records that it had none).
        filtered = only_echo_replies(sock, is_v6, identifier) if is_raw else True

        def send(index: int) -> None:
            sequence = next(icmp_sequence) & 0xFFFF
            probe_of[sequence] = index
            header = struct.pack("!BBHHH", request_type, 0, 0, identifier, sequence)
            if not is_v6:
                checksum = icmp_checksum(header + payload)
                header = struct.pack("!BBHHH", request_type, 0, checksum, identifier, sequence)
            sock.sendto(header + payload, sockaddr)

        def take(received: bytes, address: Any) -> None:
            if is_raw and not is_v6:
                message = received[(received[0] & 0x0F) * 4 :]
                source = socket.inet_ntop(socket.AF_INET, received[12:16])
            else:
                message, source = received, address[0]
            if len(message) < 8 or message[0] != reply_type or message[8:] != payload:
                return  # other ICMP traffic of this network namespace
            _, _, _, reply_id, reply_sequence = struct.unpack("!BBHHH", message[:8])
            index = probe_of.get(reply_sequence)
            if (is_raw and reply_id != identifier) or index is None or index in answered:
                return
            answered.add(index)
            tally.answer({"peer": normalize_ip(source), "server": None})

        _paced(sock, tally, count, interval, timeout, send, take, lambda: len(answered) == count)
    try:
        result = tally.result(count)
    except RequestError as exc:
        _as_echo_result(exc.details)["filtered"] = filtered
        raise
    result = _as_echo_result(result)
    result["filtered"] = filtered
    return result


def _as_echo_result(result: JSONDict) -> JSONDict:
    """Echo replies name no server and carry no listener's view: where they came from."""
    result["replies_from"] = result.pop("peers", [])
    result["reply_from"] = result.pop("peer_seen", None)
    for key in ("servers", "server", "retransmitted", "wrong_answers"):
        result.pop(key, None)
    return result


class _Connection:
    """One TCP probe of a measured request, driven without a thread of its own."""

    def __init__(self, sock: socket.socket, index: int, deadline: float) -> None:
        self.sock = sock
        self.index = index
        self.deadline = deadline
        self.request_sent = False
        self.received = b""


def measure_tcp(
    host: str,
    port: int,
    nonce: str,
    count: int,
    interval: float,
    timeout: float,
    parallel: int,
) -> JSONDict:
    """``count`` connections (at most ``parallel`` open at once), each sending the nonce line
    and reading the listener's answer. TCP hides a lost packet by sending it again: a
    connection whose SYN, SYN-ACK or request was sent again (``tcpi_total_retrans`` on either
    end, the listener's in its answer) counts as lost too, as does one that failed."""
    family, sockaddr = resolve(host, port, socket.SOCK_STREAM)
    tally = Tally(f"tcp {host} port {port}")
    line = nonce.encode() + b"\n"
    selector = selectors.DefaultSelector()
    open_now: dict[int, _Connection] = {}
    stopped = False

    def finish(conn: _Connection, kind: str | None = None, text: str = "") -> None:
        selector.unregister(conn.sock)
        del open_now[conn.index]
        if kind is not None:
            tally.error(kind, f"{tally.where}: {text}")
        elif not conn.received:
            tally.error("EPROTO", f"{tally.where}: closed by the listener without an answer")
        else:
            try:
                reply = parse_listener_reply(conn.received, nonce, tally.where)
            except RequestError as exc:
                tally.wrong += 1
                tally.error("EPROTO", str(exc))
            else:
                again = tcp_retransmissions(conn.sock) or 0
                peer_again = reply.get("retrans")
                peer_again = peer_again if isinstance(peer_again, int) else 0
                tally.answer(reply, retransmitted=again + peer_again > 0)
        conn.sock.close()

    def process(events: list[tuple[selectors.SelectorKey, int]]) -> None:
        for key, _mask in events:
            conn = key.data
            if conn.index not in open_now:
                continue
            if not conn.request_sent:
                code = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    finish(conn, errno_name(code) or "OSError", os.strerror(code))
                    continue
                try:
                    conn.sock.send(line)  # one short line: the new socket's buffer takes it
                except OSError as exc:
                    finish(conn, errno_name(exc.errno) or "OSError", describe_os_error(exc))
                    continue
                conn.request_sent = True
                selector.modify(conn.sock, selectors.EVENT_READ, conn)
                continue
            try:
                chunk = conn.sock.recv(4096)
            except OSError as exc:
                finish(conn, errno_name(exc.errno) or "OSError", describe_os_error(exc))
                continue
            conn.received += chunk
            if not chunk or b"\n" in conn.received or len(conn.received) > 4096:
                finish(conn)

    with selector:
        while not stopped or open_now:
            now = time.monotonic()
            while not stopped and len(open_now) < parallel:
                if tally.sent == count or tally.silent_for(timeout):
                    stopped = True
                    break
                if now < tally.started + tally.sent * interval:
                    break
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setblocking(False)
                conn = _Connection(sock, tally.sent, now + timeout)
                tally.sent += 1
                code = sock.connect_ex(sockaddr)
                if code not in (0, errno.EINPROGRESS):
                    tally.error(
                        errno_name(code) or "OSError", f"{tally.where}: {os.strerror(code)}"
                    )
                    sock.close()
                    continue
                if tally.local is None:
                    with contextlib.suppress(OSError):
                        tally.local = normalize_ip(sock.getsockname()[0])
                open_now[conn.index] = conn
                selector.register(sock, selectors.EVENT_WRITE, conn)
            waits = [c.deadline for c in open_now.values()]
            if not stopped and len(open_now) < parallel:
                waits.append(tally.started + tally.sent * interval)
            if not waits:
                continue
            process(selector.select(max(0.0, min(waits) - time.monotonic())))
            now = time.monotonic()
            if any(c.deadline <= now for c in open_now.values()):
                # What is already there came in time, whenever this thread got the CPU back.
                process(selector.select(0))
            for conn in [c for c in open_now.values() if c.deadline <= now]:
                what = "no answer" if conn.request_sent else "connect timed out"
                finish(conn, "ETIMEDOUT", f"{what} after {timeout}s")
    return tally.result(count)
