"""Picking a node for a pod: Ready, nodeSelector, NoSchedule/NoExecute taints; least pods."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

JSONDict = dict[str, Any]


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
