"""Small "pods" for the lab network tests: plain namespaces wired to a node's bridge, as the CNI
bridge plugin would make them, a TCP/UDP echo server in each, and batched probes (TCP, UDP,
ICMP; full-size Don't-Fragment packets and a 1 MiB transfer) that show what source address a
peer observes and what arrives whole. The fixtures around it live in ``conftest.py``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns

from netlab.dataplane.nsexec import netns_path, popen_in_netns, run_in_netns
from netlab.spec import LabSpec, NodePlan

CNI_BRIDGE = "cni0"
NODAD = 0x02  # IFA_F_NODAD: IPv6 addresses usable at once (no duplicate address detection)
PROBE_PORT = 7070
PROBE_LIFETIME = 60  # seconds an echo server lives at most, even if a test forgets it

PROBE_SCRIPT = r"""
import fcntl, json, os, random, select, socket, struct, sys, threading, time

BULK_BYTES = 1 << 20
SIOCGIFMTU = 0x8921
IP_MTU_DISCOVER, IP_PMTUDISC_DO = 10, 2
IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO = 23, 2

def serve(port, lifetime):
    sockets = []
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        tcp = socket.socket(family, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        udp = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            for s in (tcp, udp):
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        tcp.bind((host, port)); tcp.listen(64)
        udp.bind((host, port))
        sockets += [("tcp", tcp), ("udp", udp)]
    def answer_tcp(conn, peer):
        # The peer's address first; then count what the client sends until it shuts down.
        with conn:
            try:
                conn.settimeout(lifetime)
                conn.sendall(peer[0].encode() + b"\n")
                count = 0
                while True:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    count += len(chunk)
                conn.sendall(f"{count}\n".encode())
            except OSError:
                pass
    def tcp_loop(tcp):
        while True:
            conn, peer = tcp.accept()
            threading.Thread(target=answer_tcp, args=(conn, peer), daemon=True).start()
    def udp_loop(udp):
        while True:
            data, peer = udp.recvfrom(65535)
            try:
                udp.sendto(f"{peer[0]} {len(data)}\n".encode(), peer)
            except OSError:
                pass  # a peer it has no route back to (an outside host, pods not masqueraded)
    for proto, s in sockets:
        loop = tcp_loop if proto == "tcp" else udp_loop
        threading.Thread(target=loop, args=(s,), daemon=True).start()
    print("serving", flush=True)
    time.sleep(lifetime)

def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET

def uplink_mtu():
    with socket.socket() as s:
        request = struct.pack("16si", b"eth0", 0)
        return struct.unpack("16si", fcntl.ioctl(s.fileno(), SIOCGIFMTU, request))[1]

def header_bytes(host, transport):
    return (40 if ":" in host else 20) + transport

def tcp_probe(host, port, timeout, bulk):
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        reader = s.makefile("rb")
        peer = reader.readline().decode().strip()
        if not bulk:
            return peer
        s.sendall(b"x" * BULK_BYTES)
        s.shutdown(socket.SHUT_WR)
        count = int(reader.readline().decode().strip() or 0)
        if count != BULK_BYTES:
            raise OSError(f"{count} of {BULK_BYTES} bytes arrived")
        return f"{count} bytes"

def udp_probe(host, port, timeout, full):
    family = family_of(host)
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        size = 5
        if full:
            if family == socket.AF_INET:
                s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
            else:
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
            size = uplink_mtu() - header_bytes(host, 8)
        s.sendto(b"x" * size, (host, port))
        peer, got = s.recv(200).decode().split()
        if not full:
            return peer
        if int(got) != size:
            raise OSError(f"{got} of {size} bytes arrived")
        return f"{size} bytes"

def checksum(data):
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF

def icmp_probe(host, timeout, full):
    family = family_of(host)
    v6 = family == socket.AF_INET6
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    request_type, reply_type = (128, 129) if v6 else (8, 0)
    ident = random.randrange(1, 0xFFFF)
    with socket.socket(family, socket.SOCK_RAW, proto) as s:
        size = 8
        if full:
            if v6:
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
            else:
                s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
            size = uplink_mtu() - header_bytes(host, 8)
        payload = b"x" * size
        header = struct.pack("!BBHHH", request_type, 0, 0, ident, 1)
        if not v6:  # the kernel computes ICMPv6 checksums itself
            header = struct.pack("!BBHHH", request_type, 0, checksum(header + payload), ident, 1)
        s.sendto(header + payload, (host, 0))
        deadline = time.monotonic() + timeout
        while select.select([s], [], [], max(0.0, deadline - time.monotonic()))[0]:
            data, peer = s.recvfrom(65535)
            message = data if v6 else data[(data[0] & 0x0F) * 4:]
            kind, _, _, got = struct.unpack("!BBHH", message[:6])
            if kind == reply_type and got == ident:
                if not full:
                    return peer[0]
                if len(message) - 8 != size:
                    raise OSError(f"{len(message) - 8} of {size} bytes came back")
                return f"{size} bytes"
        raise TimeoutError("no echo reply")

def run_one(request, port, timeout):
    kind, host = request["kind"], request["host"]
    if kind in ("tcp", "tcp-bulk"):
        return tcp_probe(host, port, timeout, kind == "tcp-bulk")
    if kind in ("udp", "udp-full"):
        return udp_probe(host, port, timeout, kind == "udp-full")
    if kind in ("icmp", "icmp-full"):
        return icmp_probe(host, timeout, kind == "icmp-full")
    raise ValueError(f"unknown probe kind {kind}")

def batch(port, timeout):
    # Every request at once, each on its own thread: a dropped path costs one timeout in all.
    requests = json.load(sys.stdin)
    answers = [None] * len(requests)
    def worker(index, request):
        try:
            answers[index] = {"ok": True, "seen": run_one(request, port, timeout)}
        except (OSError, ValueError) as error:
            answers[index] = {"ok": False, "error": f"{type(error).__name__}: {error}"}
    threads = [
        threading.Thread(target=worker, args=(i, r), daemon=True) for i, r in enumerate(requests)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout * 3)
    answers = [a or {"ok": False, "error": "probe thread hung"} for a in answers]
    print(json.dumps(answers))

if sys.argv[1] == "serve":
    serve(int(sys.argv[2]), float(sys.argv[3]))
else:
    batch(int(sys.argv[2]), float(sys.argv[3]))
"""


@dataclass(frozen=True)
class Probe:
    """One probe a namespace runs against a lab echo server: ``kind`` is ``tcp``, ``udp`` or
    ``icmp`` (what the destination saw as the source; for ICMP, who replied), or ``tcp-bulk``
    (1 MiB arrives whole), ``udp-full`` or ``icmp-full`` (one Don't-Fragment packet as large as
    the source's ``eth0`` MTU arrives intact: "<payload size> bytes")."""

    id: str
    kind: str
    host: str


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    peer_seen: str | None  # what the probe saw: the peer address, or "<n> bytes"
    error: str | None


@dataclass(frozen=True)
class LabPod:
    netns: str
    ips: tuple[str, ...]  # one per range the pod was given, in that order
    gateways: tuple[str, ...]  # the cni0 address of each of those ranges
    node: NodePlan

    @property
    def ip(self) -> str:
        return self.ips[0]

    @property
    def gateway(self) -> str:
        return self.gateways[0]

    def ip_of(self, version: int) -> str:
        return next(ip for ip in self.ips if ipaddress.ip_address(ip).version == version)

    def gateway_of(self, version: int) -> str:
        return next(g for g in self.gateways if ipaddress.ip_address(g).version == version)


class NetworkKit:
    """Pods, echo servers and probes inside a lab's namespaces; servers die on ``close``."""

    def __init__(self) -> None:
        self._servers: list[subprocess.Popen[str]] = []

    def add_pod(
        self, spec: LabSpec, plan: NodePlan, pod_range: str | list[str], host_number: int
    ) -> LabPod:
        """A pod namespace ``netlab-<lab>-pod-<8 hex>`` with eth0 on the node's cni0 bridge, as
        the CNI bridge plugin would make it (sweep removes it with the lab). Given several
        ranges (one per family) the pod gets an address of each (``ips``, in that order)."""
        pod_ranges = [pod_range] if isinstance(pod_range, str) else pod_range
        gateways = [ensure_cni_bridge(plan, one_range) for one_range in pod_ranges]
        uid8 = secrets.token_hex(4)
        pod_netns = f"{spec.netns_prefix}pod-{uid8}"
        pyroute2_netns.create(pod_netns)
        pod_fd = os.open(netns_path(pod_netns), os.O_RDONLY)
        try:
            with IPRoute(netns=plan.netns, flags=0) as node:
                node.link(
                    "add",
                    ifname=f"veth{uid8}",
                    kind="veth",
                    peer={"ifname": "eth0", "net_ns_fd": pod_fd},
                )
                host_end = node.link_lookup(ifname=f"veth{uid8}")[0]
                node.link("set", index=host_end, master=node.link_lookup(ifname=CNI_BRIDGE)[0])
                node.link("set", index=host_end, state="up")
        finally:
            os.close(pod_fd)
        ips: list[str] = []
        for one_range, gateway in zip(pod_ranges, gateways, strict=True):
            network = ipaddress.ip_network(one_range)
            address = str(network.network_address + host_number)
            with IPRoute(netns=pod_netns, flags=0) as pod:
                pod.link("set", index=pod.link_lookup(ifname="lo")[0], state="up")
                eth0 = pod.link_lookup(ifname="eth0")[0]
                # nodad: usable at once, as the CNI bridge plugin's addresses are.
                pod.addr(
                    "add", index=eth0, address=address, prefixlen=network.prefixlen, flags=NODAD
                )
                pod.link("set", index=eth0, state="up")
                default = "0.0.0.0/0" if network.version == 4 else "::/0"
                pod.route("add", dst=default, gateway=gateway)
            ips.append(address)
        return LabPod(netns=pod_netns, ips=tuple(ips), gateways=tuple(gateways), node=plan)

    def serve(self, netns: str) -> None:
        """Start a TCP+UDP echo server (answers with the peer address it saw) in ``netns``."""
        argv = [sys.executable, "-c", PROBE_SCRIPT, "serve", str(PROBE_PORT), str(PROBE_LIFETIME)]
        server = popen_in_netns(netns, argv, stdout=subprocess.PIPE)
        self._servers.append(server)
        assert server.stdout is not None
        line = server.stdout.readline()  # returns once bound (or at exit: lifetime bounds it)
        assert line.strip() == "serving", f"echo server in {netns} did not start"

    def probe(self, netns: str, proto: str, host: str, *, timeout: float = 1.0) -> ProbeResult:
        """Connect from ``netns`` to the echo server at ``host``: which source did it see?"""
        return self.probe_batches({netns: [Probe("only", proto, host)]}, timeout=timeout)["only"]

    def probe_batches(
        self, batches: Mapping[str, Sequence[Probe]], *, timeout: float = 1.0
    ) -> dict[str, ProbeResult]:
        """Run each namespace's probes at once (one process per namespace, all namespaces at
        once, one thread per probe); probe id -> result. ``timeout`` bounds each network step
        of a probe, so a dropped path costs about one timeout, however many there are."""
        argv = [sys.executable, "-c", PROBE_SCRIPT, "batch", str(PROBE_PORT), str(timeout)]
        # Each probe thread is joined within 3 timeouts, so a batch's process is bounded too.
        bound = timeout * 3 * max(len(probes) for probes in batches.values()) + 20

        def run_batch(netns: str, probes: Sequence[Probe]) -> list[dict[str, str]]:
            requests = [{"kind": probe.kind, "host": probe.host} for probe in probes]
            output = run_in_netns(netns, argv, input_text=json.dumps(requests), timeout=bound)
            answers: list[dict[str, str]] = json.loads(output.stdout)
            return answers

        with ThreadPoolExecutor(max_workers=len(batches)) as pool:
            futures = {
                netns: pool.submit(run_batch, netns, probes) for netns, probes in batches.items()
            }
        results: dict[str, ProbeResult] = {}
        for netns, probes in batches.items():
            for probe, answer in zip(probes, futures[netns].result(), strict=True):
                results[probe.id] = ProbeResult(
                    bool(answer["ok"]), answer.get("seen"), answer.get("error")
                )
        return results

    def close(self) -> None:
        for server in self._servers:
            server.kill()
            server.wait(timeout=10)
            if server.stdout is not None:
                server.stdout.close()
        self._servers.clear()


def ensure_cni_bridge(plan: NodePlan, pod_range: str) -> str:
    """What the CNI bridge plugin does on a node's first pod: ``cni0`` holding the range's
    first address as the pods' gateway. Returns the gateway address."""
    network = ipaddress.ip_network(pod_range)
    gateway = str(next(network.hosts()))
    with IPRoute(netns=plan.netns, flags=0) as node:
        if not node.link_lookup(ifname=CNI_BRIDGE):
            node.link("add", ifname=CNI_BRIDGE, kind="bridge")
            node.link("set", index=node.link_lookup(ifname=CNI_BRIDGE)[0], state="up")
        bridge = node.link_lookup(ifname=CNI_BRIDGE)[0]
        if not node.get_addr(index=bridge, address=gateway):
            node.addr(
                "add", index=bridge, address=gateway, prefixlen=network.prefixlen, flags=NODAD
            )
    return gateway
