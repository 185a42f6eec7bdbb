"""The hostPort conflict check's judge (pure): did the pod asking for a taken host port ever run
beside the pod holding it?

The holder (``hostport-<node>``) runs before the clash pod is created. The rule holds when
kubelet refused the clash pod for its ports, or kept it from running while the holder ran; it
is broken when both ran at once. When the holder is gone or stopped, a clash pod that runs may
have started only after the port was free: unless the containers' own start and finish times
show the two lives overlapping, that is "could not test", never a pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kubernetes import client

#: `PortConflict.verdict` values.
HELD = "held"
BROKEN = "broken"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Life:
    """When a pod's containers ran: from the first start to the last finish (None: still
    running)."""

    started: datetime
    finished: datetime | None


@dataclass(frozen=True)
class PortConflict:
    """The verdict (`HELD`, `BROKEN`, `UNKNOWN`) and why, for the person on call."""

    verdict: str
    why: str


def running(pod: client.V1Pod) -> bool:
    """The pod runs: phase Running, or a container started."""
    status = pod.status
    if status is None:
        return False
    started = any(
        cs.state is not None and cs.state.running is not None
        for cs in status.container_statuses or []
    )
    return status.phase == "Running" or started


def refused_for_ports(pod: client.V1Pod) -> bool:
    """kubelet refused the pod for its host ports (phase Failed, reason ``NodePorts``)."""
    status = pod.status
    if status is None or status.phase != "Failed":
        return False
    return "NodePorts" in (status.reason or "") or "free ports" in (status.message or "")


def life(pod: client.V1Pod) -> Life | None:
    """When ``pod``'s containers ran, from their current and last states; None when no
    container has started."""
    starts: list[datetime] = []
    finishes: list[datetime] = []
    still_running = False
    for cs in (pod.status.container_statuses if pod.status else None) or []:
        for state in (cs.state, cs.last_state):
            if state is None:
                continue
            if state.running is not None and state.running.started_at is not None:
                starts.append(state.running.started_at)
                still_running = True
            terminated = state.terminated
            if terminated is not None and terminated.started_at is not None:
                starts.append(terminated.started_at)
                if terminated.finished_at is not None:
                    finishes.append(terminated.finished_at)
    if not starts:
        return None
    return Life(min(starts), None if still_running or not finishes else max(finishes))


def overlap(one: Life, other: Life) -> bool:
    """The two lives share a moment (a life without a finish is still going on)."""
    one_before_other_ends = other.finished is None or one.started < other.finished
    other_before_one_ends = one.finished is None or other.started < one.finished
    return one_before_other_ends and other_before_one_ends


def judge_port_conflict(
    holder_name: str, holder: client.V1Pod | None, clash: client.V1Pod
) -> PortConflict:
    """Whether ``clash`` ran beside ``holder`` (None: the holder pod is gone)."""
    clash_name = clash.metadata.name if clash.metadata else "the clash pod"
    if refused_for_ports(clash) and clash.status is not None:
        reason = f"{clash.status.reason}: {clash.status.message}".strip(": ")
        return PortConflict(HELD, f"kubelet refused {clash_name} ({reason})")
    clash_life = life(clash)
    holder_life = life(holder) if holder is not None else None
    holder_runs = holder is not None and running(holder)
    if holder_runs and running(clash):
        return PortConflict(BROKEN, f"{holder_name} and {clash_name} both run")
    if clash_life is None:
        if holder_runs:
            return PortConflict(HELD, f"{clash_name} never ran while {holder_name} runs")
        gone = "is gone" if holder is None else "is not running"
        return PortConflict(
            UNKNOWN,
            f"{holder_name}, the pod holding the port, {gone}, and kubelet has not decided on "
            f"{clash_name} (not started, not refused): nothing shows the port kept to one pod",
        )
    if holder_life is not None and overlap(holder_life, clash_life):
        return PortConflict(
            BROKEN,
            f"{clash_name} ran from {clash_life.started.isoformat()} while {holder_name} ran "
            f"(since {holder_life.started.isoformat()})",
        )
    if holder_runs:
        return PortConflict(
            HELD, f"{clash_name} ran only when {holder_name} did not (it started again after)"
        )
    gone = "is gone" if holder is None else "stopped"
    return PortConflict(
        UNKNOWN,
        f"{holder_name}, the pod holding the port, {gone}, and {clash_name} ran: whether it "
        "started before the port was free cannot be told",
    )
