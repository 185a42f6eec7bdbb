"""IPv6 and dual-stack pods end to end (real runc, real CNI, one kubelet per node): each pod gets
one address per family from its node's podCIDRs, status and the downward API show them
primary first, and pods on different nodes reach each other over IPv6 (TCP and ICMPv6).
IPAM faults break their rule in every family; family-missing-on-node takes IPv6 from one
node's pods only."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
from kubelet_fixtures import NEEDS_RUNTIME, KubeletHarness, lab_name, lab_network, make_pod, sleeper

from netlab.contract import JSONDict
from netlab.dataplane.topology import node_infos, plan_ipam_ranges
from netlab.kubelet import Kubelet
from netlab.spec import LabSpec

pytestmark = [pytest.mark.needs_lab, NEEDS_RUNTIME]

LISTEN_PORT = 8080
# Answers each TCP connection with the peer address it saw, on every address of both families.
LISTENER = (
    "import socket,signal,sys,threading\n"
    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
    "s=socket.socket(socket.AF_INET6)\n"
    "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    f"s.bind(('::', {LISTEN_PORT})); s.listen(8)\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    c, peer = s.accept()\n"
    "    host = peer[0][7:] if peer[0].startswith('::ffff:') else peer[0]\n"
    "    c.sendall(host.encode()); c.close()\n"
)
# argv: host, port -> prints the address the listener saw.
CONNECT = (
    "import socket,sys\n"
    "with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as c:\n"
    "    print(c.recv(100).decode())\n"
)
# argv: IPv6 host -> prints the source of the echo reply (ICMPv6 type 129 with our id).
PING6 = (
    "import os,select,socket,struct,sys\n"
    "s=socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)\n"
    "ident=os.getpid() & 0xffff\n"
    "s.sendto(struct.pack('!BBHHH', 128, 0, 0, ident, 1) + b'netlab', (sys.argv[1], 0))\n"
    "while select.select([s], [], [], 3)[0]:\n"
    "    data, peer = s.recvfrom(1500)\n"
    "    kind, _, _, got = struct.unpack('!BBHH', data[:6])\n"
    "    if kind == 129 and got == ident:\n"
    "        print(peer[0]); break\n"
    "else:\n"
    "    sys.exit('no ICMPv6 echo reply')\n"
)
ENV_DUMP = "import os; print(os.environ['POD_IPS']); print(os.environ['HOST_IPS'])"
# Prints the pod's IPv6 addresses other than loopback and link-local (hex, as the kernel lists).
GLOBAL_IPV6 = (
    "import json; print(json.dumps([l.split()[0] for l in open('/proc/net/if_inet6') "
    "if not l.startswith(('fe80', '0' * 31 + '1'))]))"
)


def lab(ip_family: str, *faults: str) -> LabSpec:
    return LabSpec(name=lab_name(), nodes=2, ip_family=ip_family, faults=frozenset(faults))


def downward_env() -> list[JSONDict]:
    return [
        {"name": "POD_IPS", "valueFrom": {"fieldRef": {"fieldPath": "status.podIPs"}}},
        {"name": "HOST_IPS", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIPs"}}},
    ]


def pod_ips(status: JSONDict) -> list[str]:
    return [entry["ip"] for entry in status.get("podIPs", [])]


def families(addresses: list[str]) -> list[int]:
    return [ipaddress.ip_address(address).version for address in addresses]


@asynccontextmanager
async def node_kubelets(spec: LabSpec) -> AsyncIterator[dict[str, KubeletHarness]]:
    """A started Kubelet per node of the lab (IPAM over its planned ranges), by node name."""
    ranges = plan_ipam_ranges(spec)
    harnesses: dict[str, KubeletHarness] = {}
    async with AsyncExitStack() as stack:
        for plan, info in zip(spec.node_plans(), node_infos(spec), strict=True):
            holder: list[KubeletHarness] = []
            kubelet = Kubelet(
                spec,
                plan,
                info,
                ipam_ranges=ranges[plan.name],
                on_status=lambda uid, status, h=holder: h[0].record_status(uid, status),
                on_event=lambda uid, kind, reason, text, h=holder: h[0].record_event(
                    uid, kind, reason, text
                ),
                configmaps=lambda namespace, name: None,
            )
            holder.append(KubeletHarness(kubelet))
            await kubelet.start()
            stack.push_async_callback(kubelet.close)
            harnesses[plan.name] = holder[0]
        yield harnesses


async def start_running(harness: KubeletHarness, pod: JSONDict) -> JSONDict:
    await harness.kubelet.start_pod(pod)
    return await harness.wait_running(pod["metadata"]["uid"])


async def python(harness: KubeletHarness, uid: str, container: str, source: str, *args: str) -> str:
    """``python3 -c source args...`` in the container; its output (fails the test on error)."""
    code, text = await harness.exec(uid, container, ["python3", "-c", source, *args])
    assert code == 0, f"python in {container} of {uid} exited {code}: {text}"
    return text.strip()


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


@pytest.mark.parametrize("ip_family", ["ipv6", "dual"])
def test_pods_get_an_address_per_family_and_reach_each_other_over_ipv6(ip_family: str) -> None:
    spec = lab(ip_family)
    node1, node2 = spec.node_plans()
    client = make_pod("client", [sleeper("c", env=downward_env())], node="node-1")
    server = make_pod("server", [sleeper("s", command=["python3", "-c", LISTENER])], node="node-2")
    host_pod = make_pod(
        "hostpod", [sleeper("h", env=downward_env())], node="node-1", hostNetwork=True
    )

    async def scenario() -> None:
        async with node_kubelets(spec) as kubelets:
            started = time.monotonic()
            statuses = await asyncio.gather(
                start_running(kubelets["node-1"], client),
                start_running(kubelets["node-2"], server),
                start_running(kubelets["node-1"], host_pod),
            )
            print(f"3 {ip_family} pods Running in {time.monotonic() - started:.2f} s")
            client_status, server_status, host_status = statuses
            for status, plan, pod in (
                (client_status, node1, client),
                (server_status, node2, server),
            ):
                ips = pod_ips(status)
                name = pod["metadata"]["name"]
                assert families(ips) == list(spec.families), (
                    f"{name} on {plan.name}: podIPs {ips}, expected one per family "
                    f"{spec.families} primary first"
                )
                assert status["podIP"] == ips[0]
                for ip, cidr in zip(ips, plan.pod_cidrs, strict=True):
                    assert ipaddress.ip_address(ip) in ipaddress.ip_network(cidr), (
                        f"{name}: {ip} outside {plan.name}'s podCIDR {cidr}"
                    )
                assert [h["ip"] for h in status["hostIPs"]] == list(plan.internal_ips)
                assert status["hostIP"] == plan.internal_ip
            assert pod_ips(host_status) == list(node1.internal_ips)

            c_uid = client["metadata"]["uid"]
            env = (await python(kubelets["node-1"], c_uid, "c", ENV_DUMP)).splitlines()
            assert env == [",".join(pod_ips(client_status)), ",".join(node1.internal_ips)], (
                "downward API status.podIPs, status.hostIPs"
            )
            host_uid = host_pod["metadata"]["uid"]
            host_env = await python(kubelets["node-1"], host_uid, "h", ENV_DUMP)
            assert host_env.splitlines()[0] == ",".join(node1.internal_ips)

            await kubelets["node-2"].wait_log(server["metadata"]["uid"], "s", b"ready")
            client_v6 = pod_ips(client_status)[-1]
            server_v6 = pod_ips(server_status)[-1]
            port = str(LISTEN_PORT)
            seen = await python(kubelets["node-1"], c_uid, "c", CONNECT, server_v6, port)
            assert seen == client_v6, (
                f"TCP over IPv6 {client_v6} (node-1) -> {server_v6} (node-2): peer saw {seen}"
            )
            replied = await python(kubelets["node-1"], c_uid, "c", PING6, server_v6)
            assert replied == server_v6, f"ICMPv6 echo to {server_v6} answered by {replied}"
            # Loopback over ::1 inside the pod, and a node reaching a remote pod over IPv6.
            s_uid = server["metadata"]["uid"]
            local = await python(kubelets["node-2"], s_uid, "s", CONNECT, "::1", port)
            assert local == "::1"
            from_host = await python(kubelets["node-1"], host_uid, "h", CONNECT, server_v6, port)
            assert from_host == node1.internal_ips[-1], "node -> remote pod over IPv6 was NATed"

    with lab_network(spec):
        run(scenario())


def test_ipam_faults_break_their_rule_in_both_families_of_a_dual_lab() -> None:
    spec = lab("dual", "duplicate-pod-ip", "ip-outside-node-cidr")
    node2 = spec.node_plans()[1]
    first = make_pod("first", [sleeper("a")], node="node-1")
    twin = make_pod("twin", [sleeper("a")], node="node-1")
    stray = make_pod("stray", [sleeper("a")], node="node-2")

    async def scenario() -> None:
        async with node_kubelets(spec) as kubelets:
            first_status, twin_status, stray_status = await asyncio.gather(
                start_running(kubelets["node-1"], first),
                start_running(kubelets["node-1"], twin),
                start_running(kubelets["node-2"], stray),
            )
            assert families(pod_ips(first_status)) == [4, 6]
            assert pod_ips(twin_status) == pod_ips(first_status), (
                "duplicate-pod-ip: pods on node-1 got distinct addresses "
                f"{pod_ips(first_status)} and {pod_ips(twin_status)}"
            )
            stray_ips = pod_ips(stray_status)
            assert families(stray_ips) == [4, 6]
            for ip, cidr in zip(stray_ips, node2.pod_cidrs, strict=True):
                assert ipaddress.ip_address(ip) not in ipaddress.ip_network(cidr), (
                    f"ip-outside-node-cidr: {ip} of node-2 is inside its podCIDR {cidr}"
                )

    with lab_network(spec):
        run(scenario())


def test_family_missing_on_node_leaves_node_2s_pods_without_ipv6() -> None:
    spec = lab("dual", "family-missing-on-node")
    node2 = spec.node_plans()[1]
    near = make_pod("near", [sleeper("a")], node="node-1")
    bare = make_pod("bare", [sleeper("b", command=["python3", "-c", LISTENER])], node="node-2")

    async def scenario() -> None:
        async with node_kubelets(spec) as kubelets:
            near_status, bare_status = await asyncio.gather(
                start_running(kubelets["node-1"], near),
                start_running(kubelets["node-2"], bare),
            )
            assert families(pod_ips(near_status)) == [4, 6], "node-1's pods keep both families"
            assert families(pod_ips(bare_status)) == [4], (
                f"family-missing-on-node: node-2's pod has podIPs {pod_ips(bare_status)}"
            )
            # The pod itself has no IPv6 address beyond loopback and link-local.
            b_uid = bare["metadata"]["uid"]
            inet6 = await python(kubelets["node-2"], b_uid, "b", GLOBAL_IPV6)
            assert json.loads(inet6) == [], f"node-2's pod has IPv6 addresses {inet6}"
            # The node still publishes both podCIDRs, and IPv4 to the pod works.
            assert node_infos(spec)[1].pod_cidrs == node2.pod_cidrs
            assert [ipaddress.ip_network(c).version for c in node2.pod_cidrs] == [4, 6]
            await kubelets["node-2"].wait_log(b_uid, "b", b"ready")
            n_uid = near["metadata"]["uid"]
            bare_v4 = pod_ips(bare_status)[0]
            seen = await python(kubelets["node-1"], n_uid, "a", CONNECT, bare_v4, str(LISTEN_PORT))
            assert seen == pod_ips(near_status)[0], f"IPv4 to node-2's pod: peer saw {seen}"

    with lab_network(spec):
        run(scenario())
