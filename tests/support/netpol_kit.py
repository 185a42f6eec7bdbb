"""A lab with the NetworkPolicy model on it, for tests/lab/test_netpol.py: `netlab up` on 3
nodes, namespaces x, y, z (labelled ``ns=<name>``) with pods a, b, c on node-1, node-2, node-3
in each, every pod serving TCP and UDP on ports 80 and 81 (containerPorts named
``serve-80-tcp`` ...; ``http`` is 80 on pods a and b and 81 on pod c), and a truth table of
real connections between every ordered pair of pods (clients run in the source pod's own
network namespace, so what answered crossed the lab's data plane and its policy rules).
"""

from __future__ import annotations

import ipaddress
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from kube_access import kube_api
from kubernetes import client
from netlab_commands import booted_lab
from pod_servers import DUAL_STACK_LISTENER
from polling import eventually, until

from netlab.dataplane.nsexec import run_in_netns

READY_TIMEOUT = 120.0
NAMESPACES = ("x", "y", "z")
PODS = {"a": "node-1", "b": "node-2", "c": "node-3"}
ENFORCE_TIMEOUT = 10.0  # seconds a change may take to reach every node's rules (lab bound)

# TCP and UDP on 80 and 81 on every address of both families; each answer is the pod's name.
SERVER = (
    r"""
import os, signal, socket, threading
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
NAME = os.environ["POD_NAME"].encode()
"""
    + DUAL_STACK_LISTENER
    + r"""
def tcp(port):
    s = listener(socket.SOCK_STREAM, port); s.listen(64)
    while True:
        c, _ = s.accept()
        with c:
            c.sendall(NAME)
def udp(port):
    s = listener(socket.SOCK_DGRAM, port)
    while True:
        _, peer = s.recvfrom(512)
        s.sendto(NAME, peer)
for port in (80, 81):
    threading.Thread(target=tcp, args=(port,), daemon=True).start()
    threading.Thread(target=udp, args=(port,), daemon=True).start()
threading.Event().wait()
"""
)

# stdin: [[id, proto, host, port]] -> {id: answering pod name | "ERRNO"}; all at once, 1 s each
# (UDP: two sends, 0.5 s apart).
CLIENT = r"""
import errno, json, socket, sys, threading
def once(proto, host, port):
    try:
        if proto == "tcp":
            with socket.create_connection((host, port), timeout=1.0) as s:
                return s.recv(256).decode()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(0.5)
            for _ in range(2):
                s.sendto(b"?", (host, port))
                try:
                    return s.recv(256).decode()
                except socket.timeout:
                    continue
            return "ETIMEDOUT"
    except socket.timeout:
        return "ETIMEDOUT"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
results = {}
def run(item):
    results[item[0]] = once(*item[1:])
threads = [threading.Thread(target=run, args=(item,)) for item in json.load(sys.stdin)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(results))
"""


def pod_key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


ALL_PODS = [pod_key(ns, name) for ns in NAMESPACES for name in PODS]
Cell = tuple[str, str]  # (source pod, destination pod)


def pod_body(name: str, node: str) -> dict[str, Any]:
    http = 81 if name == "c" else 80
    ports = [
        {"name": f"serve-{port}-{proto.lower()}", "containerPort": port, "protocol": proto}
        for port in (80, 81)
        for proto in ("TCP", "UDP")
    ]
    ports.append({"name": "http", "containerPort": http, "protocol": "TCP"})
    return {
        "metadata": {"name": name, "labels": {"pod": name}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "server",
                    "image": "agnhost:lab",
                    "command": ["python3", "-c", SERVER],
                    "env": [
                        {
                            "name": "POD_NAME",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                        }
                    ],
                    "ports": ports,
                }
            ],
        },
    }


def service_body(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": f"s-{name}"},
        "spec": {
            "selector": {"pod": name},
            "ports": [
                {"name": f"{proto.lower()}-{port}", "port": port, "protocol": proto}
                for port in (80, 81)
                for proto in ("TCP", "UDP")
            ],
        },
    }


