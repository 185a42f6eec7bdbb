"""The lab's cluster DNS: a small authoritative server for ``cluster.local`` fed from the API,
as CoreDNS's kubernetes plugin answers, behind the ``kube-system/kube-dns`` Service.

Why this and not CoreDNS or dnsmasq: the lab has no image to pull and no kubeconfig a pod
could reach (the API listens on the machine's loopback), so the server is a thread of the lab
daemon, answering from the daemon's own objects, built on dnspython (the maintained DNS
library of the Python world) for the wire format. Its sockets are created inside a lab
namespace of its own (``netlab-<lab>-pod-00000053-coredns``) that node-1's CNI attaches to the
node's bridge like a pod, so it has a pod address, and the kube-dns Service's EndpointSlice
points there: pods and nodes reach it through the Service's cluster IP (the tenth address of
the service range, kubelet's ``--cluster-dns``) and the proxy's rules, as on a real cluster.

Answers (TTL 5 s, authoritative):

- ``SVC.NS.svc.cluster.local``: A/AAAA of the Service's cluster IPs; for a headless Service
  the addresses of its ready endpoints (all endpoints with publishNotReadyAddresses); an
  ExternalName Service a CNAME. ``_PORT._PROTO.SVC.NS.svc.cluster.local``: SRV per named port.
- ``A-B-C-D.NS.pod.cluster.local``: the address written in the name (CoreDNS ``pods insecure``).
- Other names in ``cluster.local``: NXDOMAIN (NODATA for a name that exists without records of
  the asked type), with the zone's SOA.
- Names outside ``cluster.local``: REFUSED. There is no upstream: nothing is forwarded.

The ``dns-wrong-address`` fault answers every Service name with a wrong address: the address
mirrored from the top of the service range, which no Service holds. ``dns-service-renamed``
breaks nothing: the same DNS sits behind ``kube-system/rke2-coredns-rke2-coredns``, as RKE2
names it, and kubelet still names its address.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import selectors
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from netlab.contract import JSONDict
from netlab.dataplane.cni import NodeCNI
from netlab.dataplane.nsexec import (
    create_netns,
    in_netns_thread,
    netns_exists,
    netns_path,
    remove_netns,
)
from netlab.spec import LabSpec

log = logging.getLogger(__name__)

CLUSTER_DOMAIN = "cluster.local"
TTL = 5
DNS_PORT = 53
WRONG_ADDRESS_FAULT = "dns-wrong-address"
SERVICE = "kube-dns"
RENAMED_FAULT = "dns-service-renamed"
# RKE2's CoreDNS Service (rancher/rke2; rke2-coredns in later releases, rancher/rke2#5489).
RENAMED_SERVICE = "rke2-coredns-rke2-coredns"
NETNS_SUFFIX = "pod-00000053-coredns"  # the sweep's pod-namespace shape: found and removed
CNI_CONTAINER_ID = "netlab-coredns"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGER = "netlab-cluster-dns"
TCP_CLIENTS = 16  # TCP queries served at once; more wait in the kernel's backlog
TCP_TIMEOUT = 5.0  # seconds a TCP client gets to send its query
UDP_PAYLOAD = 512  # without EDNS; larger answers are truncated (TC), the client retries on TCP
SOA_TEXT = f"ns.dns.{CLUSTER_DOMAIN}. hostmaster.{CLUSTER_DOMAIN}. 1 7200 1800 86400 {TTL}"


def _mirrored(address: str, service_cidrs: Sequence[str]) -> str:
    """The dns-wrong-address fault's answer: ``address`` mirrored from the top of its service
    range (unique per Service, inside the range, held by none)."""
    ip = ipaddress.ip_address(address)
    for cidr in service_cidrs:
        network = ipaddress.ip_network(cidr)
        if ip in network:
            offset = int(ip) - int(network.network_address)
            return str(ipaddress.ip_address(int(network.broadcast_address) - offset))
    return str(ip + 1)


@dataclass(frozen=True)
class Records:
    """Every answerable name (lower case, no trailing dot) -> record type -> values."""

    names: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)


def build_records(
    services: Iterable[JSONDict],
    slices: Iterable[JSONDict],
    *,
    service_cidrs: Sequence[str] = (),
    wrong_addresses: bool = False,
) -> Records:
    """The zone's records from Services and EndpointSlices (see the module docstring)."""
    endpoints: dict[tuple[str, str], list[str]] = {}
    for endpoint_slice in slices:
        meta = endpoint_slice.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if not owner:
            continue
        key = (str(meta.get("namespace", "")), owner)
        for entry in endpoint_slice.get("endpoints") or []:
            ready = (entry.get("conditions") or {}).get("ready") is not False
            endpoints.setdefault(key, []).extend(
                f"{'!' if not ready else ''}{address}" for address in entry.get("addresses") or []
            )
    names: dict[str, dict[str, list[str]]] = {}

    def add(name: str, kind: str, value: str) -> None:
        values = names.setdefault(name, {}).setdefault(kind, [])
        if value not in values:
            values.append(value)

    for service in services:
        meta = service.get("metadata") or {}
        spec = service.get("spec") or {}
        namespace, service_name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        fqdn = f"{service_name}.{namespace}.svc.{CLUSTER_DOMAIN}"
        names.setdefault(f"{namespace}.svc.{CLUSTER_DOMAIN}", {})
        names.setdefault(fqdn, {})
        if spec.get("type") == "ExternalName":
            add(fqdn, "CNAME", str(spec.get("externalName", "")).rstrip(".") + ".")
            continue
        if spec.get("clusterIP") == "None":
            publish_all = bool(spec.get("publishNotReadyAddresses"))
            addresses = [
                a.lstrip("!")
                for a in endpoints.get((namespace, service_name), [])
                if publish_all or not a.startswith("!")
            ]
        else:
            addresses = [a for a in spec.get("clusterIPs") or [] if a != "None"]
        for address in addresses:
            shown = _mirrored(address, service_cidrs) if wrong_addresses else address
            kind = "AAAA" if ipaddress.ip_address(shown).version == 6 else "A"
            add(fqdn, kind, shown)
        if spec.get("clusterIP") != "None":
            for port in spec.get("ports") or []:
                if port.get("name"):
                    proto = str(port.get("protocol") or "TCP").lower()
                    srv = f"_{port['name']}._{proto}.{fqdn}"
                    add(srv, "SRV", f"0 100 {port['port']} {fqdn}.")
    for name in [CLUSTER_DOMAIN, f"svc.{CLUSTER_DOMAIN}", f"pod.{CLUSTER_DOMAIN}"]:
        names.setdefault(name, {})
    return Records({n: {k: tuple(v) for k, v in kinds.items()} for n, kinds in names.items()})


