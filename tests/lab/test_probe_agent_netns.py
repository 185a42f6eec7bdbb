"""The probe agent run for real where it needs root: as an unprivileged user without NET_RAW
(``setpriv``), and in two network namespaces joined by a veth pair (``netns_pair``, from
``tests/support/agent_namespaces.py``): source addresses, ICMP, captures and real loss under
iptables drops inside them. Traffic goes only to loopback or to addresses inside those
namespaces. (On loopback without root: ``tests/unit/test_probe_agent*.py``.)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from agent_namespaces import ADDR6_A, ADDR6_B, ADDR_A, ADDR_B, NamespacePair, ip
from running_agents import (
    IMAGE_PYTHON,
    free_port_pair,
    measure,
    nonce,
    start_agent,
    write_shipped_files,
)

from conformance.probe_agent import captures as agent_captures
from conformance.probe_agent import services as agent_services

pytestmark = pytest.mark.needs_lab


@pytest.fixture
def unprivileged_dir() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="netconform-noraw-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_without_net_raw_tcp_udp_still_work_and_icmp_capture_fail_clearly(
    unprivileged_dir: Path,
) -> None:
    """Pod security may drop NET_RAW: the agent must still serve, and say why ICMP fails."""
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv to run the agent as an unprivileged user")
    agent_path = write_shipped_files(unprivileged_dir)  # as the ConfigMap mount holds them
    tcp_port, udp_port = free_port_pair()
    agent = start_agent(
        unprivileged_dir,
        "noraw",
        tcp_port=tcp_port,
        udp_port=udp_port,
        python=IMAGE_PYTHON,
        agent_path=agent_path,
        prefix=["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"],
    )
    try:
        value = nonce()
        info, tcp, echo, capture, seen = agent.call(
            {"op": "info"},
            {
                "op": "connect",
                "proto": "tcp",
                "host": "127.0.0.1",
                "port": tcp_port,
                "nonce": value,
            },
            {"op": "icmp", "host": "127.0.0.1", "nonce": value, "timeout": 1},
            {"op": "capture_start", "nonce": value, "iface": "lo", "timeout": 5},
            {"op": "seen", "nonce": value},
        )
        assert info["listeners"]["icmp"] == []
        assert tcp["peer_seen"] == "127.0.0.1"
        # Ping sockets may be allowed for every group by net.ipv4.ping_group_range.
        assert echo["ok"] or "NET_RAW" in echo["error"], echo
        assert capture["ok"] is False
        assert "NET_RAW" in capture["error"]
        assert seen["records"] == [{"proto": "tcp", "peer": "127.0.0.1", "nonce": value}]
        assert agent.ok({"op": "info"})["pid"] == info["pid"]
    finally:
        agent.stop()


def test_capture_without_a_kernel_filter_applies_the_same_test_in_python(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where libpcap cannot compile the BPF filter, small packets still match and full-size
    ones are still left out, in Python (a capture on lo, traffic to 127.0.0.1 only)."""
    import scapy.arch.common

    def no_libpcap(*_args: object, **_kwargs: object) -> None:
        raise ImportError("libpcap is not available")

    monkeypatch.setattr(scapy.arch.common, "compile_filter", no_libpcap)
    captures = agent_captures.CaptureBook()
    prefix = f"{nonce()}-"
    start = captures.start(None, prefix, "lo", 20)
    assert captures._load_scapy()["filter"] is None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(f"{prefix}small\n".encode(), sink.getsockname())
            sender.sendto(f"{prefix}large\n".encode() + bytes(2000), sink.getsockname())
            sender.sendto(f"{prefix}last\n".encode(), sink.getsockname())
    result = captures.result(start["capture_id"], 10, 1, [f"{prefix}small", f"{prefix}last"])
    assert result["missing"] == []
    assert {packet["nonce"] for packet in result["packets"]} == {f"{prefix}small", f"{prefix}last"}
    assert all(packet["proto"] == "udp" for packet in result["packets"])


