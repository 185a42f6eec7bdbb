"""Pods leaving while a run uses them: the policy/v1 Eviction subresource (``POST
.../pods/NAME/eviction``, as kube-apiserver serves it; the lab has no PodDisruptionBudgets, so
every eviction is allowed) and the ``evict`` / ``delete`` API faults, which evict or delete
one matching pod per namespace some time after the first one appears."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from netlab.api.cluster import Cluster
from netlab.api.errors import ApiError
from netlab.api.faults import ApiFaults, FaultSwitch, PodDisruption, chance
from netlab.api.request import read_body
from netlab.api.rest import respond
from netlab.api.selectors import matcher, parse_label_selector

JSONDict = dict[str, Any]
log = logging.getLogger("netlab.api.faults")

EVICTION_VERSIONS = ("policy/v1", "policy/v1beta1")
ARMED_LIMIT = 10_000


def _grace(options: Any) -> int | None:
    if options is None:
        return None
    if not isinstance(options, dict):
        raise ApiError(400, "Eviction.deleteOptions must be a DeleteOptions object")
    value = options.get("gracePeriodSeconds")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ApiError(400, "DeleteOptions.gracePeriodSeconds must be an integer")
    return max(value, 0)


async def serve_eviction(request: web.Request, cluster: Cluster, pod: JSONDict) -> web.Response:
    """Evict ``pod``: mark it DisruptionTarget and delete it gracefully; 201 with a Success
    Status, as kube-apiserver answers."""
    body = await read_body(request, kind="Eviction")
    if not isinstance(body, dict):
        raise ApiError(400, "the object provided is unrecognized (must be of type Eviction)")
    if body.get("kind") not in (None, "", "Eviction") or body.get("apiVersion") not in (
        None,
        "",
        *EVICTION_VERSIONS,
    ):
        raise ApiError(
            400,
            f"the object provided is unrecognized (must be of type Eviction): got "
            f"{body.get('apiVersion')}, Kind={body.get('kind')}",
        )
    meta = body.get("metadata")
    if not isinstance(meta, dict) or meta.get("name") != pod["metadata"]["name"]:
        raise ApiError(400, "name in URL does not match name in Eviction object")
    options = body.get("deleteOptions")
    grace = _grace(options)
    dry_run = bool(request.query.get("dryRun")) or bool(
        isinstance(options, dict) and options.get("dryRun")
    )
    if not dry_run:
        cluster.evict_pod(pod, grace)
    return respond(
        {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201},
        201,
    )


class DisruptionScheduler:
    """Arms the ``evict`` / ``delete`` faults: the first matching pod created in a namespace
    starts that namespace's timer; when it fires, one matching pod there goes (once per
    namespace and rule)."""

    def __init__(self, cluster: Cluster, switch: FaultSwitch) -> None:
        self.cluster = cluster
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
                if self.cluster.store.get("namespaces", "", key[1]) is None:
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
                for pod in self.cluster.store.list("pods", namespace)
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
            self.cluster.evict_pod(victim, None)
        else:
            self.cluster.delete_pod(victim, None)

    def stop(self) -> None:
        for timer in self._armed.values():
            if timer is not None:
                timer.cancel()
        self._armed.clear()
