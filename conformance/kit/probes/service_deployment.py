"""The Service checks' part of a run's deployment: the Services (created before any probe pod,
so kubelet gives the pods their environment variables), the hostPort probes on every node
(an even host port H for TCP and H + 1 for UDP, chosen at random and chosen again on a node
whose kubelet refuses it for a port conflict), the pod that asks for a taken hostPort again,
and what the checks learn from the cluster: cluster IPs, NodePorts, the resolvers kubelet wrote
into the pods of every node (`conformance.kit.cluster.resolvers`), the nodes' InternalIPs.

Order (`conformance/conftest.py`): `create_services`, `start_hostport_probes`, the other probes
(`conformance.kit.probes.deploy.deploy_probes`), then `finish_service_probes`, which waits for the
hostPort probes (already starting meanwhile) and completes the `ProbeMap`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from conformance.kit.base.errors import ClusterError, ProbeCallError, ProbeDeploymentError
from conformance.kit.base.settings import Settings, Timeouts
from conformance.kit.cluster.api import call_api, describe_api_error, name_of
from conformance.kit.cluster.inventory import cluster_ips_of, list_nodes, pod_ips
from conformance.kit.cluster.labels import MANAGED_BY, MANAGED_BY_LABEL, RUN_LABEL
from conformance.kit.cluster.permissions import explain_forbidden
from conformance.kit.cluster.resolvers import NodeResolvers, Resolver, needs_node_resolver
from conformance.kit.cluster.waiting import wait_on_list
from conformance.kit.probes.client import ProbeClient, require_ok
from conformance.kit.probes.deploy import fatal_reason, host_ip
from conformance.kit.probes.lives import pod_ready
from conformance.kit.probes.model import (
    ROLE_HOSTPROBE,
    ROLE_PROBE,
    Probe,
    ProbeMap,
    hostport_probe,
    pod_name,
)
from conformance.kit.probes.parallel import in_parallel
from conformance.kit.probes.podspecs import hostport_pod
from conformance.kit.probes.services import (
    HOST_PORT_RANGE,
    NODEPORT_SERVICE,
    ServiceFacts,
    service_objects,
)

#: Host ports tried per node before the deployment gives up (each a random even port).
HOST_PORT_ATTEMPTS = 4
#: Name of the pod asking for the first node's hostPort again.
CLASH_ROLE = "hostport-clash"
#: Resolver reads (one ``info`` exec each) at once.
RESOLVER_READS = 16


# --- the Services --------------------------------------------------------------------------------


def refused_by_policy(exc: BaseException) -> str | None:
    """Why the API server refused an object for what it is (validation, an admission policy
    such as "no NodePorts here"), as opposed to who asks (RBAC) or a broken call; None when
    it is not such a refusal."""
    cause = exc.__cause__ if isinstance(exc, ClusterError) else exc
    if not isinstance(cause, ApiException) or cause.status not in (400, 403, 422):
        return None
    text = describe_api_error(cause)
    if cause.status == 403 and explain_forbidden(str(cause.body or cause.reason)):
        return None  # a missing RBAC permission: could not test, never "not supported"
    return text


def create_services(
    core: client.CoreV1Api, namespace: str, run_id: str, timeouts: Timeouts
) -> ServiceFacts:
    """Create the run's Services (`conformance.kit.probes.services.service_objects`) and say what the
    cluster made of them. A NodePort Service the API refuses for what it is leaves the NodePort
    checks skipped with the reason; any other failure is a `ProbeDeploymentError`."""
    labels = {MANAGED_BY_LABEL: MANAGED_BY, RUN_LABEL: run_id}
    cluster_ips: dict[str, tuple[str, ...]] = {}
    node_ports: dict[str, int] = {}
    node_port_skip = None
    for body in service_objects(namespace, labels):
        name = name_of(body)
        try:
            made = call_api(
                f"create Service {name} in {namespace}",
                core.create_namespaced_service,
                namespace,
                body,
                timeouts=timeouts,
            )
        except (ClusterError, ApiException) as exc:
            why = refused_by_policy(exc) if name == NODEPORT_SERVICE else None
            if why is None:
                raise ProbeDeploymentError(f"the Service checks' Service {name}: {exc}") from exc
            node_port_skip = f"the API server refused a NodePort Service ({name}): {why}"
            continue
        spec = made.spec or client.V1ServiceSpec()
        cluster_ips[name] = cluster_ips_of(spec)
        if name == NODEPORT_SERVICE:
            node_ports = {str(p.name): int(p.node_port) for p in spec.ports or [] if p.node_port}
    return ServiceFacts(
        cluster_ips=cluster_ips,
        node_ports=node_ports,
        node_port_skip=node_port_skip,
    )


# --- the hostPort probes -------------------------------------------------------------------------


def choose_host_port(rng: random.Random, taken: Sequence[int] = ()) -> int:
    """An even port H of `HOST_PORT_RANGE` (H for TCP, H + 1 for UDP), not one of ``taken``."""
    low, high = HOST_PORT_RANGE
    while True:
        port = rng.randrange(low, high + 1, 2)
        if port not in taken:
            return port


def port_conflict(pod: client.V1Pod) -> str | None:
    """kubelet's refusal of a pod whose host ports another pod of the node holds (phase
    Failed, reason ``NodePorts``: "node(s) didn't have free ports for the requested pod
    ports"); None for anything else."""
    status = pod.status
    if status is None or status.phase != "Failed":
        return None
    reason, message = status.reason or "", status.message or ""
    if "NodePorts" in reason or "HostPort" in reason or "free ports" in message:
        return f"{reason}: {message}".strip(": ")
    return None


