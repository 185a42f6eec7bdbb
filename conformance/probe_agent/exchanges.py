"""The client side of one exchange, run in the serve process on request: a TCP or UDP
connect with a nonce (sized, unfragmented where asked), a bulk transfer, an ICMP echo.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import os
import select
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

from .netinfo import (
    ICMP_DEST_UNREACH,
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    ICMP_FRAG_NEEDED,
    ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST,
    ICMPV6_PACKET_TOO_BIG,
    TCP_INFO,
    TCP_INFO_BYTES,
    TCP_MAXSEG,
    TCPI_TOTAL_RETRANS_OFFSET,
    TIOCOUTQ,
    SizedPacket,
    normalize_ip,
    path_mtu,
    resolve,
    route_interface,
    route_lookup,
    set_dont_fragment,
)
from .protocol import (
    TRANSFER_MAGIC,
    UDP_RESEND_INTERVAL,
    RequestError,
    brief,
    errno_name,
    iter_deterministic_chunks,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    JSONDict = dict[str, Any]


def _read_line(sock: socket.socket, deadline: float) -> bytes:
    data = b""
    while b"\n" not in data and len(data) < 4096:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RequestError("no answer from the listener before the timeout", "ETIMEDOUT")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(4096)
        except socket.timeout as exc:  # noqa: UP041  (not TimeoutError on Python < 3.10)
            raise RequestError(
                "no answer from the listener before the timeout", "ETIMEDOUT"
            ) from exc
        if not chunk:
            break
        data += chunk
    return data


def parse_listener_reply(data: bytes, nonce: str, where: str) -> JSONDict:
    """The listener's JSON answer line; ``RequestError`` unless it is for ``nonce``."""
    try:
        reply = json.loads(data.split(b"\n", 1)[0].decode())
    except ValueError as exc:
        raise RequestError(
            f"{where} answered {data[:80]!r}, not the agent's JSON line",
            None,
            {"wrong_answer": True},
        ) from exc
    if not isinstance(reply, dict) or reply.get("nonce") != nonce:
        raise RequestError(
            f"{where} answered {brief(reply)}, expected nonce {nonce!r}",
            None,
            {"wrong_answer": True},
        )
    if not isinstance(reply.get("peer"), str):
        raise RequestError(
            f"{where} answered {brief(reply)} without a peer", None, {"wrong_answer": True}
        )
    return reply


def connect_tcp(host: str, port: int, nonce: str, timeout: float) -> JSONDict:
    family, sockaddr = resolve(host, port, socket.SOCK_STREAM)
    where = f"tcp {host} port {port}"
    deadline = time.monotonic() + timeout
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(sockaddr)
        except socket.timeout as exc:  # noqa: UP041  (not TimeoutError on Python < 3.10)
            raise RequestError(f"{where}: connect timed out after {timeout}s", "ETIMEDOUT") from exc
        local = normalize_ip(sock.getsockname()[0])
        sock.sendall(nonce.encode() + b"\n")
        reply = parse_listener_reply(_read_line(sock, deadline), nonce, where)
    return {"peer_seen": reply["peer"], "local": local, "server": reply.get("server")}


def _too_big(
    where: str, packet: SizedPacket | None, df: bool, pmtu: int | None, cause: str
) -> RequestError:
    details = packet.details() if packet is not None else {}
    details["path_mtu"] = pmtu
    sizes = packet.text(df) if packet is not None else "packet"
    return RequestError(f"{where}: EMSGSIZE {cause}: {sizes}; path MTU {pmtu}", "EMSGSIZE", details)