def _pod_address(name: str) -> str | None:
    """``A-B-C-D.NS.pod.cluster.local`` (IPv6 with dashes for colons) -> the address."""
    suffix = f".pod.{CLUSTER_DOMAIN}"
    if not name.endswith(suffix):
        return None
    labels = name[: -len(suffix)].split(".")
    if len(labels) != 2:
        return None
    text = labels[0]
    candidates = [text.replace("-", "."), text.replace("-", ":")]
    for candidate in candidates:
        with contextlib.suppress(ValueError):
            return str(ipaddress.ip_address(candidate))
    return None


def answer(query: dns.message.Message, records: Records) -> dns.message.Message:
    """The response to one query."""
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    response.flags &= ~dns.flags.RA
    if len(query.question) != 1:
        response.set_rcode(dns.rcode.FORMERR)
        return response
    question = query.question[0]
    name = question.name.to_text(omit_final_dot=True).lower()
    zone = dns.name.from_text(CLUSTER_DOMAIN)
    if not question.name.is_subdomain(zone) or question.rdclass != dns.rdataclass.IN:
        response.flags &= ~dns.flags.AA
        response.set_rcode(dns.rcode.REFUSED)
        return response
    kind = dns.rdatatype.to_text(question.rdtype)
    found = dict(records.names.get(name, {}))
    pod = _pod_address(name)
    if pod is not None:
        found = {"AAAA" if ":" in pod else "A": (pod,)}
    exists = name in records.names or pod is not None
    if "CNAME" in found and kind != "CNAME":
        kind = "CNAME"  # no resolution outside the zone: the alias alone
    values = found.get(kind, ())
    if values:
        response.answer.append(
            dns.rrset.from_text(question.name, TTL, dns.rdataclass.IN, kind, *values)
        )
        return response
    if kind == "SOA" and name == CLUSTER_DOMAIN:
        response.answer.append(dns.rrset.from_text(zone, TTL, "IN", "SOA", SOA_TEXT))
        return response
    response.authority.append(dns.rrset.from_text(zone, TTL, "IN", "SOA", SOA_TEXT))
    if not exists:
        response.set_rcode(dns.rcode.NXDOMAIN)
    return response


