"""The root CA publisher, as kube-controller-manager runs it (root-ca-cert-publisher): every
active namespace holds the ConfigMap ``kube-root-ca.crt`` with the API server's CA under
``ca.crt`` and the one annotation describing it. A namespace gets it as soon as it appears;
the ConfigMap is made again when deleted and put back when its data or annotation is changed,
as the controller's informers on namespaces and ConfigMaps do. Pods and the upstream e2e
framework wait for it before they trust the API server from inside the cluster.
"""

from __future__ import annotations

import copy
import logging

from netlab.api.cluster.tasks import BackgroundTasks
from netlab.api.meta import new_uid, now_rfc3339
from netlab.api.store import Event, Store, Watcher
from netlab.contract import JSONDict

log = logging.getLogger(__name__)

ROOT_CA_CONFIGMAP = "kube-root-ca.crt"
CA_KEY = "ca.crt"
DESCRIPTION_ANNOTATION = "kubernetes.io/description"
DESCRIPTION = (
    "Contains a CA bundle that can be used to verify the kube-apiserver when using internal "
    "endpoints such as the internal service IP or kubernetes.default.svc. "
    "No other usage is guaranteed across distributions of Kubernetes clusters."
)


def root_ca_configmap(namespace: str, ca_pem: str) -> JSONDict:
    """The ConfigMap the publisher creates in ``namespace``."""
    return {
        "kind": "ConfigMap",
        "apiVersion": "v1",
        "metadata": {
            "name": ROOT_CA_CONFIGMAP,
            "namespace": namespace,
            "uid": new_uid(),
            "creationTimestamp": now_rfc3339(),
            "annotations": {DESCRIPTION_ANNOTATION: DESCRIPTION},
        },
        "data": {CA_KEY: ca_pem},
    }


class RootCAPublisher:
    """Keeps ``kube-root-ca.crt`` in every active namespace; ``start`` on the running loop with
    the CA's PEM (the lab's serving certificate is its own CA)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._ca_pem = ""
        self._tasks = BackgroundTasks()

    def start(self, ca_pem: str) -> None:
        if self._tasks:
            return
        self._ca_pem = ca_pem
        for resource in ("namespaces", "configmaps"):
            # Subscribed now, not when the task first runs: no change made meanwhile is missed.
            watcher = self.store.watch(resource, None, None)
            self._tasks.spawn(self._follow(resource, watcher))
        self._sync_all()

    async def stop(self) -> None:
        await self._tasks.stop()

    def _sync_all(self) -> None:
        for namespace in self.store.list("namespaces"):
            self.sync(str(namespace["metadata"]["name"]))

    async def _follow(self, resource: str, watcher: Watcher) -> None:
        """One informer: the store's watch queue of ``resource``, re-subscribed (every
        namespace synced again) if the store ever drops it."""
        while True:
            try:
                while (event := await watcher.queue.get()) is not None:
                    namespace = self._namespace_to_sync(event)
                    if namespace is not None:
                        self.sync(namespace)
            finally:
                self.store.unwatch(watcher)
            self._sync_all()
            watcher = self.store.watch(resource, None, None)

    @staticmethod
    def _namespace_to_sync(event: Event) -> str | None:
        """The namespace an event asks to sync, as the controller's event handlers choose:
        a namespace added or updated while active, our ConfigMap updated or deleted."""
        meta = event.object.get("metadata") or {}
        if event.resource == "namespaces":
            if event.type == "DELETED":
                return None
            if event.type == "MODIFIED" and event.object.get("status", {}).get("phase") not in (
                None,
                "Active",
            ):
                return None
            return str(meta.get("name", ""))
        if meta.get("name") != ROOT_CA_CONFIGMAP or event.type == "ADDED":
            return None
        return str(meta.get("namespace", ""))

    def sync(self, namespace: str) -> None:
        """Create or repair ``kube-root-ca.crt`` in ``namespace``; a namespace that is gone or
        terminating gets nothing (the real create is refused there, and not retried)."""
        ns = self.store.get("namespaces", "", namespace)
        if ns is None or ns.get("status", {}).get("phase") == "Terminating":
            return
        current = self.store.get("configmaps", namespace, ROOT_CA_CONFIGMAP)
        if current is None:
            self.store.put("configmaps", root_ca_configmap(namespace, self._ca_pem), created=True)
            log.debug("configmap %s/%s published", namespace, ROOT_CA_CONFIGMAP)
            return
        data = {CA_KEY: self._ca_pem}
        annotations = current["metadata"].get("annotations") or {}
        if current.get("data") == data and annotations.get(DESCRIPTION_ANNOTATION):
            return
        repaired = copy.deepcopy(current)
        repaired["data"] = data
        repaired["metadata"]["annotations"] = {**annotations, DESCRIPTION_ANNOTATION: DESCRIPTION}
        self.store.put("configmaps", repaired, created=False)