def test_netns_addresses_match_ip_addr(netns_pair: NamespacePair) -> None:
    interfaces = netns_pair.b.ok({"op": "addresses"})["interfaces"]
    observed = {(e["name"], a) for e in interfaces for a in e["addresses"]}
    shown = json.loads(ip("-n", netns_pair.ns_b, "-j", "addr", "show").stdout)
    expected = {
        (link["ifname"], f"{addr['local']}/{addr['prefixlen']}")
        for link in shown
        for addr in link.get("addr_info", [])
    }
    assert observed == expected
    veth = next(e for e in interfaces if e["name"] == netns_pair.veth_b)
    assert (
        veth["mac"]
        == next(link for link in shown if link["ifname"] == netns_pair.veth_b)["address"]
    )
    info_a, info_b = netns_pair.a.ok({"op": "info"}), netns_pair.b.ok({"op": "info"})
    assert len({info_a["netns"], info_b["netns"], os.readlink("/proc/self/ns/net")}) == 3
    assert len({info_a["netns_cookie"], info_b["netns_cookie"], agent_services.netns_cookie()}) == 3


@pytest.mark.parametrize(
    ("proto", "src", "dst"),
    [
        ("tcp", ADDR_A, ADDR_B),
        ("udp", ADDR_A, ADDR_B),
        ("tcp", ADDR6_A, ADDR6_B),
        ("udp", ADDR6_A, ADDR6_B),
    ],
)
def test_netns_connect_sees_the_senders_address(
    netns_pair: NamespacePair, proto: str, src: str, dst: str
) -> None:
    value = nonce()
    port = 8080 if proto == "tcp" else 8081
    sent = netns_pair.a.ok(
        {"op": "connect", "proto": proto, "host": dst, "port": port, "nonce": value, "timeout": 3}
    )
    assert (sent["peer_seen"], sent["local"]) == (src, src)
    assert netns_pair.b.ok({"op": "seen", "nonce": value, "wait": 2})["records"] == [
        {"proto": proto, "peer": src, "nonce": value}
    ]


@pytest.mark.parametrize(
    ("proto", "src", "dst"), [("icmp", ADDR_A, ADDR_B), ("icmpv6", ADDR6_A, ADDR6_B)]
)
def test_netns_icmp_echo_is_recorded(
    netns_pair: NamespacePair, proto: str, src: str, dst: str
) -> None:
    value = nonce()
    echo = netns_pair.a.ok({"op": "icmp", "host": dst, "nonce": value, "timeout": 3})
    assert echo["reply_from"] == dst
    assert netns_pair.b.ok({"op": "seen", "nonce": value, "wait": 2})["records"] == [
        {"proto": proto, "peer": src, "nonce": value}
    ]