def respond(wire: bytes, records: Records, *, max_size: int) -> bytes | None:
    """A query's wire form -> the response's (None for something that is no DNS query)."""
    try:
        query = dns.message.from_wire(wire)
    except dns.exception.DNSException:
        if len(wire) < 12:
            return None
        # The header alone is enough to say FORMERR to the sender.
        (ident,) = struct.unpack("!H", wire[:2])
        return struct.pack("!HHHHHH", ident, 0x8000 | dns.rcode.FORMERR, 0, 0, 0, 0)
    if query.flags & dns.flags.QR:
        return None
    response = answer(query, records)
    limit = max(max_size, query.payload if query.edns >= 0 else 0)
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        response.answer.clear()
        response.authority.clear()
        response.flags |= dns.flags.TC
        return response.to_wire()


class DnsServer:
    """UDP and TCP listeners on port 53 on sockets made inside a network namespace, served
    by threads of this process; ``records`` is replaced whole on every change."""

    def __init__(self, sockets: Sequence[socket.socket]) -> None:
        self.sockets = list(sockets)
        self.records = Records()
        self.queries = 0
        self._wake_read, self._wake_write = os.pipe()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._tcp_slots = threading.BoundedSemaphore(TCP_CLIENTS)

    def start(self) -> None:
        thread = threading.Thread(target=self._serve, name="cluster-dns", daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        os.write(self._wake_write, b"x")
        for thread in self._threads:
            thread.join(timeout)
        for sock in self.sockets:
            sock.close()
        os.close(self._wake_read)
        os.close(self._wake_write)

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_read, selectors.EVENT_READ)
            for sock in self.sockets:
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in selector.select():
                    if key.fileobj == self._wake_read:
                        return
                    ready = key.fileobj
                    assert isinstance(ready, socket.socket)
                    try:
                        if ready.type == socket.SOCK_DGRAM:
                            self._udp(ready)
                        else:
                            self._accept(ready)
                    except OSError as error:  # one client's trouble, never the server's
                        log.debug("cluster DNS: %s", error)

    def _udp(self, sock: socket.socket) -> None:
        data, peer = sock.recvfrom(65535)
        reply = respond(data, self.records, max_size=UDP_PAYLOAD)
        self.queries += 1
        if reply is not None:
            sock.sendto(reply, peer)

    def _accept(self, sock: socket.socket) -> None:
        connection, _ = sock.accept()
        if not self._tcp_slots.acquire(blocking=False):
            connection.close()
            return
        threading.Thread(target=self._tcp, args=(connection,), daemon=True).start()

    def _tcp(self, connection: socket.socket) -> None:
        try:
            with connection:
                connection.setblocking(True)
                connection.settimeout(TCP_TIMEOUT)
                while not self._stopping.is_set():
                    header = _read_exactly(connection, 2)
                    if header is None:
                        return
                    (length,) = struct.unpack("!H", header)
                    data = _read_exactly(connection, length)
                    if data is None:
                        return
                    reply = respond(data, self.records, max_size=65535)
                    self.queries += 1
                    if reply is None:
                        return
                    connection.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            pass
        finally:
            self._tcp_slots.release()


