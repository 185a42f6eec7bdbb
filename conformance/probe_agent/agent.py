#!/usr/bin/env python3
"""The netconform probe agent: one self-contained program run in every probe container.

It is shipped to pods in ConfigMap ``netconform-agent`` (key ``agent.py``) and run with the probe
image's own ``python3`` (3.8 or newer), so it imports only the standard library at import time.
scapy is imported lazily, once, by the ``serve`` process, and only for packet captures.

Subcommands (see docs/architecture.md, "The probe agent protocol"):

``serve``
    Long-running. TCP and UDP listeners on every address of the pod (IPv4 and IPv6 where the
    kernel has it), raw ICMP/ICMPv6 sockets recording echo requests, and a control unix socket
    taking JSON requests. Logs one line per request on stderr (the container log).
``ping``
    Exit 0 when the serve process answers (readiness probe), 1 otherwise.
``call``
    Reads a JSON list of requests on stdin, forwards it to the serve process, writes the JSON
    list of responses (same order) on stdout and exits 0. Exits 2 on bad input and 3 when no
    serve process answers, with the reason on stderr.

Every response holds ``ok`` and ``op``; when ``ok`` is false it holds ``error`` (text for a
person) and, when the failure came from the kernel, ``errno`` (its name, e.g. ``ETIMEDOUT``).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import ipaddress
import itertools
import json
import os
import platform
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    JSONDict = dict[str, Any]

DEFAULT_SOCKET = "/tmp/netconform-agent.sock"
DEFAULT_TCP_PORT = 8080
DEFAULT_UDP_PORT = 8081
ENV_KEYS = ("POD_NAME", "POD_NAMESPACE", "NODE_NAME", "POD_IP", "HOST_IP")

# Bounds: every buffer, list and wait in the agent has one, so a misbehaving peer cannot grow it.
MAX_CONTROL_BYTES = 1 << 20
MAX_NONCE_LENGTH = 128
MAX_RECORDS = 10000
MAX_FILE_BYTES = 256 << 20
MAX_TIMEOUT = 120.0
MAX_CAPTURE_SECONDS = 300.0
MAX_CAPTURES = 32
MAX_PACKETS_PER_CAPTURE = 200
MAX_CONTROL_CLIENTS = 16
MAX_TCP_CLIENTS = 64
LISTENER_READ_TIMEOUT = 5.0
UDP_RESEND_INTERVAL = 0.5
FILE_CHUNK = 64 << 10

# Linux constants the socket module does not export on every Python version.
IP_PKTINFO = 8
SIOCGIFADDR = 0x8915
SIOCGIFNETMASK = 0x891B
SIOCGIFHWADDR = 0x8927
NETLINK_ROUTE = 0
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_GETADDR = 22
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFA_ADDRESS = 1
IFA_LOCAL = 2
ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129

_log_lock = threading.Lock()


def log(message: str) -> None:
    """One line on stderr, which becomes the container log."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with _log_lock:
        sys.stderr.write(f"{stamp} netconform-agent[{os.getpid()}] {message}\n")
        sys.stderr.flush()


class RequestError(Exception):
    """A request that cannot be served; becomes ``ok: false`` with this text (and errno name)."""

    def __init__(self, message: str, errno_name: str | None = None) -> None:
        super().__init__(message)
        self.errno_name = errno_name


# --------------------------------------------------------------------------------------------
# Deterministic file content (the suite computes the same digest without a pod).


def iter_deterministic_chunks(seed: str, size: int) -> Iterator[bytes]:
    """The bytes of ``deterministic_bytes(seed, size)``, in chunks of at most 64 KiB."""
    for index, start in enumerate(range(0, size, FILE_CHUNK)):
        length = min(FILE_CHUNK, size - start)
        yield hashlib.shake_256(f"netconform:{seed}:{index}".encode()).digest(length)


def deterministic_bytes(seed: str, size: int) -> bytes:
    """``size`` bytes that depend only on ``seed`` (what ``write_file`` writes)."""
    return b"".join(iter_deterministic_chunks(seed, size))


def expected_sha256(seed: str, size: int) -> str:
    """The sha256 hex digest ``write_file`` reports for ``seed`` and ``size``."""
    digest = hashlib.sha256()
    for chunk in iter_deterministic_chunks(seed, size):
        digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Request fields.


def field_str(request: JSONDict, name: str, default: str | None = None) -> str:
    value = request.get(name, default)
    if value is None:
        raise RequestError(f"missing field {name!r}")
    if not isinstance(value, str):
        raise RequestError(f"field {name!r} must be a string, got {type(value).__name__}")
    return value


def field_number(request: JSONDict, name: str, default: float, low: float, high: float) -> float:
    value = request.get(name, default)
    # bool is an int in Python; "timeout": true is a client bug, not 1 second.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"field {name!r} must be a number, got {value!r}")
    if not low <= value <= high:
        raise RequestError(f"field {name!r} must be between {low} and {high}, got {value}")
    return float(value)


def field_int(request: JSONDict, name: str, default: int | None, low: int, high: int) -> int:
    value = request.get(name, default)
    if value is None:
        raise RequestError(f"missing field {name!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"field {name!r} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise RequestError(f"field {name!r} must be between {low} and {high}, got {value}")
    return value


def field_proto(request: JSONDict) -> str:
    proto = field_str(request, "proto")
    if proto not in ("tcp", "udp"):
        raise RequestError(f"field 'proto' must be 'tcp' or 'udp', got {proto!r}")
    return proto


def field_nonce(request: JSONDict) -> str:
    nonce = field_str(request, "nonce")
    # The TCP listener reads one line and the capture matches raw bytes: keep nonces plain.
    if not 0 < len(nonce) <= MAX_NONCE_LENGTH or not nonce.isprintable() or " " in nonce:
        raise RequestError(
            f"field 'nonce' must be 1..{MAX_NONCE_LENGTH} printable characters without spaces"
        )
    return nonce


def field_seed(request: JSONDict) -> str:
    seed = request.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, (str, int)):
        raise RequestError(f"field 'seed' must be a string or an integer, got {seed!r}")
    return str(seed)


