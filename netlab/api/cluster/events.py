"""Events about pods, as the scheduler and the kubelets record them (core/v1 Events), with
the oldest dropped beyond a limit as the real event TTL would."""

from __future__ import annotations

import secrets

from netlab.api.meta import new_uid, now_rfc3339
from netlab.api.store import Store
from netlab.contract import JSONDict

EVENT_LIMIT = 5_000  # oldest events are dropped beyond this, like the real event TTL


class EventRecorder:
    """Writes Events about pods into the store (none for a namespace that is gone)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._events: list[tuple[str, str]] = []  # (namespace, name), oldest first

    def record(
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