def _ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


@dataclass
class PolicyLab:
    """A running lab with the model's namespaces and pods."""

    name: str
    core: Any  # CoreV1Api
    networking: Any  # NetworkingV1Api
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    ips: dict[str, str] = field(default_factory=dict)  # pod -> address of the family probed
    all_ips: dict[str, dict[int, str]] = field(default_factory=dict)  # pod -> family -> address
    service_ips: dict[str, str] = field(default_factory=dict)  # pod -> its Service's cluster IP
    netns: dict[str, str] = field(default_factory=dict)

    def use_family(self, version: int) -> None:
        """Probe (and write ipBlocks for) the pods' addresses of IP ``version`` from now on."""
        self.ips = {key: by_family[version] for key, by_family in self.all_ips.items()}

    def namespace(self, short: str) -> str:
        return f"{short}-{self.suffix}"

    def node_netns(self, node: str) -> str:
        return f"netlab-{self.name}-{node}"

    def create_model(self) -> None:
        for short in NAMESPACES:
            self.core.create_namespace(
                {"metadata": {"name": self.namespace(short), "labels": {"ns": short}}}
            )
        for short in NAMESPACES:
            until(
                lambda s=short: self.core.list_namespaced_service_account(self.namespace(s)).items,
                30,
                f"namespace {short}'s ServiceAccount",
            )
            for name, node in PODS.items():
                # One Service per pod, as the upstream suite has (s-<pod>, ports 80 and 81).
                service = self.core.create_namespaced_service(
                    self.namespace(short), service_body(name)
                )
                self.service_ips[pod_key(short, name)] = service.spec.cluster_ip
                self.core.create_namespaced_pod(self.namespace(short), pod_body(name, node))
        for short in NAMESPACES:
            for name in PODS:
                key = pod_key(short, name)
                pod = until(
                    lambda s=short, n=name: (
                        p
                        if _ready(p := self.core.read_namespaced_pod(n, self.namespace(s)))
                        else None
                    ),
                    READY_TIMEOUT,
                    f"pod {key} Ready",
                )
                self.all_ips[key] = {
                    ipaddress.ip_address(entry.ip).version: entry.ip
                    for entry in pod.status.pod_ips or []
                }
                self.ips[key] = pod.status.pod_ip
                uid = pod.metadata.uid.replace("-", "")[:8]
                self.netns[key] = f"netlab-{self.name}-pod-{uid}"

    # --- traffic ---

    def connect(
        self, cells: list[tuple[Cell, str, int]], *, via_service: bool = False
    ) -> dict[tuple[Cell, str, int], str]:
        """Each (cell, protocol, port): the answering pod's name, or the error seen; to the
        destination pod's address, or (``via_service``) its Service's cluster IP."""
        addresses = self.service_ips if via_service else self.ips
        by_source: dict[str, list[list[Any]]] = {}
        for index, ((source, destination), proto, port) in enumerate(cells):
            by_source.setdefault(source, []).append(
                [str(index), proto, addresses[destination], port]
            )

        def run(source: str) -> dict[str, str]:
            done = run_in_netns(
                self.netns[source],
                [sys.executable, "-c", CLIENT],
                input_text=json.dumps(by_source[source]),
                timeout=30,
            )
            answer: dict[str, str] = json.loads(done.stdout)
            return answer

        with ThreadPoolExecutor(max_workers=len(by_source)) as pool:
            answers: dict[str, str] = {}
            for part in pool.map(run, by_source):
                answers.update(part)
        return {cell: answers[str(index)] for index, cell in enumerate(cells)}

    def from_node(
        self, node: str, destinations: list[str], proto: str = "tcp", port: int = 80
    ) -> dict[str, bool]:
        """From ``node``'s own network stack (as a hostNetwork pod would) to each destination
        pod: whether it answered."""
        items = [[d, proto, self.ips[d], port] for d in destinations]
        done = run_in_netns(
            self.node_netns(node),
            [sys.executable, "-c", CLIENT],
            input_text=json.dumps(items),
            timeout=30,
        )
        answers: dict[str, str] = json.loads(done.stdout)
        return {d: answers[d] == d.split("/")[1] for d in destinations}

    def truth_table(
        self, proto: str = "tcp", port: int = 80, *, via_service: bool = False
    ) -> dict[Cell, bool]:
        """Every ordered pair of pods -> whether the destination answered (pairs of distinct
        pods; through Services also each pod to itself, a hairpin)."""
        cells = [((s, d), proto, port) for s in ALL_PODS for d in ALL_PODS if s != d or via_service]
        seen = self.connect(cells, via_service=via_service)
        table = {}
        for (cell, _, _), answer in seen.items():
            destination_name = cell[1].split("/")[1]
            table[cell] = answer == destination_name
        return table

    # --- policies ---

    def apply(self, short_ns: str, name: str, spec: dict[str, Any]) -> float:
        """Create (or replace) a policy; returns the monotonic time the API accepted it."""
        body = {"metadata": {"name": name}, "spec": spec}
        namespace = self.namespace(short_ns)
        try:
            self.networking.read_namespaced_network_policy(name, namespace)
        except client.exceptions.ApiException as error:
            if error.status != 404:
                raise
            self.networking.create_namespaced_network_policy(namespace, body)
        else:
            self.networking.replace_namespaced_network_policy(name, namespace, body)
        return time.monotonic()

    def delete_policies(self) -> float:
        for short in NAMESPACES:
            self.networking.delete_collection_namespaced_network_policy(self.namespace(short))
        return time.monotonic()

    def node_tables(self) -> dict[str, str]:
        return {
            node: run_in_netns(
                self.node_netns(node), ["nft", "list", "table", "inet", "netlab-netpol"]
            ).stdout
            for node in PODS.values()
        }


