"""The serve side: what the TCP, UDP and ICMP listeners saw (`RecordBook`), the listener
loops (echo replies, transfers received), and opening their sockets (port 0: a free one).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import socket
import struct
import threading
import time
from typing import TYPE_CHECKING, Any

from .exchanges import tcp_retransmissions
from .netinfo import ICMP_ECHO_REQUEST, ICMPV6_ECHO_REQUEST, INTERFACES, IP_PKTINFO, normalize_ip
from .protocol import (
    EPHEMERAL_BIND_ATTEMPTS,
    FILE_CHUNK,
    LISTENER_READ_TIMEOUT,
    LISTENER_RECEIVE_BUFFER,
    MAX_NONCE_LENGTH,
    MAX_RECORDS,
    MAX_TCP_CLIENTS,
    MAX_TRANSFER_BYTES,
    TCP_BACKLOG,
    TRANSFER_MAGIC,
    TRANSFER_MAX_SECONDS,
    UDP_RECEIVE_BYTES,
    RequestError,
    brief,
    describe_os_error,
    find_nonce,
    is_valid_nonce,
    log,
    printable,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    JSONDict = dict[str, Any]

# --------------------------------------------------------------------------------------------
# Records of what the listeners saw.


class RecordBook:
    """Thread-safe, bounded memory of (nonce, proto, peer) seen by the listeners.

    Each distinct record is kept once, however often it arrives (a UDP datagram resent, the
    hundred probes of a loss measurement carrying one nonce): memory and answers grow with the
    exchanges, not with their packets. A record seen again counts as new for the bound, so the
    oldest dropped is the one least recently seen."""

    def __init__(self, limit: int = MAX_RECORDS) -> None:
        self._changed = threading.Condition()
        self._limit = limit
        # (key, proto, peer) in the order last seen: a nonce (str), or an ICMP payload (bytes).
        self._records: dict[tuple[str | bytes, str, str], None] = {}

    def _add(self, record: tuple[str | bytes, str, str]) -> bool:
        with self._changed:
            known = self._records.pop(record, False) is None
            self._records[record] = None
            while len(self._records) > self._limit:
                del self._records[next(iter(self._records))]
            if not known:
                self._changed.notify_all()
            return not known

    def add(self, nonce: str, proto: str, peer: str) -> bool:
        """Record a nonce a listener saw; True when the record is new."""
        return self._add((nonce, proto, peer))

    def add_payload(self, payload: bytes, proto: str, peer: str) -> bool:
        """Record an ICMP payload holding a nonce; True when the record is new."""
        return self._add((bytes(payload), proto, peer))

    def _matching(self, nonce: str | None, prefix: str | None) -> list[JSONDict]:
        found: list[JSONDict] = []
        needle = (nonce if nonce is not None else str(prefix)).encode()
        for key, proto, peer in self._records:
            if isinstance(key, bytes):
                if needle not in key:
                    continue
                name = nonce if nonce is not None else find_nonce(key, needle)
            elif nonce is not None:
                name = key if key == nonce else None
            else:
                name = key if key.startswith(str(prefix)) else None
            if name is not None:
                found.append({"proto": proto, "peer": peer, "nonce": name})
        return found

    def find(
        self,
        nonce: str | None = None,
        prefix: str | None = None,
        expect: Sequence[str] = (),
        wait: float = 0.0,
    ) -> tuple[list[JSONDict], list[str]]:
        """Records for ``nonce`` (or every nonce starting with ``prefix``) and the ``expect``ed
        nonces without one. Waits up to ``wait`` seconds for the first record, or with
        ``expect`` until each of those has one.

        The listener threads record concurrently with the request that caused the traffic (an
        echo reply can be read before the recorder thread has stored the request).
        """
        with self._changed:
            found: list[JSONDict] = []
            missing: list[str] = list(expect)

            def done() -> bool:
                found[:] = self._matching(nonce, prefix)
                if expect:
                    names = {record["nonce"] for record in found}
                    missing[:] = [name for name in expect if name not in names]
                    return not missing
                return bool(found)

            self._changed.wait_for(done, timeout=wait)
            return found, missing


# --------------------------------------------------------------------------------------------
# Listeners (serve side).


def _nonce_of(data: bytes) -> str:
    return data.split(b"\n", 1)[0].strip().decode("utf-8", "replace")[:MAX_NONCE_LENGTH]


def _listener_reply(nonce: str, peer: str, extra: JSONDict | None = None) -> bytes:
    # "server": which pod answered, so a client going through a Service knows the endpoint.
    reply: JSONDict = {"nonce": nonce, "peer": peer, "server": os.environ.get("POD_NAME")}
    reply.update(extra or {})
    return json.dumps(reply).encode() + b"\n"


def _wait_or_stop(stop: threading.Event, seconds: float) -> None:
    """Back off after an unexpected socket error without spinning."""
    stop.wait(seconds)


def accept_loop(
    sock: socket.socket,
    stop: threading.Event,
    slots: threading.BoundedSemaphore,
    label: str,
    handler_args: Callable[[socket.socket, Any], tuple[Any, ...]],
    handle: Callable[..., None],
) -> None:
    """Accept connections until ``stop``, each handled on its own thread, at most ``slots`` at
    once: while every slot is busy, new clients wait in the kernel's backlog (bounded), not
    refused; socket errors back off instead of spinning."""
    while not stop.is_set():
        if not slots.acquire(timeout=0.5):
            continue
        try:
            conn, address = sock.accept()
        except OSError as exc:
            slots.release()
            log(f"{label} accept: {describe_os_error(exc)}")
            _wait_or_stop(stop, 0.2)
            continue
        if not _start_handler(handle, handler_args(conn, address)):
            conn.close()
            slots.release()


def _read_header(conn: socket.socket, deadline: float, limit: int = 512) -> tuple[bytes, bytes]:
    """The first line a client sends (without the newline) and whatever followed it in the same
    reads; at most ``limit`` bytes, by ``deadline`` (a slow client does not hold a slot)."""
    data = b""
    while b"\n" not in data and len(data) < limit:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("no line within the read timeout")  # noqa: UP041
        conn.settimeout(remaining)
        chunk = conn.recv(limit)
        if not chunk:
            break
        data += chunk
    line, _, rest = data.partition(b"\n")
    return line, rest


def serve_tcp(sock: socket.socket, book: RecordBook, stop: threading.Event) -> None:
    slots = threading.BoundedSemaphore(MAX_TCP_CLIENTS)

    def handle(conn: socket.socket, peer: str) -> None:
        try:
            with conn:
                line, rest = _read_header(conn, time.monotonic() + LISTENER_READ_TIMEOUT)
                if line.startswith(TRANSFER_MAGIC + b" "):
                    receive_transfer(conn, peer, line, rest, book)
                    return
                nonce = line.strip().decode("utf-8", "replace")[:MAX_NONCE_LENGTH]
                # One log line per record, not per probe: a loss measurement's hundred
                # probes must not wait on the container log.
                if not nonce or book.add(nonce, "tcp", peer):
                    log(f"listener tcp nonce={printable(nonce) if nonce else '-'} peer={peer}")
                # Our SYN-ACKs (and anything else) sent again so far: the client's probe of a
                # measured request counts a lost SYN-ACK by it.
                extra = {"retrans": tcp_retransmissions(conn)}
                conn.sendall(_listener_reply(nonce, peer, extra))
        except OSError as exc:
            log(f"listener tcp peer={peer}: {describe_os_error(exc)}")
        finally:
            slots.release()

    accept_loop(
        sock,
        stop,
        slots,
        "listener tcp",
        lambda conn, address: (conn, normalize_ip(address[0])),
        handle,
    )


def _parse_transfer_header(line: bytes) -> tuple[str, int]:
    """``NETCONFORM-TRANSFER <nonce> <size>`` (a nonce holds no spaces: never a nonce line)."""
    fields = line.decode("utf-8", "replace").split(" ")
    if len(fields) != 3 or not is_valid_nonce(fields[1]) or not fields[2].isdigit():
        raise RequestError(f"bad transfer header {brief(line)}")
    size = int(fields[2])
    if size > MAX_TRANSFER_BYTES:
        raise RequestError(f"transfer of {size} bytes; at most {MAX_TRANSFER_BYTES}")
    return fields[1], size


def receive_transfer(
    conn: socket.socket, peer: str, line: bytes, rest: bytes, book: RecordBook
) -> None:
    """Read exactly the announced bytes (hashed as they come, never buffered whole), bounded
    in time and silence; answer ``{nonce, peer, bytes, sha256, mtu}`` with what arrived."""
    try:
        nonce, size = _parse_transfer_header(line)
    except RequestError as exc:
        log(f"listener tcp transfer peer={peer}: {exc}")
        conn.sendall(json.dumps({"error": str(exc), "peer": peer}).encode() + b"\n")
        return
    book.add(nonce, "tcp", peer)
    digest = hashlib.sha256()
    first = rest[:size]
    digest.update(first)
    received = len(first)
    buffer = bytearray(FILE_CHUNK)
    view = memoryview(buffer)
    started = time.monotonic()
    deadline = started + TRANSFER_MAX_SECONDS
    ending = "complete"
    conn.settimeout(LISTENER_READ_TIMEOUT)
    while received < size:
        if time.monotonic() > deadline:
            ending = f"cut after {TRANSFER_MAX_SECONDS:.0f}s"
            break
        try:
            count = conn.recv_into(view, min(len(buffer), size - received))
        except socket.timeout:  # noqa: UP041  (not TimeoutError on Python < 3.10)
            ending = f"silent for {LISTENER_READ_TIMEOUT:.0f}s"
            break
        if not count:
            ending = "closed by the peer"
            break
        digest.update(view[:count])
        received += count
    _iface, mtu = INTERFACES.holding(conn.getsockname()[0])
    log(
        f"listener tcp transfer nonce={nonce} peer={peer} bytes={received}/{size} {ending} "
        f"{time.monotonic() - started:.2f}s"
    )
    extra = {"bytes": received, "sha256": digest.hexdigest(), "mtu": mtu}
    conn.settimeout(LISTENER_READ_TIMEOUT)
    conn.sendall(_listener_reply(nonce, peer, extra))


def _enable_pktinfo(sock: socket.socket) -> bool:
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    except OSError:
        return False
    return True


def _pktinfo(ancillary: list[tuple[int, int, bytes]]) -> tuple[str | None, list[Any]]:
    """The address a datagram was sent to, and ancillary data making the reply leave from it."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            _ifindex, _spec_dst, header_dst = struct.unpack("=I4s4s", data[:12])
            reply = [(level, kind, struct.pack("=I4s4s", 0, header_dst, b"\0" * 4))]
            return socket.inet_ntop(socket.AF_INET, header_dst), reply
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 20:
            return socket.inet_ntop(socket.AF_INET6, data[:16]), [(level, kind, data[:20])]
    return None, []


