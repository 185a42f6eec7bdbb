"""A lab with Services on it, for tests/lab/test_services*.py: `netlab up`, the Services and pods
the suite's Service checks use (backends on every node, clients, hostPort pods), and one
observation of every Service behaviour at the packet level (probes run inside the pods' and
nodes' own network namespaces, so what a peer saw is what crossed the lab's data plane).

``observe`` answers, per behaviour, whether it held; a healthy lab holds them all and each
fault of issue 16 breaks exactly its own.
"""

from __future__ import annotations

import ipaddress
import json
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from kube_access import kube_api, pod_exec
from kubernetes import client
from netlab_commands import booted_lab
from pod_servers import DUAL_STACK_LISTENER
from polling import eventually, until
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from netlab.dataplane.nsexec import run_in_netns

READY_TIMEOUT = 90.0
SETTLE_TIMEOUT = 10.0  # seconds for the rules to follow a readiness change
HOST_PORT = 24680
SERVICE = "netconform-probes"
BACKEND = {"netconform/backend": "true"}

# Answers TCP (8080) and UDP (8081) on every address of both families with
# {"server": POD_NAME, "peer": the address it saw}.
SERVER = (
    r"""
import json, os, signal, socket, sys, threading
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
NAME = os.environ.get("POD_NAME")
def answer(peer):
    host = peer[0][7:] if peer[0].startswith("::ffff:") else peer[0]
    return (json.dumps({"server": NAME, "peer": host}) + "\n").encode()
"""
    + DUAL_STACK_LISTENER
    + r"""
def tcp():
    s = listener(socket.SOCK_STREAM, 8080)
    s.listen(64)
    while True:
        c, peer = s.accept()
        with c:
            c.sendall(answer(peer))
def udp():
    s = listener(socket.SOCK_DGRAM, 8081)
    while True:
        _, peer = s.recvfrom(2048)
        s.sendto(answer(peer), peer)
threading.Thread(target=tcp, daemon=True).start()
threading.Thread(target=udp, daemon=True).start()
print("serving", flush=True)
threading.Event().wait()
"""
)

# stdin: [{id, proto, host, port, tries, timeout}] -> {id: [{"server", "peer"} | {"error"}]};
# each request's tries in order, every request at once.
CLIENT = r"""
import errno, json, socket, sys, threading
def once(proto, host, port, timeout):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        if proto == "tcp":
            with socket.create_connection((host, port), timeout=timeout) as s:
                s.settimeout(timeout)
                return json.loads(s.makefile().readline())
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(b"hello", (host, port))
            return json.loads(s.recv(2048))
    except socket.timeout:
        return {"error": "ETIMEDOUT"}
    except OSError as e:
        return {"error": errno.errorcode.get(e.errno, str(e))}
    except ValueError as e:
        return {"error": f"bad answer: {e}"}
requests = json.load(sys.stdin)
results = {}
def run(r):
    results[r["id"]] = [once(r["proto"], r["host"], r["port"], r["timeout"]) for _ in range(r["tries"])]
threads = [threading.Thread(target=run, args=(r,)) for r in requests]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(results))
"""


@dataclass(frozen=True)
class Request:
    """One probe: ``tries`` connections from a namespace to host:port."""

    id: str
    proto: str
    host: str
    port: int
    tries: int = 1
    timeout: float = 2.0


def probe(batches: dict[str, list[Request]]) -> dict[str, list[dict[str, str]]]:
    """Run each namespace's requests (one process per namespace, all at once); id -> the
    outcome of each try."""
    results: dict[str, list[dict[str, str]]] = {}
    processes = {}
    for netns, requests in batches.items():
        payload = json.dumps([r.__dict__ for r in requests])
        bound = max(r.tries * r.timeout for r in requests) + 20
        processes[netns] = (payload, bound)
    from concurrent.futures import ThreadPoolExecutor

    def run(netns: str) -> dict[str, list[dict[str, str]]]:
        payload, bound = processes[netns]
        done = run_in_netns(
            netns, [sys.executable, "-c", CLIENT], input_text=payload, timeout=bound
        )
        answer: dict[str, list[dict[str, str]]] = json.loads(done.stdout)
        return answer

    with ThreadPoolExecutor(max_workers=len(batches)) as pool:
        for answer in pool.map(run, batches):
            results.update(answer)
    return results


