"""Two private network namespaces joined by a veth pair, a probe agent serving in each (root):
real source addresses, ICMP and captures for the probe agent's lab tests. The pair is made
inside the first namespace with its peer placed in the second: never in the machine's own.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from running_agents import IMAGE_PYTHON, RunningAgent, start_agent

ADDR_A, ADDR_B = "198.51.100.1", "198.51.100.2"
ADDR6_A, ADDR6_B = "fd00:7d::1", "fd00:7d::2"

# Probe images ship different scapy releases: Debian's python3 (scapy 2.5, what lab pods run)
# and the project's own interpreter (the newest scapy, whose AsyncSniffer API changed).
AGENT_PYTHONS = sorted({IMAGE_PYTHON, sys.executable})


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=True)


@dataclass
class NamespacePair:
    a: RunningAgent
    b: RunningAgent
    ns_a: str
    ns_b: str
    veth_a: str
    veth_b: str


@contextmanager
def namespace_pair(workdir: Path, python: str) -> Iterator[NamespacePair]:
    """Namespaces ``netlab-td-{a,b}-<hex>`` with agents ``ns-a`` and ``ns-b`` run by
    ``python`` (TCP 8080, UDP 8081); agents stopped and namespaces deleted on exit, checked."""
    if shutil.which("ip") is None or shutil.which("nsenter") is None:
        pytest.skip("needs iproute2 and nsenter to create network namespaces")
    suffix = secrets.token_hex(3)
    ns_a, ns_b = f"netlab-td-a-{suffix}", f"netlab-td-b-{suffix}"
    veth_a, veth_b = f"tda{suffix}", f"tdb{suffix}"
    created: list[str] = []
    agents: list[RunningAgent] = []
    try:
        for name in (ns_a, ns_b):
            ip("netns", "add", name)
            created.append(name)
        ip("-n", ns_a, "link", "add", veth_a, "type", "veth", "peer", "name", veth_b, "netns", ns_b)
        for ns, veth, v4, v6 in ((ns_a, veth_a, ADDR_A, ADDR6_A), (ns_b, veth_b, ADDR_B, ADDR6_B)):
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "addr", "add", f"{v4}/24", "dev", veth)
            ip("-n", ns, "addr", "add", f"{v6}/64", "dev", veth, "nodad")
            ip("-n", ns, "link", "set", veth, "up")
        for ns, name in ((ns_a, "ns-a"), (ns_b, "ns-b")):
            agents.append(
                start_agent(workdir, name, tcp_port=8080, udp_port=8081, netns=ns, python=python)
            )
        yield NamespacePair(agents[0], agents[1], ns_a, ns_b, veth_a, veth_b)
    finally:
        for agent in agents:
            agent.stop()
        for name in created:
            subprocess.run(
                ["ip", "netns", "del", name], capture_output=True, timeout=20, check=False
            )
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=20)
        assert suffix not in left.stdout, f"namespaces left behind: {left.stdout}"
