#!/usr/bin/env python3
"""The netconform probe agent: one self-contained program run in every probe container.

It is shipped to pods in ConfigMap ``netconform-agent`` (key ``agent.py``) and run with the probe
image's own ``python3``. **The oldest Python it supports is 3.8** (checked with ``vermin
-t=3.8-``, which knows library APIs, in tests/unit/test_probe_agent.py), so it imports only the
standard library at import time. scapy is imported lazily, once, by the ``serve`` process, and
only for packet captures.

Subcommand (see docs/architecture.md, "The probe agent protocol"):

``serve``
    Long-running. TCP and UDP listeners on every address of the pod (IPv4 and IPv6 where the
    kernel has it; port 0 picks a free port, reported by ``info``), raw ICMP/ICMPv6 sockets
    recording echo requests, and a control unix socket taking JSON requests. File requests
    are served only inside the ``--data-dir`` directories. Logs one line per request on stderr
    (the container log).
    With ``--edge-control ADDR:PORT`` it is also the edge server on a host outside the
    cluster: a TCP control listener on ADDR taking only ``info`` and ``connect`` to the
    addresses ``--allow-connect`` names (the suite's NodePort-from-outside checks).

Its client, ``client.py`` beside it (``call`` and ``ping``), talks to the control socket: a
small program of its own, because every exec of the suite starts one.

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
import selectors
import signal
import socket
import stat
import struct
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    JSONDict = dict[str, Any]
    # (proto, src, dst, iface, nonce) of one captured packet, strings interned.
    PacketRow = tuple[str, str | None, str | None, str | None, str]

DEFAULT_SOCKET = "/tmp/netconform-agent.sock"
DEFAULT_TCP_PORT = 8080
DEFAULT_UDP_PORT = 8081
ENV_KEYS = ("POD_NAME", "POD_NAMESPACE", "NODE_NAME", "POD_IP", "HOST_IP")

# Bounds: every buffer, list, thread pool and wait in the agent has one, so a misbehaving peer
# or a malformed request cannot grow it.
MAX_CONTROL_BYTES = 1 << 20  # one batch on the control socket (and on `call`'s stdin)
CONTROL_READ_SECONDS = 30.0  # to read one batch from a control client
MAX_BATCH_REQUESTS = 4096
MAX_BATCH_RESPONSE_BYTES = 32 << 20  # a batch's encoded responses; beyond, ok false each
MAX_PARALLEL = 64  # "parallel" of one batch
MAX_BATCH_WORKERS = 256  # extra worker threads of all parallel batches at once
MAX_NONCE_LENGTH = 128
MAX_PREFIX_LENGTH = 64
MAX_EXPECT_NONCES = 20000
MAX_RECORDS = 20000
MAX_FILE_BYTES = 256 << 20
MAX_TIMEOUT = 120.0
MAX_CAPTURE_SECONDS = 300.0
MAX_SPREAD_TRIES = 4096  # connections of one spread
MAX_SPREAD_PARALLEL = 32  # connections of one spread at once
MAX_SPREAD_SERVERS = 4096  # expected servers of one spread
MAX_PROBE_COUNT = 1000  # probes of one measured connect or icmp request
DEFAULT_PROBE_INTERVAL = 0.01  # seconds between a measured request's probes
MIN_PROBE_INTERVAL = 0.001
DEFAULT_PROBE_PARALLEL = 8  # measured TCP connections open at once
MAX_PROBE_PARALLEL = 64
MAX_ERROR_EXAMPLES = 3
SO_RXQ_OVFL = 40  # the drop count of a socket, delivered with each datagram
SPREAD_SECONDS = MAX_TIMEOUT  # a spread starts no try after this long
MAX_NAME_LENGTH = 253  # a DNS name to resolve
MAX_CAPTURES = 32
MAX_PACKETS_PER_CAPTURE = 200  # a capture by `nonce`
MAX_PACKETS_PER_PREFIX_CAPTURE = 20000  # a capture by `nonce_prefix`; beyond: `dropped`
CAPTURE_MAX_PACKET_BYTES = 600  # bulk transfers and full-size packets never reach Python
# Only packets that can carry a nonce reach Python: TCP segments with data (PSH: a line the
# agent wrote), UDP datagrams, ICMP/ICMPv6 echoes. A busy pod sees many handshakes and ACKs for
# every nonce; dissecting them all made sniffers fall behind on small machines.
CAPTURE_FILTER = (
    f"less {CAPTURE_MAX_PACKET_BYTES} and ("
    "(ip and ((tcp and tcp[tcpflags] & tcp-push != 0) or udp"
    " or (icmp and (icmp[icmptype] == icmp-echo or icmp[icmptype] == icmp-echoreply))))"
    " or (ip6 and ((ip6[6] == 6 and ip6[53] & 8 != 0) or ip6[6] == 17"
    " or (ip6[6] == 58 and (ip6[40] == 128 or ip6[40] == 129)))))"
)
MAX_CONTROL_CLIENTS = 16
#: The only ops the edge control listener takes (`EdgeControl`); `connect` only to allowed
#: addresses. Nothing that reads files, captures, spreads or relays further.
EDGE_OPS = ("info", "connect")
RELAY_TIMEOUT = 8.0  # default seconds for one relayed request, the inner one's own included
MAX_TCP_CLIENTS = 256  # tens of sources transferring at once; 64 KiB buffer each
TCP_BACKLOG = 512  # clients beyond MAX_TCP_CLIENTS wait here, not refused
LISTENER_READ_TIMEOUT = 5.0  # for a header line, and the longest silence inside a transfer
MAX_TRANSFER_BYTES = 64 << 20
TRANSFER_MAX_SECONDS = MAX_TIMEOUT  # one transfer on the listener side
TRANSFER_MAGIC = b"NETCONFORM-TRANSFER"
UDP_RESEND_INTERVAL = 0.5
UDP_RECEIVE_BYTES = 1 << 16  # every UDP datagram fits
LISTENER_RECEIVE_BUFFER = 4 << 20  # asked for the UDP listeners' sockets
MAX_IP_PACKET = 65535
EPHEMERAL_BIND_ATTEMPTS = 16  # port 0: IPv4 picks, IPv6 binds the same port or we retry
FILE_CHUNK = 64 << 10
INTERFACE_CACHE_SECONDS = 1.0

# Linux constants the socket module does not export on every Python version.
IP_PKTINFO = 8
IP_MTU_DISCOVER = 10
IP_MTU = 14
IP_PMTUDISC_DO = 2
IPV6_MTU_DISCOVER = 23
IPV6_MTU = 24
IPV6_PMTUDISC_DO = 2
IPV6_DONTFRAG = 62
TCP_MAXSEG = 2
TCP_INFO = 11
TCP_INFO_BYTES = 104  # struct tcp_info up to tcpi_total_retrans (Linux 2.6.x and later)
TCPI_TOTAL_RETRANS_OFFSET = 100
TIOCOUTQ = 0x5411  # bytes in a TCP socket's send queue not yet acknowledged
SIOCGIFADDR = 0x8915
SIOCGIFNETMASK = 0x891B
SIOCGIFHWADDR = 0x8927
SIOCGIFMTU = 0x8921
NETLINK_ROUTE = 0
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_GETROUTE = 26
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTA_DST = 1
RTA_OIF = 4
RTA_METRICS = 8
RTAX_MTU = 2
ICMP_ECHO_REPLY = 0
ICMP_DEST_UNREACH = 3
ICMP_FRAG_NEEDED = 4
ICMP_ECHO_REQUEST = 8
ICMPV6_PACKET_TOO_BIG = 2
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129
IP_PROTOCOL_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}

# Characters of a nonce found inside bytes (prefix matching): printable ASCII without space,
# '"' and '\\' (those end a JSON string, and the listeners' replies carry nonces in JSON).
NONCE_TOKEN_BYTES = frozenset(range(0x21, 0x7F)) - {0x22, 0x5C}

_log_lock = threading.Lock()


def log(message: str) -> None:
    """One line on stderr, which becomes the container log."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with _log_lock:
        sys.stderr.write(f"{stamp} netconform-agent[{os.getpid()}] {message}\n")
        sys.stderr.flush()


class RequestError(Exception):
    """A request that cannot be served; becomes ``ok: false`` with this text, the errno name
    and ``details`` (fields a person needs to judge the failure, e.g. the sizes tried)."""

    def __init__(
        self, message: str, errno_name: str | None = None, details: JSONDict | None = None
    ) -> None:
        super().__init__(message)
        self.errno_name = errno_name
        self.details: JSONDict = details or {}


# --------------------------------------------------------------------------------------------
# Deterministic content (the suite computes the same digest without a pod).


def iter_deterministic_chunks(seed: str, size: int) -> Iterator[bytes]:
    """The bytes of ``deterministic_bytes(seed, size)``, in chunks of at most 64 KiB."""
    for index, start in enumerate(range(0, size, FILE_CHUNK)):
        length = min(FILE_CHUNK, size - start)
        yield hashlib.shake_256(f"netconform:{seed}:{index}".encode()).digest(length)


