"""The cluster's behaviour behind the REST surface: nodes, scheduling and starting pods,
graceful pod deletion, namespace termination, and events."""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import logging
import secrets
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from netlab.api.discovery import go_arch
from netlab.api.endpointslices import EndpointSliceController
from netlab.api.faults import FaultSwitch, parse_api_faults
from netlab.api.kubeadm import kubeadm_config
from netlab.api.meta import new_uid, now_rfc3339
from netlab.api.rootca import RootCAPublisher
from netlab.api.scheduler import pick_node
from netlab.api.serviceaccounts import ServiceAccountController
from netlab.api.services import ServiceRegistry
from netlab.api.store import Store, Watcher
from netlab.contract import KubeletAPI, NodeInfo
from netlab.spec import LabSpec

JSONDict = dict[str, Any]
log = logging.getLogger(__name__)

INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
KUBERNETES_SERVICE_REPAIR_DELAY = 1.0  # seconds until a deleted default/kubernetes is back
EVENT_LIMIT = 5_000  # oldest events are dropped beyond this, like the real event TTL
# Pod conditions the control plane sets, kept when a kubelet reports a status without them.
CONTROL_PLANE_CONDITIONS = ("PodScheduled", "DisruptionTarget")
#: The node lifecycle controller's taint of a node whose Ready condition is False.
NOT_READY_TAINT = "node.kubernetes.io/not-ready"


def namespace_object(name: str) -> JSONDict:
    return {
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": new_uid(),
            "creationTimestamp": now_rfc3339(),
            "labels": {"kubernetes.io/metadata.name": name},
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


def kubernetes_service(spec: LabSpec) -> JSONDict:
    """default/kubernetes as kube-apiserver publishes it: the first host of the primary service
    range, single-stack also on dual-stack clusters (the apiserver creates it with one
    clusterIP), https 443 -> 6443. The lab serves the object; nothing routes to it."""
    cluster_ips = [str(ipaddress.ip_network(spec.service_cidrs[0])[1])]
    families = [f"IPv{ipaddress.ip_address(ip).version}" for ip in cluster_ips]
    return {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {
            "name": "kubernetes",
            "namespace": "default",
            "uid": new_uid(),
            "creationTimestamp": now_rfc3339(),
            "labels": {"component": "apiserver", "provider": "kubernetes"},
        },
        "spec": {
            "ports": [{"name": "https", "protocol": "TCP", "port": 443, "targetPort": 6443}],
            "clusterIP": cluster_ips[0],
            "clusterIPs": cluster_ips,
            "type": "ClusterIP",
            "sessionAffinity": "None",
            "ipFamilies": families,
            "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster",
        },
        "status": {"loadBalancer": {}},
    }


def ready_condition(
    info: NodeInfo, condition: Callable[[str, str, str, str], JSONDict]
) -> JSONDict:
    """The Ready condition as kubelet's ReadyCondition setter writes it: True, or False with
    reason KubeletNotReady and the runtime's errors joined (pkg/kubelet/nodestatus)."""
    if info.network_errors:
        return condition("Ready", "False", "KubeletNotReady", ",".join(info.network_errors))
    return condition("Ready", "True", "KubeletReady", "kubelet is posting ready status")


def node_object(info: NodeInfo) -> JSONDict:
    now = now_rfc3339()
    arch = go_arch()
    labels = {
        "kubernetes.io/arch": arch,
        "kubernetes.io/hostname": info.name,
        "kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": arch,
        "beta.kubernetes.io/os": "linux",
        **dict(info.labels),
    }
    capacity = {"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "100Gi"}

    def condition(type_: str, status: str, reason: str, message: str) -> JSONDict:
        return {
            "type": type_,
            "status": status,
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
            "reason": reason,
            "message": message,
        }

    spec: JSONDict = {
        "podCIDR": info.pod_cidrs[0] if info.pod_cidrs else "",
        "podCIDRs": list(info.pod_cidrs),
    }
    taints = [dict(t) for t in info.taints]
    if info.network_errors:
        # The node lifecycle controller's taints of a node whose Ready condition is False: the
        # NoSchedule one (TaintNodesByCondition) and the NoExecute one (taint-based eviction).
        taints += [
            {"key": NOT_READY_TAINT, "effect": "NoSchedule"},
            {"key": NOT_READY_TAINT, "effect": "NoExecute", "timeAdded": now},
        ]
    if taints:
        spec["taints"] = taints
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": info.name,
            "uid": new_uid(),
            "creationTimestamp": now,
            "labels": labels,
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": spec,
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                condition(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                ),
                condition(
                    "DiskPressure",
                    "False",
                    "KubeletHasNoDiskPressure",
                    "kubelet has no disk pressure",
                ),
                condition(
                    "PIDPressure",
                    "False",
                    "KubeletHasSufficientPID",
                    "kubelet has sufficient PID available",
                ),
                ready_condition(info, condition),
            ],
            # Every family's address, primary first, then the hostname, as the kubelet lists them.
            "addresses": [
                *({"type": "InternalIP", "address": address} for address in info.addresses),
                {"type": "Hostname", "address": info.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": info.kernel_version,
                "osImage": info.os_image,
                "containerRuntimeVersion": info.container_runtime_version,
                "kubeletVersion": info.kubelet_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": arch,
            },
        },
    }