def errno_name(code: int | None) -> str | None:
    if code is None:
        return None
    return errno.errorcode.get(code, str(code))


def describe_os_error(exc: OSError) -> str:
    name = errno_name(exc.errno)
    text = exc.strerror or str(exc)
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{name}: {text}{where}" if name else f"{text}{where}"


# --------------------------------------------------------------------------------------------
# Addresses.


def normalize_ip(text: str) -> str:
    """The address as the listener should report it: IPv4-mapped IPv6 shown as plain IPv4."""
    address = text.split("%", 1)[0]
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return text
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return text


def family_of(host: str) -> socket.AddressFamily:
    """The address family of an IP literal ("" means IPv4 any)."""
    if host == "":
        return socket.AF_INET
    try:
        parsed = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError as exc:
        raise RequestError(f"field 'host' must be an IP address, got {host!r}") from exc
    return socket.AF_INET6 if parsed.version == 6 else socket.AF_INET


def resolve(host: str, port: int, socktype: int) -> tuple[socket.AddressFamily, Any]:
    """First address for ``host`` (an IP literal or a name); ``RequestError`` when none."""
    try:
        # getaddrinfo knows no ports for raw sockets: resolve as datagram, port 0 (ICMP).
        lookup_type = socket.SOCK_DGRAM if socktype == socket.SOCK_RAW else socktype
        infos = socket.getaddrinfo(host, port, 0, lookup_type)
    except socket.gaierror as exc:
        raise RequestError(f"cannot resolve {host!r}: {exc}", "EAI_NONAME") from exc
    if not infos:
        raise RequestError(f"cannot resolve {host!r}: no address", "EAI_NONAME")
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def _netlink_dump(message_type: int, body: bytes) -> list[tuple[int, bytes]]:
    """All messages of one rtnetlink dump request (type, payload after the netlink header)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as sock:
        sock.settimeout(2.0)
        sock.bind((0, 0))
        header = struct.pack(
            "=IHHII", 16 + len(body), message_type, NLM_F_REQUEST | NLM_F_DUMP, 1, 0
        )
        sock.send(header + body)
        messages: list[tuple[int, bytes]] = []
        for _ in range(10000):  # a dump of any real host ends long before this
            data = sock.recv(1 << 16)
            offset = 0
            while offset + 16 <= len(data):
                length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, offset)
                if length < 16:
                    break
                if kind == NLMSG_DONE:
                    return messages
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", data, offset + 16)
                    if code:
                        raise OSError(-code, os.strerror(-code))
                else:
                    messages.append((kind, data[offset + 16 : offset + length]))
                offset += (length + 3) & ~3
        raise OSError(errno.EMSGSIZE, "netlink dump did not end")


def _rtattrs(data: bytes, offset: int) -> dict[int, bytes]:
    attrs: dict[int, bytes] = {}
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        attrs.setdefault(kind, data[offset + 4 : offset + length])
        offset += (length + 3) & ~3
    return attrs


def _format_mac(raw: bytes) -> str | None:
    return ":".join(f"{octet:02x}" for octet in raw) if raw else None


def interfaces_from_netlink() -> list[JSONDict]:
    interfaces: dict[int, JSONDict] = {}
    for kind, payload in _netlink_dump(RTM_GETLINK, struct.pack("=BxHiII", 0, 0, 0, 0, 0)):
        if kind != RTM_NEWLINK or len(payload) < 16:
            continue
        _family, _type, index, _flags, _change = struct.unpack_from("=BxHiII", payload)
        attrs = _rtattrs(payload, 16)
        name = attrs.get(IFLA_IFNAME, b"").split(b"\0", 1)[0].decode("utf-8", "replace")
        interfaces[index] = {
            "name": name,
            "index": index,
            "mac": _format_mac(attrs.get(IFLA_ADDRESS, b"")),
            "addresses": [],
        }
    for kind, payload in _netlink_dump(RTM_GETADDR, struct.pack("=BBBBI", 0, 0, 0, 0, 0)):
        if kind != RTM_NEWADDR or len(payload) < 8:
            continue
        family, prefix, _flags, _scope, index = struct.unpack_from("=BBBBI", payload)
        attrs = _rtattrs(payload, 8)
        # For IPv4, IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on ptp).
        raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
        if (
            raw is None
            or index not in interfaces
            or family not in (socket.AF_INET, socket.AF_INET6)
        ):
            continue
        interfaces[index]["addresses"].append(f"{socket.inet_ntop(family, raw)}/{prefix}")
    return [interfaces[index] for index in sorted(interfaces)]


def _ioctl_ifreq(sock: socket.socket, request: int, name: str) -> bytes:
    ifreq = struct.pack("256s", name.encode()[:15])
    return fcntl.ioctl(sock.fileno(), request, ifreq)


def interfaces_from_proc() -> list[JSONDict]:
    """Fallback without netlink: ioctl for IPv4 (primary address only), /proc for IPv6."""
    interfaces: dict[str, JSONDict] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for index, name in socket.if_nameindex():
            entry: JSONDict = {"name": name, "index": index, "mac": None, "addresses": []}
            interfaces[name] = entry
            try:
                hwaddr = _ioctl_ifreq(sock, SIOCGIFHWADDR, name)[18:24]
                entry["mac"] = _format_mac(hwaddr)
            except OSError:
                pass  # no hardware address (tunnels)
            try:
                address = socket.inet_ntoa(_ioctl_ifreq(sock, SIOCGIFADDR, name)[20:24])
                netmask = socket.inet_ntoa(_ioctl_ifreq(sock, SIOCGIFNETMASK, name)[20:24])
            except OSError:
                continue  # no IPv4 address on this interface
            prefix = ipaddress.IPv4Network(f"0.0.0.0/{netmask}").prefixlen
            entry["addresses"].append(f"{address}/{prefix}")
    try:
        with open("/proc/net/if_inet6") as lines:
            for line in lines:
                fields = line.split()
                if len(fields) < 6 or fields[5] not in interfaces:
                    continue
                address6 = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
                interfaces[fields[5]]["addresses"].append(f"{address6}/{int(fields[2], 16)}")
    except FileNotFoundError:
        pass  # kernel without IPv6
    return sorted(interfaces.values(), key=lambda entry: int(entry["index"]))


def list_interfaces() -> list[JSONDict]:
    """Every interface of this network namespace with its MAC and addresses (ip/prefix)."""
    try:
        return interfaces_from_netlink()
    except OSError as exc:
        log(f"netlink unavailable ({describe_os_error(exc)}); reading /proc and ioctl")
        return interfaces_from_proc()


def default_interface() -> str | None:
    """The interface of the default route (IPv4, then IPv6), else the first one that is not lo."""
    try:
        with open("/proc/net/route") as lines:
            for line in itertools.islice(lines, 1, None):
                fields = line.split()
                if len(fields) >= 8 and fields[1] == "00000000" and fields[7] == "00000000":
                    return fields[0]
    except OSError:
        pass
    try:
        with open("/proc/net/ipv6_route") as lines:
            for line in lines:
                fields = line.split()
                is_default = len(fields) >= 10 and fields[0] == "0" * 32 and fields[1] == "00"
                if is_default and fields[9] != "lo":
                    return fields[9]
    except OSError:
        pass
    for _, name in socket.if_nameindex():
        if name != "lo":
            return name
    return None


# --------------------------------------------------------------------------------------------
# Records of what the listeners saw.


class RecordBook:
    """Thread-safe, bounded memory of (nonce, proto, peer) seen by the listeners."""

    def __init__(self, limit: int = MAX_RECORDS) -> None:
        self._changed = threading.Condition()
        # (key, proto, peer, is_payload): ICMP keys are whole payloads, matched by substring.
        self._records: deque[tuple[str, str, str, bool]] = deque(maxlen=limit)

    def add(self, nonce: str, proto: str, peer: str) -> None:
        with self._changed:
            self._records.append((nonce, proto, peer, False))
            self._changed.notify_all()

    def add_payload(self, payload: bytes, proto: str, peer: str) -> None:
        with self._changed:
            self._records.append((payload.decode("latin-1"), proto, peer, True))
            self._changed.notify_all()

    def _matching(self, nonce: str) -> list[JSONDict]:
        return [
            {"proto": proto, "peer": peer}
            for key, proto, peer, is_payload in self._records
            if (nonce in key if is_payload else nonce == key)
        ]

    def find(self, nonce: str, wait: float = 0.0) -> list[JSONDict]:
        """Records for ``nonce``; waits up to ``wait`` seconds for the first one to arrive.

        The listener threads record concurrently with the request that caused the traffic (an
        echo reply can be read before the recorder thread has stored the request).
        """
        with self._changed:
            found: list[JSONDict] = []

            def any_found() -> bool:
                found[:] = self._matching(nonce)
                return bool(found)

            self._changed.wait_for(any_found, timeout=wait)
            return found


# --------------------------------------------------------------------------------------------
# Listeners (serve side).


def _nonce_of(data: bytes) -> str:
    return data.split(b"\n", 1)[0].strip().decode("utf-8", "replace")[:MAX_NONCE_LENGTH]


def _listener_reply(nonce: str, peer: str) -> bytes:
    return json.dumps({"nonce": nonce, "peer": peer}).encode() + b"\n"


def _wait_or_stop(stop: threading.Event, seconds: float) -> None:
    """Back off after an unexpected socket error without spinning."""
    stop.wait(seconds)


def _accept_loop(
    sock: socket.socket,
    stop: threading.Event,
    slots: threading.BoundedSemaphore,
    label: str,
    handler_args: Callable[[socket.socket, Any], tuple[Any, ...]],
    handle: Callable[..., None],
) -> None:
    """Accept connections until ``stop``, each handled on its own thread, at most ``slots`` at
    once (a client over the limit is closed); socket errors back off instead of spinning."""
    while not stop.is_set():
        try:
            conn, address = sock.accept()
        except OSError as exc:
            log(f"{label} accept: {describe_os_error(exc)}")
            _wait_or_stop(stop, 0.2)
            continue
        if not slots.acquire(blocking=False):
            log(f"{label}: too many clients; closing one")
            conn.close()
            continue
        if not _start_handler(handle, handler_args(conn, address)):
            conn.close()
            slots.release()


def serve_tcp(sock: socket.socket, book: RecordBook, stop: threading.Event) -> None:
    slots = threading.BoundedSemaphore(MAX_TCP_CLIENTS)

    def handle(conn: socket.socket, peer: str) -> None:
        try:
            with conn:
                conn.settimeout(LISTENER_READ_TIMEOUT)
                data = b""
                while b"\n" not in data and len(data) < 512:
                    chunk = conn.recv(512)
                    if not chunk:
                        break
                    data += chunk
                nonce = _nonce_of(data)
                if nonce:
                    book.add(nonce, "tcp", peer)
                log(f"listener tcp nonce={nonce or '-'} peer={peer}")
                conn.sendall(_listener_reply(nonce, peer))
        except OSError as exc:
            log(f"listener tcp peer={peer}: {describe_os_error(exc)}")
        finally:
            slots.release()

    _accept_loop(
        sock,
        stop,
        slots,
        "listener tcp",
        lambda conn, address: (conn, normalize_ip(address[0])),
        handle,
    )


def _enable_pktinfo(sock: socket.socket) -> bool:
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    except OSError:
        return False
    return True


def _reply_pktinfo(ancillary: list[tuple[int, int, bytes]]) -> list[tuple[int, int, bytes]]:
    """Ancillary data making the reply leave from the address the datagram was sent to."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            _ifindex, _spec_dst, header_dst = struct.unpack("=I4s4s", data[:12])
            return [(level, kind, struct.pack("=I4s4s", 0, header_dst, b"\0" * 4))]
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 20:
            return [(level, kind, data[:20])]
    return []


