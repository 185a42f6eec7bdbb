"""The namespace controller's finalizer: a deleted namespace turns Terminating, its pods are
deleted gracefully, and once they are gone its other content and then the namespace itself."""

from __future__ import annotations

import copy

from netlab.api.cluster.pods import PodLifecycle
from netlab.api.cluster.tasks import BackgroundTasks
from netlab.api.meta import now_rfc3339
from netlab.api.store import Store
from netlab.contract import JSONDict

# What a namespace holds besides pods, removed once its pods are gone.
NAMESPACED_CONTENT = (
    "configmaps",
    "events",
    "services",
    "endpointslices",
    "serviceaccounts",
    "networkpolicies",
)


class NamespaceFinalizer:
    """Terminates namespaces: marks them, then empties and removes them in the background."""

    def __init__(self, store: Store, tasks: BackgroundTasks, pods: PodLifecycle) -> None:
        self.store = store
        self.tasks = tasks
        self.pods = pods

    def delete(self, namespace: JSONDict) -> JSONDict:
        """Mark ``namespace`` Terminating (MODIFIED) and finalize it; returns it."""
        if namespace.get("status", {}).get("phase") == "Terminating":
            return namespace
        marked = copy.deepcopy(namespace)
        marked["metadata"]["deletionTimestamp"] = now_rfc3339()
        marked["status"] = {"phase": "Terminating"}
        marked = self.store.put("namespaces", marked, created=False)
        self.tasks.spawn(self._finalize(marked["metadata"]["name"]))
        return marked

    async def _finalize(self, name: str) -> None:
        for pod in self.store.list("pods", name):
            self.pods.delete(pod, None)
        # Wait for the pods' DELETED events through a watch, not by polling.
        watcher = self.store.watch("pods", name, None)
        try:
            while self.store.list("pods", name):
                if await watcher.queue.get() is None:
                    break
        finally:
            self.store.unwatch(watcher)
        for resource in NAMESPACED_CONTENT:
            for obj in self.store.list(resource, name):
                self.store.remove(resource, name, obj["metadata"]["name"])
        self.store.remove("namespaces", "", name)
