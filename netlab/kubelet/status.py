"""A pod's v1 PodStatus, computed as kubelet computes it: the phase (``getPhase``), the five
conditions, container states and the pod's IPs.

The ``wrong-self-ip`` fault lives here: the IPs the API is told differ from the pod's own.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from typing import Any

from netlab.contract import JSONDict, NodeInfo
from netlab.dataplane.runtime import now_rfc3339
from netlab.kubelet.pods import ContainerRecord, PodRecord

WRONG_SELF_IP_FAULT = "wrong-self-ip"
CONDITION_ORDER = (
    "PodReadyToStartContainers",
    "Initialized",
    "Ready",
    "ContainersReady",
    "PodScheduled",
)


def qos_class(pod_spec: Mapping[str, Any]) -> str:
    """Guaranteed / Burstable / BestEffort from requests and limits, as the API computes it."""
    containers = (pod_spec.get("initContainers") or []) + (pod_spec.get("containers") or [])
    any_set = False
    guaranteed = True
    for container in containers:
        resources = container.get("resources") or {}
        requests = resources.get("requests") or {}
        limits = resources.get("limits") or {}
        if any(k in requests or k in limits for k in ("cpu", "memory")):
            any_set = True
        for kind in ("cpu", "memory"):
            if kind not in limits or (kind in requests and requests[kind] != limits[kind]):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def container_status(container: ContainerRecord) -> JSONDict:
    """The v1 ContainerStatus of one container."""
    image_digest = hashlib.sha256(container.image.encode()).hexdigest()
    status: JSONDict = {
        "name": container.name,
        "state": container.state,
        "lastState": container.last_state,
        "ready": container.ready,
        "restartCount": container.restart_count,
        "image": container.image,
        "imageID": f"sha256:{image_digest}",
        # An app container is started once its startup probe succeeded (or it has none).
        "started": "running" in container.state and (container.started or container.init),
    }
    if container.container_id:
        status["containerID"] = f"runc://{container.container_id}"
    return status


def pod_phase(record: PodRecord) -> str:
    """kubelet's getPhase."""
    if record.final_phase is not None:
        return record.final_phase
    if not record.initialized:
        return "Pending"
    running = stopped = succeeded = waiting = 0
    for container in record.containers:
        state = container.state
        if "running" in state:
            running += 1
        elif "terminated" in state:
            stopped += 1
            succeeded += state["terminated"].get("exitCode") == 0
        elif "terminated" in container.last_state:
            stopped += 1
        else:
            waiting += 1
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if stopped:
        if record.restart_policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        if record.restart_policy == "Never":
            return "Failed"
        return "Running"
    return "Pending"


def neighbour_address(ip: str, cidrs: tuple[str, ...]) -> str:
    """The wrong-self-ip fault's address for ``ip``: mirrored from the top of its range, so it
    stays in the podCIDR and unique per pod but is no pod's address (IPAM counts up from the
    bottom), and traffic sent to it reaches nobody instead of another pod."""
    address = ipaddress.ip_address(ip)
    for cidr in cidrs:
        network = ipaddress.ip_interface(cidr).network
        if address in network:
            offset = int(address) - int(network.network_address)
            return str(ipaddress.ip_address(int(network.broadcast_address) - offset))
    return str(address + 1)


def reported_ips(record: PodRecord, *, wrong_self_ip: bool) -> tuple[str, ...]:
    """The pod IPs the API (and the downward API) is told, primary family first."""
    if record.released_ips is not None:
        return record.released_ips
    sandbox = record.sandbox
    if sandbox is None or not sandbox.ips:
        return ()
    if wrong_self_ip and not sandbox.host_network:
        return tuple(neighbour_address(ip, sandbox.ip_cidrs) for ip in sandbox.ips)
    return sandbox.ips


def _set_condition(
    record: PodRecord, kind: str, status: bool, reason: str = "", message: str = ""
) -> None:
    value = "True" if status else "False"
    previous = record.conditions.get(kind)
    condition: JSONDict = {"type": kind, "status": value, "lastProbeTime": None}
    if previous is not None and previous["status"] == value:
        condition["lastTransitionTime"] = previous["lastTransitionTime"]
    else:
        condition["lastTransitionTime"] = now_rfc3339()
    if reason and not status:
        condition["reason"] = reason
    if message and not status:
        condition["message"] = message
    record.conditions[kind] = condition


def pod_status(record: PodRecord, node: NodeInfo, pod_ips: tuple[str, ...]) -> JSONDict:
    """The pod's v1 PodStatus on ``node``, showing ``pod_ips``. Updates the record's
    conditions (a condition keeps its transition time while its status holds)."""
    if record.rejected is not None:
        # kubelet's rejectPod: only the phase, reason and message (and QoS class) are set.
        reason, message = record.rejected
        return {
            "phase": "Failed",
            "reason": reason,
            "message": f"Pod was rejected: {message}",
            "qosClass": qos_class(record.pod.get("spec", {})),
            "startTime": record.start_time,
        }
    phase = pod_phase(record)
    completed = phase in ("Succeeded", "Failed")
    sandbox_ready = (
        record.sandbox is not None and record.sandbox.pause_pid is not None and not completed
    )
    _set_condition(record, "PodReadyToStartContainers", sandbox_ready)
    unfinished = [
        c.name for c in record.init_containers if c.state.get("terminated", {}).get("exitCode") != 0
    ]
    _set_condition(
        record,
        "Initialized",
        record.initialized or not unfinished,
        "ContainersNotInitialized",
        f"containers with incomplete status: [{' '.join(unfinished)}]",
    )
    unready = [c.name for c in record.containers if not c.ready]
    reason = "PodCompleted" if completed else "ContainersNotReady"
    message = "" if completed else f"containers with unready status: [{' '.join(unready)}]"
    ready = not unready and not completed and record.initialized
    _set_condition(record, "ContainersReady", ready, reason, message)
    _set_condition(record, "Ready", ready, reason, message)
    if "PodScheduled" not in record.conditions:
        _set_condition(record, "PodScheduled", True)
    status: JSONDict = {
        "phase": phase,
        "conditions": [record.conditions[k] for k in CONDITION_ORDER],
        "hostIP": node.internal_ip,
        "hostIPs": [{"ip": ip} for ip in node.addresses],
        "startTime": record.start_time,
        "qosClass": qos_class(record.pod.get("spec", {})),
        "containerStatuses": [container_status(c) for c in record.containers],
    }
    if pod_ips:
        status["podIP"] = pod_ips[0]
        status["podIPs"] = [{"ip": ip} for ip in pod_ips]
    if record.init_containers:
        status["initContainerStatuses"] = [container_status(c) for c in record.init_containers]
    return status
