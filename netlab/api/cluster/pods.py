"""Pod lifecycle: a created pod is scheduled and started on its node's kubelet, the kubelet's
status reports are merged into the stored pod, and a deleted pod is stopped gracefully and
removed once its kubelet is done."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from netlab.api.cluster.events import EventRecorder
from netlab.api.cluster.nodes import NodeRegistry
from netlab.api.cluster.scheduler import Scheduler
from netlab.api.cluster.tasks import BackgroundTasks
from netlab.api.store import Store
from netlab.contract import JSONDict

log = logging.getLogger("netlab.api.cluster")

# Pod conditions the control plane sets, kept when a kubelet reports a status without them.
CONTROL_PLANE_CONDITIONS = ("PodScheduled", "DisruptionTarget")


class PodLifecycle:
    """Every pod from creation to removal; the one place that talks to kubelets about pods."""

    def __init__(self, tasks: BackgroundTasks, nodes: NodeRegistry, scheduler: Scheduler) -> None:
        self.tasks = tasks
        self.nodes = nodes
        self.scheduler = scheduler
        # The scheduler's store and recorder: one of each in a cluster.
        self.store: Store = scheduler.store
        self.events: EventRecorder = scheduler.events
        self.on_created: list[Callable[[JSONDict], None]] = []
        self._uids: dict[str, tuple[str, str]] = {}  # pod uid -> (namespace, name)

    def by_uid(self, uid: str) -> JSONDict | None:
        where = self._uids.get(uid)
        return self.store.get("pods", *where) if where else None

    def created(self, pod: JSONDict) -> None:
        """A pod was stored by a create: schedule and start it, tell the listeners."""
        self._uids[pod["metadata"]["uid"]] = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        self.tasks.spawn(
            self.schedule_and_start(pod["metadata"]["namespace"], pod["metadata"]["name"])
        )
        for listener in list(self.on_created):
            listener(pod)

    def schedule_pending(self) -> None:
        """Try again every pod no node took so far (a new node may fit them)."""
        for pod in self.store.list("pods"):
            if not pod["spec"].get("nodeName") and not pod["metadata"].get("deletionTimestamp"):
                self.tasks.spawn(
                    self.schedule_and_start(pod["metadata"]["namespace"], pod["metadata"]["name"])
                )

    async def schedule_and_start(self, namespace: str, name: str) -> None:
        pod = self.store.get("pods", namespace, name)
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return
        bound = self.scheduler.bind(pod)
        if bound is None:
            return
        kubelet = self.nodes.kubelet_of(bound["spec"]["nodeName"])
        if kubelet is None:
            return  # bound to a node that has no kubelet (yet): stays Pending, like a real cluster
        try:
            await kubelet.start_pod(copy.deepcopy(bound))
        except Exception as error:  # the kubelet's failure becomes an event, never a crash
            log.exception("start_pod %s/%s failed", namespace, name)
            self.events.record(
                bound, "Warning", "FailedCreatePodSandBox", f"Failed to create pod sandbox: {error}"
            )

    def status_changed(self, uid: str, status: Mapping[str, Any]) -> None:
        """A kubelet's status report, merged: the control plane's conditions are kept."""
        pod = self.by_uid(uid)
        if pod is None:
            return
        new = copy.deepcopy(dict(status))
        old_status = pod.get("status", {})
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

    def record_event(self, uid: str, type_: str, reason: str, message: str) -> None:
        """A kubelet's event about one of its pods."""
        pod = self.by_uid(uid)
        if pod is not None:
            self.events.record(pod, type_, reason, message)

    def delete(self, pod: JSONDict, grace: int | None) -> JSONDict:
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
        self.tasks.spawn(self._stop(marked, grace))
        return marked

    async def _stop(self, pod: JSONDict, grace: int) -> None:
        meta = pod["metadata"]
        kubelet = self.nodes.kubelet_of(pod["spec"].get("nodeName") or "")
        if kubelet is not None:
            try:
                await kubelet.stop_pod(meta["uid"], grace)
            except Exception:  # a failing kubelet must not leave the pod undeletable
                log.exception("stop_pod %s/%s failed", meta["namespace"], meta["name"])
        self.store.remove("pods", meta["namespace"], meta["name"])
        self._uids.pop(meta["uid"], None)