def serve_udp(sock: socket.socket, book: RecordBook, stop: threading.Event) -> None:
    # Without pktinfo a reply from a multi-address host may leave from another address, and the
    # client's connected socket would drop it.
    use_pktinfo = _enable_pktinfo(sock)
    ancillary_size = socket.CMSG_SPACE(64)
    while not stop.is_set():
        try:
            data, ancillary, _flags, address = sock.recvmsg(2048, ancillary_size)
        except OSError as exc:
            log(f"listener udp receive: {describe_os_error(exc)}")
            _wait_or_stop(stop, 0.2)
            continue
        peer = normalize_ip(address[0])
        nonce = _nonce_of(data)
        if nonce:
            book.add(nonce, "udp", peer)
        log(f"listener udp nonce={nonce or '-'} peer={peer}")
        reply = _listener_reply(nonce, peer)
        try:
            pktinfo = _reply_pktinfo(ancillary) if use_pktinfo else []
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
        book.add_payload(payload, proto, source)
        # Log only text payloads (our nonces); ping(8) pads with binary bytes on every echo.
        shown = payload[:64].decode("latin-1")
        if payload.isascii() and shown.isprintable():
            log(f"listener {proto} echo request peer={source} payload={shown}")


# --------------------------------------------------------------------------------------------
# Client-side network operations (run inside the serve process on request).


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