def connect_udp(
    host: str,
    port: int,
    nonce: str,
    timeout: float,
    size: int | str | None = None,
    df: bool = False,
) -> JSONDict:
    family, sockaddr = resolve(host, port, socket.SOCK_DGRAM)
    where = f"udp {host} port {port}"
    packet = SizedPacket(nonce, size, family, sockaddr[0], 8) if size is not None else None
    payload = packet.payload if packet is not None else nonce.encode()
    deadline = time.monotonic() + timeout
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        if df:
            set_dont_fragment(sock, family)
        sock.connect(sockaddr)
        local = normalize_ip(sock.getsockname()[0])
        # UDP may drop a datagram: resend every half second until the timeout.
        for _attempt in range(int(timeout / UDP_RESEND_INTERVAL) + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                sock.send(payload)
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    raise _too_big(where, packet, df, path_mtu(sock, family), "on send") from exc
                raise
            wait_until = time.monotonic() + min(UDP_RESEND_INTERVAL, remaining)
            # Stale answers to other nonces arrive too.
            for _datagram in readable_until(sock, wait_until, 1000):
                try:
                    data = sock.recv(4096)
                except OSError as exc:
                    # A "fragmentation needed" for this connected socket's datagram.
                    if exc.errno == errno.EMSGSIZE:
                        pmtu = path_mtu(sock, family)
                        raise _too_big(where, packet, df, pmtu, "reported by the path") from exc
                    raise
                try:
                    reply = parse_listener_reply(data, nonce, where)
                except RequestError:
                    continue  # a late answer to someone else's nonce
                if packet is None:
                    return {
                        "peer_seen": reply["peer"],
                        "local": local,
                        "server": reply.get("server"),
                    }
                return _judge_sized_udp(where, packet, df, reply, local)
    sizes = f" ({packet.text(df)})" if packet is not None else ""
    details = packet.details() if packet is not None else {}
    raise RequestError(f"{where}: no answer within {timeout}s{sizes}", "ETIMEDOUT", details)


def _judge_sized_udp(
    where: str, packet: SizedPacket, df: bool, reply: JSONDict, local: str
) -> JSONDict:
    result = packet.details()
    result.update({"peer_mtu": reply.get("mtu"), "peer_seen": reply["peer"], "local": local})
    received, digest = reply.get("bytes"), reply.get("sha256")
    if received != len(packet.payload) or digest != packet.sha256:
        same = "the same" if digest == packet.sha256 else "a different"
        raise RequestError(
            f"{where}: the listener received {received} of {len(packet.payload)} payload bytes "
            f"with {same} sha256 ({packet.text(df, reply.get('mtu'))})",
            None,
            result,
        )
    return result


def tcp_retransmissions(sock: socket.socket) -> int | None:
    """Segments this TCP socket sent again so far (``tcpi_total_retrans``: SYNs, SYN-ACKs an
    accepted socket inherits from its handshake, data); None where TCP_INFO is not served."""
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, TCP_INFO_BYTES)
    except OSError:
        return None
    if len(raw) < TCP_INFO_BYTES:
        return None
    return int(struct.unpack_from("=I", raw, TCPI_TOTAL_RETRANS_OFFSET)[0])


def _tcp_unacknowledged(sock: socket.socket) -> int:
    """Bytes in the socket's send queue that the peer has not acknowledged yet."""
    try:
        raw = fcntl.ioctl(sock.fileno(), TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("=i", raw)[0])