def deterministic_bytes(seed: str, size: int) -> bytes:
    """``size`` bytes that depend only on ``seed`` (what ``write_file`` writes)."""
    return b"".join(iter_deterministic_chunks(seed, size))


def expected_sha256(seed: str, size: int) -> str:
    """The sha256 hex digest of ``deterministic_bytes(seed, size)``: what ``write_file``
    reports, and what a ``transfer`` of ``size`` bytes with nonce ``seed`` must arrive as."""
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
        raise RequestError(f"field {name!r} must be a number, got {_shown(value)}")
    if not low <= value <= high:
        raise RequestError(f"field {name!r} must be between {low} and {high}, got {value}")
    return float(value)


def field_int(request: JSONDict, name: str, default: int | None, low: int, high: int) -> int:
    value = request.get(name, default)
    if value is None:
        raise RequestError(f"missing field {name!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"field {name!r} must be an integer, got {_shown(value)}")
    if not low <= value <= high:
        raise RequestError(f"field {name!r} must be between {low} and {high}, got {value}")
    return value


def field_bool(request: JSONDict, name: str, default: bool) -> bool:
    value = request.get(name, default)
    if not isinstance(value, bool):
        raise RequestError(f"field {name!r} must be true or false, got {_shown(value)}")
    return value


def field_proto(request: JSONDict) -> str:
    proto = field_str(request, "proto")
    if proto not in ("tcp", "udp"):
        raise RequestError(f"field 'proto' must be 'tcp' or 'udp', got {_shown(proto)}")
    return proto


def is_valid_nonce(nonce: object) -> bool:
    """Nonces are 1..128 printable characters without spaces (one line, matched as bytes)."""
    return (
        isinstance(nonce, str)
        and 0 < len(nonce) <= MAX_NONCE_LENGTH
        and nonce.isprintable()
        and " " not in nonce
    )


def field_nonce(request: JSONDict, name: str = "nonce") -> str:
    nonce = field_str(request, name)
    # The TCP listener reads one line and the capture matches raw bytes: keep nonces plain.
    if not is_valid_nonce(nonce):
        raise RequestError(
            f"field {name!r} must be 1..{MAX_NONCE_LENGTH} printable characters without spaces"
        )
    return nonce


def field_nonce_prefix(request: JSONDict) -> str:
    prefix = field_str(request, "nonce_prefix")
    if not 0 < len(prefix) <= MAX_PREFIX_LENGTH or not all(
        ord(char) in NONCE_TOKEN_BYTES for char in prefix
    ):
        raise RequestError(
            f"field 'nonce_prefix' must be 1..{MAX_PREFIX_LENGTH} printable ASCII characters "
            "without spaces, '\"' or '\\'"
        )
    return prefix


def field_nonce_or_prefix(request: JSONDict) -> tuple[str | None, str | None]:
    """(nonce, None) or (None, nonce_prefix): a request names exactly one of the two."""
    if "nonce" in request and "nonce_prefix" in request:
        raise RequestError("give only one of the fields 'nonce' and 'nonce_prefix'")
    if "nonce" not in request and "nonce_prefix" not in request:
        raise RequestError("missing field 'nonce' (or 'nonce_prefix')")
    if "nonce" in request:
        return field_nonce(request), None
    return None, field_nonce_prefix(request)


def field_expect_nonces(request: JSONDict, prefix: str | None) -> list[str]:
    """The ``expect_nonces`` list (only with ``nonce_prefix``; each starts with the prefix)."""
    value = request.get("expect_nonces")
    if value is None:
        return []
    if prefix is None:
        raise RequestError("field 'expect_nonces' needs 'nonce_prefix'")
    if not isinstance(value, list) or len(value) > MAX_EXPECT_NONCES:
        raise RequestError(f"field 'expect_nonces' must be a list of at most {MAX_EXPECT_NONCES}")
    for nonce in value:
        if not is_valid_nonce(nonce) or not nonce.startswith(prefix):
            raise RequestError(
                f"field 'expect_nonces' holds {_shown(nonce)}, not a nonce starting with {prefix!r}"
            )
    return list(dict.fromkeys(value))


def field_packet_size(request: JSONDict) -> int | str | None:
    """``size``: None (a small packet, as before), ``"mtu"`` or an IP packet size in bytes."""
    value = request.get("size")
    if value is None or value == "mtu":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_IP_PACKET:
        raise RequestError(
            f"field 'size' must be \"mtu\" or an IP packet size 1..{MAX_IP_PACKET}, "
            f"got {_shown(value)}"
        )
    return value


def field_probes(request: JSONDict) -> tuple[int, float]:
    """``count`` (probes of a measured request, 1: a plain one) and ``interval`` (seconds
    between their starts); all probes start within `MAX_TIMEOUT`."""
    count = field_int(request, "count", 1, 1, MAX_PROBE_COUNT)
    interval = field_number(
        request, "interval", DEFAULT_PROBE_INTERVAL, MIN_PROBE_INTERVAL, MAX_TIMEOUT
    )
    if count * interval > MAX_TIMEOUT:
        raise RequestError(
            f"{count} probes {interval}s apart take longer than {MAX_TIMEOUT:.0f}s to start"
        )
    return count, interval


def field_seed(request: JSONDict) -> str:
    seed = request.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, (str, int)):
        raise RequestError(f"field 'seed' must be a string or an integer, got {_shown(seed)}")
    return str(seed)


def _shown(value: object, limit: int = 80) -> str:
    """A request value for an error text, never longer than ``limit``."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _plain(value: object, limit: int = 80) -> str:
    """A value for a log line: printable text as it is, anything else as its repr (one line,
    whatever a peer sent), never longer than ``limit``."""
    text = value if isinstance(value, str) and value.isprintable() else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
# Nonces inside bytes.


def nonce_token_at(data: bytes, start: int) -> str:
    """The nonce beginning at ``data[start]``: nonce characters up to 128 of them."""
    end = start
    limit = min(len(data), start + MAX_NONCE_LENGTH)
    while end < limit and data[end] in NONCE_TOKEN_BYTES:
        end += 1
    return data[start:end].decode("ascii")


def find_nonce(data: bytes, prefix: bytes) -> str | None:
    """The first nonce in ``data`` that begins with ``prefix``, or None."""
    start = data.find(prefix)
    return None if start < 0 else nonce_token_at(data, start)


# --------------------------------------------------------------------------------------------
# Addresses, interfaces, routes, MTUs.


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
        raise RequestError(f"field 'host' must be an IP address, got {_shown(host)}") from exc
    return socket.AF_INET6 if parsed.version == 6 else socket.AF_INET


def resolve(host: str, port: int, socktype: int) -> tuple[socket.AddressFamily, Any]:
    """First address for ``host`` (an IP literal or a name); ``RequestError`` when none."""
    try:
        # getaddrinfo knows no ports for raw sockets: resolve as datagram, port 0 (ICMP).
        lookup_type = socket.SOCK_DGRAM if socktype == socket.SOCK_RAW else socktype
        infos = socket.getaddrinfo(host, port, 0, lookup_type)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise RequestError(f"cannot resolve {_shown(host)}: {exc}", "EAI_NONAME") from exc
    if not infos:
        raise RequestError(f"cannot resolve {_shown(host)}: no address", "EAI_NONAME")
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def _netlink_request(message_type: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
    """The answer to one rtnetlink request (type, payload after the netlink header): every
    message of a dump, or the single message of a plain request."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as sock:
        sock.settimeout(2.0)
        sock.bind((0, 0))
        header = struct.pack("=IHHII", 16 + len(body), message_type, flags, 1, 0)
        sock.send(header + body)
        messages: list[tuple[int, bytes]] = []
        for _ in range(10000):  # a dump of any real host ends long before this
            data = sock.recv(1 << 16)
            offset = 0
            multipart = False
            while offset + 16 <= len(data):
                length, kind, message_flags, _seq, _pid = struct.unpack_from("=IHHII", data, offset)
                if length < 16:
                    break
                if kind == NLMSG_DONE:
                    return messages
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", data, offset + 16)
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    return messages  # an acknowledgement ends a plain request
                messages.append((kind, data[offset + 16 : offset + length]))
                multipart = multipart or bool(message_flags & NLM_F_MULTI)
                offset += (length + 3) & ~3
            if not multipart:
                return messages
        raise OSError(errno.EMSGSIZE, "netlink dump did not end")


