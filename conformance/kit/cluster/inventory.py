"""What nodes, pods and Services say: addresses, podCIDRs, pod networks' families, Service
cluster IPs and the families the ``kubernetes`` Service declares. Which nodes a run tests is
`conformance.kit.cluster.nodes`; the run's plan, `conformance.kit.cluster.discovery`."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from conformance.kit.base.settings import Timeouts
from conformance.kit.cluster.api import call_api, name_of

# --- nodes ---------------------------------------------------------------------------------


def node_addresses(node: client.V1Node) -> tuple[str, ...]:
    """Every address the node reports, InternalIP first."""
    addresses = (node.status.addresses if node.status else None) or []
    ordered = sorted(addresses, key=lambda a: a.type != "InternalIP")
    return tuple(str(a.address) for a in ordered)


def node_ip_addresses(node: client.V1Node) -> tuple[str, ...]:
    """The node's addresses that are IP literals (hostnames dropped), InternalIP first."""
    ips = []
    for address in node_addresses(node):
        try:
            ips.append(str(ipaddress.ip_address(address)))
        except ValueError:
            continue
    return tuple(ips)


def node_pod_cidrs(node: client.V1Node) -> tuple[str, ...]:
    """``spec.podCIDRs`` (or the single ``spec.podCIDR``), possibly empty."""
    spec = node.spec
    if spec is None:
        return ()
    if spec.pod_cidrs:
        return tuple(str(c) for c in spec.pod_cidrs)
    return (str(spec.pod_cidr),) if spec.pod_cidr else ()


def list_nodes(core: client.CoreV1Api, timeouts: Timeouts) -> list[client.V1Node]:
    """Every node of the cluster."""
    result = call_api("list nodes", core.list_node, timeouts=timeouts)
    return list(result.items)


def list_pods_all_namespaces(core: client.CoreV1Api, timeouts: Timeouts) -> list[client.V1Pod]:
    """Every pod of the cluster."""
    result = call_api(
        "list pods in all namespaces", core.list_pod_for_all_namespaces, timeouts=timeouts
    )
    return list(result.items)


def pod_ips(pod: client.V1Pod) -> tuple[str, ...]:
    """``status.podIPs`` (or the single ``status.podIP``), possibly empty."""
    status = pod.status
    if status is None:
        return ()
    if status.pod_ips:
        return tuple(str(p.ip) for p in status.pod_ips if p.ip)
    return (str(status.pod_ip),) if status.pod_ip else ()


def pod_network_families(pods: Sequence[client.V1Pod]) -> tuple[int, ...]:
    """IP versions (4, 6) the pods in the pod network hold (hostNetwork pods left out)."""
    versions: set[int] = set()
    for pod in pods:
        if pod.spec is not None and pod.spec.host_network:
            continue
        for ip in pod_ips(pod):
            versions.add(ipaddress.ip_address(ip).version)
    return tuple(sorted(versions))


def _kubernetes_service_spec(
    core: client.CoreV1Api, timeouts: Timeouts
) -> client.V1ServiceSpec | None:
    """The ``default/kubernetes`` Service's spec; None when the Service (or its spec) does not
    exist. A refusal (403...) raises `ClusterError`."""
    try:
        svc = call_api(
            "read service default/kubernetes",
            core.read_namespaced_service,
            "kubernetes",
            "default",
            timeouts=timeouts,
        )
    except ApiException:  # 404: call_api re-raises it as it is
        return None
    return svc.spec


def cluster_ips_of(spec: client.V1ServiceSpec) -> tuple[str, ...]:
    """A Service spec's cluster IPs (``clusterIPs``, else ``clusterIP``; not ``None``, the
    headless Service's)."""
    ips = spec.cluster_ips or ([spec.cluster_ip] if spec.cluster_ip else [])
    return tuple(str(ip) for ip in ips if ip and ip != "None")


def service_cluster_ips(core: client.CoreV1Api, timeouts: Timeouts) -> tuple[str, ...]:
    """ClusterIPs of ``default/kubernetes``: addresses known to lie in the service range."""
    spec = _kubernetes_service_spec(core, timeouts)
    return () if spec is None else cluster_ips_of(spec)


def kubernetes_service_families(core: client.CoreV1Api, timeouts: Timeouts) -> tuple[str, ...]:
    """The ``default/kubernetes`` Service's ``spec.ipFamilies`` (``IPv4``, ``IPv6``), else its
    cluster IPs (clusters before ipFamilies); empty when the Service does not exist. A refusal
    (403...) raises `ClusterError`: which families the cluster declares would be unknown."""
    spec = _kubernetes_service_spec(core, timeouts)
    if spec is None:
        return ()
    if spec.ip_families:
        return tuple(str(f) for f in spec.ip_families)
    return cluster_ips_of(spec)


def declared_service_cidrs(api: client.ApiClient, timeouts: Timeouts) -> tuple[str, ...]:
    """The ranges of the cluster's ServiceCIDR objects (networking.k8s.io/v1, Kubernetes
    1.33+), empty where the API is not served (404); a refusal (403...) raises `ClusterError`,
    as the families they declare would be unknown."""
    try:
        listed = call_api(
            "list servicecidrs.networking.k8s.io",
            client.NetworkingV1Api(api).list_service_cidr,
            timeouts=timeouts,
        )
    except ApiException:  # 404: not served
        return ()
    cidrs: list[str] = []
    for item in listed.items or []:
        cidrs.extend(str(c) for c in (item.spec.cidrs if item.spec else None) or [])
    return tuple(sorted(set(cidrs)))


def _container_state(status: client.V1ContainerStatus) -> str:
    state = status.state
    if state is None:
        return "unknown"
    if state.waiting is not None:
        return (
            f"waiting ({state.waiting.reason}: {state.waiting.message or ''})".rstrip(": )") + ")"
        )
    if state.terminated is not None:
        t = state.terminated
        return f"terminated ({t.reason}, exit {t.exit_code}: {t.message or ''})".rstrip(": )") + ")"
    if state.running is not None:
        return "running"
    return "unknown"


def describe_pod(pod: client.V1Pod) -> str:
    """One paragraph on a pod: node, phase, IPs, conditions, each container's state and restarts."""
    status = pod.status or client.V1PodStatus()
    node = pod.spec.node_name if pod.spec else None
    ips = ",".join(p.ip for p in status.pod_ips or []) or status.pod_ip or "-"
    lines = [f"pod {name_of(pod)} node={node} phase={status.phase} ips={ips}"]
    for condition in status.conditions or []:
        if condition.status != "True":
            lines.append(
                f"  condition {condition.type}={condition.status} "
                f"{condition.reason or ''} {condition.message or ''}".rstrip()
            )
    for cs in (status.init_container_statuses or []) + (status.container_statuses or []):
        lines.append(
            f"  container {cs.name}: {_container_state(cs)} ready={cs.ready} "
            f"restarts={cs.restart_count}"
        )
    return "\n".join(lines)
