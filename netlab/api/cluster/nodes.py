"""The node registry: each node's kubelet (the lab's own, behind ``KubeletAPI``) and the Node
object it registers, as kubelet's node status setters (pkg/kubelet/nodestatus) write it."""

from __future__ import annotations

from collections.abc import Callable

from netlab.api.discovery import go_arch
from netlab.api.meta import new_uid, now_rfc3339
from netlab.api.store import Store
from netlab.contract import JSONDict, KubeletAPI, NodeInfo

#: The node lifecycle controller's taint of a node whose Ready condition is False.
NOT_READY_TAINT = "node.kubernetes.io/not-ready"


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


class NodeRegistry:
    """The nodes' kubelets by node name, and their Node objects in the store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.kubelets: dict[str, KubeletAPI] = {}

    def register(self, kubelet: KubeletAPI) -> None:
        """Store the node's object (keeping its uid and age on re-registration)."""
        self.kubelets[kubelet.node.name] = kubelet
        existing = self.store.get("nodes", "", kubelet.node.name)
        obj = node_object(kubelet.node)
        if existing:
            obj["metadata"]["uid"] = existing["metadata"]["uid"]
            obj["metadata"]["creationTimestamp"] = existing["metadata"]["creationTimestamp"]
        self.store.put("nodes", obj, created=existing is None)

    def kubelet_of(self, node_name: str) -> KubeletAPI | None:
        return self.kubelets.get(node_name)