def _netlink_dump(message_type: int, body: bytes) -> list[tuple[int, bytes]]:
    """All messages of one rtnetlink dump request (type, payload after the netlink header)."""
    return _netlink_request(message_type, NLM_F_REQUEST | NLM_F_DUMP, body)


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
        mtu = attrs.get(IFLA_MTU, b"")
        interfaces[index] = {
            "name": name,
            "index": index,
            "mac": _format_mac(attrs.get(IFLA_ADDRESS, b"")),
            "mtu": struct.unpack("=I", mtu[:4])[0] if len(mtu) >= 4 else None,
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


def interface_mtu(name: str) -> int | None:
    """The MTU of interface ``name`` (ioctl), or None when it has gone."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            (mtu,) = struct.unpack_from("=i", _ioctl_ifreq(sock, SIOCGIFMTU, name), 16)
    except OSError:
        return None
    return int(mtu)


def interfaces_from_proc() -> list[JSONDict]:
    """Fallback without netlink: ioctl for IPv4 (primary address only), /proc for IPv6."""
    interfaces: dict[str, JSONDict] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for index, name in socket.if_nameindex():
            entry: JSONDict = {
                "name": name,
                "index": index,
                "mac": None,
                "mtu": interface_mtu(name),
                "addresses": [],
            }
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
    """Every interface of this network namespace: name, index, MAC, MTU, addresses."""
    try:
        return interfaces_from_netlink()
    except OSError as exc:
        log(f"netlink unavailable ({describe_os_error(exc)}); reading /proc and ioctl")
        return interfaces_from_proc()


class InterfaceCache:
    """Which interface (name, MTU) holds a local address, from an interface list at most a
    second old: the UDP listener asks for every datagram."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_address: dict[str, tuple[str, int | None]] = {}
        self._read_at = float("-inf")

    def holding(self, address: str | None) -> tuple[str | None, int | None]:
        if not address:
            return None, None
        address = normalize_ip(address)
        with self._lock:
            age = time.monotonic() - self._read_at
            # A new address is looked up again soon; a known one at most once a second.
            if age > INTERFACE_CACHE_SECONDS or (address not in self._by_address and age > 0.2):
                self._refresh()
            return self._by_address.get(address, (None, None))

    def _refresh(self) -> None:
        self._read_at = time.monotonic()
        try:
            interfaces = list_interfaces()
        except OSError as exc:
            log(f"cannot list interfaces: {describe_os_error(exc)}")
            return
        self._by_address = {
            entry.split("/", 1)[0]: (str(interface["name"]), interface.get("mtu"))
            for interface in interfaces
            for entry in interface["addresses"]
        }


INTERFACES = InterfaceCache()


def _route_lookup(address: str) -> tuple[int | None, int | None]:
    """The kernel's route to ``address`` (RTM_GETROUTE): output interface index, and the path
    MTU it learned (a "fragmentation needed" it believed), if any."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    raw = socket.inet_pton(family, address)
    body = struct.pack("=BBBBBBBBI", family, len(raw) * 8, 0, 0, 0, 0, 0, 0, 0)
    body += struct.pack("=HH", 4 + len(raw), RTA_DST) + raw  # 4 or 16 bytes: aligned
    for kind, payload in _netlink_request(RTM_GETROUTE, NLM_F_REQUEST, body):
        if kind != RTM_NEWROUTE or len(payload) < 12:
            continue
        attrs = _rtattrs(payload, 12)
        oif = attrs.get(RTA_OIF, b"")
        metric = _rtattrs(attrs.get(RTA_METRICS, b""), 0).get(RTAX_MTU, b"")
        return (
            int(struct.unpack("=i", oif[:4])[0]) if len(oif) >= 4 else None,
            int(struct.unpack("=I", metric[:4])[0]) if len(metric) >= 4 else None,
        )
    return None, None


def _route_output_index(address: str) -> int | None:
    """The output interface index of the kernel's route to ``address``."""
    return _route_lookup(address)[0]


def route_interface(address: str) -> tuple[str | None, int | None]:
    """Name and MTU of the local interface the kernel routes ``address`` through: the
    interface's MTU, not the path MTU cache. (None, None) when there is no route."""
    address = address.split("%", 1)[0]
    try:
        index = _route_output_index(address)
        if index:
            name = socket.if_indextoname(index)
            return name, interface_mtu(name)
    except (OSError, ValueError) as exc:
        if isinstance(exc, OSError) and exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return None, None
    # Without netlink: the source address the kernel picks, and the interface holding it.
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((address, 9))  # a UDP connect sends nothing
            local = probe.getsockname()[0]
    except OSError:
        return None, None
    return INTERFACES.holding(local)


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


def set_dont_fragment(sock: socket.socket, family: socket.AddressFamily) -> None:
    """Don't Fragment: the kernel refuses (EMSGSIZE) what does not fit the path MTU."""
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_DONTFRAG, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)


def path_mtu(sock: socket.socket, family: socket.AddressFamily) -> int | None:
    """The kernel's path MTU for a connected socket's destination, or None."""
    try:
        if family == socket.AF_INET6:
            return int(sock.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU))
        return int(sock.getsockopt(socket.IPPROTO_IP, IP_MTU))
    except OSError:
        pass
    # After an ICMP error the socket's route is stale (ENOTCONN): ask the routing table.
    try:
        return _route_lookup(str(sock.getpeername()[0]).split("%", 1)[0])[1]
    except (OSError, ValueError):
        return None


class SizedPacket:
    """A probe packet of a chosen IP size: the nonce line, then deterministic padding."""

    def __init__(
        self, nonce: str, size: int | str, family: socket.AddressFamily, address: str, l4: int
    ) -> None:
        self.iface, self.mtu = route_interface(address)
        overhead = (40 if family == socket.AF_INET6 else 20) + l4
        if isinstance(size, int):
            packet_size = size
        elif self.mtu is None:
            raise RequestError(
                f"cannot size the packet to the MTU: no local interface routes {address}",
                "ENETUNREACH",
            )
        else:
            packet_size = min(self.mtu, MAX_IP_PACKET)
        head = nonce.encode() + b"\n"
        if packet_size < overhead + len(head):
            raise RequestError(
                f"field 'size' {packet_size} is too small: {overhead} header bytes and the "
                f"{len(head)}-byte nonce line need {overhead + len(head)}"
            )
        self.size = packet_size
        self.head = head
        self.payload = head + deterministic_bytes(nonce, packet_size - overhead - len(head))
        self.sha256 = hashlib.sha256(self.payload).hexdigest()

    def details(self) -> JSONDict:
        return {
            "size": self.size,
            "payload_bytes": len(self.payload),
            "mtu": self.mtu,
            "iface": self.iface,
        }

    def text(self, df: bool, peer_mtu: object = None) -> str:
        flags = ", DF" if df else ""
        peer = f", peer MTU {peer_mtu}" if peer_mtu is not None else ""
        return (
            f"{self.size}-byte packet ({len(self.payload)} payload bytes{flags}); "
            f"local {self.iface} MTU {self.mtu}{peer}"
        )


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