def container(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": "netshoot:lab",
        "command": ["python3", "-c", SERVER],
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        **extra,
    }


def pod(name: str, node: str, labels: dict[str, str], **container_extra: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [container("agent", **container_extra)],
        },
    }


def service(name: str, selector: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "selector": selector,
            "ipFamilyPolicy": "PreferDualStack",
            "ports": [
                {"name": "tcp", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                {"name": "udp", "port": 81, "targetPort": 8081, "protocol": "UDP"},
            ],
            **spec,
        },
    }


@dataclass
class ServiceLab:
    """A running lab with the Services and pods of the kit in one namespace."""

    name: str
    nodes: list[str]
    families: tuple[int, ...]
    core: Any  # CoreV1Api
    discovery: Any  # DiscoveryV1Api
    namespace: str = ""
    started: dict[str, float] = field(default_factory=dict)

    def netns_of_node(self, node: str) -> str:
        return f"netlab-{self.name}-{node}"

    def pod(self, name: str) -> Any:
        return self.core.read_namespaced_pod(name, self.namespace)

    def netns_of_pod(self, name: str) -> str:
        uid = self.pod(name).metadata.uid.replace("-", "")[:8]
        return f"netlab-{self.name}-pod-{uid}"

    def pod_ip(self, name: str, version: int) -> str:
        ips = [entry.ip for entry in self.pod(name).status.pod_ips or []]
        return next(ip for ip in ips if ipaddress.ip_address(ip).version == version)

    def node_ip(self, node: str, version: int) -> str:
        addresses = self.core.read_node(node).status.addresses
        return next(
            a.address
            for a in addresses
            if a.type == "InternalIP" and ipaddress.ip_address(a.address).version == version
        )

    def service(self, name: str) -> Any:
        return self.core.read_namespaced_service(name, self.namespace)

    def cluster_ip(self, name: str, version: int) -> str:
        return next(
            ip
            for ip in self.service(name).spec.cluster_ips
            if ipaddress.ip_address(ip).version == version
        )

    def exec(self, pod_name: str, command: list[str]) -> str:
        output: str = pod_exec(self.core, pod_name, self.namespace, command)
        return output

    def slice_ready(self, service_name: str, pod_name: str) -> bool | None:
        """The ready condition of ``pod_name``'s endpoint in the Service's slices."""
        slices = self.discovery.list_namespaced_endpoint_slice(
            self.namespace, label_selector=f"kubernetes.io/service-name={service_name}"
        )
        for endpoint_slice in slices.items:
            for endpoint in endpoint_slice.endpoints or []:
                if endpoint.target_ref and endpoint.target_ref.name == pod_name:
                    return bool(endpoint.conditions.ready)
        return None

    def create_workload(self) -> None:
        """Services first (so pods get their environment variables), then the pods."""
        ns = f"svc-{uuid.uuid4().hex[:8]}"
        self.core.create_namespace({"metadata": {"name": ns}})
        until(lambda: self.core.list_namespaced_service_account(ns).items, 20, "default SA")
        self.namespace = ns
        create = self.core.create_namespaced_service
        create(ns, service(SERVICE, BACKEND))
        create(ns, service(f"{SERVICE}-np", BACKEND, type="NodePort"))
        create(ns, service(f"{SERVICE}-headless", BACKEND, clusterIP="None"))
        create(ns, service("netconform-empty", {"netconform/backend": "none"}))
        create(ns, service("solo", {"solo": "true"}))
        readiness = {
            "exec": {"command": ["sh", "-c", "test ! -e /tmp/unready"]},
            "periodSeconds": 1,
            "failureThreshold": 1,
        }
        host_ports = [
            {"containerPort": 8080, "hostPort": HOST_PORT, "protocol": "TCP"},
            {"containerPort": 8081, "hostPort": HOST_PORT + 1, "protocol": "UDP"},
        ]
        pods = []
        for index, node in enumerate(self.nodes):
            labels = {**BACKEND, **({"solo": "true"} if index == 0 else {})}
            pods.append(pod(f"peer-{node}", node, labels, readinessProbe=readiness))
            pods.append(pod(f"probe-{node}", node, {"role": "client"}))
            pods.append(pod(f"hostport-{node}", node, {"role": "hostport"}, ports=host_ports))
        started = time.monotonic()
        for body in pods:
            self.core.create_namespaced_pod(ns, body)
        for body in pods:
            name = body["metadata"]["name"]
            until(lambda name=name: _ready(self.pod(name)), READY_TIMEOUT, f"pod {name} Ready")
        self.started["pods"] = time.monotonic() - started
        clash = pod(
            f"hostport-clash-{self.nodes[0]}",
            self.nodes[0],
            {"role": "clash"},
            ports=[{"containerPort": 8080, "hostPort": HOST_PORT, "protocol": "TCP"}],
        )
        self.core.create_namespaced_pod(ns, clash)
        until(
            lambda: self.pod(clash["metadata"]["name"]).status.phase in ("Failed", "Running"),
            30,
            "the clashing hostPort pod settled",
        )


