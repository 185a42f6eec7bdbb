"""Scheduling: picking a node for a pod (Ready, nodeSelector, NoSchedule/NoExecute taints;
least pods) and binding the pod to it."""

from __future__ import annotations

import copy
from collections.abc import Mapping

from netlab.api.cluster.events import EventRecorder
from netlab.api.meta import now_rfc3339, set_pod_condition
from netlab.api.store import Store
from netlab.contract import JSONDict


def tolerates(tolerations: list[JSONDict], taint: JSONDict) -> bool:
    for toleration in tolerations:
        effect = toleration.get("effect")
        if effect and effect != taint.get("effect"):
            continue
        operator = toleration.get("operator") or "Equal"
        key = toleration.get("key")
        if operator == "Exists" and (not key or key == taint.get("key")):
            return True
        if (
            operator == "Equal"
            and key == taint.get("key")
            and (toleration.get("value") or "") == (taint.get("value") or "")
        ):
            return True
    return False


def _ready(node: JSONDict) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in node.get("status", {}).get("conditions") or []
    )


def fits(pod: JSONDict, node: JSONDict) -> str | None:
    """Why ``pod`` cannot run on ``node`` (a short phrase, as the scheduler counts them)."""
    if not _ready(node) or node.get("spec", {}).get("unschedulable"):
        return "node(s) were unschedulable"
    labels = node["metadata"].get("labels") or {}
    selector = pod.get("spec", {}).get("nodeSelector") or {}
    if any(labels.get(k) != v for k, v in selector.items()):
        return "node(s) didn't match Pod's node affinity/selector"
    tolerations = pod.get("spec", {}).get("tolerations") or []
    for taint in node.get("spec", {}).get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(tolerations, taint):
            return f"node(s) had untolerated taint {{{taint.get('key')}: {taint.get('value', '')}}}"
    return None


def pick_node(
    pod: JSONDict, nodes: list[JSONDict], pod_counts: Mapping[str, int]
) -> tuple[str | None, str]:
    """(node name, "") or (None, the FailedScheduling message the real scheduler would write)."""
    reasons: dict[str, int] = {}
    candidates = []
    for node in nodes:
        why = fits(pod, node)
        if why is None:
            candidates.append(node["metadata"]["name"])
        else:
            reasons[why] = reasons.get(why, 0) + 1
    if candidates:
        return min(candidates, key=lambda name: (pod_counts.get(name, 0), name)), ""
    detail = ", ".join(f"{count} {why}" for why, count in sorted(reasons.items()))
    message = f"0/{len(nodes)} nodes are available" + (f": {detail}." if detail else ".")
    return (
        None,
        message
        + " preemption: 0/{0} nodes are available: {0} Preemption is not helpful for scheduling.".format(
            len(nodes)
        ),
    )


class Scheduler:
    """The default scheduler's binding: picks a node (``pick_node``), writes spec.nodeName and
    the PodScheduled condition, and records Scheduled or FailedScheduling as it does."""

    def __init__(self, store: Store, events: EventRecorder) -> None:
        self.store = store
        self.events = events

    def bind(self, pod: JSONDict) -> JSONDict | None:
        """``pod`` bound to a node (already bound: marked PodScheduled if it was not), or None
        while no node fits (PodScheduled False, Unschedulable)."""
        meta = pod["metadata"]
        if pod["spec"].get("nodeName"):
            if any(c.get("type") == "PodScheduled" for c in pod["status"].get("conditions") or []):
                return pod
            pod = copy.deepcopy(pod)
            set_pod_condition(pod["status"], _scheduled())
            return self.store.put("pods", pod, created=False)
        counts: dict[str, int] = {}
        for other in self.store.list("pods"):
            bound = other["spec"].get("nodeName")
            if bound:
                counts[bound] = counts.get(bound, 0) + 1
        node_name, why = pick_node(pod, self.store.list("nodes"), counts)
        pod = copy.deepcopy(pod)
        scheduled = _scheduled()
        if node_name is None:
            scheduled.update(status="False", reason="Unschedulable", message=why)
            already = any(
                c.get("reason") == "Unschedulable" for c in pod["status"].get("conditions") or []
            )
            set_pod_condition(pod["status"], scheduled)
            self.store.put("pods", pod, created=False)
            if not already:
                self.events.record(
                    pod, "Warning", "FailedScheduling", why, component="default-scheduler"
                )
            return None
        pod["spec"]["nodeName"] = node_name
        set_pod_condition(pod["status"], scheduled)
        pod = self.store.put("pods", pod, created=False)
        self.events.record(
            pod,
            "Normal",
            "Scheduled",
            f"Successfully assigned {meta['namespace']}/{meta['name']} to {node_name}",
            component="default-scheduler",
        )
        return pod


def _scheduled() -> JSONDict:
    return {
        "type": "PodScheduled",
        "status": "True",
        "lastProbeTime": None,
        "lastTransitionTime": now_rfc3339(),
    }