def _accept_loop(
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
                    log(f"listener tcp nonce={_plain(nonce) if nonce else '-'} peer={peer}")
                # Our SYN-ACKs (and anything else) sent again so far: the client's probe of a
                # measured request counts a lost SYN-ACK by it.
                extra = {"retrans": tcp_retransmissions(conn)}
                conn.sendall(_listener_reply(nonce, peer, extra))
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


def _parse_transfer_header(line: bytes) -> tuple[str, int]:
    """``NETCONFORM-TRANSFER <nonce> <size>`` (a nonce holds no spaces: never a nonce line)."""
    fields = line.decode("utf-8", "replace").split(" ")
    if len(fields) != 3 or not is_valid_nonce(fields[1]) or not fields[2].isdigit():
        raise RequestError(f"bad transfer header {_shown(line)}")
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
                f"listener udp nonce={_plain(nonce) if nonce else '-'} peer={peer} bytes={len(data)}"
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


def _parse_listener_reply(data: bytes, nonce: str, where: str) -> JSONDict:
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
            f"{where} answered {_shown(reply)}, expected nonce {nonce!r}",
            None,
            {"wrong_answer": True},
        )
    if not isinstance(reply.get("peer"), str):
        raise RequestError(
            f"{where} answered {_shown(reply)} without a peer", None, {"wrong_answer": True}
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
        reply = _parse_listener_reply(_read_line(sock, deadline), nonce, where)
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
                    reply = _parse_listener_reply(data, nonce, where)
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
            reply = _parse_listener_reply(_read_line(sock, deadline), nonce, where)
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


def _icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    words: tuple[int, ...] = struct.unpack(f"!{len(data) // 2}H", data)
    total = sum(words)
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


_icmp_sequence = itertools.count(1)
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
    sequence = next(_icmp_sequence) & 0xFFFF
    payload = packet.payload if packet is not None else nonce.encode()
    header = struct.pack("!BBHHH", request_type, 0, 0, identifier, sequence)
    if not is_v6:  # the kernel computes ICMPv6 checksums itself
        checksum = _icmp_checksum(header + payload)
        header = struct.pack("!BBHHH", request_type, 0, checksum, identifier, sequence)
    deadline = time.monotonic() + timeout
    sock, is_raw = _open_icmp_socket(family)
    with sock:
        if df:
            set_dont_fragment(sock, family)
        try:
            sock.sendto(header + payload, sockaddr)
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                learned = _route_lookup(str(sockaddr[0]).split("%", 1)[0])[1]
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
                reply = _parse_listener_reply(data, nonce, tally.where)
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
    sock, is_raw = _open_icmp_socket(family)
    with sock:
        # A raw socket without the filter still works, on its own (and records that it had none).
        filtered = only_echo_replies(sock, is_v6, identifier) if is_raw else True

        def send(index: int) -> None:
            sequence = next(_icmp_sequence) & 0xFFFF
            probe_of[sequence] = index
            header = struct.pack("!BBHHH", request_type, 0, 0, identifier, sequence)
            if not is_v6:
                checksum = _icmp_checksum(header + payload)
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
                reply = _parse_listener_reply(conn.received, nonce, tally.where)
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


# --------------------------------------------------------------------------------------------
# Services: spreads over a virtual IP, names through the pod's resolver, the environment.

UNNAMED_SERVER = "(unnamed)"  # a listener whose agent has no POD_NAME


def spread(
    proto: str,
    host: str,
    port: int,
    nonce: str,
    expect: Sequence[str],
    max_tries: int,
    timeout: float,
    parallel: int,
    min_tries: int = 1,
) -> JSONDict:
    """Connect to ``host``:``port`` again and again (a Service's address: each connection may
    reach another endpoint), ``parallel`` tries at a time, until every server of ``expect``
    answered at least once and ``min_tries`` tries were started (with none expected: every try
    is made), ``max_tries`` tries were started, or `SPREAD_SECONDS` passed. Each try is a ``connect`` with its own nonce
    (``<nonce>.<n>``) and ``timeout``; the answer counts who answered (the listener's pod name),
    the source addresses each server saw, and how the failed tries failed."""
    lock = threading.Lock()
    servers: dict[str, int] = {}
    peers: dict[str, list[str]] = {}
    errors: dict[str, int] = {}
    examples: list[str] = []
    wanted = set(expect)
    all_answered = threading.Event()
    started_at = time.monotonic()
    deadline = started_at + SPREAD_SECONDS
    tries = [0]

    def next_try() -> int | None:
        with lock:
            enough = all_answered.is_set() and tries[0] >= min_tries
            if enough or tries[0] >= max_tries or time.monotonic() > deadline:
                return None
            tries[0] += 1
            return tries[0]

    def work() -> None:
        while True:
            index = next_try()
            if index is None:
                return
            try_nonce = f"{nonce}.{index}"
            try:
                if proto == "tcp":
                    answer = connect_tcp(host, port, try_nonce, timeout)
                else:
                    answer = connect_udp(host, port, try_nonce, timeout)
            except RequestError as exc:
                kind, text = exc.errno_name or "EPROTO", str(exc)
            except OSError as exc:
                kind, text = errno_name(exc.errno) or "OSError", describe_os_error(exc)
            else:
                name = answer.get("server")
                server = name if isinstance(name, str) and name else UNNAMED_SERVER
                with lock:
                    servers[server] = servers.get(server, 0) + 1
                    seen = peers.setdefault(server, [])
                    if answer["peer_seen"] not in seen and len(seen) < 16:
                        seen.append(answer["peer_seen"])
                    if wanted and wanted <= set(servers):
                        all_answered.set()
                continue
            with lock:
                errors[kind] = errors.get(kind, 0) + 1
                if len(examples) < 3:
                    examples.append(text)

    helpers: list[threading.Thread] = []
    for _ in range(min(parallel, max_tries) - 1):
        thread = threading.Thread(target=work, daemon=True)
        try:
            thread.start()
        except RuntimeError:  # "can't start new thread": fewer at once, same tries
            break
        helpers.append(thread)
    work()
    for thread in helpers:
        thread.join()
    return {
        "tries": tries[0],
        "servers": servers,
        "peers": {server: sorted(seen) for server, seen in peers.items()},
        "errors": errors,
        "error_examples": examples,
        "missing": sorted(wanted - set(servers)),
        "seconds": round(time.monotonic() - started_at, 3),
    }


#: SO_NETNS_COOKIE (Linux 5.14): the network namespace's 64-bit id, never reused while the
#: machine runs (a namespace's inode number can be, once it is freed); the generic value, as
#: Python before 3.12 has no name for it.
SO_NETNS_COOKIE = getattr(socket, "SO_NETNS_COOKIE", 71)


def netns_cookie() -> int | None:
    """This process's network namespace cookie; None where the kernel has none (before 5.14)
    or the option has another number (sparc, parisc)."""
    if platform.machine().startswith(("sparc", "parisc")):
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    except OSError:
        return None
    return int(struct.unpack("=Q", raw)[0]) if len(raw) == 8 else None


RESOLV_CONF = "/etc/resolv.conf"


def read_resolv_conf(path: str = RESOLV_CONF) -> JSONDict | None:
    """The pod's resolver configuration as kubelet wrote it: ``nameservers``, ``search`` and
    ``options`` (None when the file cannot be read)."""
    found: JSONDict = {"nameservers": [], "search": [], "options": []}
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read(64 << 10).splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) < 2:
            continue
        if fields[0] == "nameserver":
            found["nameservers"].append(fields[1])
        elif fields[0] in ("search", "domain"):
            found["search"] = fields[1:]  # the last search or domain line wins
        elif fields[0] == "options":
            found["options"].extend(fields[1:])
    return found


#: getaddrinfo's error codes by value (``EAI_NONAME``...), as far as this libc has them.
EAI_NAMES = {
    getattr(socket, name): name
    for name in sorted(dir(socket), reverse=True)
    if name.startswith("EAI_") and isinstance(getattr(socket, name), int)
}
FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6, 0: socket.AF_UNSPEC}


def resolve_name(name: str, family: int, timeout: float) -> JSONDict:
    """``name``'s addresses through the pod's own resolver (getaddrinfo: /etc/hosts, then DNS
    with the search list and ndots of /etc/resolv.conf), of IP version ``family`` (0: both);
    ``RequestError`` with the resolver's error (``EAI_NONAME``...), or ETIMEDOUT when the
    resolver has not answered within ``timeout``."""
    found: JSONDict = {}

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(name, None, FAMILIES[family], socket.SOCK_STREAM)
            found["addresses"] = sorted({normalize_ip(str(info[4][0])) for info in infos})
        except socket.gaierror as exc:
            found["error"] = (exc.strerror or str(exc), EAI_NAMES.get(exc.errno, "EAI_FAIL"))
        except (UnicodeError, ValueError) as exc:
            found["error"] = (str(exc), "EAI_NONAME")

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout)
    where = f"resolve {name}" + (f" (IPv{family})" if family else "")
    if thread.is_alive():  # the lookup thread ends when the resolver gives up
        raise RequestError(f"{where}: no answer from the resolver within {timeout}s", "ETIMEDOUT")
    if "error" in found:
        text, code = found["error"]
        raise RequestError(f"{where}: {text}", code)
    return {"name": name, "family": family, "addresses": found["addresses"]}


def field_name(request: JSONDict) -> str:
    name = field_str(request, "name")
    if not 0 < len(name) <= MAX_NAME_LENGTH or not name.isprintable() or " " in name:
        raise RequestError(
            f"field 'name' must be 1..{MAX_NAME_LENGTH} printable characters without spaces"
        )
    return name


def field_servers(request: JSONDict) -> list[str]:
    servers = request.get("expect_servers", [])
    if (
        not isinstance(servers, list)
        or len(servers) > MAX_SPREAD_SERVERS
        or not all(isinstance(s, str) and 0 < len(s) <= 253 for s in servers)
    ):
        raise RequestError(
            f"field 'expect_servers' must be a list of at most {MAX_SPREAD_SERVERS} pod names"
        )
    return list(dict.fromkeys(servers))


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


# --------------------------------------------------------------------------------------------
# Files, only inside the agent's data directories.


