"""The probe agent's ``resolve`` through the pod's own resolver (issue 16), run in private
network and mount namespaces (root): its own /etc/hosts and /etc/resolv.conf, a DNS server on
its own loopback that never answers, so no lookup leaves the test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from running_agents import RunningAgent, free_port_pair, start_agent

pytestmark = pytest.mark.needs_lab


# --- resolve, in private namespaces ------------------------------------------------------------

HOSTS = "127.0.0.1 localhost\n::1 localhost\n10.96.0.42 netconform-probes.test\n"
HOSTS_V6 = "fd00:10:96::2a netconform-probes.test\n"
# The resolver asks a DNS server on the namespace's own loopback that never answers.
RESOLV = "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
SILENT_DNS = (
    "import socket\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.bind(('127.0.0.1', 53))\n"
    "while True:\n"
    "    s.recv(512)\n"
)
SETUP = (
    "resolv=$0; hosts=$1; silent=$2; shift 2; ip link set lo up && "
    'mount --bind "$resolv" /etc/resolv.conf && mount --bind "$hosts" /etc/hosts && '
    '{ python3 -c "$silent" & } && '
    # The agent starts once the DNS server listens (0035: port 53 in /proc/net/udp).
    "until grep -q ':0035 ' /proc/net/udp; do sleep 0.05; done; "
    'exec "$@"'
)


@pytest.fixture(scope="module")
def resolver_agent(workdir: Path) -> Iterator[RunningAgent]:
    hosts, resolv = workdir / "hosts", workdir / "resolv.conf"
    hosts.write_text(HOSTS + HOSTS_V6)
    resolv.write_text(RESOLV)
    tcp_port, udp_port = free_port_pair()
    # A PID namespace too: when the agent (its PID 1) ends, the kernel ends the DNS server.
    prefix = ["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child", "sh", "-c", SETUP]
    agent = start_agent(
        workdir,
        "resolver",
        tcp_port=tcp_port,
        udp_port=udp_port,
        prefix=[*prefix, str(resolv), str(hosts), SILENT_DNS],
    )
    yield agent
    agent.stop()


@pytest.mark.parametrize(
    ("family", "addresses"),
    [(4, ["10.96.0.42"]), (6, ["fd00:10:96::2a"]), (0, ["10.96.0.42", "fd00:10:96::2a"])],
)
def test_resolve_answers_the_families_addresses(
    resolver_agent: RunningAgent, family: int, addresses: list[str]
) -> None:
    answer = resolver_agent.ok(
        {"op": "resolve", "name": "netconform-probes.test", "family": family}
    )
    assert answer["addresses"] == addresses
    assert answer["name"] == "netconform-probes.test"
    assert answer["family"] == family


def test_resolve_names_a_resolver_that_never_answers(resolver_agent: RunningAgent) -> None:
    answer = resolver_agent.one(
        {"op": "resolve", "name": "unknown.test", "family": 4, "timeout": 0.3}
    )
    assert answer["ok"] is False, answer
    assert answer["errno"] == "ETIMEDOUT", answer
    assert "no answer from the resolver within 0.3s" in answer["error"]


def test_resolve_gives_the_resolvers_error(resolver_agent: RunningAgent) -> None:
    answer = resolver_agent.one({"op": "resolve", "name": "unknown.test", "family": 4})
    assert answer["ok"] is False, answer
    assert answer["errno"].startswith("EAI_"), answer
    assert "resolve unknown.test (IPv4)" in answer["error"]


def test_info_reports_the_resolver_configuration(resolver_agent: RunningAgent) -> None:
    assert resolver_agent.ok({"op": "info"})["resolver"] == {
        "nameservers": ["127.0.0.1"],
        "search": [],
        "options": ["timeout:1", "attempts:1"],
    }