def serve_udp(sock: socket.socket, book: RecordBook, stop: threading.Event) -> None:
    # Without pktinfo a reply from a multi-address host may leave from another address, and the
    # client's connected socket would drop it.
    use_pktinfo = _enable_pktinfo(sock)
    ancillary_size = socket.CMSG_SPACE(64)
    while not stop.is_set():
        try:
            data, ancillary, _flags, address = sock.recvmsg(UDP_RECEIVE_BYTES, ancillary_size)
        except OSError as exc:
            log(f"listener udp receive: {describe_os_error(exc)}")
            _wait_or_stop(stop, 0.2)
            continue
        peer = normalize_ip(address[0])
        nonce = _nonce_of(data)
        new = book.add(nonce, "udp", peer) if nonce else True
        local, pktinfo = _pktinfo(ancillary) if use_pktinfo else (None, [])
        _iface, mtu = INTERFACES.holding(local)
        if new:  # one log line per record: the log must not hold up the next datagram
            log(
                f"listener udp nonce={printable(nonce) if nonce else '-'} peer={peer} bytes={len(data)}"
            )
        extra = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "mtu": mtu}
        reply = _listener_reply(nonce, peer, extra)
        try:
            if pktinfo:
                try:
                    sock.sendmsg([reply], pktinfo, 0, address)
                    continue
                except OSError:
                    pass  # e.g. a broadcast destination: let the kernel pick the source
            sock.sendto(reply, address)
        except OSError as exc:
            log(f"listener udp reply to {peer}: {describe_os_error(exc)}")