class DataDirectories:
    """The directories file requests may touch (``serve --data-dir``); none: files refused."""

    def __init__(self, directories: Sequence[str]) -> None:
        self.roots = [os.path.realpath(directory) for directory in directories]

    def resolve(self, path: str, for_write: bool) -> str:
        """The real path of ``path``; ``RequestError`` (EACCES) unless it lies inside a data
        directory after every symlink is followed (a written file's own name is not followed:
        the write replaces it)."""
        if not self.roots:
            raise RequestError(
                "file requests are refused: the agent was started without --data-dir", "EACCES"
            )
        if not path.startswith("/") or "\0" in path or ".." in path.split("/"):
            raise RequestError(
                f"path {_shown(path)} must be absolute, without '..' components", "EACCES"
            )
        if for_write:
            parent, name = os.path.split(path)
            if not name:
                raise RequestError(f"path {_shown(path)} names no file", "EACCES")
            resolved = os.path.join(os.path.realpath(parent), name)
        else:
            resolved = os.path.realpath(path)
        for root in self.roots:
            if resolved != root and os.path.commonpath([resolved, root]) == root:
                return resolved
        raise RequestError(
            f"path {_shown(path)} (really {_shown(resolved)}) is outside the agent's data "
            f"directories {self.roots}",
            "EACCES",
        )

    def write_file(self, path: str, size: int, seed: str) -> JSONDict:
        resolved = self.resolve(path, for_write=True)
        directory, name = os.path.split(resolved)
        digest = hashlib.sha256()
        # Write then rename, so a reader in the other container never sees half a file; the
        # temporary name is created, never followed (O_EXCL | O_NOFOLLOW).
        temporary = os.path.join(
            directory, f".{name}.netconform-{os.getpid()}-{threading.get_ident()}"
        )
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        descriptor = os.open(temporary, flags, 0o666)
        try:
            with os.fdopen(descriptor, "wb") as out:
                for chunk in iter_deterministic_chunks(seed, size):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, resolved)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        return {"sha256": digest.hexdigest(), "size": size, "path": path}

    def read_file(self, path: str) -> JSONDict:
        resolved = self.resolve(path, for_write=False)
        # O_NONBLOCK: a FIFO in a volume must not hang the request; only regular files count.
        descriptor = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(descriptor, "rb") as source:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise RequestError(f"{_shown(path)} is not a regular file", "EINVAL")
            digest = hashlib.sha256()
            size = 0
            for chunk in iter(lambda: source.read(FILE_CHUNK), b""):
                digest.update(chunk)
                size += len(chunk)
        return {"sha256": digest.hexdigest(), "size": size, "path": path}


# --------------------------------------------------------------------------------------------
# Packet captures (scapy, imported on first use).


class CaptureStartError(RequestError):
    """A sniffer that did not start; ``thread_died``: it failed at once (not a slow start)."""

    def __init__(self, message: str, thread_died: bool) -> None:
        super().__init__(message)
        self.thread_died = thread_died


class Capture:
    """One running or finished sniffer, with the packets it matched (bounded)."""

    def __init__(
        self, capture_id: str, needle: str, by_prefix: bool, iface: str | list[str]
    ) -> None:
        self.capture_id = capture_id
        self.needle = needle.encode()
        self.by_prefix = by_prefix
        self.iface = iface
        self.limit = MAX_PACKETS_PER_PREFIX_CAPTURE if by_prefix else MAX_PACKETS_PER_CAPTURE
        self.packets: list[PacketRow] = []
        self.nonces: set[str] = set()
        self.dropped = 0
        self.finished = False
        self.condition = threading.Condition()
        self.sniffer: Any = None

    def add(self, packet: PacketRow) -> None:
        with self.condition:
            if len(self.packets) < self.limit:
                self.packets.append(packet)
            else:
                self.dropped += 1
            if len(self.nonces) < self.limit:
                self.nonces.add(packet[4])
            self.condition.notify_all()

    def mark_finished(self) -> None:
        with self.condition:
            self.finished = True
            self.condition.notify_all()

    def wait(self, min_packets: int, expect: Sequence[str], seconds: float) -> None:
        def done() -> bool:
            if self.finished:
                return True
            if expect:
                return all(nonce in self.nonces for nonce in expect)
            return len(self.packets) >= min_packets

        with self.condition:
            self.condition.wait_for(done, timeout=seconds)