def transfer(host: str, port: int, nonce: str, size: int, timeout: float) -> JSONDict:
    """Send ``size`` deterministic bytes (seeded by the nonce) to an agent's TCP listener and
    judge its answer: ok only when every byte arrived with the expected digest."""
    family, sockaddr = resolve(host, port, socket.SOCK_STREAM)
    where = f"tcp {host} port {port}"
    iface, mtu = route_interface(sockaddr[0])
    header = TRANSFER_MAGIC + f" {nonce} {size}\n".encode()
    expected = hashlib.sha256()
    started = time.monotonic()
    deadline = started + timeout
    details: JSONDict = {"bytes_sent": 0, "mtu": mtu, "iface": iface, "mss": None}
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(sockaddr)
        except socket.timeout as exc:  # noqa: UP041  (not TimeoutError on Python < 3.10)
            raise RequestError(
                f"{where}: connect timed out after {timeout}s", "ETIMEDOUT", details
            ) from exc
        local = normalize_ip(sock.getsockname()[0])
        with contextlib.suppress(OSError):
            details["mss"] = sock.getsockopt(socket.IPPROTO_TCP, TCP_MAXSEG)
        sent = 0
        try:
            sock.sendall(header)
            for chunk in iter_deterministic_chunks(nonce, size):
                expected.update(chunk)
                view = memoryview(chunk)
                while view:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise socket.timeout("transfer deadline")  # noqa: UP041
                    sock.settimeout(remaining)
                    count = sock.send(view)
                    sent += count
                    view = view[count:]
            details["bytes_sent"] = sent
            reply = parse_listener_reply(_read_line(sock, deadline), nonce, where)
        except (socket.timeout, RequestError) as exc:  # noqa: UP041
            if isinstance(exc, RequestError) and exc.errno_name != "ETIMEDOUT":
                exc.details.update(details)
                raise
            details["bytes_sent"] = sent
            # Acknowledged by the peer's kernel = sent into the socket - still unacknowledged.
            through = max(0, sent - _tcp_unacknowledged(sock))
            details["bytes_acknowledged"] = through
            raise RequestError(
                f"{where}: transfer stalled: {through} of {size} bytes acknowledged by the "
                f"peer within {timeout}s ({sent} sent; local {iface} MTU {mtu}, "
                f"MSS {details['mss']}); a path-MTU blackhole looks like this",
                "ETIMEDOUT",
                details,
            ) from exc
    received, digest = reply.get("bytes"), reply.get("sha256")
    result: JSONDict = {
        "bytes_sent": sent,
        "bytes_received": received,
        "sha256_expected": expected.hexdigest(),
        "sha256_received": digest,
        "seconds": round(time.monotonic() - started, 4),
        "mtu": mtu,
        "iface": iface,
        "peer_mtu": reply.get("mtu"),
        "mss": details["mss"],
        "peer_seen": reply["peer"],
        "local": local,
    }
    if received != size or digest != result["sha256_expected"]:
        raise RequestError(
            f"{where}: the listener received {received} of {size} bytes, sha256 "
            f"{'matches' if digest == result['sha256_expected'] else 'differs'} "
            f"(local {iface} MTU {mtu}, peer MTU {reply.get('mtu')}, MSS {details['mss']})",
            None,
            result,
        )
    return result


def icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    words: tuple[int, ...] = struct.unpack(f"!{len(data) // 2}H", data)
    total = sum(words)
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


icmp_sequence = itertools.count(1)
# Not the pid: two containers of a pod share the network namespace, and each may be PID 1.
_ICMP_IDENTIFIER = int.from_bytes(os.urandom(2), "big")


def readable_until(sock: socket.socket, deadline: float, bound: int) -> Iterator[None]:
    """Yield each time ``sock`` has something to read before ``deadline`` (`time.monotonic`),
    at most ``bound`` times: a socket that others' traffic keeps readable cannot hold a
    request past its deadline or loop forever."""
    for _ in range(bound):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        readable, _, _ = select.select([sock], [], [], remaining)
        if not readable:
            return
        yield


def open_icmp_socket(family: socket.AddressFamily) -> tuple[socket.socket, bool]:
    """A raw ICMP socket, or an unprivileged ping socket when NET_RAW is missing."""
    proto = socket.IPPROTO_ICMPV6 if family == socket.AF_INET6 else socket.IPPROTO_ICMP
    try:
        return socket.socket(family, socket.SOCK_RAW, proto), True
    except PermissionError:
        pass
    try:
        return socket.socket(family, socket.SOCK_DGRAM, proto), False
    except PermissionError as exc:
        raise RequestError(
            "cannot send ICMP: no NET_RAW capability, and ping sockets are not allowed for this "
            "group (net.ipv4.ping_group_range)",
            errno_name(exc.errno),
        ) from exc