def _read_exactly(connection: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def dns_service_name(spec: LabSpec) -> str:
    """The cluster DNS Service's name: ``kube-dns`` as kubeadm names it, RKE2's name under
    ``dns-service-renamed``."""
    return RENAMED_SERVICE if RENAMED_FAULT in spec.faults else SERVICE


def kube_dns_service(cluster_ip: str, name: str = "kube-dns") -> JSONDict:
    """kube-system/kube-dns (or ``name``) as kubeadm creates it (no selector here: its one
    endpoint is the lab's DNS namespace, published by hand in a slice of its own)."""
    return {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": "kube-system",
            "labels": {
                "k8s-app": "kube-dns",
                "kubernetes.io/cluster-service": "true",
                "kubernetes.io/name": "CoreDNS",
            },
            "annotations": {"prometheus.io/port": "9153", "prometheus.io/scrape": "true"},
        },
        "spec": {
            "clusterIP": cluster_ip,
            "ports": [
                {"name": "dns", "port": DNS_PORT, "protocol": "UDP", "targetPort": DNS_PORT},
                {"name": "dns-tcp", "port": DNS_PORT, "protocol": "TCP", "targetPort": DNS_PORT},
            ],
        },
    }


def kube_dns_endpoint_slice(address: str, node: str, service: str = "kube-dns") -> JSONDict:
    """The kube-dns Service's (or ``service``'s) EndpointSlice: the DNS namespace's address on
    ``node``."""
    family = f"IPv{ipaddress.ip_address(address).version}"
    return {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {
            "name": f"{service}-netlab",
            "namespace": "kube-system",
            "labels": {
                SERVICE_NAME_LABEL: service,
                MANAGED_BY_LABEL: MANAGER,
                "k8s-app": "kube-dns",
            },
        },
        "addressType": family,
        "endpoints": [
            {
                "addresses": [address],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "nodeName": node,
            }
        ],
        "ports": [
            {"name": "dns", "protocol": "UDP", "port": DNS_PORT},
            {"name": "dns-tcp", "protocol": "TCP", "port": DNS_PORT},
        ],
    }


RecordSource = Callable[[], tuple[Sequence[JSONDict], Sequence[JSONDict]]]


def _open_wildcard_sockets(versions: Sequence[int]) -> list[socket.socket]:
    made: list[socket.socket] = []
    try:
        for version in versions:
            family = socket.AF_INET6 if version == 6 else socket.AF_INET
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                sock = socket.socket(family, kind)
                made.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if version == 6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(("::" if version == 6 else "0.0.0.0", DNS_PORT))
                if kind == socket.SOCK_STREAM:
                    sock.listen(64)
    except BaseException:
        for sock in made:
            sock.close()
        raise
    return made


class ClusterDNS:
    """The DNS namespace (attached by ``cni`` on ``node``), its server and its records.

    ``start`` returns the namespace's addresses (primary family first); ``refresh`` rebuilds
    the records from ``source`` (call it whenever Services or EndpointSlices change)."""

    def __init__(self, spec: LabSpec, cni: NodeCNI, node: str, source: RecordSource) -> None:
        self.spec = spec
        self.cni = cni
        self.node = node
        self.source = source
        self.netns = f"{spec.netns_prefix}{NETNS_SUFFIX}"
        self.server: DnsServer | None = None
        self.addresses: tuple[str, ...] = ()

    async def start(self) -> tuple[str, ...]:
        await asyncio.to_thread(create_netns, self.netns)
        try:
            attachment = await self.cni.add(CNI_CONTAINER_ID, str(netns_path(self.netns)))
            by_version = sorted(
                attachment.ips,
                key=lambda ip: self.spec.families.index(ipaddress.ip_address(ip).version),
            )
            self.addresses = tuple(by_version)
            sockets = await asyncio.to_thread(
                in_netns_thread, self.netns, lambda: _open_wildcard_sockets(self.spec.families)
            )
            self.server = DnsServer(sockets)
            self.refresh()
            self.server.start()
        except BaseException:
            await self.stop()
            raise
        log.info("cluster DNS serving in %s at %s", self.netns, ", ".join(self.addresses))
        return self.addresses

    def refresh(self) -> None:
        if self.server is None:
            return
        services, slices = self.source()
        self.server.records = build_records(
            services,
            slices,
            service_cidrs=self.spec.service_cidrs,
            wrong_addresses=WRONG_ADDRESS_FAULT in self.spec.faults,
        )

    async def stop(self) -> None:
        """Stop serving, detach (CNI DEL releases the address) and remove the namespace;
        safe at any point of ``start``."""
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
            self.server = None
        try:
            await self.cni.delete(CNI_CONTAINER_ID, str(netns_path(self.netns)))
        finally:
            if netns_exists(self.netns):
                await asyncio.to_thread(remove_netns, self.netns)