def serve_icmp_records(sock: socket.socket, book: RecordBook, stop: threading.Event) -> None:
    """Record echo requests arriving at this namespace (the kernel still answers them)."""
    is_v6 = sock.family == socket.AF_INET6
    proto = "icmpv6" if is_v6 else "icmp"
    while not stop.is_set():
        try:
            packet, address = sock.recvfrom(1 << 16)
        except OSError as exc:
            log(f"listener {proto} receive: {describe_os_error(exc)}")
            _wait_or_stop(stop, 0.2)
            continue
        if is_v6:
            message, source = packet, normalize_ip(address[0])
            wanted = ICMPV6_ECHO_REQUEST
        else:
            header_length = (packet[0] & 0x0F) * 4 if packet else 0
            message = packet[header_length:]
            source = socket.inet_ntop(socket.AF_INET, packet[12:16]) if len(packet) >= 20 else ""
            wanted = ICMP_ECHO_REQUEST
        if len(message) <= 8 or message[0] != wanted:
            continue
        payload = message[8:264]
        if not book.add_payload(payload, proto, source):
            continue  # logged when first seen
        # Log only text payloads (our nonces); ping(8) pads with binary bytes on every echo.
        shown = payload.split(b"\n", 1)[0][:64].decode("latin-1")
        if shown.isascii() and shown.isprintable():
            log(f"listener {proto} echo request peer={source} payload={shown}")