class Cluster:
    """Owns the store and the node agents; every state change goes through here."""

    def __init__(self, store: Store, spec: LabSpec, switch: FaultSwitch | None = None) -> None:
        self.store = store
        self.switch = switch or FaultSwitch(parse_api_faults(spec.api_faults))
        self.service_accounts = ServiceAccountController(store, self.switch)
        self.services = ServiceRegistry(store, spec)
        self.endpoint_slices = EndpointSliceController(store)
        self.root_ca = RootCAPublisher(store)
        self.on_pod_created: list[Callable[[JSONDict], None]] = []
        self.agents: dict[str, KubeletAPI] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._uids: dict[str, tuple[str, str]] = {}  # pod uid -> (namespace, name)
        self._events: list[tuple[str, str]] = []  # (namespace, name), oldest first
        for name in INITIAL_NAMESPACES:
            store.put("namespaces", namespace_object(name), created=True)
            self.service_accounts.ensure(name)  # a cluster that has run a while has them
        self._spec = spec
        store.put("services", kubernetes_service(spec), created=True)
        store.put("configmaps", kubeadm_config(spec), created=True)  # the service range, by kubeadm

    # background work
    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    def start_controllers(self, ca_pem: str | None = None) -> None:
        """Controllers that run on the event loop: the EndpointSlice controller, and with the
        API server's CA (``ca_pem``; none without TLS) the root CA publisher."""
        self.endpoint_slices.start()
        if ca_pem is not None:
            self.root_ca.start(ca_pem)

    async def stop(self) -> None:
        self.service_accounts.stop()
        await self.endpoint_slices.stop()
        await self.root_ca.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # in-process consumers of changes (the lab's proxy and cluster DNS)
    def follow(self, resources: Sequence[str], callback: Callable[[], None]) -> None:
        """Call ``callback`` on the loop after changes to any of ``resources``: once per batch
        of queued events, and again if the store ever drops the subscription."""
        for resource in resources:
            # Subscribed now, not when the task first runs: no change made meanwhile is missed.
            watcher = self.store.watch(resource, None, None)
            self.spawn(self._follow(resource, callback, watcher))

    async def _follow(self, resource: str, callback: Callable[[], None], watcher: Watcher) -> None:
        while True:
            try:
                while await watcher.queue.get() is not None:
                    while not watcher.queue.empty():
                        if watcher.queue.get_nowait() is None:
                            break
                    callback()
            finally:
                self.store.unwatch(watcher)
            callback()
            watcher = self.store.watch(resource, None, None)

    def publish(self, resource: str, obj: JSONDict) -> JSONDict:
        """Store an object the lab itself makes (the kube-dns Service and its EndpointSlice),
        as a create through the API would: metadata, and a Service's defaults and allocation."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta["uid"] = new_uid()
        meta["creationTimestamp"] = now_rfc3339()
        if resource == "services":
            obj = self.services.create(obj)
        existing = self.store.get(resource, meta.get("namespace", ""), meta["name"])
        return self.store.put(resource, obj, created=existing is None)

    # nodes
    def register_node(self, agent: KubeletAPI) -> None:
        self.agents[agent.node.name] = agent
        existing = self.store.get("nodes", "", agent.node.name)
        obj = node_object(agent.node)
        if existing:
            obj["metadata"]["uid"] = existing["metadata"]["uid"]
            obj["metadata"]["creationTimestamp"] = existing["metadata"]["creationTimestamp"]
        self.store.put("nodes", obj, created=existing is None)
        # A new node may fit pods that were unschedulable so far.
        for pod in self.store.list("pods"):
            if not pod["spec"].get("nodeName") and not pod["metadata"].get("deletionTimestamp"):
                self.spawn(
                    self.schedule_and_start(pod["metadata"]["namespace"], pod["metadata"]["name"])
                )

    # pods
    def pod_by_uid(self, uid: str) -> JSONDict | None:
        where = self._uids.get(uid)
        return self.store.get("pods", *where) if where else None

    def pod_created(self, pod: JSONDict) -> None:
        self._uids[pod["metadata"]["uid"]] = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        self.spawn(self.schedule_and_start(pod["metadata"]["namespace"], pod["metadata"]["name"]))
        for listener in list(self.on_pod_created):
            listener(pod)

    # controllers' hooks on writes made through the API
    def namespace_created(self, name: str) -> None:
        self.service_accounts.namespace_added(name)

    def object_removed(self, resource: str, namespace: str, name: str) -> None:
        if resource == "serviceaccounts":
            self.service_accounts.account_removed(namespace, name)
        elif resource == "services" and (namespace, name) == ("default", "kubernetes"):
            # kube-apiserver's bootstrap controller puts it back (within its repair interval).
            asyncio.get_running_loop().call_later(
                KUBERNETES_SERVICE_REPAIR_DELAY, self._ensure_kubernetes_service
            )

    def _ensure_kubernetes_service(self) -> None:
        if self.store.get("services", "default", "kubernetes") is None:
            self.store.put("services", kubernetes_service(self._spec), created=True)

    def _set_condition(self, status: JSONDict, condition: JSONDict) -> None:
        conditions = [
            c for c in status.get("conditions") or [] if c.get("type") != condition["type"]
        ]
        status["conditions"] = (
            [condition, *conditions]
            if condition["type"] == "PodScheduled"
            else [*conditions, condition]
        )

    async def schedule_and_start(self, namespace: str, name: str) -> None:
        pod = self.store.get("pods", namespace, name)
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return
        node_name = pod["spec"].get("nodeName")
        if not node_name:
            counts: dict[str, int] = {}
            for other in self.store.list("pods"):
                bound = other["spec"].get("nodeName")
                if bound:
                    counts[bound] = counts.get(bound, 0) + 1
            node_name, why = pick_node(pod, self.store.list("nodes"), counts)
            pod = copy.deepcopy(pod)
            scheduled: JSONDict = {
                "type": "PodScheduled",
                "status": "True",
                "lastProbeTime": None,
                "lastTransitionTime": now_rfc3339(),
            }
            if node_name is None:
                scheduled.update(status="False", reason="Unschedulable", message=why)
                already = any(
                    c.get("reason") == "Unschedulable"
                    for c in pod["status"].get("conditions") or []
                )
                self._set_condition(pod["status"], scheduled)
                self.store.put("pods", pod, created=False)
                if not already:
                    self.record_event(
                        pod, "Warning", "FailedScheduling", why, component="default-scheduler"
                    )
                return
            pod["spec"]["nodeName"] = node_name
            self._set_condition(pod["status"], scheduled)
            pod = self.store.put("pods", pod, created=False)
            self.record_event(
                pod,
                "Normal",
                "Scheduled",
                f"Successfully assigned {namespace}/{name} to {node_name}",
                component="default-scheduler",
            )
        elif not any(
            c.get("type") == "PodScheduled" for c in pod["status"].get("conditions") or []
        ):
            pod = copy.deepcopy(pod)
            self._set_condition(
                pod["status"],
                {
                    "type": "PodScheduled",
                    "status": "True",
                    "lastProbeTime": None,
                    "lastTransitionTime": now_rfc3339(),
                },
            )
            pod = self.store.put("pods", pod, created=False)
        agent = self.agents.get(node_name)
        if agent is None:
            return  # bound to a node that has no agent (yet): stays Pending, like a real cluster
        try:
            await agent.start_pod(copy.deepcopy(pod))
        except Exception as error:  # the agent's failure becomes an event, never a crash
            log.exception("start_pod %s/%s failed", namespace, name)
            self.record_event(
                pod, "Warning", "FailedCreatePodSandBox", f"Failed to create pod sandbox: {error}"
            )

    def pod_status_changed(self, uid: str, status: Mapping[str, Any]) -> None:
        pod = self.pod_by_uid(uid)
        if pod is None:
            return
        new = copy.deepcopy(dict(status))
        old_status = pod.get("status", {})
        # Keep what the control plane owns if the agent's status leaves it out.
        types = {c.get("type") for c in new.get("conditions") or []}
        carried = [
            c
            for c in old_status.get("conditions") or []
            if c.get("type") in CONTROL_PLANE_CONDITIONS and c.get("type") not in types
        ]
        if carried:
            new["conditions"] = carried + list(new.get("conditions") or [])
        new.setdefault("qosClass", old_status.get("qosClass", "BestEffort"))
        self.store.put("pods", {**pod, "status": new}, created=False)

    def delete_pod(self, pod: JSONDict, grace: int | None) -> JSONDict:
        """Mark ``pod`` terminating (MODIFIED) and stop it in the background; returns it."""
        if grace is None:
            grace = int(pod["spec"].get("terminationGracePeriodSeconds", 30))
        if pod["metadata"].get("deletionTimestamp"):
            return pod
        when = datetime.now(UTC) + timedelta(seconds=grace)
        marked = copy.deepcopy(pod)
        marked["metadata"]["deletionTimestamp"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        marked["metadata"]["deletionGracePeriodSeconds"] = grace
        marked = self.store.put("pods", marked, created=False)
        self.spawn(self._stop_pod(marked, grace))
        return marked

    def evict_pod(self, pod: JSONDict, grace: int | None) -> JSONDict:
        """What the Eviction subresource does once no disruption budget objects: mark the pod
        DisruptionTarget (Kubernetes 1.31), then delete it gracefully."""
        conditions = pod.get("status", {}).get("conditions") or []
        if not any(c.get("type") == "DisruptionTarget" for c in conditions):
            marked = copy.deepcopy(pod)
            self._set_condition(
                marked.setdefault("status", {}),
                {
                    "type": "DisruptionTarget",
                    "status": "True",
                    "lastProbeTime": None,
                    "lastTransitionTime": now_rfc3339(),
                    "reason": "EvictionByEvictionAPI",
                    "message": "Eviction API: evicting",
                },
            )
            pod = self.store.put("pods", marked, created=False)
        return self.delete_pod(pod, grace)

    async def _stop_pod(self, pod: JSONDict, grace: int) -> None:
        meta = pod["metadata"]
        agent = self.agents.get(pod["spec"].get("nodeName") or "")
        if agent is not None:
            try:
                await agent.stop_pod(meta["uid"], grace)
            except Exception:  # a failing agent must not leave the pod undeletable
                log.exception("stop_pod %s/%s failed", meta["namespace"], meta["name"])
        self.store.remove("pods", meta["namespace"], meta["name"])
        self._uids.pop(meta["uid"], None)

    # namespaces
    def delete_namespace(self, namespace: JSONDict) -> JSONDict:
        if namespace.get("status", {}).get("phase") == "Terminating":
            return namespace
        marked = copy.deepcopy(namespace)
        marked["metadata"]["deletionTimestamp"] = now_rfc3339()
        marked["status"] = {"phase": "Terminating"}
        marked = self.store.put("namespaces", marked, created=False)
        self.spawn(self._finalize_namespace(marked["metadata"]["name"]))
        return marked

    async def _finalize_namespace(self, name: str) -> None:
        for pod in self.store.list("pods", name):
            self.delete_pod(pod, None)
        # Wait for the pods' DELETED events through a watch, not by polling.
        watcher = self.store.watch("pods", name, None)
        try:
            while self.store.list("pods", name):
                if await watcher.queue.get() is None:
                    break
        finally:
            self.store.unwatch(watcher)
        for resource in (
            "configmaps",
            "events",
            "services",
            "endpointslices",
            "serviceaccounts",
            "networkpolicies",
        ):
            for obj in self.store.list(resource, name):
                self.store.remove(resource, name, obj["metadata"]["name"])
        self.store.remove("namespaces", "", name)

    # events
    def record_event(
        self, pod: JSONDict, type_: str, reason: str, message: str, *, component: str = "kubelet"
    ) -> None:
        meta = pod["metadata"]
        now = now_rfc3339()
        node = pod.get("spec", {}).get("nodeName", "")
        event: JSONDict = {
            "kind": "Event",
            "apiVersion": "v1",
            "metadata": {
                "name": f"{meta['name']}.{secrets.token_hex(8)}",
                "namespace": meta["namespace"],
                "uid": new_uid(),
                "creationTimestamp": now,
            },
            "involvedObject": {
                "kind": "Pod",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
                "apiVersion": "v1",
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "reason": reason,
            "message": message,
            "source": {
                "component": component,
                **({"host": node} if component == "kubelet" and node else {}),
            },
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": type_,
            "eventTime": None,
            "reportingComponent": component,
            "reportingInstance": node if component == "kubelet" else "",
        }
        if self.store.get("namespaces", "", meta["namespace"]) is None:
            return
        self.store.put("events", event, created=True)
        self._events.append((meta["namespace"], event["metadata"]["name"]))
        while len(self._events) > EVENT_LIMIT:
            self.store.remove("events", *self._events.pop(0))

    def record_pod_event(self, uid: str, type_: str, reason: str, message: str) -> None:
        pod = self.pod_by_uid(uid)
        if pod is not None:
            self.record_event(pod, type_, reason, message)