def _ready(pod_object: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod_object.status.conditions or [])


@contextmanager
def service_lab(
    lab_name: str, ip_family: str = "ipv4", faults: tuple[str, ...] = (), nodes: int = 2
) -> Iterator[ServiceLab]:
    """`netlab up` (printed: its start time), the kit's workload, and `netlab down` after."""
    options = ["--nodes", str(nodes), "--ip-family", ip_family]
    for fault in faults:
        options += ["--fault", fault]
    started = time.monotonic()
    with booted_lab(lab_name, *options) as kubeconfig:
        boot = time.monotonic() - started
        with kube_api(kubeconfig) as api:
            lab = ServiceLab(
                name=lab_name,
                nodes=[f"node-{i}" for i in range(1, nodes + 1)],
                families={"ipv4": (4,), "ipv6": (6,), "dual": (4, 6)}[ip_family],
                core=client.CoreV1Api(api),
                discovery=client.DiscoveryV1Api(api),
            )
            lab.started["netlab up"] = boot
            lab.create_workload()
            print(
                f"lab {lab_name} ({ip_family}, faults {list(faults) or 'none'}): netlab up "
                f"{boot:.1f} s, {3 * nodes} pods Ready in {lab.started['pods']:.1f} s"
            )
            yield lab


# --- one observation of every behaviour -----------------------------------------------------


def _servers(outcomes: list[dict[str, str]]) -> set[str]:
    return {o["server"] for o in outcomes if "server" in o}


