"""The probe agent on a routed path it can break: three network namespaces this module
creates, client A -- router R -- server B (``netlab-tm-*``, veth pairs made directly between
them, never in the root namespace, removed after), IPv4 and IPv6.

Scenarios, one topology each:

- ``healthy``: every MTU 1500. Full-size DF probes and a 1 MiB transfer pass byte-identical;
  one capture by nonce prefix serves several sources' probes, bulk never reaching Python.
- ``blackhole``: R's link to B has MTU 1280 and R drops its own "fragmentation needed" /
  "packet too big" (iptables in R): DF probes of A's MTU vanish, the transfer stalls.
- ``reported``: the same link, the ICMP errors delivered: the kernel and the agent say EMSGSIZE
  with the path MTU, and TCP finds its way (path MTU discovery).
- ``mismatch``: B's own interface MTU is 1400 (A's 1500): A's full-size DF probes are lost,
  TCP passes (MSS), and B reports its MTU.

Traffic goes only to addresses inside these namespaces.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from agent_namespaces import AGENT_PYTHONS
from polling import eventually
from running_agents import IMAGE_PYTHON, Response, RunningAgent, nonce, start_agent

from conformance.probe_agent import netinfo as agent_netinfo
from conformance.probe_agent import protocol as agent_protocol

pytestmark = pytest.mark.needs_lab

A4, R4A, R4B, B4 = "198.51.100.1", "198.51.100.254", "203.0.113.254", "203.0.113.2"
A6, R6A, R6B, B6 = "fd00:7e:1::1", "fd00:7e:1::fe", "fd00:7e:2::fe", "fd00:7e:2::2"
FAMILIES = [pytest.param((A4, B4, 28), id="ipv4"), pytest.param((A6, B6, 48), id="ipv6")]
NARROW_MTU = 1280  # IPv6's minimum, so both families can be squeezed the same way
PEER_MTU = 1400


def run(*command: str) -> None:
    subprocess.run(command, capture_output=True, text=True, timeout=20, check=True)


@dataclass
class RoutedPath:
    scenario: str
    client: RunningAgent  # in A
    server: RunningAgent  # in B
    client_iface: str
    server_iface: str


def build(scenario: str, suffix: str, names: dict[str, str]) -> tuple[str, str]:
    ns_a, ns_r, ns_b = names["a"], names["r"], names["b"]
    va, ra, rb, vb = f"tma{suffix}", f"tmra{suffix}", f"tmrb{suffix}", f"tmb{suffix}"
    # Each pair is made inside a lab namespace with its peer placed in another one.
    run("ip", "-n", ns_a, "link", "add", va, "type", "veth", "peer", "name", ra, "netns", ns_r)
    run("ip", "-n", ns_r, "link", "add", rb, "type", "veth", "peer", "name", vb, "netns", ns_b)
    for ns, link, v4, v6 in (
        (ns_a, va, A4, A6),
        (ns_r, ra, R4A, R6A),
        (ns_r, rb, R4B, R6B),
        (ns_b, vb, B4, B6),
    ):
        run("ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", link)
        run("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", link, "nodad")
        run("ip", "-n", ns, "link", "set", link, "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
    for ns, via4, via6 in ((ns_a, R4A, R6A), (ns_b, R4B, R6B)):
        run("ip", "-n", ns, "route", "add", "default", "via", via4)
        run("ip", "-n", ns, "-6", "route", "add", "default", "via", via6)
    for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
        run("ip", "netns", "exec", ns_r, "sysctl", "-qw", key)
    if scenario in ("blackhole", "reported"):
        run("ip", "-n", ns_r, "link", "set", rb, "mtu", str(NARROW_MTU))
    if scenario == "blackhole":
        run(
            "ip", "netns", "exec", ns_r, "iptables", "-A", "OUTPUT", "-p", "icmp",
            "--icmp-type", "fragmentation-needed", "-j", "DROP",
        )  # fmt: skip
        run(
            "ip", "netns", "exec", ns_r, "ip6tables", "-A", "OUTPUT", "-p", "icmpv6",
            "--icmpv6-type", "packet-too-big", "-j", "DROP",
        )  # fmt: skip
    if scenario == "mismatch":
        run("ip", "-n", ns_b, "link", "set", vb, "mtu", str(PEER_MTU))
    return va, vb


@pytest.fixture(scope="module")
def routed(workdir: Path, request: pytest.FixtureRequest) -> Iterator[RoutedPath]:
    scenario, python = request.param
    if not all(shutil.which(tool) for tool in ("ip", "nsenter", "iptables")):
        pytest.skip("needs iproute2, nsenter and iptables to build namespaces")
    suffix = secrets.token_hex(2)
    names = {role: f"netlab-tm-{role}-{suffix}" for role in ("a", "r", "b")}
    created: list[str] = []
    agents: list[RunningAgent] = []
    try:
        for name in names.values():
            run("ip", "netns", "add", name)
            created.append(name)
        va, vb = build(scenario, suffix, names)
        for role in ("a", "b"):
            agents.append(
                start_agent(
                    workdir,
                    f"{scenario[:4]}-{role}-{suffix}",
                    tcp_port=0,
                    udp_port=0,
                    netns=names[role],
                    python=python,
                )
            )
        path = RoutedPath(scenario, agents[0], agents[1], va, vb)
        wait_until_settled(path)
        yield path
    finally:
        for agent in agents:
            agent.stop()
        for name in created:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=20)
        assert suffix not in left.stdout, f"namespaces left behind: {left.stdout}"


def wait_until_settled(path: RoutedPath) -> None:
    """Fresh links resolve neighbours (IPv6 after its link-local DAD) for a second or two;
    packets meanwhile wait in queues. Wait (bounded) until small datagrams pass both ways."""

    def answered() -> bool:
        probes = [
            {"op": "connect", "proto": "udp", "host": host, "port": path.server.udp_port}
            | {"nonce": nonce(), "timeout": 0.5}
            for host in (B4, B6)
        ]
        return all(response["ok"] for response in path.client.call(*probes))

    if not eventually(answered, 20, interval=0.2):
        pytest.fail(f"the {path.scenario} path never carried a small datagram both ways")


Test = TypeVar("Test", bound=Callable[..., None])


def scenario(name: str, python: str = IMAGE_PYTHON) -> Callable[[Test], Test]:
    """Run the test on path scenario ``name`` (fixture ``routed``), once per address family
    (``family``: source, destination, IP and ICMP/UDP header bytes)."""

    def mark(test: Test) -> Test:
        per_family = pytest.mark.parametrize("family", FAMILIES)(test)
        return pytest.mark.parametrize(
            "routed", [pytest.param((name, python), id=f"{name}")], indirect=True
        )(per_family)

    return mark


def sized_probes(path: RoutedPath, dst: str, size: object = "mtu") -> list[dict[str, object]]:
    return [
        {"op": "connect", "proto": "udp", "host": dst, "port": path.server.udp_port}
        | {"nonce": nonce(), "size": size, "df": True, "timeout": 2},
        {"op": "icmp", "host": dst, "nonce": nonce(), "size": size, "df": True, "timeout": 2},
    ]


def transfer(path: RoutedPath, dst: str, timeout: float = 10) -> dict[str, object]:
    return {
        "op": "transfer",
        "host": dst,
        "port": path.server.tcp_port,
        "nonce": nonce(),
        "size": 1 << 20,
        "timeout": timeout,
    }


def full_size_exchanges(
    path: RoutedPath, dst: str, *, transfer_timeout: float = 10
) -> list[Response]:
    """At once, to ``dst``: a full-size UDP datagram and ICMP echo with Don't Fragment, and a
    1 MiB TCP transfer; their three answers in that order."""
    return path.client.call(
        *sized_probes(path, dst), transfer(path, dst, timeout=transfer_timeout), timeout=60
    )


def assert_timed_out(*responses: Response) -> None:
    """Each probe went unanswered (lost on the way): ETIMEDOUT."""
    for response in responses:
        assert (response["ok"], response["errno"]) == (False, "ETIMEDOUT"), response


# ---------------------------------------------------------------------------------------------


@scenario("healthy")
def test_healthy_path_carries_full_size_packets_intact(
    routed: RoutedPath, family: tuple[str, str, int]
) -> None:
    src, dst, headers = family
    (addresses,) = routed.client.call({"op": "addresses"})
    by_name = {entry["name"]: entry for entry in addresses["interfaces"]}
    assert by_name[routed.client_iface]["mtu"] == 1500
    udp, icmp, moved = full_size_exchanges(routed, dst)
    assert udp["ok"], udp
    assert (udp["size"], udp["payload_bytes"]) == (1500, 1500 - headers)
    assert (udp["iface"], udp["mtu"], udp["peer_mtu"]) == (routed.client_iface, 1500, 1500)
    assert udp["peer_seen"] == src
    assert icmp["ok"], icmp
    assert (icmp["size"], icmp["reply_bytes"]) == (1500, 1500 - headers)
    assert icmp["reply_from"] == dst
    assert moved["ok"], moved
    assert moved["bytes_received"] == 1 << 20
    assert moved["sha256_received"] == moved["sha256_expected"]
    assert (moved["mtu"], moved["peer_mtu"], moved["peer_seen"]) == (1500, 1500, src)
    assert 0 < moved["mss"] <= 1500 - (headers - 8) - 20  # IP and TCP headers off the MTU
    print(f"\n1 MiB transfer over a routed veth path ({dst}): {moved['seconds'] * 1000:.1f} ms")


@pytest.mark.parametrize(
    "routed",
    [
        pytest.param(("healthy", python), id=f"healthy-{Path(python).name}")
        for python in AGENT_PYTHONS
    ],
    indirect=True,
)
def test_one_prefix_capture_serves_every_source_and_skips_bulk(routed: RoutedPath) -> None:
    prefix = f"{nonce()}-"
    small = {name: f"{prefix}{name}" for name in ("udp", "tcp", "icmp", "icmp6")}
    full, bulk = f"{prefix}full", f"{prefix}bulk"
    start = routed.server.ok({"op": "capture_start", "nonce_prefix": prefix, "timeout": 30})
    assert start["iface"] == routed.server_iface
    server = routed.server
    sent = routed.client.call(
        {"op": "connect", "proto": "udp", "host": B4, "port": server.udp_port}
        | {"nonce": small["udp"]},
        {"op": "connect", "proto": "tcp", "host": B6, "port": server.tcp_port}
        | {"nonce": small["tcp"]},
        {"op": "icmp", "host": B4, "nonce": small["icmp"]},
        {"op": "icmp", "host": B6, "nonce": small["icmp6"]},
        {"op": "connect", "proto": "udp", "host": B4, "port": server.udp_port}
        | {"nonce": full, "size": "mtu", "df": True},
        {"op": "transfer", "host": B4, "port": server.tcp_port, "nonce": bulk} | {"size": 1 << 20},
        {"op": "connect", "proto": "udp", "host": B4, "port": server.udp_port}
        | {"nonce": nonce()},  # another run's nonce: never captured here
        timeout=60,
    )
    assert all(response["ok"] for response in sent), sent
    result = routed.server.ok(
        {
            "op": "capture_result",
            "capture_id": start["capture_id"],
            "expect_nonces": [*small.values(), full],
            "wait": 10,
        }
    )
    assert result["missing"] == []
    assert result["dropped"] == 0
    packets = result["packets"]
    assert all(packet["nonce"].startswith(prefix) for packet in packets), packets
    by_nonce: dict[str, set[tuple[str, str, str]]] = {}
    for packet in packets:
        by_nonce.setdefault(packet["nonce"], set()).add(
            (packet["proto"], packet["src"], packet["dst"])
        )
    assert ("udp", A4, B4) in by_nonce[small["udp"]]
    assert ("tcp", A6, B6) in by_nonce[small["tcp"]]
    assert ("icmp", A4, B4) in by_nonce[small["icmp"]]
    assert ("icmpv6", A6, B6) in by_nonce[small["icmp6"]]
    # The full-size datagram itself is filtered out by size; the listener's small answer is not.
    assert by_nonce[full] == {("udp", B4, A4)}
    # Of the 1 MiB transfer only the header line and the answer are small enough.
    assert len(packets) < 40, f"bulk packets reached the capture: {len(packets)}"


@scenario("blackhole")
def test_path_mtu_blackhole_fails_full_size_probes_with_the_sizes(
    routed: RoutedPath, family: tuple[str, str, int]
) -> None:
    _src, dst, headers = family
    udp, icmp, moved = full_size_exchanges(routed, dst, transfer_timeout=3)
    assert_timed_out(udp, icmp, moved)
    for response in (udp, icmp):
        assert (response["size"], response["mtu"]) == (1500, 1500)
        assert response["payload_bytes"] == 1500 - headers
        assert "1500-byte packet" in response["error"]
        assert f"local {routed.client_iface} MTU 1500" in response["error"]
    assert "transfer stalled" in moved["error"]
    assert moved["bytes_acknowledged"] < 1 << 20
    assert f"{moved['bytes_acknowledged']} of {1 << 20} bytes" in moved["error"]
    # Small packets still pass: the path is up, only big ones vanish.
    below = routed.client.call(*sized_probes(routed, dst, size=NARROW_MTU), timeout=30)
    assert all(response["ok"] for response in below), below
    # The agent on B still serves after a stalled transfer.
    assert routed.server.ok({"op": "info"})["pid"] == routed.server.process.pid


@scenario("reported")
def test_reported_fragmentation_needed_is_emsgsize_with_the_path_mtu(
    routed: RoutedPath, family: tuple[str, str, int]
) -> None:
    _src, dst, _headers = family
    udp, icmp = routed.client.call(*sized_probes(routed, dst), timeout=30)
    for response in (udp, icmp):
        assert (response["ok"], response["errno"]) == (False, "EMSGSIZE"), response
        assert response["size"] == 1500
        assert response["path_mtu"] == NARROW_MTU, response
        assert "1500-byte packet" in response["error"]
    (moved,) = routed.client.call(transfer(routed, dst), timeout=30)
    assert moved["ok"], moved
    # Now the kernel knows the path MTU: a DF send of the interface's MTU fails at once.
    (again,) = routed.client.call(sized_probes(routed, dst)[0], timeout=30)
    assert (again["errno"], again["path_mtu"]) == ("EMSGSIZE", NARROW_MTU), again
    assert "on send" in again["error"]


@scenario("mismatch")
def test_peer_with_a_smaller_mtu_reports_it(
    routed: RoutedPath, family: tuple[str, str, int]
) -> None:
    _src, dst, _headers = family
    lost_udp, lost_icmp, moved = full_size_exchanges(routed, dst)
    assert_timed_out(lost_udp, lost_icmp)
    assert moved["ok"], moved
    assert (moved["mtu"], moved["peer_mtu"]) == (1500, PEER_MTU)
    fits_udp, fits_icmp = routed.client.call(*sized_probes(routed, dst, size=PEER_MTU))
    assert fits_udp["ok"], fits_udp
    assert (fits_udp["mtu"], fits_udp["peer_mtu"]) == (1500, PEER_MTU)
    assert fits_icmp["ok"], fits_icmp


def test_sized_packet_layout() -> None:
    """Nonce line first, then deterministic padding up to the IP size asked for."""
    import socket

    packet = agent_netinfo.SizedPacket("nc-1", 200, socket.AF_INET, "127.0.0.1", 8)
    assert packet.size == 200
    assert len(packet.payload) == 200 - 28
    assert packet.payload.startswith(b"nc-1\n")
    assert packet.payload[5:] == agent_protocol.deterministic_bytes("nc-1", 200 - 28 - 5)
    assert packet.iface == "lo"