def _parse_listener_reply(data: bytes, nonce: str, where: str) -> str:
    try:
        reply = json.loads(data.split(b"\n", 1)[0].decode())
    except ValueError as exc:
        raise RequestError(f"{where} answered {data[:80]!r}, not the agent's JSON line") from exc
    if not isinstance(reply, dict) or reply.get("nonce") != nonce:
        raise RequestError(f"{where} answered {reply!r}, expected nonce {nonce!r}")
    peer = reply.get("peer")
    if not isinstance(peer, str):
        raise RequestError(f"{where} answered {reply!r} without a peer")
    return peer


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
        peer = _parse_listener_reply(_read_line(sock, deadline), nonce, where)
    return {"peer_seen": peer, "local": local}


def connect_udp(host: str, port: int, nonce: str, timeout: float) -> JSONDict:
    family, sockaddr = resolve(host, port, socket.SOCK_DGRAM)
    where = f"udp {host} port {port}"
    deadline = time.monotonic() + timeout
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect(sockaddr)
        local = normalize_ip(sock.getsockname()[0])
        # UDP may drop a datagram: resend every half second until the timeout.
        for _attempt in range(int(timeout / UDP_RESEND_INTERVAL) + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.send(nonce.encode())
            wait_until = time.monotonic() + min(UDP_RESEND_INTERVAL, remaining)
            for _datagram in range(1000):  # stale answers to other nonces; bounded
                left = wait_until - time.monotonic()
                if left <= 0:
                    break
                readable, _, _ = select.select([sock], [], [], left)
                if not readable:
                    break
                data = sock.recv(4096)
                try:
                    peer = _parse_listener_reply(data, nonce, where)
                except RequestError:
                    continue  # a late answer to someone else's nonce
                return {"peer_seen": peer, "local": local}
    raise RequestError(f"{where}: no answer within {timeout}s", "ETIMEDOUT")


def _icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    words: tuple[int, ...] = struct.unpack(f"!{len(data) // 2}H", data)
    total = sum(words)
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


_icmp_sequence = itertools.count(1)


def _open_icmp_socket(family: socket.AddressFamily) -> tuple[socket.socket, bool]:
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


def send_icmp_echo(host: str, nonce: str, timeout: float) -> JSONDict:
    family, sockaddr = resolve(host, 0, socket.SOCK_RAW)
    is_v6 = family == socket.AF_INET6
    request_type, reply_type = (
        (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY) if is_v6 else (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY)
    )
    identifier = os.getpid() & 0xFFFF
    sequence = next(_icmp_sequence) & 0xFFFF
    payload = nonce.encode()
    header = struct.pack("!BBHHH", request_type, 0, 0, identifier, sequence)
    if not is_v6:  # the kernel computes ICMPv6 checksums itself
        checksum = _icmp_checksum(header + payload)
        header = struct.pack("!BBHHH", request_type, 0, checksum, identifier, sequence)
    deadline = time.monotonic() + timeout
    sock, is_raw = _open_icmp_socket(family)
    with sock:
        sock.sendto(header + payload, sockaddr)
        for _ in range(10000):  # other ICMP traffic arrives too; bounded
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            readable, _, _ = select.select([sock], [], [], remaining)
            if not readable:
                break
            packet, address = sock.recvfrom(1 << 16)
            if is_raw and not is_v6:
                message = packet[(packet[0] & 0x0F) * 4 :]
                source = socket.inet_ntop(socket.AF_INET, packet[12:16])
            else:
                message, source = packet, address[0]
            if len(message) < 8 or message[0] != reply_type:
                continue
            _, _, _, reply_id, reply_sequence = struct.unpack("!BBHHH", message[:8])
            # Ping sockets rewrite the identifier; the sequence and payload still match.
            if reply_sequence != sequence or message[8:] != payload:
                continue
            if is_raw and reply_id != identifier:
                continue
            return {"reply_from": normalize_ip(source)}
    raise RequestError(f"no ICMP echo reply from {host} within {timeout}s", "ETIMEDOUT")


def try_bind(proto: str, host: str, port: int) -> JSONDict:
    family = family_of(host)
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    # No SO_REUSEADDR: the question is whether the port is free in this network namespace.
    with socket.socket(family, kind) as sock:
        try:
            sock.bind((host or "0.0.0.0", port))
        except OSError as exc:
            return {"bound": False, "errno": errno_name(exc.errno)}
    return {"bound": True, "errno": None}


def write_file(path: str, size: int, seed: str) -> JSONDict:
    digest = hashlib.sha256()
    # Write then rename, so a reader in the other container never sees half a file.
    temporary = f"{path}.netconform-{os.getpid()}-{threading.get_ident()}"
    try:
        with open(temporary, "wb") as out:
            for chunk in iter_deterministic_chunks(seed, size):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except OSError:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return {"sha256": digest.hexdigest(), "size": size, "path": path}


def read_file(path: str) -> JSONDict:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as source:
        for chunk in iter(lambda: source.read(FILE_CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
    return {"sha256": digest.hexdigest(), "size": size, "path": path}


# --------------------------------------------------------------------------------------------
# Packet captures (scapy, imported on first use).


class Capture:
    """One running or finished sniffer, with the packets it matched."""

    def __init__(self, capture_id: str, nonce: str, iface: str | list[str]) -> None:
        self.capture_id = capture_id
        self.nonce = nonce
        self.iface = iface
        self.packets: list[JSONDict] = []
        self.finished = False
        self.condition = threading.Condition()
        self.sniffer: Any = None

    def add(self, packet: JSONDict) -> None:
        with self.condition:
            if len(self.packets) < MAX_PACKETS_PER_CAPTURE:
                self.packets.append(packet)
            self.condition.notify_all()

    def mark_finished(self) -> None:
        with self.condition:
            self.finished = True
            self.condition.notify_all()

    def wait(self, min_packets: int, seconds: float) -> None:
        with self.condition:
            self.condition.wait_for(
                lambda: self.finished or len(self.packets) >= min_packets, timeout=seconds
            )


def describe_packet(packet: Any) -> JSONDict:
    """proto/src/dst/iface of a scapy packet (proto from the layer after IP/IPv6)."""
    src = dst = None
    proto = "other"
    layer = packet
    for _ in range(8):  # walk link-layer headers down to the IP layer; bounded
        if layer is None or not hasattr(layer, "payload"):
            break
        name = type(layer).__name__
        if name in ("IP", "IPv6"):
            src, dst = str(layer.src), str(layer.dst)
            upper = type(layer.payload).__name__
            if upper in ("TCP", "UDP", "ICMP"):
                proto = upper.lower()
            elif upper.startswith("ICMPv6"):
                proto = "icmpv6"
            else:
                proto = upper.lower() or "other"
            break
        layer = layer.payload
    return {"proto": proto, "src": src, "dst": dst, "iface": getattr(packet, "sniffed_on", None)}


class CaptureBook:
    """The captures of one serve process; scapy is imported once, on the first capture."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._captures: dict[str, Capture] = {}
        self._ids = itertools.count(1)
        self._scapy_sniffer: Any = None
        self._scapy_error: str | None = None

    def _async_sniffer(self) -> Any:
        with self._lock:
            if self._scapy_sniffer is None and self._scapy_error is None:
                started = time.monotonic()
                try:
                    from scapy.config import conf
                    from scapy.layers import inet, inet6, l2  # noqa: F401  (dissectors)
                    from scapy.sendrecv import AsyncSniffer

                    conf.verb = 0
                    self._scapy_sniffer = AsyncSniffer
                    log(f"scapy imported in {time.monotonic() - started:.1f}s")
                except Exception as exc:  # scapy raises more than ImportError when half-installed
                    self._scapy_error = f"scapy is not usable in this image: {exc}"
            if self._scapy_error is not None:
                raise RequestError(self._scapy_error)
            return self._scapy_sniffer

    def start(self, nonce: str, iface: str, timeout: float) -> JSONDict:
        interfaces: str | list[str]
        if iface == "any":
            interfaces = [name for _, name in socket.if_nameindex()]
        else:
            try:
                socket.if_nametoindex(iface)
            except OSError as exc:
                raise RequestError(f"no interface {iface!r} in this network namespace") from exc
            interfaces = iface
        sniffer_class = self._async_sniffer()
        with self._lock:
            running = [c for c in self._captures.values() if not c.finished]
            if len(running) >= MAX_CAPTURES:
                raise RequestError(f"{len(running)} captures already running; ask their results")
            # Forget the oldest finished captures (ids are in start order) to stay bounded.
            finished = [i for i, c in self._captures.items() if c.finished]
            for old_id in finished[: max(0, len(self._captures) + 1 - MAX_CAPTURES)]:
                del self._captures[old_id]
            capture = Capture(f"cap-{next(self._ids)}", nonce, interfaces)
            self._captures[capture.capture_id] = capture
        needle = nonce.encode()
        started = threading.Event()

        def matches(packet: Any) -> bool:
            raw = getattr(packet, "original", None) or bytes(packet)
            return needle in raw

        sniffer = sniffer_class(
            iface=interfaces,
            lfilter=matches,
            prn=lambda packet: capture.add(describe_packet(packet)),
            store=False,
            started_callback=started.set,
        )
        capture.sniffer = sniffer
        sniffer.start()
        # The sniffer opens its socket in its own thread: answer only once it listens, so the
        # caller's next packet is not missed; a thread that died (no NET_RAW) fails fast.
        deadline = time.monotonic() + 10.0
        while not started.wait(0.05):
            thread = getattr(sniffer, "thread", None)
            if (thread is not None and not thread.is_alive()) or time.monotonic() > deadline:
                break
        if not started.is_set():
            capture.mark_finished()
            self._stop(capture)
            thread = getattr(sniffer, "thread", None)
            if thread is not None and not thread.is_alive():
                error = getattr(sniffer, "exception", None) or "see the agent log"
                raise RequestError(
                    f"capture on {iface!r} failed to start ({error}); capturing needs NET_RAW"
                )
            raise RequestError(f"capture on {iface!r} did not start within 10s")

        def watch() -> None:
            # Bound the capture here: scapy >= 2.6 refuses AsyncSniffer(timeout=...).
            sniffer.join(timeout)
            self._stop(capture)

        threading.Thread(target=watch, daemon=True).start()
        return {"capture_id": capture.capture_id, "iface": interfaces}

    @staticmethod
    def _stop(capture: Capture) -> None:
        sniffer = capture.sniffer
        thread = getattr(sniffer, "thread", None)
        alive = thread is None or thread.is_alive()
        if sniffer is not None and getattr(sniffer, "running", False) and alive:
            try:
                sniffer.stop(join=True)
            except Exception as exc:  # scapy raises Scapy_Exception when it already ended
                log(f"capture {capture.capture_id} stop: {exc}")
        capture.mark_finished()

    def result(self, capture_id: str, wait: float, min_packets: int) -> JSONDict:
        with self._lock:
            capture = self._captures.get(capture_id)
        if capture is None:
            raise RequestError(f"unknown capture_id {capture_id!r}")
        capture.wait(min_packets, wait)
        self._stop(capture)
        with capture.condition:
            packets = list(capture.packets)
        return {"capture_id": capture_id, "packets": packets}


# --------------------------------------------------------------------------------------------
# The serve process.


class Agent:
    """Dispatches control requests; every failure becomes a response, never a crash."""

    def __init__(self, book: RecordBook, listeners: JSONDict) -> None:
        self.book = book
        self.listeners = listeners
        self.captures = CaptureBook()
        self._ops: dict[str, Callable[[JSONDict], JSONDict]] = {
            "info": self.op_info,
            "addresses": self.op_addresses,
            "try_bind": self.op_try_bind,
            "connect": self.op_connect,
            "icmp": self.op_icmp,
            "seen": self.op_seen,
            "capture_start": self.op_capture_start,
            "capture_result": self.op_capture_result,
            "write_file": self.op_write_file,
            "read_file": self.op_read_file,
        }

    def handle(self, request: object) -> JSONDict:
        started = time.monotonic()
        op = request.get("op") if isinstance(request, dict) else None
        response: JSONDict = {"ok": True, "op": op}
        try:
            if not isinstance(request, dict):
                raise RequestError(f"a request must be a JSON object, got {type(request).__name__}")
            handler = self._ops.get(op) if isinstance(op, str) else None
            if handler is None:
                raise RequestError(f"unknown op {op!r}; known ops: {', '.join(sorted(self._ops))}")
            response.update(handler(request))
        except RequestError as exc:
            response = {"ok": False, "op": op, "error": str(exc)}
            if exc.errno_name is not None:
                response["errno"] = exc.errno_name
        except OSError as exc:
            response = {"ok": False, "op": op, "error": describe_os_error(exc)}
            if exc.errno is not None:
                response["errno"] = errno_name(exc.errno)
        except Exception as exc:  # a bug in the agent must not take the serve process down
            log(_one_line_traceback())
            response = {"ok": False, "op": op, "error": f"agent bug: {type(exc).__name__}: {exc}"}
        elapsed_ms = (time.monotonic() - started) * 1000
        summary = _request_summary(request)
        outcome = _response_summary(response)
        log(f"request op={op} {summary}{outcome} {elapsed_ms:.0f}ms")
        return response

    def op_info(self, request: JSONDict) -> JSONDict:
        try:
            netns: str | None = os.readlink("/proc/self/ns/net")
        except OSError:
            netns = None
        return {
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "netns": netns,
            "env": {key: os.environ.get(key) for key in ENV_KEYS},
            "listeners": self.listeners,
            "python": platform.python_version(),
        }

    def op_addresses(self, request: JSONDict) -> JSONDict:
        return {"interfaces": list_interfaces()}

    def op_try_bind(self, request: JSONDict) -> JSONDict:
        return try_bind(
            field_proto(request),
            field_str(request, "host", ""),
            field_int(request, "port", None, 0, 65535),
        )

    def op_connect(self, request: JSONDict) -> JSONDict:
        proto = field_proto(request)
        host = field_str(request, "host")
        port = field_int(request, "port", None, 1, 65535)
        nonce = field_nonce(request)
        timeout = field_number(request, "timeout", 3.0, 0.05, MAX_TIMEOUT)
        if proto == "tcp":
            return connect_tcp(host, port, nonce, timeout)
        return connect_udp(host, port, nonce, timeout)

    def op_icmp(self, request: JSONDict) -> JSONDict:
        return send_icmp_echo(
            field_str(request, "host"),
            field_nonce(request),
            field_number(request, "timeout", 3.0, 0.05, MAX_TIMEOUT),
        )

    def op_seen(self, request: JSONDict) -> JSONDict:
        wait = field_number(request, "wait", 0.0, 0.0, MAX_TIMEOUT)
        return {"records": self.book.find(field_nonce(request), wait)}

    def op_capture_start(self, request: JSONDict) -> JSONDict:
        nonce = field_nonce(request)
        iface = request.get("iface") or default_interface()
        if not isinstance(iface, str):
            raise RequestError("field 'iface' must be a string (no default interface found)")
        timeout = field_number(request, "timeout", 10.0, 0.1, MAX_CAPTURE_SECONDS)
        return self.captures.start(nonce, iface, timeout)

    def op_capture_result(self, request: JSONDict) -> JSONDict:
        return self.captures.result(
            field_str(request, "capture_id"),
            field_number(request, "wait", 2.0, 0.0, MAX_CAPTURE_SECONDS),
            field_int(request, "min_packets", 1, 1, MAX_PACKETS_PER_CAPTURE),
        )

    def op_write_file(self, request: JSONDict) -> JSONDict:
        return write_file(
            field_str(request, "path"),
            field_int(request, "size", None, 0, MAX_FILE_BYTES),
            field_seed(request),
        )

    def op_read_file(self, request: JSONDict) -> JSONDict:
        return read_file(field_str(request, "path"))


def _request_summary(request: object) -> str:
    if not isinstance(request, dict):
        return ""
    shown = [
        f"{key}={request[key]}"
        for key in ("proto", "host", "port", "nonce", "iface", "capture_id", "path")
        if key in request
    ]
    return " ".join(shown) + " " if shown else ""


def _response_summary(response: JSONDict) -> str:
    if not response["ok"]:
        return f"FAILED {response.get('error')}"
    shown = [
        f"{key}={response[key]}"
        for key in ("peer_seen", "reply_from", "bound", "sha256")
        if key in response
    ]
    for key in ("records", "packets"):
        if key in response:
            shown.append(f"{key}={len(response[key])}")
    return " ".join(["ok", *shown])


def open_listeners(tcp_port: int, udp_port: int) -> tuple[list[socket.socket], JSONDict]:
    """TCP and UDP listeners, one per address family the kernel supports (IPv4 always)."""
    sockets: list[socket.socket] = []
    listeners: JSONDict = {"tcp": [], "udp": [], "icmp": []}
    for family, any_address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        for proto, port in (("tcp", tcp_port), ("udp", udp_port)):
            kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
            try:
                sock = socket.socket(family, kind)
            except OSError as exc:
                if family == socket.AF_INET6:
                    log(f"no IPv6 {proto} listener: {describe_os_error(exc)}")
                    continue
                raise
            try:
                if proto == "tcp":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    # One socket per family: peers show as plain IPv4, never as ::ffff:a.b.c.d.
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((any_address, port))
                if proto == "tcp":
                    sock.listen(128)
            except OSError as exc:
                sock.close()
                if family == socket.AF_INET6 and exc.errno in (
                    errno.EADDRNOTAVAIL,
                    errno.EAFNOSUPPORT,
                ):
                    log(f"no IPv6 {proto} listener: {describe_os_error(exc)}")
                    continue
                raise
            sockets.append(sock)
            shown = f"[{any_address}]" if family == socket.AF_INET6 else any_address
            listeners[proto].append(f"{shown}:{sock.getsockname()[1]}")
    return sockets, listeners


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


def _socket_answers(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            probe.connect(path)
    except OSError:
        return False
    return True


def open_control_socket(path: str) -> socket.socket:
    if os.path.exists(path):
        if _socket_answers(path):
            raise RequestError(f"another serve process already answers on {path}")
        os.unlink(path)  # left by a killed process
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(16)
    return sock


def serve_control(sock: socket.socket, agent: Agent, stop: threading.Event) -> None:
    slots = threading.BoundedSemaphore(MAX_CONTROL_CLIENTS)

    def handle(conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(30.0)
                data = b""
                while len(data) <= MAX_CONTROL_BYTES:
                    chunk = conn.recv(1 << 16)
                    if not chunk:
                        break
                    data += chunk
                responses = answer_batch(agent, data)
                conn.settimeout(None)
                # default=str: an odd value in a response must not cost the whole batch.
                conn.sendall(json.dumps(responses, default=str).encode() + b"\n")
        except OSError as exc:
            log(f"control connection: {describe_os_error(exc)}")
        finally:
            slots.release()

    _accept_loop(sock, stop, slots, "control", lambda conn, _address: (conn,), handle)


def answer_batch(agent: Agent, data: bytes) -> list[JSONDict]:
    if len(data) > MAX_CONTROL_BYTES:
        return [{"ok": False, "op": None, "error": f"batch larger than {MAX_CONTROL_BYTES} bytes"}]
    try:
        requests = json.loads(data.decode("utf-8"))
    except ValueError as exc:
        return [{"ok": False, "op": None, "error": f"batch is not JSON: {exc}"}]
    if not isinstance(requests, list):
        requests = [requests]
    return [agent.handle(request) for request in requests]


def _guarded(target: Callable[..., None], args: tuple[Any, ...], stop: threading.Event) -> None:
    """Run a listener loop; a bug in it is logged and the loop restarted, not left dead."""
    for restart in itertools.count():
        try:
            target(*args)
            return
        except Exception:
            log(f"{target.__name__} crashed (restart {restart + 1}): " + _one_line_traceback())
        if stop.wait(min(0.1 * (restart + 1), 2.0)):
            return


def _one_line_traceback() -> str:
    return traceback.format_exc().rstrip().replace("\n", " | ")


def _start_handler(target: Callable[..., None], args: tuple[Any, ...]) -> bool:
    try:
        threading.Thread(target=target, args=args, daemon=True).start()
    except RuntimeError as exc:  # "can't start new thread": shed this client, keep serving
        log(f"cannot start a handler thread: {exc}")
        return False
    return True


def run_serve(args: argparse.Namespace) -> int:
    stop = threading.Event()
    book = RecordBook()
    try:
        listen_sockets, listeners = open_listeners(args.tcp_port, args.udp_port)
        control = open_control_socket(args.socket)
    except (OSError, RequestError) as exc:
        text = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
        log(f"serve cannot start: {text}")
        return 1
    recorders = open_icmp_recorders()
    listeners["icmp"] = ["ipv6" if sock.family == socket.AF_INET6 else "ipv4" for sock in recorders]
    agent = Agent(book, listeners)
    threads: list[tuple[Callable[..., None], tuple[Any, ...]]] = [
        (serve_control, (control, agent, stop))
    ]
    for sock in listen_sockets:
        target = serve_tcp if sock.type == socket.SOCK_STREAM else serve_udp
        threads.append((target, (sock, book, stop)))
    threads.extend((serve_icmp_records, (sock, book, stop)) for sock in recorders)

    def request_stop(signum: int, _frame: object) -> None:
        log(f"signal {signum}: stopping")
        stop.set()

    # As PID 1 of a container the process gets no default SIGTERM action: handle it.
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    log(
        f"serving tcp={listeners['tcp']} udp={listeners['udp']} icmp={listeners['icmp']} "
        f"control={args.socket} python={platform.python_version()}"
    )
    for target, thread_args in threads:
        threading.Thread(target=_guarded, args=(target, thread_args, stop), daemon=True).start()

    try:
        while not stop.wait(1.0):
            pass
    finally:
        with contextlib.suppress(OSError):
            os.unlink(args.socket)
    return 0


# --------------------------------------------------------------------------------------------
# Client side of the control socket (`call`, `ping`).


# Which ops spend their `timeout` / `wait` inside the serve process before answering.
_OP_WAIT_FIELDS: dict[str, tuple[str | None, float]] = {
    "seen": ("wait", 0.0),
    "connect": ("timeout", 3.0),
    "icmp": ("timeout", 3.0),
    "capture_result": ("wait", 2.0),
    # Not a field: the first capture imports scapy and waits for the sniffer to listen.
    "capture_start": (None, 10.0),
}


def call_budget(requests: Sequence[object]) -> float:
    """Seconds a batch may take: the waits of its requests plus a margin for the rest."""
    total = 10.0
    for request in requests:
        if not isinstance(request, dict) or request.get("op") not in _OP_WAIT_FIELDS:
            continue
        key, default = _OP_WAIT_FIELDS[request["op"]]
        if key is None:
            total += default
            continue
        value = request.get(key, default)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            total += min(max(float(value), 0.0), MAX_CAPTURE_SECONDS)
    return total


def send_batch(path: str, requests: Sequence[object], timeout: float) -> list[JSONDict]:
    """Send requests to the serve process on ``path``; ``OSError`` when it does not answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps(list(requests)).encode())
        sock.shutdown(socket.SHUT_WR)
        data = b""
        deadline = time.monotonic() + timeout
        while len(data) <= 64 * MAX_CONTROL_BYTES:  # far above any real batch's answer
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OSError(errno.ETIMEDOUT, f"no answer within {timeout:.0f}s")
            sock.settimeout(remaining)
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    if not data:
        raise OSError(errno.ECONNRESET, "the serve process closed the connection without answer")
    responses = json.loads(data.decode("utf-8"))
    if not isinstance(responses, list):
        raise OSError(errno.EPROTO, "the serve process answered something else than a list")
    return responses


def run_call(args: argparse.Namespace) -> int:
    try:
        requests = json.loads(sys.stdin.read())
    except ValueError as exc:
        sys.stderr.write(f"agent call: stdin is not JSON: {exc}\n")
        return 2
    if isinstance(requests, dict):
        requests = [requests]
    if not isinstance(requests, list):
        sys.stderr.write("agent call: stdin must be a JSON list of requests\n")
        return 2
    timeout = args.timeout if args.timeout is not None else call_budget(requests)
    try:
        responses = send_batch(args.socket, requests, timeout)
    except (OSError, ValueError) as exc:
        text = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
        sys.stderr.write(f"agent call: no answer from a serve process on {args.socket}: {text}\n")
        return 3
    sys.stdout.write(json.dumps(responses) + "\n")
    return 0


def run_ping(args: argparse.Namespace) -> int:
    # --wait: a readiness probe run right at container start waits (bounded) for the serve
    # process, so the pod turns Ready at once and later probes can be rare and cheap.
    deadline = time.monotonic() + max(0.0, args.wait)
    pause = threading.Event()
    while True:
        try:
            responses = send_batch(args.socket, [{"op": "info"}], args.timeout or 3.0)
            break
        except (OSError, ValueError) as exc:
            if time.monotonic() < deadline:
                pause.wait(0.05)
                continue
            text = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
            sys.stderr.write(
                f"agent ping: no answer from a serve process on {args.socket}: {text}\n"
            )
            return 1
    if not responses or not responses[0].get("ok"):
        sys.stderr.write(f"agent ping: unexpected answer {responses!r}\n")
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agent.py", description="netconform probe agent")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the listeners and the control socket")
    serve.add_argument("--tcp-port", type=int, default=DEFAULT_TCP_PORT)
    serve.add_argument("--udp-port", type=int, default=DEFAULT_UDP_PORT)
    serve.add_argument("--socket", default=DEFAULT_SOCKET, help="control unix socket path")
    for name, help_text in (
        ("ping", "exit 0 when the serve process answers"),
        ("call", "JSON list of requests on stdin, JSON list of responses on stdout"),
    ):
        client = commands.add_parser(name, help=help_text)
        client.add_argument("--socket", default=DEFAULT_SOCKET, help="control unix socket path")
        client.add_argument("--timeout", type=float, default=None, help="seconds to wait")
        if name == "ping":
            client.add_argument(
                "--wait",
                type=float,
                default=0.0,
                help="keep trying this many seconds until the serve process answers",
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return run_serve(args)
    if args.command == "call":
        return run_call(args)
    return run_ping(args)


if __name__ == "__main__":
    sys.exit(main())
