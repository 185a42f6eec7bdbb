"""Pods leaving while a run uses them: what an eviction does (the pod marked DisruptionTarget,
then deleted gracefully; the lab has no PodDisruptionBudgets, so every eviction is allowed) and
the ``evict`` / ``delete`` API faults, which evict or delete one matching pod per namespace
some time after the first one appears. The HTTP side is ``netlab.api.eviction``."""

from __future__ import annotations

import asyncio
import copy
import logging

from netlab.api.cluster.pods import PodLifecycle
from netlab.api.faults import ApiFaults, FaultSwitch, PodDisruption, chance
from netlab.api.meta import now_rfc3339, set_pod_condition
from netlab.api.selectors import matcher, parse_label_selector
from netlab.api.store import Store
from netlab.contract import JSONDict

log = logging.getLogger("netlab.api.faults")

ARMED_LIMIT = 10_000


def evict(pods: PodLifecycle, pod: JSONDict, grace: int | None) -> JSONDict:
    """What the Eviction subresource does once no disruption budget objects: mark the pod
    DisruptionTarget (Kubernetes 1.31), then delete it gracefully."""
    conditions = pod.get("status", {}).get("conditions") or []
    if not any(c.get("type") == "DisruptionTarget" for c in conditions):
        marked = copy.deepcopy(pod)
        set_pod_condition(
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
        pod = pods.store.put("pods", marked, created=False)
    return pods.delete(pod, grace)


class DisruptionScheduler:
    """Arms the ``evict`` / ``delete`` faults: the first matching pod created in a namespace
    starts that namespace's timer; when it fires, one matching pod there goes (once per
    namespace and rule)."""

    def __init__(self, store: Store, pods: PodLifecycle, switch: FaultSwitch) -> None:
        self.store = store
        self.pods = pods
        self.switch = switch
        self._armed: dict[tuple[PodDisruption, str], asyncio.TimerHandle | None] = {}
        switch.subscribe(self._faults_changed)

    def _faults_changed(self, faults: ApiFaults) -> None:
        del faults  # every rule starts afresh
        self.stop()

    def pod_created(self, pod: JSONDict) -> None:
        namespace = pod["metadata"]["namespace"]
        if len(self._armed) > ARMED_LIMIT:  # forget fired rules of namespaces that are gone
            for key in [k for k, timer in self._armed.items() if timer is None]:
                if self.store.get("namespaces", "", key[1]) is None:
                    del self._armed[key]
        for rule in self.switch.current.disruptions:
            key = (rule, namespace)
            if key in self._armed or not self._matches(rule, pod):
                continue
            loop = asyncio.get_running_loop()
            self._armed[key] = loop.call_later(rule.delay, self._due, rule, namespace)

    @staticmethod
    def _matches(rule: PodDisruption, pod: JSONDict) -> bool:
        return matcher(parse_label_selector(rule.selector), ())(pod)

    def _due(self, rule: PodDisruption, namespace: str) -> None:
        self._armed[(rule, namespace)] = None  # fired: never again for this namespace
        candidates = sorted(
            (
                pod
                for pod in self.store.list("pods", namespace)
                if self._matches(rule, pod) and not pod["metadata"].get("deletionTimestamp")
            ),
            key=lambda pod: (
                pod.get("status", {}).get("phase") != "Running",
                pod["metadata"]["name"],
            ),
        )
        running = [p for p in candidates if p.get("status", {}).get("phase") == "Running"]
        pool = running or candidates
        if not pool:
            log.info("api fault: %s in %s found no pod matching %s", rule.action, namespace, rule)
            return
        seed = self.switch.current.seed
        victim = pool[int(chance(seed, rule.action, rule.selector, namespace) * len(pool))]
        name = victim["metadata"]["name"]
        log.info("api fault: %s pod %s/%s (%s)", rule.action, namespace, name, rule.selector)
        if rule.action == "evict":
            evict(self.pods, victim, None)
        else:
            self.pods.delete(victim, None)

    def stop(self) -> None:
        for timer in self._armed.values():
            if timer is not None:
                timer.cancel()
        self._armed.clear()