def test_netns_capture_matches_udp_and_icmp_nonces(netns_pair: NamespacePair) -> None:
    udp_nonce, icmp_nonce, icmp6_nonce = nonce(), nonce(), nonce()
    starts = netns_pair.b.call(
        {"op": "capture_start", "nonce": udp_nonce, "timeout": 15},  # default: the pod's interface
        {"op": "capture_start", "nonce": icmp_nonce, "iface": netns_pair.veth_b, "timeout": 15},
        {"op": "capture_start", "nonce": icmp6_nonce, "iface": "any", "timeout": 15},
    )
    assert all(start["ok"] for start in starts), starts
    udp_id, icmp_id, icmp6_id = (start["capture_id"] for start in starts)
    sent = netns_pair.a.call(
        {"op": "connect", "proto": "udp", "host": ADDR_B, "port": 8081, "nonce": udp_nonce},
        {"op": "icmp", "host": ADDR_B, "nonce": icmp_nonce},
        {"op": "icmp", "host": ADDR6_B, "nonce": icmp6_nonce},
    )
    assert all(response["ok"] for response in sent), sent
    udp, icmp, icmp6, again = netns_pair.b.call(
        {"op": "capture_result", "capture_id": udp_id, "wait": 5, "min_packets": 2},
        {"op": "capture_result", "capture_id": icmp_id, "wait": 5, "min_packets": 2},
        {"op": "capture_result", "capture_id": icmp6_id, "wait": 5, "min_packets": 2},
        {"op": "capture_result", "capture_id": udp_id, "wait": 0},
    )
    veth = netns_pair.veth_b
    # The datagram in, and the listener's answer (which echoes the nonce) out.
    udp_in = {"proto": "udp", "src": ADDR_A, "dst": ADDR_B, "iface": veth, "nonce": udp_nonce}
    udp_out = {"proto": "udp", "src": ADDR_B, "dst": ADDR_A, "iface": veth, "nonce": udp_nonce}
    assert udp_in in udp["packets"]
    assert udp_out in udp["packets"]
    echo_in = {"proto": "icmp", "src": ADDR_A, "dst": ADDR_B, "iface": veth, "nonce": icmp_nonce}
    echo_out = {"proto": "icmp", "src": ADDR_B, "dst": ADDR_A, "iface": veth, "nonce": icmp_nonce}
    assert echo_in in icmp["packets"]
    assert echo_out in icmp["packets"]
    echo6 = {"proto": "icmpv6", "src": ADDR6_A, "dst": ADDR6_B, "iface": veth, "nonce": icmp6_nonce}
    assert echo6 in icmp6["packets"]
    assert udp["dropped"] == 0
    assert again["packets"] == udp["packets"], "a finished capture keeps its packets"
    assert all(packet["proto"] == "udp" for packet in udp["packets"])


def test_netns_capture_without_traffic_returns_no_packets(netns_pair: NamespacePair) -> None:
    start = netns_pair.b.ok({"op": "capture_start", "nonce": nonce(), "timeout": 5})
    result = netns_pair.b.ok(
        {"op": "capture_result", "capture_id": start["capture_id"], "wait": 0.5}
    )
    assert result["packets"] == []


# --- real loss inside a pair of private network namespaces ----------------------------------


@contextmanager
def dropping(namespace: str, rule: str) -> Iterator[None]:
    """An iptables rule inside ``namespace`` (never the machine's own), removed on exit."""
    if shutil.which("iptables") is None:
        pytest.skip("needs iptables")
    base = ["ip", "netns", "exec", namespace, "iptables"]
    subprocess.run([*base, "-A", *rule.split()], check=True, capture_output=True, timeout=20)
    try:
        yield
    finally:
        subprocess.run([*base, "-D", *rule.split()], check=True, capture_output=True, timeout=20)


def test_netns_half_of_the_datagrams_dropped_is_half_lost(
    netns_pair: NamespacePair,
) -> None:
    rule = "INPUT -p udp --dport 8081 -m statistic --mode random --probability 0.5 -j DROP"
    with dropping(netns_pair.ns_b, rule):
        answer = measure(
            netns_pair.a, "udp", 8081, host=ADDR_B, count=100, interval=0.002, timeout=1
        )
    # Binomial(100, 0.5) lies outside [25, 75] with a chance below 1e-6.
    assert answer["ok"], answer
    assert 25 <= answer["lost"] <= 75, answer
    assert answer["answered"] + answer["lost"] == answer["sent"] == 100


def test_netns_a_lost_syn_ack_counts_the_connection_lost(
    netns_pair: NamespacePair,
) -> None:
    """TCP hides a lost packet by sending it again: a dropped SYN-ACK (the listener's side
    sends it again, or the client its SYN) still counts."""
    rule = (
        "OUTPUT -p tcp --sport 8080 --tcp-flags SYN,ACK SYN,ACK "
        "-m statistic --mode random --probability 0.5 -j DROP"
    )
    with dropping(netns_pair.ns_b, rule):
        answer = measure(
            netns_pair.a, "tcp", 8080, host=ADDR_B, count=20, interval=0.01, timeout=8, parallel=20
        )
    assert answer["ok"], answer
    # Each connection loses its first SYN-ACK with a chance of 1/2: none of 20 is 1e-6.
    assert answer["retransmitted"] >= 1, answer
    assert answer["lost"] == answer["retransmitted"] + answer["sent"] - answer["answered"]