@dataclass(frozen=True)
class HostPortProbes:
    """The hostPort probes under way: node -> (probe, its (TCP, UDP) host ports), and the
    refused attempts so far (pod -> kubelet's reason)."""

    probes: Mapping[str, tuple[Probe, tuple[int, int]]]
    refused: Mapping[str, str]
    attempt: int = 0


def _create_pods(
    core: client.CoreV1Api, namespace: str, pods: Sequence[client.V1Pod], timeouts: Timeouts
) -> None:
    def create(pod: client.V1Pod) -> str | None:
        try:
            call_api(
                f"create pod {name_of(pod)}",
                core.create_namespaced_pod,
                namespace,
                pod,
                timeouts=timeouts,
            )
        except (ClusterError, ApiException) as exc:
            return f"  {name_of(pod)}: {exc}"
        return None

    with ThreadPoolExecutor(max_workers=max(1, min(16, len(pods)))) as pool:
        failures = [f for f in pool.map(create, pods) if f]
    if failures:
        raise ProbeDeploymentError(
            "the API server refused hostPort probe pods (PodSecurity admission, quota, RBAC?):\n"
            + "\n".join(failures)
        )


def start_hostport_probes(
    core: client.CoreV1Api,
    namespace: str,
    run_id: str,
    nodes: Sequence[str],
    settings: Settings,
    rng: random.Random | None = None,
) -> HostPortProbes:
    """Create a hostPort probe on every node, all with one random host port (no waiting)."""
    rng = rng or random.Random()  # a port choice, not a secret
    port = choose_host_port(rng)
    probes = {node: (hostport_probe(node), (port, port + 1)) for node in nodes}
    _create_pods(
        core,
        namespace,
        [hostport_pod(p, ports, namespace, run_id, settings) for p, ports in probes.values()],
        settings.timeouts,
    )
    return HostPortProbes(probes=probes, refused={})


