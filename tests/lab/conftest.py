"""Shared fixtures for the lab tests (root only): unique lab names, a leak detector, and small
"pods" (plain namespaces wired to a node's bridge, as the CNI bridge plugin would) with a
TCP/UDP echo probe to see what source address a peer observes.

Lab names made here start with ``ta`` (or ``$NETLAB_TEST_LAB_PREFIX``, two letters) so that
other engineers' concurrent lab tests (other prefixes) never collide with these.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns

from netlab.dataplane.cleanup import sweep
from netlab.dataplane.netfaults import apply_lab_faults
from netlab.dataplane.nsexec import netns_path, popen_in_netns, run_in_netns
from netlab.dataplane.topology import build_topology, destroy_topology
from netlab.spec import STATE_ROOT, LabSpec, NodePlan

TEST_LAB_PREFIX = os.environ.get("NETLAB_TEST_LAB_PREFIX", "ta")
LAB_OF_NETNS = re.compile(r"^netlab-(.+)-(fabric|node-[0-9]+|pod-.+)$")
CNI_BRIDGE = "cni0"
NODAD = 0x02  # IFA_F_NODAD: IPv6 addresses usable at once (no duplicate address detection)
PROBE_PORT = 7070
PROBE_LIFETIME = 60  # seconds an echo server lives at most, even if a test forgets it

if os.geteuid() != 0:
    pytest.skip("lab tests create network namespaces: run them as root", allow_module_level=True)


def new_lab_name() -> str:
    """``ta`` + 6 random characters: unique per call, valid, and never a prefix clash."""
    return TEST_LAB_PREFIX + secrets.token_hex(3)


def leftovers(lab_prefix: str, state_root: Path = STATE_ROOT) -> list[str]:
    """Namespaces and state dirs of every lab whose name starts with ``lab_prefix``."""
    found = [name for name in pyroute2_netns.listnetns() if name.startswith(f"netlab-{lab_prefix}")]
    if state_root.is_dir():
        found += [str(path) for path in state_root.iterdir() if path.name.startswith(lab_prefix)]
    return sorted(found)


@pytest.fixture(autouse=True)
def no_lab_leaks() -> Iterator[list[str]]:
    """Leak detector: no namespace or state dir of a lab this test named survives it.

    Only names handed out to this test are checked (labs named after them included), so
    concurrent tests and other engineers' labs never trip it. Leaks are swept, then reported.
    """
    used: list[str] = []
    yield used
    leaked = {name: leftovers(name) for name in used if leftovers(name)}
    for found in leaked.values():
        for entry in found:
            owner = LAB_OF_NETNS.match(entry)
            sweep(owner.group(1) if owner else Path(entry).name)  # keep the machine clean
    assert not leaked, f"the test left lab resources behind: {leaked}"


@pytest.fixture
def lab_names(no_lab_leaks: list[str]) -> Callable[[], str]:
    """Hands out fresh lab names (``ta`` + 6 hex digits), each checked for leaks afterwards."""

    def make() -> str:
        no_lab_leaks.append(new_lab_name())
        return no_lab_leaks[-1]

    return make


@pytest.fixture
def lab_name(lab_names: Callable[[], str]) -> str:
    return lab_names()


# --- pods and probes -----------------------------------------------------------------------------

PROBE_SCRIPT = r"""
import json, socket, sys, threading, time

def serve(port, lifetime):
    sockets = []
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        tcp = socket.socket(family, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        udp = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            for s in (tcp, udp):
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        tcp.bind((host, port)); tcp.listen(16)
        udp.bind((host, port))
        sockets += [("tcp", tcp), ("udp", udp)]
    def tcp_loop(tcp):
        while True:
            conn, peer = tcp.accept()
            with conn:
                conn.sendall(peer[0].encode() + b"\n")
    def udp_loop(udp):
        while True:
            _, peer = udp.recvfrom(2048)
            udp.sendto(peer[0].encode() + b"\n", peer)
    for proto, s in sockets:
        loop = tcp_loop if proto == "tcp" else udp_loop
        threading.Thread(target=loop, args=(s,), daemon=True).start()
    print("serving", flush=True)
    time.sleep(lifetime)

def connect(proto, host, port, timeout):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        if proto == "tcp":
            with socket.create_connection((host, port), timeout=timeout) as s:
                s.settimeout(timeout)
                seen = s.recv(100).decode().strip()
        else:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.settimeout(timeout)
                s.sendto(b"hello", (host, port))
                seen = s.recv(100).decode().strip()
        print(json.dumps({"ok": True, "peer_seen": seen}))
    except OSError as error:
        print(json.dumps({"ok": False, "error": type(error).__name__}))

if sys.argv[1] == "serve":
    serve(int(sys.argv[2]), float(sys.argv[3]))
else:
    connect(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
"""


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    peer_seen: str | None
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
        argv = [
            sys.executable,
            "-c",
            PROBE_SCRIPT,
            "connect",
            proto,
            host,
            str(PROBE_PORT),
            str(timeout),
        ]
        answer = json.loads(run_in_netns(netns, argv, timeout=timeout + 10).stdout)
        return ProbeResult(answer["ok"], answer.get("peer_seen"), answer.get("error"))

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


@pytest.fixture
def network_kit() -> Iterator[NetworkKit]:
    kit = NetworkKit()
    try:
        yield kit
    finally:
        kit.close()


@pytest.fixture
def built_lab(network_kit: NetworkKit) -> Iterator[Callable[[LabSpec], LabSpec]]:
    """Builds a lab's topology (and its network faults); after the test the echo servers stop,
    the topology is destroyed and the lab is swept (pod namespaces go with it)."""
    built: list[LabSpec] = []

    def build(spec: LabSpec) -> LabSpec:
        build_topology(spec)
        built.append(spec)
        apply_lab_faults(spec)
        return spec

    try:
        yield build
    finally:
        network_kit.close()
        for spec in built:
            destroy_topology(spec)
            sweep(spec.name, spec.state_root)
