"""Kubernetes client model objects the unit tests build: nodes and pods in the states the kit
reads (Ready or not, tainted, cordoned, waiting containers)."""

from __future__ import annotations

from kubernetes import client

CP_TAINT = [("node-role.kubernetes.io/control-plane", "NoSchedule")]


def make_node(
    name: str,
    *,
    ready: bool | str = True,
    reason: str | None = None,
    message: str | None = None,
    labels: dict[str, str] | None = None,
    taints: list[tuple[str, str]] | None = None,
    unschedulable: bool = False,
    pod_cidrs: tuple[str, ...] = (),
    addresses: tuple[tuple[str, str], ...] = (),
) -> client.V1Node:
    """A Linux node; ``ready`` True, False or a status (``Unknown``), with the Ready
    condition's ``reason`` and ``message``; ``taints`` as (key, effect), ``addresses`` as
    (type, address)."""
    status = ready if isinstance(ready, str) else ("True" if ready else "False")
    return client.V1Node(
        metadata=client.V1ObjectMeta(
            name=name, labels={"kubernetes.io/os": "linux", **(labels or {})}
        ),
        spec=client.V1NodeSpec(
            unschedulable=unschedulable,
            taints=[client.V1Taint(key=k, effect=e) for k, e in taints or []],
            pod_cidr=pod_cidrs[0] if pod_cidrs else None,
            pod_cidrs=list(pod_cidrs) or None,
        ),
        status=client.V1NodeStatus(
            conditions=[
                client.V1NodeCondition(type="Ready", status=status, reason=reason, message=message)
            ],
            addresses=[client.V1NodeAddress(type=t, address=a) for t, a in addresses],
        ),
    )


def pod_with(
    waiting: str | None = None, phase: str = "Pending", ready: bool = False
) -> client.V1Pod:
    """Pod ``probe-n1`` on node ``n1`` whose container ``a`` (restarted twice) is waiting with
    reason ``waiting`` (message "details"), or running."""
    state = client.V1ContainerState(
        waiting=client.V1ContainerStateWaiting(reason=waiting, message="details")
        if waiting
        else None,
        running=None if waiting else client.V1ContainerStateRunning(),
    )
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name="probe-n1"),
        spec=client.V1PodSpec(containers=[], node_name="n1"),
        status=client.V1PodStatus(
            phase=phase,
            conditions=[client.V1PodCondition(type="Ready", status="True" if ready else "False")],
            container_statuses=[
                client.V1ContainerStatus(
                    name="a", image="i", image_id="", ready=ready, restart_count=2, state=state
                )
            ],
        ),
    )