def _settle(
    core: client.CoreV1Api, namespace: str, names: Sequence[str], timeouts: Timeouts
) -> tuple[dict[str, client.V1Pod], dict[str, str]]:
    """Wait until each pod of ``names`` is Ready or refused for a port conflict: the pods,
    and the refused ones with kubelet's reason. `ProbeDeploymentError` when one fails
    otherwise, or at the deadline."""
    conflicts: dict[str, str] = {}

    def settled(pods: Mapping[str, client.V1Pod]) -> bool:
        conflicts.clear()
        waiting = False
        for name in names:
            pod = pods.get(name)
            if pod is None:
                waiting = True
                continue
            conflict = port_conflict(pod)
            if conflict is not None:
                conflicts[name] = conflict
                continue
            fatal = fatal_reason(pod)
            if fatal is not None:
                raise ProbeDeploymentError(f"hostPort probe {name} cannot start: {fatal}")
            waiting = waiting or not pod_ready(pod)
        return not waiting

    found = wait_on_list(
        f"pods in {namespace}",
        core.list_namespaced_pod,
        namespace,
        done=settled,
        timeout=timeouts.pods_ready,
        timeouts=timeouts,
    )
    if found is None:
        raise ProbeDeploymentError(
            f"hostPort probes not Ready after {timeouts.pods_ready:.0f}s: " + ", ".join(names)
        )
    return {name: found[name] for name in names}, dict(conflicts)


def wait_for_hostport_probes(
    core: client.CoreV1Api,
    namespace: str,
    run_id: str,
    started: HostPortProbes,
    settings: Settings,
    rng: random.Random | None = None,
) -> tuple[HostPortProbes, dict[str, client.V1Pod]]:
    """Wait until every hostPort probe is Ready; a node whose kubelet refuses its probe for a
    port conflict gets a new probe with another host port, up to `HOST_PORT_ATTEMPTS` in all.
    `ProbeDeploymentError` when a probe fails otherwise, or is still refused at the end."""
    timeouts = settings.timeouts
    rng = rng or random.Random()  # a port choice, not a secret
    current = started
    while True:
        nodes = {probe.name: node for node, (probe, _) in current.probes.items()}
        pods, conflicts = _settle(core, namespace, sorted(nodes), timeouts)
        if not conflicts:
            return current, pods
        refused = {**current.refused, **conflicts}
        attempt = current.attempt + 1
        if attempt >= HOST_PORT_ATTEMPTS:
            raise ProbeDeploymentError(
                f"kubelet refused the hostPort probes' ports {HOST_PORT_ATTEMPTS} times: "
                + "; ".join(f"{pod}: {why}" for pod, why in sorted(refused.items()))
            )
        taken = [ports[0] for _, ports in current.probes.values()]
        retried = {}
        for name in conflicts:
            port = choose_host_port(rng, taken)
            retried[nodes[name]] = (hostport_probe(nodes[name], attempt), (port, port + 1))
        _create_pods(
            core,
            namespace,
            [hostport_pod(p, ports, namespace, run_id, settings) for p, ports in retried.values()],
            timeouts,
        )
        current = HostPortProbes(
            probes={**current.probes, **retried}, refused=refused, attempt=attempt
        )


def clash_probe(first: Probe) -> Probe:
    """The pod asking for ``first``'s TCP host port again, on its node."""
    return replace(first, name=pod_name(CLASH_ROLE, first.node), pod_ips=(), host_ip="")


def start_clash(
    core: client.CoreV1Api,
    namespace: str,
    run_id: str,
    first: Probe,
    ports: tuple[int, int],
    settings: Settings,
) -> str:
    """Create the clash pod (after ``first`` runs) and wait, at most `Timeouts.hostport_clash`,
    until its node has decided (refused it, or run it); its name."""
    clash = clash_probe(first)
    _create_pods(
        core,
        namespace,
        [hostport_pod(clash, ports, namespace, run_id, settings, tcp_only=True)],
        settings.timeouts,
    )

    def decided(pods: Mapping[str, client.V1Pod]) -> bool:
        pod = pods.get(clash.name)
        status = pod.status if pod is not None else None
        return status is not None and status.phase not in (None, "Pending")

    # Still pending at the deadline (e.g. its sandbox cannot be made): the check reads it then.
    wait_on_list(
        f"pods in {namespace}",
        core.list_namespaced_pod,
        namespace,
        done=decided,
        timeout=settings.timeouts.hostport_clash,
        timeouts=settings.timeouts,
    )
    return clash.name