class CaptureBook:
    """The captures of one serve process; scapy is imported once, on the first capture."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._captures: dict[str, Capture] = {}
        self._ids = itertools.count(1)
        self._scapy: dict[str, Any] | None = None
        self._scapy_error: str | None = None

    def _load_scapy(self) -> dict[str, Any]:
        with self._lock:
            if self._scapy is None and self._scapy_error is None:
                started = time.monotonic()
                try:
                    from scapy.config import conf
                    from scapy.layers import l2  # noqa: F401  (link-layer dissectors)
                    from scapy.layers.inet import IP
                    from scapy.layers.inet6 import IPv6
                    from scapy.sendrecv import AsyncSniffer

                    conf.verb = 0
                    self._scapy = {
                        "AsyncSniffer": AsyncSniffer,
                        "IP": IP,
                        "IPv6": IPv6,
                        "filter": self._kernel_filter(),
                    }
                    log(f"scapy imported in {time.monotonic() - started:.1f}s")
                except Exception as exc:  # scapy raises more than ImportError when half-installed
                    self._scapy_error = f"scapy is not usable in this image: {exc}"
            if self._scapy is None:
                raise RequestError(str(self._scapy_error))
            return self._scapy

    @staticmethod
    def _kernel_filter() -> str | None:
        """The BPF filter, if this scapy can compile one (libpcap); else Python filters alone."""
        try:
            from scapy.arch.common import compile_filter
            from scapy.data import DLT_EN10MB

            compile_filter(CAPTURE_FILTER, linktype=DLT_EN10MB)
        except Exception as exc:
            log(f"no kernel packet filter ({exc}); filtering in Python")
            return None
        return CAPTURE_FILTER

    def start(self, nonce: str | None, prefix: str | None, iface: str, timeout: float) -> JSONDict:
        interfaces: str | list[str]
        if iface == "any":
            interfaces = [name for _, name in socket.if_nameindex()]
        else:
            try:
                socket.if_nametoindex(iface)
            except OSError as exc:
                raise RequestError(
                    f"no interface {_shown(iface)} in this network namespace"
                ) from exc
            interfaces = iface
        scapy = self._load_scapy()
        with self._lock:
            running = [c for c in self._captures.values() if not c.finished]
            if len(running) >= MAX_CAPTURES:
                raise RequestError(f"{len(running)} captures already running; ask their results")
            # Forget the oldest finished captures (ids are in start order) to stay bounded.
            finished = [i for i, c in self._captures.items() if c.finished]
            for old_id in finished[: max(0, len(self._captures) + 1 - MAX_CAPTURES)]:
                del self._captures[old_id]
            needle = prefix if prefix is not None else str(nonce)
            capture = Capture(f"cap-{next(self._ids)}", needle, prefix is not None, interfaces)
            self._captures[capture.capture_id] = capture
        try:
            self._launch(capture, scapy, scapy["filter"])
        except CaptureStartError as exc:
            if scapy["filter"] is None or not exc.thread_died:
                raise
            # An interface whose link type the filter compiler does not know: Python alone.
            log(f"capture {capture.capture_id} on {iface!r}: retrying without a kernel filter")
            capture.finished = False
            self._launch(capture, scapy, None)

        def watch() -> None:
            # Bound the capture here: scapy >= 2.6 refuses AsyncSniffer(timeout=...).
            capture.sniffer.join(timeout)
            self._stop(capture)

        threading.Thread(target=watch, daemon=True).start()
        return {"capture_id": capture.capture_id, "iface": interfaces}

    def _launch(self, capture: Capture, scapy: dict[str, Any], kernel_filter: str | None) -> None:
        ip_layer, ipv6_layer = scapy["IP"], scapy["IPv6"]
        needle = capture.needle

        def matches(packet: Any) -> bool:
            raw = getattr(packet, "original", None) or bytes(packet)
            return len(raw) <= CAPTURE_MAX_PACKET_BYTES and needle in raw

        def record(packet: Any) -> None:
            raw = getattr(packet, "original", None) or bytes(packet)
            if capture.by_prefix:
                nonce = find_nonce(raw, needle) or needle.decode()
            else:
                nonce = needle.decode()
            # Ask layers by type; proto from the IP header's own protocol field.
            if packet.haslayer(ip_layer):
                layer, number = packet[ip_layer], packet[ip_layer].proto
            elif packet.haslayer(ipv6_layer):
                layer, number = packet[ipv6_layer], packet[ipv6_layer].nh
            else:
                return
            capture.add(
                (
                    IP_PROTOCOL_NAMES.get(int(number), "other"),
                    sys.intern(str(layer.src)),
                    sys.intern(str(layer.dst)),
                    sys.intern(str(getattr(packet, "sniffed_on", None) or "")) or None,
                    sys.intern(nonce),
                )
            )

        started = threading.Event()
        options: JSONDict = {
            "iface": capture.iface,
            "lfilter": matches,
            "prn": record,
            "store": False,
            "started_callback": started.set,
        }
        if kernel_filter is not None:
            options["filter"] = kernel_filter
        sniffer = scapy["AsyncSniffer"](**options)
        capture.sniffer = sniffer
        sniffer.start()
        # The sniffer opens its socket in its own thread: answer only once it listens, so the
        # caller's next packet is not missed; a thread that died (no NET_RAW) fails fast.
        deadline = time.monotonic() + 10.0
        while not started.wait(0.05):
            thread = getattr(sniffer, "thread", None)
            if (thread is not None and not thread.is_alive()) or time.monotonic() > deadline:
                break
        if started.is_set():
            return
        capture.mark_finished()
        self._stop(capture)
        thread = getattr(sniffer, "thread", None)
        where = _shown(capture.iface)
        if thread is not None and not thread.is_alive():
            error = getattr(sniffer, "exception", None) or "see the agent log"
            raise CaptureStartError(
                f"capture on {where} failed to start ({error}); capturing needs NET_RAW", True
            )
        raise CaptureStartError(f"capture on {where} did not start within 10s", False)

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

    def result(
        self, capture_id: str, wait: float, min_packets: int, expect: Sequence[str]
    ) -> JSONDict:
        with self._lock:
            capture = self._captures.get(capture_id)
        if capture is None:
            raise RequestError(f"unknown capture_id {_shown(capture_id)}")
        if expect and not capture.by_prefix:
            raise RequestError("field 'expect_nonces' needs a capture started with nonce_prefix")
        for nonce in expect:
            if not nonce.startswith(capture.needle.decode()):
                raise RequestError(f"expected nonce {nonce!r} does not start with the prefix")
        capture.wait(min_packets, expect, wait)
        self._stop(capture)
        with capture.condition:
            rows = list(capture.packets)
            seen = set(capture.nonces)
            dropped = capture.dropped
        response: JSONDict = {
            "capture_id": capture_id,
            "packets": [
                {"proto": proto, "src": src, "dst": dst, "iface": iface, "nonce": nonce}
                for proto, src, dst, iface, nonce in rows
            ],
            "dropped": dropped,
        }
        if expect:
            response["missing"] = [nonce for nonce in expect if nonce not in seen]
        return response


# --------------------------------------------------------------------------------------------
# The serve process.


class Agent:
    """Dispatches control requests; every failure becomes a response, never a crash."""

    def __init__(
        self,
        book: RecordBook,
        listeners: JSONDict,
        ports: JSONDict | None = None,
        data: DataDirectories | None = None,
    ) -> None:
        self.book = book
        self.listeners = listeners
        self.ports = ports or {}
        self.data = data or DataDirectories(())
        self.captures = CaptureBook()
        # What `ping` (the readiness probe) reports; `set_ready` flips it.
        self.ready = True
        # The edge control listener and what it may connect to (``serve --edge-control``).
        self.edge: JSONDict | None = None
        self._ops: dict[str, Callable[[JSONDict], JSONDict]] = {
            "info": self.op_info,
            "addresses": self.op_addresses,
            "try_bind": self.op_try_bind,
            "connect": self.op_connect,
            "icmp": self.op_icmp,
            "transfer": self.op_transfer,
            "seen": self.op_seen,
            "capture_start": self.op_capture_start,
            "capture_result": self.op_capture_result,
            "write_file": self.op_write_file,
            "read_file": self.op_read_file,
            "spread": self.op_spread,
            "resolve": self.op_resolve,
            "env": self.op_env,
            "set_ready": self.op_set_ready,
            "relay": self.op_relay,
            "drops": self.op_drops,
        }

    def handle(self, request: object) -> JSONDict:
        started = time.monotonic()
        op = request.get("op") if isinstance(request, dict) else None
        # Echo the op only as a short string: a request must not make the response huge.
        if not isinstance(op, str) or len(op) > 64:
            op = None if not isinstance(op, str) else op[:64]
        response: JSONDict = {"ok": True, "op": op}
        try:
            if not isinstance(request, dict):
                raise RequestError(f"a request must be a JSON object, got {type(request).__name__}")
            handler = self._ops.get(op) if op is not None else None
            if handler is None:
                raise RequestError(
                    f"unknown op {_shown(request.get('op'))}; known ops: "
                    f"{', '.join(sorted(self._ops))}"
                )
            response.update(handler(request))
        except RequestError as exc:
            response = dict(exc.details)
            response.update({"ok": False, "op": op, "error": str(exc)})
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
            "netns_cookie": netns_cookie(),
            "env": {key: os.environ.get(key) for key in ENV_KEYS},
            "listeners": self.listeners,
            "ports": self.ports,
            "data_dirs": self.data.roots,
            "python": platform.python_version(),
            "ready": self.ready,
            "resolver": read_resolv_conf(),
            "edge": self.edge,
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
        size = field_packet_size(request)
        df = field_bool(request, "df", False)
        count, interval = field_probes(request)
        if count > 1:
            if size is not None or df:
                raise RequestError("fields 'size' and 'df' do not go with 'count'")
            if proto == "udp":
                return measure_udp(host, port, nonce, count, interval, timeout)
            parallel = field_int(request, "parallel", DEFAULT_PROBE_PARALLEL, 1, MAX_PROBE_PARALLEL)
            return measure_tcp(host, port, nonce, count, interval, timeout, parallel)
        if proto == "tcp" and (size is not None or df):
            raise RequestError("fields 'size' and 'df' are for udp; use op transfer for tcp")
        # Timed, so that the suite can tell a refusal at once from one after seconds of ARP.
        started = time.monotonic()
        try:
            if proto == "tcp":
                answer = connect_tcp(host, port, nonce, timeout)
            else:
                answer = connect_udp(host, port, nonce, timeout, size, df)
        except RequestError as exc:
            exc.details["seconds"] = round(time.monotonic() - started, 3)
            raise
        except OSError as exc:
            raise RequestError(
                describe_os_error(exc),
                errno_name(exc.errno),
                {"seconds": round(time.monotonic() - started, 3)},
            ) from exc
        answer["seconds"] = round(time.monotonic() - started, 3)
        return answer

    def op_icmp(self, request: JSONDict) -> JSONDict:
        host = field_str(request, "host")
        nonce = field_nonce(request)
        timeout = field_number(request, "timeout", 3.0, 0.05, MAX_TIMEOUT)
        size = field_packet_size(request)
        df = field_bool(request, "df", False)
        count, interval = field_probes(request)
        if count > 1:
            if size is not None or df:
                raise RequestError("fields 'size' and 'df' do not go with 'count'")
            return measure_icmp(host, nonce, count, interval, timeout)
        return send_icmp_echo(host, nonce, timeout, size, df)

    def op_transfer(self, request: JSONDict) -> JSONDict:
        return transfer(
            field_str(request, "host"),
            field_int(request, "port", None, 1, 65535),
            field_nonce(request),
            field_int(request, "size", None, 0, MAX_TRANSFER_BYTES),
            field_number(request, "timeout", 10.0, 0.05, MAX_TIMEOUT),
        )

    def op_seen(self, request: JSONDict) -> JSONDict:
        nonce, prefix = field_nonce_or_prefix(request)
        expect = field_expect_nonces(request, prefix)
        wait = field_number(request, "wait", 0.0, 0.0, MAX_TIMEOUT)
        records, missing = self.book.find(nonce, prefix, expect, wait)
        response: JSONDict = {"records": records}
        if expect:
            response["missing"] = missing
        return response

    def op_capture_start(self, request: JSONDict) -> JSONDict:
        nonce, prefix = field_nonce_or_prefix(request)
        iface = request.get("iface") or default_interface()
        if not isinstance(iface, str):
            raise RequestError("field 'iface' must be a string (no default interface found)")
        timeout = field_number(request, "timeout", 10.0, 0.1, MAX_CAPTURE_SECONDS)
        return self.captures.start(nonce, prefix, iface, timeout)

    def op_capture_result(self, request: JSONDict) -> JSONDict:
        expect = request.get("expect_nonces")
        if expect is not None and (
            not isinstance(expect, list)
            or len(expect) > MAX_EXPECT_NONCES
            or not all(is_valid_nonce(nonce) for nonce in expect)
        ):
            raise RequestError(
                f"field 'expect_nonces' must be a list of at most {MAX_EXPECT_NONCES} nonces"
            )
        return self.captures.result(
            field_str(request, "capture_id"),
            field_number(request, "wait", 2.0, 0.0, MAX_CAPTURE_SECONDS),
            field_int(request, "min_packets", 1, 1, MAX_PACKETS_PER_PREFIX_CAPTURE),
            list(dict.fromkeys(expect or [])),
        )

    def op_write_file(self, request: JSONDict) -> JSONDict:
        path = field_str(request, "path")
        size = field_int(request, "size", None, 0, MAX_FILE_BYTES)
        return self.data.write_file(path, size, field_seed(request))

    def op_read_file(self, request: JSONDict) -> JSONDict:
        return self.data.read_file(field_str(request, "path"))

    def op_spread(self, request: JSONDict) -> JSONDict:
        nonce = field_nonce(request)
        if len(nonce) > MAX_NONCE_LENGTH - 5:  # room for ".<try>"
            raise RequestError(f"field 'nonce' of a spread holds at most {MAX_NONCE_LENGTH - 5}")
        return spread(
            field_proto(request),
            field_str(request, "host"),
            field_int(request, "port", None, 1, 65535),
            nonce,
            field_servers(request),
            field_int(request, "max_tries", None, 1, MAX_SPREAD_TRIES),
            field_number(request, "timeout", 3.0, 0.05, MAX_TIMEOUT),
            field_int(request, "parallel", 8, 1, MAX_SPREAD_PARALLEL),
            field_int(request, "min_tries", 1, 1, MAX_SPREAD_TRIES),
        )

    def op_resolve(self, request: JSONDict) -> JSONDict:
        family = field_int(request, "family", 0, 0, 6)
        if family not in FAMILIES:
            raise RequestError(f"field 'family' must be 4, 6 or 0 (both), got {family}")
        return resolve_name(
            field_name(request), family, field_number(request, "timeout", 5.0, 0.05, MAX_TIMEOUT)
        )

    def op_env(self, request: JSONDict) -> JSONDict:
        prefix = field_str(request, "prefix")
        return {
            "variables": {key: value for key, value in os.environ.items() if key.startswith(prefix)}
        }

    def op_drops(self, request: JSONDict) -> JSONDict:
        udp_port = self.ports.get("udp")
        return {
            "udp": udp_socket_drops(udp_port) if isinstance(udp_port, int) else None,
            "tcp_listen": listen_drops(),
        }

    def op_set_ready(self, request: JSONDict) -> JSONDict:
        ready = request.get("ready")
        if not isinstance(ready, bool):
            raise RequestError(f"field 'ready' must be true or false, got {_shown(ready)}")
        self.ready = ready
        return {"ready": ready}

    def op_relay(self, request: JSONDict) -> JSONDict:
        inner = request.get("request")
        if not isinstance(inner, dict):
            raise RequestError(f"field 'request' must be one request object, got {_shown(inner)}")
        if inner.get("op") == "relay":
            raise RequestError("a relayed request cannot be a relay itself")
        return relay(
            field_str(request, "host"),
            field_int(request, "port", None, 1, 65535),
            inner,
            field_number(request, "timeout", RELAY_TIMEOUT, 0.05, MAX_TIMEOUT),
        )


def _request_summary(request: object) -> str:
    if not isinstance(request, dict):
        return ""
    shown = [
        f"{key}={_plain(request[key], 60)}"
        for key in (
            "proto",
            "host",
            "port",
            "nonce",
            "nonce_prefix",
            "size",
            "df",
            "iface",
            "capture_id",
            "path",
            "name",
            "family",
            "prefix",
            "max_tries",
            "min_tries",
            "count",
            "ready",
        )
        if key in request
    ]
    return " ".join(shown) + " " if shown else ""


def _response_summary(response: JSONDict) -> str:
    if not response["ok"]:
        return f"FAILED {_plain(response.get('error'), 300)}"
    shown = [
        f"{key}={response[key]}"
        for key in (
            "peer_seen",
            "server",
            "reply_from",
            "bound",
            "sha256",
            "size",
            "bytes_received",
            "tries",
            "sent",
            "lost",
            "servers",
            "errors",
            "addresses",
            "ready",
        )
        if key in response
    ]
    for key in ("records", "packets", "missing"):
        if key in response:
            shown.append(f"{key}={len(response[key])}")
    return " ".join(["ok", *shown])


# --------------------------------------------------------------------------------------------
# Batches: a list (one request after another) or {"parallel": N, "requests": [...]}.


def batch_requests(body: object) -> tuple[list[object], int]:
    """The requests of a batch and how many may run at once. ``RequestError`` on a bad batch
    object or too many requests; any other value is taken as a batch of one request."""
    if isinstance(body, list):
        requests, parallel = body, 1
    elif isinstance(body, dict) and "requests" in body:
        requests = body["requests"]
        if not isinstance(requests, list):
            raise RequestError("field 'requests' of a batch must be a list of requests")
        parallel = field_int(body, "parallel", 1, 1, MAX_PARALLEL)
    else:
        requests, parallel = [body], 1
    if len(requests) > MAX_BATCH_REQUESTS:
        raise RequestError(
            f"a batch holds at most {MAX_BATCH_REQUESTS} requests, got {len(requests)}"
        )
    return requests, parallel


class ResponseBytes:
    """Encodes a batch's responses as they finish, within ``MAX_BATCH_RESPONSE_BYTES``."""

    def __init__(self, limit: int = MAX_BATCH_RESPONSE_BYTES) -> None:
        self._lock = threading.Lock()
        self._left = limit

    def encode(self, response: JSONDict) -> bytes:
        # default=str: an odd value in a response must not cost the whole batch.
        encoded = json.dumps(response, default=str).encode()
        with self._lock:
            if len(encoded) <= self._left:
                self._left -= len(encoded)
                return encoded
        return json.dumps(
            {
                "ok": False,
                "op": response.get("op"),
                "error": f"response dropped: the batch's responses exceed "
                f"{MAX_BATCH_RESPONSE_BYTES} bytes",
            }
        ).encode()