def _too_big_report(message: bytes, is_v6: bool, identifier: int, sequence: int) -> int | None:
    """The next-hop MTU when ``message`` is "fragmentation needed" / "packet too big" about our
    echo request (identifier, sequence); else None."""
    if is_v6:
        if len(message) < 8 + 40 + 8 or message[0] != ICMPV6_PACKET_TOO_BIG:
            return None
        reported = struct.unpack("!I", message[4:8])[0]
        original = message[48:56]
        wanted = ICMPV6_ECHO_REQUEST
    else:
        if len(message) < 8 + 20 + 8 or message[:2] != bytes((ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED)):
            return None
        reported = struct.unpack("!H", message[6:8])[0]
        inner_header = (message[8] & 0x0F) * 4
        original = message[8 + inner_header : 8 + inner_header + 8]
        wanted = ICMP_ECHO_REQUEST
    if len(original) < 8 or original[0] != wanted:
        return None
    _, _, _, original_id, original_sequence = struct.unpack("!BBHHH", original)
    if (original_id, original_sequence) != (identifier, sequence):
        return None
    return int(reported)


def send_icmp_echo(
    host: str, nonce: str, timeout: float, size: int | str | None = None, df: bool = False
) -> JSONDict:
    family, sockaddr = resolve(host, 0, socket.SOCK_RAW)
    is_v6 = family == socket.AF_INET6
    request_type, reply_type = (
        (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY) if is_v6 else (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY)
    )
    where = f"icmp {host}"
    packet = SizedPacket(nonce, size, family, sockaddr[0], 8) if size is not None else None
    identifier = _ICMP_IDENTIFIER
    sequence = next(icmp_sequence) & 0xFFFF
    payload = packet.payload if packet is not None else nonce.encode()
    header = struct.pack("!BBHHH", request_type, 0, 0, identifier, sequence)
    if not is_v6:  # the kernel computes ICMPv6 checksums itself
        checksum = icmp_checksum(header + payload)
        header = struct.pack("!BBHHH", request_type, 0, checksum, identifier, sequence)
    deadline = time.monotonic() + timeout
    sock, is_raw = open_icmp_socket(family)
    with sock:
        if df:
            set_dont_fragment(sock, family)
        try:
            sock.sendto(header + payload, sockaddr)
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                learned = route_lookup(str(sockaddr[0]).split("%", 1)[0])[1]
                raise _too_big(where, packet, df, learned, "on send") from exc
            raise
        for _reply in readable_until(sock, deadline, 10000):  # other ICMP traffic arrives too
            received, address = sock.recvfrom(1 << 16)
            if is_raw and not is_v6:
                message = received[(received[0] & 0x0F) * 4 :]
                source = socket.inet_ntop(socket.AF_INET, received[12:16])
            else:
                message, source = received, address[0]
            if is_raw and packet is not None:
                reported = _too_big_report(message, is_v6, identifier, sequence)
                if reported is not None:
                    raise _too_big(where, packet, df, reported, f"reported by {source}")
            if len(message) < 8 or message[0] != reply_type:
                continue
            _, _, _, reply_id, reply_sequence = struct.unpack("!BBHHH", message[:8])
            # Ping sockets rewrite the identifier; the sequence and payload still match.
            if reply_sequence != sequence or (is_raw and reply_id != identifier):
                continue
            if packet is None:
                if message[8:] != payload:
                    continue
                return {"reply_from": normalize_ip(source)}
            if not message[8:].startswith(packet.head):
                continue  # another agent of this network namespace, same sequence number
            result = packet.details()
            result.update({"reply_from": normalize_ip(source), "reply_bytes": len(message) - 8})
            if message[8:] != payload:
                raise RequestError(
                    f"{where}: the echo reply carried {len(message) - 8} payload bytes, not the "
                    f"{len(payload)} sent unchanged ({packet.text(df)})",
                    None,
                    result,
                )
            return result
    sizes = f" ({packet.text(df)})" if packet is not None else ""
    details = packet.details() if packet is not None else {}
    raise RequestError(
        f"no ICMP echo reply from {host} within {timeout}s{sizes}", "ETIMEDOUT", details
    )