# --- completing the probe map --------------------------------------------------------------------


def read_resolvers(
    probe_client: ProbeClient, probe_map: ProbeMap, nodes: Sequence[str]
) -> dict[str, NodeResolvers]:
    """Node -> the resolvers kubelet wrote there (`conformance.kit.cluster.resolvers`): every node's
    ClusterFirst probe pod's, and the node's own (its Default-policy hostNetwork probe's) where
    the first is not a cluster-first configuration. One ``info`` per pod, all nodes at once; a
    pod that cannot be asked costs only its own node's DNS checks."""
    namespace = probe_map.namespace
    found: dict[str, NodeResolvers] = {}

    def resolver_of(own: ProbeClient, probe: Probe) -> Resolver | None:
        container = probe.container().name
        answer = require_ok(
            own.call(probe.name, container, [{"op": "info"}])[0],
            pod=probe.name,
            container=container,
            what="read the pod's resolver configuration",
        )
        return Resolver.from_info(answer.get("resolver"))

    def read_pod(own: ProbeClient, node: str, probe: Probe) -> None:
        found[node] = NodeResolvers(pod_name=probe.name, pod=resolver_of(own, probe))

    def pod_unreadable(probe: Probe, exc: ProbeCallError) -> None:
        found[probe.node] = NodeResolvers(pod_name=probe.name, error=str(exc))

    pods = {node: probe_map.get(ROLE_PROBE, node) for node in nodes}
    in_parallel(probe_client, pods, read_pod, pod_unreadable, max_parallel=RESOLVER_READS)
    hosts = {
        node: probe_map.get(ROLE_HOSTPROBE, node)
        for node in nodes
        if needs_node_resolver(found[node], namespace)
    }

    def read_node(own: ProbeClient, node: str, probe: Probe) -> None:
        found[node] = replace(found[node], node_pod_name=probe.name, node=resolver_of(own, probe))

    def node_unreadable(probe: Probe, exc: ProbeCallError) -> None:
        found[probe.node] = replace(found[probe.node], node_pod_name=probe.name, error=str(exc))

    in_parallel(probe_client, hosts, read_node, node_unreadable, max_parallel=RESOLVER_READS)
    return found


def internal_ips(
    core: client.CoreV1Api, nodes: Sequence[str], timeouts: Timeouts
) -> dict[str, tuple[str, ...]]:
    """Node -> its InternalIP addresses."""
    found = {}
    for node in list_nodes(core, timeouts):
        if name_of(node) in nodes:
            addresses = (node.status.addresses if node.status else None) or []
            found[name_of(node)] = tuple(
                str(a.address) for a in addresses if a.type == "InternalIP" and a.address
            )
    return found


def finish_service_probes(
    core: client.CoreV1Api,
    probe_map: ProbeMap,
    facts: ServiceFacts,
    started: HostPortProbes,
    run_id: str,
    settings: Settings,
) -> ProbeMap:
    """``probe_map`` with the hostPort probes (Ready, with IPs) and the Service facts: host
    ports, the clash pod, the resolvers kubelet wrote on every node, the nodes' InternalIPs."""
    namespace = probe_map.namespace
    timeouts = settings.timeouts
    done, ready = wait_for_hostport_probes(core, namespace, run_id, started, settings)
    hostports = [
        replace(probe, pod_ips=pod_ips(ready[probe.name]), host_ip=host_ip(ready[probe.name]))
        for probe, _ in done.probes.values()
    ]
    nodes = list(done.probes)
    first_probe, first_ports = done.probes[nodes[0]]
    clash = start_clash(core, namespace, run_id, first_probe, first_ports, settings)
    resolvers = read_resolvers(ProbeClient(core, namespace, timeouts), probe_map, nodes)
    return replace(
        probe_map,
        probes=(*probe_map.probes, *hostports),
        services=replace(
            facts,
            host_ports={probe.name: ports for probe, ports in done.probes.values()},
            clash_pod=clash,
            resolvers=resolvers,
            internal_ips=internal_ips(core, nodes, timeouts),
        ),
    )