def _start_handler(target: Callable[..., None], args: tuple[Any, ...]) -> bool:
    try:
        threading.Thread(target=target, args=args, daemon=True).start()
    except RuntimeError as exc:  # "can't start new thread": shed this client, keep serving
        log(f"cannot start a handler thread: {exc}")
        return False
    return True


# --------------------------------------------------------------------------------------------
# Opening the listeners' sockets.


def _bind_listener(family: socket.AddressFamily, kind: int, port: int) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # One socket per family: peers show as plain IPv4, never as ::ffff:a.b.c.d.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
        if kind == socket.SOCK_STREAM:
            sock.listen(TCP_BACKLOG)
        else:
            # Room for the datagrams of many loss measurements at once while the listener
            # thread waits for the CPU (the kernel caps this at net.core.rmem_max).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, LISTENER_RECEIVE_BUFFER)
    except OSError:
        sock.close()
        raise
    return sock


def open_proto_listeners(proto: str, port: int) -> list[socket.socket]:
    """The IPv4 listener of ``proto`` and, where the kernel has IPv6, the IPv6 one on the same
    port. Port 0: IPv4 picks a free port and IPv6 binds it; if IPv6 loses that port to a race,
    both are tried again (bounded)."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    attempts = EPHEMERAL_BIND_ATTEMPTS if port == 0 else 1
    for attempt in range(1, attempts + 1):
        ipv4 = _bind_listener(socket.AF_INET, kind, port)
        chosen = ipv4.getsockname()[1]
        try:
            ipv6 = _bind_listener(socket.AF_INET6, kind, chosen)
        except OSError as exc:
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                log(f"no IPv6 {proto} listener: {describe_os_error(exc)}")
                return [ipv4]
            ipv4.close()
            if port == 0 and exc.errno == errno.EADDRINUSE and attempt < attempts:
                log(f"{proto} port {chosen} is taken for IPv6; picking another (try {attempt})")
                continue
            raise
        return [ipv4, ipv6]
    raise OSError(errno.EADDRINUSE, f"no free {proto} port for IPv4 and IPv6 together")


def open_listeners(tcp_port: int, udp_port: int) -> tuple[list[socket.socket], JSONDict, JSONDict]:
    """TCP and UDP listeners, one per address family the kernel supports (IPv4 always); what
    they serve (``listeners``) and their real ports (``ports``)."""
    sockets: list[socket.socket] = []
    listeners: JSONDict = {"tcp": [], "udp": [], "icmp": []}
    ports: JSONDict = {}
    try:
        for proto, port in (("tcp", tcp_port), ("udp", udp_port)):
            for sock in open_proto_listeners(proto, port):
                sockets.append(sock)
                bound = sock.getsockname()[1]
                ports[proto] = bound
                shown = "[::]" if sock.family == socket.AF_INET6 else "0.0.0.0"
                listeners[proto].append(f"{shown}:{bound}")
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets, listeners, ports


def open_icmp_recorders() -> list[socket.socket]:
    recorders: list[socket.socket] = []
    for family, proto, label in (
        (socket.AF_INET, socket.IPPROTO_ICMP, "icmp"),
        (socket.AF_INET6, socket.IPPROTO_ICMPV6, "icmpv6"),
    ):
        try:
            recorders.append(socket.socket(family, socket.SOCK_RAW, proto))
        except OSError as exc:
            # Without NET_RAW the pod still serves TCP/UDP; `seen` then lacks ICMP records.
            log(f"no {label} recorder: {describe_os_error(exc)}")
    return recorders