def observe(lab: ServiceLab, version: int) -> dict[str, str]:
    """Behaviour -> "ok" or what was seen instead, for IP ``version``."""
    seen: dict[str, str] = {}
    peers = [f"peer-{node}" for node in lab.nodes]
    vip = lab.cluster_ip(SERVICE, version)
    node_port = {p.protocol: p.node_port for p in lab.service(f"{SERVICE}-np").spec.ports}

    def to_node_ports(source: str, node: str, targets: list[str]) -> list[Request]:
        """From ``source`` ("pod" or "host") of ``node`` to each target node's InternalIP: the
        NodePort (TCP), then the hostPorts (TCP and UDP)."""
        ids = [f"{source} {node}->{target}" for target in targets]
        addresses = [lab.node_ip(target, version) for target in targets]
        return [
            Request(f"nodeport {id_}", "tcp", address, node_port["TCP"], tries=4)
            for id_, address in zip(ids, addresses, strict=True)
        ] + [
            Request(f"hostport {id_} {proto}", proto, address, port, tries=2)
            for id_, address in zip(ids, addresses, strict=True)
            for proto, port in (("tcp", HOST_PORT), ("udp", HOST_PORT + 1))
        ]

    batches: dict[str, list[Request]] = {}
    for node in lab.nodes:
        client_ns = lab.netns_of_pod(f"probe-{node}")
        batches[client_ns] = [
            Request(f"tcp {node}", "tcp", vip, 80, tries=16),
            Request(f"udp {node}", "udp", vip, 81, tries=16),
            Request(f"reject {node}", "tcp", lab.cluster_ip("netconform-empty", version), 80),
            *to_node_ports("pod", node, lab.nodes),
        ]
        batches[lab.netns_of_node(node)] = [
            Request(f"host tcp {node}", "tcp", vip, 80, tries=4),
            *to_node_ports("host", node, [target for target in lab.nodes if target != node]),
        ]
    batches[lab.netns_of_pod(peers[0])] = [
        Request("hairpin", "tcp", lab.cluster_ip("solo", version), 80, tries=3)
    ]
    started = time.monotonic()
    results = probe(batches)
    seen["probe seconds"] = f"{time.monotonic() - started:.1f}"
    expected_peers = set(peers)

    def judge(name: str, ok: bool, detail: object) -> None:
        seen[name] = "ok" if ok else f"saw {detail}"

    for proto in ("tcp", "udp"):
        ok = all(_servers(results[f"{proto} {node}"]) == expected_peers for node in lab.nodes)
        judge(f"clusterip {proto}", ok, {n: results[f"{proto} {n}"][:3] for n in lab.nodes})
    own = {node: lab.pod_ip(f"probe-{node}", version) for node in lab.nodes}
    snat = [
        o["peer"]
        for node in lab.nodes
        for proto in ("tcp", "udp")
        for o in results[f"{proto} {node}"]
        if "peer" in o and o["peer"] != own[node]
    ]
    judge("no snat", not snat, sorted(set(snat)))
    judge(
        "clusterip from nodes",
        all(_servers(results[f"host tcp {node}"]) for node in lab.nodes),
        {n: results[f"host tcp {n}"][:2] for n in lab.nodes},
    )
    judge(
        "hairpin",
        _servers(results["hairpin"]) == {peers[0]}
        and all("server" in o for o in results["hairpin"]),
        results["hairpin"],
    )
    judge(
        "reject",
        all(results[f"reject {node}"][0].get("error") == "ECONNREFUSED" for node in lab.nodes),
        {n: results[f"reject {n}"] for n in lab.nodes},
    )
    for target in lab.nodes:
        keys = [f"nodeport pod {node}->{target}" for node in lab.nodes]
        keys += [f"nodeport host {node}->{target}" for node in lab.nodes if node != target]
        judge(
            f"nodeport {target}",
            all(results[k] and all("server" in o for o in results[k]) for k in keys),
            {k: results[k][:1] for k in keys},
        )
        keys = [
            f"hostport {where} {node}->{target} {proto}"
            for proto in ("tcp", "udp")
            for where, node in [("pod", n) for n in lab.nodes]
            + [("host", n) for n in lab.nodes if n != target]
        ]
        judge(
            f"hostport {target}",
            all(_servers(results[k]) == {f"hostport-{target}"} for k in keys),
            {k: results[k][:1] for k in keys},
        )
    clash = lab.pod(f"hostport-clash-{lab.nodes[0]}").status
    judge(
        "hostport clash",
        clash.phase == "Failed"
        and clash.reason == "NodePorts"
        and clash.message
        == "Pod was rejected: Predicate NodePorts failed: node(s) didn't have free ports for "
        "the requested pod ports",
        (clash.phase, clash.reason, clash.message),
    )
    seen.update(_observe_names(lab, version))
    return seen