def expect(rule: Callable[[str, str], bool], *, self_cells: bool = False) -> dict[Cell, bool]:
    """The expected truth table from ``rule(source, destination)`` (keys ``ns/pod``, with the
    short namespace names); ``self_cells``: with each pod to itself, always allowed (a pod
    cannot block itself)."""
    return {
        (s, d): s == d or rule(s, d) for s in ALL_PODS for d in ALL_PODS if s != d or self_cells
    }


def differences(expected: dict[Cell, bool], observed: dict[Cell, bool]) -> dict[Cell, str]:
    return {
        cell: f"expected {'allowed' if want else 'denied'}, saw {'allowed' if observed[cell] else 'denied'}"
        for cell, want in expected.items()
        if observed[cell] != want
    }


def settled_table(
    lab: PolicyLab,
    expected: dict[Cell, bool],
    proto: str = "tcp",
    port: int = 80,
    *,
    via_service: bool = False,
) -> dict[Cell, bool]:
    """The observed table once it equals ``expected`` or ``ENFORCE_TIMEOUT`` passed (a change
    takes a moment to reach the nodes); the last one seen otherwise."""
    seen: dict[Cell, bool] = {}

    def matches() -> bool:
        seen.clear()
        seen.update(lab.truth_table(proto, port, via_service=via_service))
        return seen == expected

    eventually(matches, ENFORCE_TIMEOUT, interval=0.2)
    return seen


@contextmanager
def policy_lab(lab_name: str, *options: str) -> Iterator[PolicyLab]:
    """`netlab up --nodes 3 OPTIONS`, the model's namespaces and pods, `netlab down` after."""
    started = time.monotonic()
    with booted_lab(lab_name, "--nodes", "3", *options) as kubeconfig:
        boot = time.monotonic() - started
        with kube_api(kubeconfig) as api:
            lab = PolicyLab(lab_name, client.CoreV1Api(api), client.NetworkingV1Api(api))
            lab.create_model()
            print(
                f"lab {lab_name} {list(options) or ''}: netlab up {boot:.1f} s, 9 pods Ready "
                f"after {time.monotonic() - started - boot:.1f} s"
            )
            yield lab