# Extra threads of every parallel batch at once; the handler thread itself always works too,
# so a batch runs (perhaps less parallel) even when the pool is empty.
_batch_workers = threading.BoundedSemaphore(MAX_BATCH_WORKERS)


def run_batch(agent: Agent | EdgeControl, requests: Sequence[object], parallel: int) -> bytes:
    """The JSON list of responses, in request order; at most ``parallel`` run at once."""
    encoder = ResponseBytes()
    encoded: list[bytes] = [b""] * len(requests)
    pending = iter(range(len(requests)))
    pending_lock = threading.Lock()

    def work() -> None:
        while True:
            with pending_lock:
                index = next(pending, None)
            if index is None:
                return
            encoded[index] = encoder.encode(agent.handle(requests[index]))

    def helper() -> None:
        try:
            work()
        finally:
            _batch_workers.release()

    helpers: list[threading.Thread] = []
    for _ in range(min(parallel, len(requests)) - 1):
        if not _batch_workers.acquire(blocking=False):
            break
        thread = threading.Thread(target=helper, daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": fewer helpers, same answers
            _batch_workers.release()
            log(f"batch runs with {len(helpers) + 1} workers: {exc}")
            break
        helpers.append(thread)
    work()
    for thread in helpers:
        thread.join()
    return b"[" + b",".join(encoded) + b"]\n"


def answer_batch(agent: Agent | EdgeControl, data: bytes) -> bytes:
    """The encoded answer to the bytes of one control request."""
    try:
        if len(data) > MAX_CONTROL_BYTES:
            raise RequestError(f"batch larger than {MAX_CONTROL_BYTES} bytes")
        try:
            body = json.loads(data.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise RequestError(f"batch is not JSON: {_shown(str(exc), 200)}") from exc
        requests, parallel = batch_requests(body)
    except RequestError as exc:
        # "refused": the batch as a whole, not one of its requests (the client exits 2).
        refusal = {"ok": False, "op": None, "error": str(exc), "refused": True}
        return json.dumps([refusal]).encode() + b"\n"
    return run_batch(agent, requests, parallel)


# --------------------------------------------------------------------------------------------
# Serving.


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


def serve_control(sock: socket.socket, agent: Agent | EdgeControl, stop: threading.Event) -> None:
    slots = threading.BoundedSemaphore(MAX_CONTROL_CLIENTS)

    def handle(conn: socket.socket) -> None:
        try:
            with conn:
                deadline = time.monotonic() + CONTROL_READ_SECONDS
                data = b""
                while len(data) <= MAX_CONTROL_BYTES:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise socket.timeout("no whole batch in time")  # noqa: UP041
                    conn.settimeout(remaining)
                    chunk = conn.recv(1 << 16)
                    if not chunk:
                        break
                    data += chunk
                answer = answer_batch(agent, data)
                conn.settimeout(CONTROL_READ_SECONDS)
                conn.sendall(answer)
        except OSError as exc:
            log(f"control connection: {describe_os_error(exc)}")
        finally:
            slots.release()

    _accept_loop(sock, stop, slots, "control", lambda conn, _address: (conn,), handle)


# --------------------------------------------------------------------------------------------
# The edge server: this agent on a host outside the cluster (``serve --edge-control``). Pods
# reach its TCP and UDP listeners (and the host's kernel answers their ICMP echoes); for the
# NodePort-from-outside checks a probe pod relays one request at a time (op ``relay``) to its
# control listener, which makes the connection from the outside host and answers what it saw.


def parse_host_port(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` or ``[IPv6]:PORT`` with ADDR an IP literal; ``ValueError`` otherwise."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r} is not ADDR:PORT (PORT 1..65535)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, [ADDR]:PORT")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    return host, int(port_text)


def parse_networks(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """``CIDR[,CIDR...]`` (a bare address is its own /32 or /128); ``ValueError`` otherwise."""
    networks = []
    for item in text.split(","):
        if item.strip():
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
    if not networks:
        raise ValueError("no address or CIDR given")
    return networks


def host_port_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class EdgeControl:
    """What the edge control listener serves: `EDGE_OPS` only, and ``connect`` only to an IP
    address inside ``allowed`` (the nodes the user named). Anything else is answered ok false
    with ``edge_refused``, so a relaying pod can tell a refusal from a network failure."""

    def __init__(
        self, agent: Agent, allowed: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
    ) -> None:
        self.agent = agent
        self.allowed = tuple(allowed)

    def refusal(self, request: object) -> str | None:
        """Why ``request`` is not served here (None: it is)."""
        op = request.get("op") if isinstance(request, dict) else None
        if op not in EDGE_OPS:
            return f"the edge server takes only {', '.join(EDGE_OPS)}, not {_shown(op)}"
        if op != "connect":
            return None
        assert isinstance(request, dict)
        host = request.get("host")
        try:
            address = ipaddress.ip_address(str(host))
        except ValueError:
            return f"the edge server connects to IP addresses only, not {_shown(host)}"
        if not any(address in network for network in self.allowed):
            shown = ", ".join(str(network) for network in self.allowed)
            return f"{address} is outside the edge server's --allow-connect ({shown})"
        return None

    def handle(self, request: object) -> JSONDict:
        why = self.refusal(request)
        if why is None and isinstance(request, dict) and request.get("op") == "info":
            # Only what a relaying pod needs: no hostname, environment or resolver of the host.
            return {"ok": True, "op": "info", "edge": self.agent.edge, "ports": self.agent.ports}
        if why is None:
            return self.agent.handle(request)
        op = request.get("op") if isinstance(request, dict) else None
        log(f"edge control refused {_shown(op)}: {why}")
        return {
            "ok": False,
            "op": op if isinstance(op, str) else None,
            "error": why,
            "edge_refused": True,
        }


def open_edge_control(host: str, port: int) -> socket.socket:
    """The edge control listener: TCP, bound to ``host`` alone (the address the user gave)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(MAX_CONTROL_CLIENTS)
    except OSError:
        sock.close()
        raise
    return sock


def relay(host: str, port: int, request: JSONDict, timeout: float) -> JSONDict:
    """``request`` made by the edge server at ``host``:``port``: its answer, with
    ``relayed_by``; ok false with ``relay_error`` when the edge server could not be asked or
    refused the request (no verdict on the network: the server was not reached, or not
    started for this)."""
    where = f"edge server {host_port_text(host, port)}"
    try:
        family, sockaddr = resolve(host, port, socket.SOCK_STREAM)
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            (answer,) = exchange_batch(sock, [request], timeout)
    except RequestError as exc:
        return {
            "ok": False,
            "error": f"{where}: {exc}",
            "errno": exc.errno_name,
            "relay_error": f"{where}: {exc}",
        }
    except (OSError, ValueError) as exc:
        text = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
        name = errno_name(exc.errno) if isinstance(exc, OSError) else None
        if isinstance(exc, socket.timeout):  # not TimeoutError on Python < 3.10
            text, name = f"no answer within {timeout}s", "ETIMEDOUT"
        return {
            "ok": False,
            "error": f"{where}: {text}",
            "errno": name,
            "relay_error": f"{where}: {text}",
        }
    if not isinstance(answer, dict):
        text = f"{where} answered {_shown(answer)}, not a response"
        return {"ok": False, "error": text, "relay_error": text}
    if answer.get("edge_refused"):
        text = f"{where} refused: {answer.get('error')}"
        return {"ok": False, "error": text, "relay_error": text}
    found = {key: value for key, value in answer.items() if key != "op"}
    found["relayed_by"] = host_port_text(host, port)
    return found


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
        listen_sockets, listeners, ports = open_listeners(args.tcp_port, args.udp_port)
        control = open_control_socket(args.socket)
        edges = [open_edge_control(host, port) for host, port in args.edge_control]
    except (OSError, RequestError) as exc:
        text = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
        log(f"serve cannot start: {text}")
        return 1
    recorders = open_icmp_recorders()
    listeners["icmp"] = ["ipv6" if sock.family == socket.AF_INET6 else "ipv4" for sock in recorders]
    agent = Agent(book, listeners, ports, DataDirectories(args.data_dir))
    threads: list[tuple[Callable[..., None], tuple[Any, ...]]] = [
        (serve_control, (control, agent, stop))
    ]
    if edges:
        allowed = [network for group in args.allow_connect for network in group]
        agent.edge = {
            "control": [host_port_text(host, port) for host, port in args.edge_control],
            "allow_connect": [str(network) for network in allowed],
        }
        edge_control = EdgeControl(agent, allowed)
        threads.extend((serve_control, (edge, edge_control, stop)) for edge in edges)
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
        f"ports={ports} data_dirs={agent.data.roots} control={args.socket} "
        f"edge={agent.edge} python={platform.python_version()}"
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
    "transfer": ("timeout", 10.0),
    "capture_result": ("wait", 2.0),
    "resolve": ("timeout", 5.0),
    "relay": ("timeout", RELAY_TIMEOUT),
    # Not a field: the first capture imports scapy and waits for the sniffer to listen.
    "capture_start": (None, 10.0),
}
CALL_MARGIN = 10.0


def _spread_wait(request: JSONDict) -> float:
    """A spread's longest run: its waves of tries, each up to ``timeout``, at most
    `SPREAD_SECONDS` of starting tries and then the last tries' ``timeout``."""
    values = [request.get(k, d) for k, d in (("timeout", 3.0), ("max_tries", 1), ("parallel", 8))]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values):
        return 0.0
    timeout, max_tries, parallel = (float(v) for v in values)
    timeout = min(timeout, MAX_TIMEOUT)
    waves = -(-max_tries // parallel)
    return min(waves * timeout, SPREAD_SECONDS + timeout)


def request_wait(request: object) -> float:
    """Seconds one request may spend in the serve process before answering (0 for most)."""
    if not isinstance(request, dict):
        return 0.0
    op = request.get("op")
    if op == "spread":
        return _spread_wait(request)
    if not isinstance(op, str) or op not in _OP_WAIT_FIELDS:
        return 0.0
    key, default = _OP_WAIT_FIELDS[op]
    if key is None:
        return default
    value = request.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return 0.0
    wait = min(max(float(value), 0.0), MAX_CAPTURE_SECONDS)
    if op in ("connect", "icmp"):
        # A measured request: its last probe starts count * interval after the first.
        count, interval = request.get("count", 1), request.get("interval", DEFAULT_PROBE_INTERVAL)
        numbers = all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in (count, interval)
        )
        if numbers and count > 1:
            wait += min(max(float(count) * float(interval), 0.0), MAX_TIMEOUT)
    return wait


def call_budget(requests: Sequence[object], parallel: int = 1) -> float:
    """Seconds a batch may take: 10 s of margin plus, for waits w_i run at most N at a time,
    sum(w_i) / N + (1 - 1/N) * max(w_i) (a sequential list, N = 1: the plain sum). That is
    the longest any greedy N-worker schedule of the batch can take."""
    waits = [request_wait(request) for request in requests]
    if not waits:
        return CALL_MARGIN
    workers = max(1, parallel)
    return CALL_MARGIN + sum(waits) / workers + (1 - 1 / workers) * max(waits)


def exchange_batch(
    sock: socket.socket, requests: Sequence[object], timeout: float, parallel: int | None = None
) -> list[JSONDict]:
    """Send requests to a serve process over the connected stream ``sock`` (as a plain list,
    or as a parallel batch when ``parallel`` is given) and read its answer; ``OSError`` when it
    does not answer."""
    body: object = list(requests)
    if parallel is not None:
        body = {"parallel": parallel, "requests": list(requests)}
    sock.settimeout(timeout)
    sock.sendall(json.dumps(body).encode())
    sock.shutdown(socket.SHUT_WR)
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) <= 2 * MAX_BATCH_RESPONSE_BYTES:  # far above any answer it may send
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


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535 (0: pick a free one), got {port}")
    return port


def _host_port(text: str) -> tuple[str, int]:
    try:
        return parse_host_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _networks(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    try:
        return parse_networks(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agent.py", description="netconform probe agent")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the listeners and the control socket")
    serve.add_argument(
        "--tcp-port", type=_port, default=DEFAULT_TCP_PORT, help="0: a free port (see info)"
    )
    serve.add_argument(
        "--udp-port", type=_port, default=DEFAULT_UDP_PORT, help="0: a free port (see info)"
    )
    serve.add_argument("--socket", default=DEFAULT_SOCKET, help="control unix socket path")
    serve.add_argument(
        "--data-dir",
        action="append",
        default=[],
        help="a directory write_file/read_file may use (repeatable); none: file requests refused",
    )
    serve.add_argument(
        "--edge-control",
        type=_host_port,
        action="append",
        default=[],
        metavar="ADDR:PORT",
        help="also serve as the edge server: a TCP control listener on this address alone, "
        "taking only info and connect (to --allow-connect addresses) from relaying pods; "
        "repeatable (one per address of the host)",
    )
    serve.add_argument(
        "--allow-connect",
        type=_networks,
        action="append",
        default=[],
        metavar="CIDR[,CIDR...]",
        help="addresses the edge server may connect to (the nodes); repeatable; needed with "
        "--edge-control",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.edge_control and not args.allow_connect:
        parser.error("--edge-control needs --allow-connect: the addresses it may connect to")
    return run_serve(args)


if __name__ == "__main__":
    sys.exit(main())