def _observe_names(lab: ServiceLab, version: int) -> dict[str, str]:
    """DNS (through the pod's own resolver) and the Service environment variables."""
    seen: dict[str, str] = {}
    client_pod = f"probe-{lab.nodes[0]}"
    family = "socket.AF_INET6" if version == 6 else "socket.AF_INET"
    names = [SERVICE, f"{SERVICE}.{lab.namespace}", f"{SERVICE}.{lab.namespace}.svc.cluster.local"]
    script = (
        "import json, socket\n"
        "out = {}\n"
        f"for name in {[*names, f'{SERVICE}-headless']!r}:\n"
        "    try:\n"
        f"        out[name] = sorted({{a[4][0] for a in socket.getaddrinfo(name, 80, {family}, socket.SOCK_STREAM)}})\n"
        "    except socket.gaierror as e:\n"
        "        out[name] = str(e)\n"
        "print(json.dumps(out))\n"
    )
    answers = json.loads(lab.exec(client_pod, ["python3", "-c", script]))
    wanted = {name: [lab.cluster_ip(SERVICE, version)] for name in names}
    wanted[f"{SERVICE}-headless"] = sorted(lab.pod_ip(f"peer-{n}", version) for n in lab.nodes)
    seen["dns"] = "ok" if answers == wanted else f"saw {answers}, wanted {wanted}"
    environment = dict(
        line.split("=", 1)
        for line in lab.exec(client_pod, ["printenv"]).splitlines()
        if "=" in line
    )
    primary = lab.service(SERVICE).spec.cluster_ip
    host = f"[{primary}]" if ":" in primary else primary
    wanted_env = {
        "NETCONFORM_PROBES_SERVICE_HOST": primary,
        "NETCONFORM_PROBES_SERVICE_PORT": "80",
        "NETCONFORM_PROBES_SERVICE_PORT_UDP": "81",
        "NETCONFORM_PROBES_PORT": f"tcp://{host}:80",
        "NETCONFORM_PROBES_PORT_81_UDP": f"udp://{host}:81",
        "NETCONFORM_PROBES_PORT_81_UDP_ADDR": primary,
        "KUBERNETES_SERVICE_HOST": lab.core.read_namespaced_service(
            "kubernetes", "default"
        ).spec.cluster_ip,
    }
    got = {k: environment.get(k) for k in wanted_env}
    seen["env"] = "ok" if got == wanted_env else f"saw {got}"
    return seen


def observe_readiness(lab: ServiceLab, version: int) -> str:
    """Turn the last node's backend unready: "ok" when no new connection reaches it while
    unready and it answers again once ready; else what was seen. Prints how long the
    EndpointSlice and the rules took."""
    target = f"peer-{lab.nodes[-1]}"
    vip = lab.cluster_ip(SERVICE, version)
    client_ns = lab.netns_of_pod(f"probe-{lab.nodes[0]}")
    lab.exec(target, ["touch", "/tmp/unready"])
    flipped = time.monotonic()
    until(lambda: lab.slice_ready(SERVICE, target) is False, 15, f"{target} ready: false")
    in_slice = time.monotonic() - flipped
    # The rules follow the slice within ~1 s; probe after that bound.
    until(lambda: time.monotonic() - flipped > 1.5, 5, "the settle time")
    unready = probe({client_ns: [Request("unready", "tcp", vip, 80, tries=16)]})["unready"]
    lab.exec(target, ["rm", "-f", "/tmp/unready"])
    until(lambda: lab.slice_ready(SERVICE, target) is True, 15, f"{target} ready: true")
    until(lambda: time.monotonic() - flipped > 1.5, 5, "the settle time")

    def back() -> bool:
        answered = probe({client_ns: [Request("back", "tcp", vip, 80, tries=12)]})["back"]
        return target in _servers(answered)

    came_back = eventually(back, SETTLE_TIMEOUT, interval=0.2)
    print(f"readiness: {target} ready: false in its EndpointSlice {in_slice:.2f} s after the flip")
    if target in _servers(unready):
        return f"saw the unready {target} answer: {unready}"
    if not came_back:
        return f"{target} never answered again once ready"
    return "ok"


def rule_update_latency(lab: ServiceLab) -> dict[str, float]:
    """Seconds from a Service's creation until every node's nat table has its rule, and from
    its deletion until the rule is gone everywhere (the API write, the proxy's sync of all
    nodes, iptables-restore); polled every 20 ms."""

    def everywhere(present: bool) -> bool:
        for node in lab.nodes:
            table = run_in_netns(lab.netns_of_node(node), ["iptables-save", "-t", "nat"]).stdout
            if table.count(f'"{lab.namespace}/latency:tcp cluster IP"') == 0 and present:
                return False
            if f'"{lab.namespace}/latency:tcp cluster IP"' in table and not present:
                return False
        return True

    def timed(present: bool) -> float:
        started = time.monotonic()
        Retrying(
            stop=stop_after_delay(SETTLE_TIMEOUT),
            wait=wait_fixed(0.02),
            retry=retry_if_result(lambda done: not done),
            reraise=True,
        )(lambda: everywhere(present))
        return time.monotonic() - started

    lab.core.create_namespaced_service(lab.namespace, service("latency", BACKEND))
    created = timed(True)
    lab.core.delete_namespaced_service("latency", lab.namespace)
    deleted = timed(False)
    return {"create": created, "delete": deleted}
