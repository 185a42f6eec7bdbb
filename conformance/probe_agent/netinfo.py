"""Addresses, interfaces, routes and MTUs of the pod (netlink, ioctl, ``/proc``), and the
Linux constants the socket module does not export on every Python version.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import ipaddress
import itertools
import os
import socket
import struct
import threading
import time
from typing import TYPE_CHECKING, Any

from .protocol import (
    INTERFACE_CACHE_SECONDS,
    MAX_IP_PACKET,
    RequestError,
    brief,
    describe_os_error,
    deterministic_bytes,
    log,
)

if TYPE_CHECKING:
    JSONDict = dict[str, Any]

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
        raise RequestError(f"field 'host' must be an IP address, got {brief(host)}") from exc
    return socket.AF_INET6 if parsed.version == 6 else socket.AF_INET


def resolve(host: str, port: int, socktype: int) -> tuple[socket.AddressFamily, Any]:
    """First address for ``host`` (an IP literal or a name); ``RequestError`` when none."""
    try:
        # getaddrinfo knows no ports for raw sockets: resolve as datagram, port 0 (ICMP).
        lookup_type = socket.SOCK_DGRAM if socktype == socket.SOCK_RAW else socktype
        infos = socket.getaddrinfo(host, port, 0, lookup_type)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise RequestError(f"cannot resolve {brief(host)}: {exc}", "EAI_NONAME") from exc
    if not infos:
        raise RequestError(f"cannot resolve {brief(host)}: no address", "EAI_NONAME")
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


def route_lookup(address: str) -> tuple[int | None, int | None]:
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
    return route_lookup(address)[0]


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
        return route_lookup(str(sock.getpeername()[0]).split("%", 1)[0])[1]
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
