"""The EndpointSlice controller, as kube-controller-manager runs it: for every Service with a
selector, discovery.k8s.io/v1 EndpointSlices listing the selected pods' addresses (one slice
per IP family and port set), their readiness, node and pod, kept up to date as pods come, go
and change readiness, and removed with the Service.

Slices carry ``kubernetes.io/service-name`` and ``endpointslice.kubernetes.io/managed-by:
endpointslice-controller.k8s.io``; slices with another manager (made by hand for a Service
without a selector, as the lab's kube-dns one) are left alone. The controller follows the
store's own watch queues, so a pod turning unready is ``ready: false`` in its slice as soon as
the kubelet's status reaches the API.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import logging
from collections.abc import Iterable

from netlab.api.cluster.tasks import BackgroundTasks
from netlab.api.meta import generate_name, new_uid, now_rfc3339
from netlab.api.store import Event, Store, Watcher
from netlab.contract import JSONDict

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
CONTROLLER_NAME = "endpointslice-controller.k8s.io"
HEADLESS_LABEL = "service.kubernetes.io/headless"
API_VERSION = "discovery.k8s.io/v1"
Key = tuple[str, str]  # (namespace, service name)


def selector_matches(selector: dict[str, str], pod: JSONDict | None) -> bool:
    if pod is None or not selector:
        return False
    labels = pod.get("metadata", {}).get("labels") or {}
    return all(labels.get(key) == value for key, value in selector.items())


def pod_ready(pod: JSONDict) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in pod.get("status", {}).get("conditions") or []
    )


def _address_type(address: str) -> str:
    return f"IPv{ipaddress.ip_address(address).version}"


def _container_port(pod: JSONDict, name: str, protocol: str) -> int | None:
    """A named targetPort resolved in the pod's containers (podutil.FindPort)."""
    for container in pod.get("spec", {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == name and port.get("protocol", "TCP") == protocol:
                return int(port["containerPort"])
    return None


def endpoint_ports(service: JSONDict, pod: JSONDict) -> tuple[tuple[str, str, int], ...]:
    """(name, protocol, port) of each Service port for ``pod``; a named targetPort the pod does
    not have leaves that port out for this pod, as the controller does."""
    ports = []
    for port in service.get("spec", {}).get("ports") or []:
        protocol = str(port.get("protocol", "TCP"))
        target = port.get("targetPort", port.get("port"))
        number = _container_port(pod, target, protocol) if isinstance(target, str) else int(target)
        if number is not None:
            ports.append((str(port.get("name") or ""), protocol, number))
    return tuple(ports)


def desired_slices(service: JSONDict, pods: Iterable[JSONDict]) -> list[JSONDict]:
    """The slices' contents (addressType, endpoints, ports) the Service should have: one per
    (family, port set), endpoints ordered by pod name; a placeholder without endpoints when
    no pod is selected."""
    spec = service.get("spec") or {}
    selector = spec.get("selector") or {}
    families = list(spec.get("ipFamilies") or ["IPv4"])
    publish_not_ready = bool(spec.get("publishNotReadyAddresses"))
    groups: dict[tuple[str, tuple[tuple[str, str, int], ...]], list[JSONDict]] = {}
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        status = pod.get("status") or {}
        if not selector_matches(selector, pod) or status.get("phase") in ("Succeeded", "Failed"):
            continue
        node = pod.get("spec", {}).get("nodeName")
        addresses = [entry["ip"] for entry in status.get("podIPs") or [] if entry.get("ip")]
        if not node or not addresses:
            continue
        ports = endpoint_ports(service, pod)
        terminating = bool(pod["metadata"].get("deletionTimestamp"))
        ready = pod_ready(pod)
        for address in addresses:
            family = _address_type(address)
            if family not in families:
                continue
            meta = pod["metadata"]
            groups.setdefault((family, ports), []).append(
                {
                    "addresses": [address],
                    "conditions": {
                        "ready": (ready or publish_not_ready) and not terminating,
                        "serving": ready or publish_not_ready,
                        "terminating": terminating,
                    },
                    "targetRef": {
                        "kind": "Pod",
                        "namespace": meta.get("namespace", ""),
                        "name": meta["name"],
                        "uid": meta.get("uid", ""),
                    },
                    "nodeName": node,
                }
            )
    slices = [
        {
            "addressType": family,
            "endpoints": endpoints,
            "ports": [
                {"name": name, "protocol": protocol, "port": number}
                for name, protocol, number in ports
            ],
        }
        for (family, ports), endpoints in sorted(groups.items(), key=lambda item: item[0])
    ]
    if not slices:
        # The controller's placeholder: no endpoints, no ports, the primary family.
        slices = [{"addressType": families[0], "endpoints": []}]
    return slices


def slice_labels(service: JSONDict) -> dict[str, str]:
    meta = service["metadata"]
    labels = dict(meta.get("labels") or {})
    labels[SERVICE_NAME_LABEL] = meta["name"]
    labels[MANAGED_BY_LABEL] = CONTROLLER_NAME
    if (service.get("spec") or {}).get("clusterIP") == "None":
        labels[HEADLESS_LABEL] = ""
    return labels


class EndpointSliceController:
    """Keeps the managed EndpointSlices of every Service; ``start`` on the running loop."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._dirty: set[Key] = set()
        self._wake = asyncio.Event()
        self._tasks = BackgroundTasks()

    def start(self) -> None:
        if self._tasks:
            return
        for resource in ("services", "pods"):
            # Subscribed now, not when the task first runs: no change made meanwhile is missed.
            watcher = self.store.watch(resource, None, None)
            self._tasks.spawn(self._follow(resource, watcher))
        self._tasks.spawn(self._reconcile_forever())
        self._mark_all()

    async def stop(self) -> None:
        await self._tasks.stop()

    def _mark(self, keys: Iterable[Key]) -> None:
        before = len(self._dirty)
        self._dirty.update(keys)
        if len(self._dirty) != before:
            self._wake.set()

    def _mark_all(self) -> None:
        self._mark(
            (s["metadata"].get("namespace", ""), s["metadata"]["name"])
            for s in self.store.list("services")
        )
        # Managed slices whose Service is gone (deleted while the controller was down).
        self._mark(
            (s["metadata"].get("namespace", ""), labels[SERVICE_NAME_LABEL])
            for s in self.store.list("endpointslices")
            if (labels := s["metadata"].get("labels") or {}).get(MANAGED_BY_LABEL)
            == CONTROLLER_NAME
            and SERVICE_NAME_LABEL in labels
        )

    async def _follow(self, resource: str, watcher: Watcher) -> None:
        """One informer: the store's watch queue of ``resource``, re-subscribed (everything
        re-checked) if the store ever drops it."""
        while True:
            try:
                while (event := await watcher.queue.get()) is not None:
                    self._note(event)
            finally:
                self.store.unwatch(watcher)
            self._mark_all()
            watcher = self.store.watch(resource, None, None)

    def _note(self, event: Event) -> None:
        meta = event.object.get("metadata", {})
        namespace = str(meta.get("namespace", ""))
        if event.resource == "services":
            self._mark([(namespace, str(meta["name"]))])
            return
        changed = []
        for service in self.store.list("services", namespace):
            selector = (service.get("spec") or {}).get("selector") or {}
            if selector_matches(selector, event.object) or selector_matches(
                selector, event.previous
            ):
                changed.append((namespace, str(service["metadata"]["name"])))
        self._mark(changed)

    async def _reconcile_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            for key in sorted(dirty):
                try:
                    self.sync(*key)
                except Exception:  # one bad Service must not stop the others' slices
                    log.exception("endpointslices of %s/%s could not be synced", *key)

    def sync(self, namespace: str, name: str) -> None:
        """Make the managed slices of Service ``namespace/name`` what they should be."""
        service = self.store.get("services", namespace, name)
        existing = [
            s
            for s in self.store.list("endpointslices", namespace)
            if (s["metadata"].get("labels") or {}).get(SERVICE_NAME_LABEL) == name
            and (s["metadata"].get("labels") or {}).get(MANAGED_BY_LABEL) == CONTROLLER_NAME
        ]
        spec = (service or {}).get("spec") or {}
        if service is None or not spec.get("selector") or spec.get("type") == "ExternalName":
            for stale in existing:
                self.store.remove("endpointslices", namespace, stale["metadata"]["name"])
            return
        wanted = desired_slices(service, self.store.list("pods", namespace))
        labels = slice_labels(service)
        # Reuse slices of the same address type first, as the controller updates in place.
        unused = sorted(existing, key=lambda s: s["metadata"]["name"])
        for content in wanted:
            match = next(
                (s for s in unused if s.get("addressType") == content["addressType"]), None
            )
            if match is None:
                self._create(service, labels, content)
                continue
            unused.remove(match)
            current = {k: match.get(k) for k in ("addressType", "endpoints", "ports")}
            target = {**content, "ports": content.get("ports")}
            if current == target and (match["metadata"].get("labels") or {}) == labels:
                continue
            updated = copy.deepcopy(match)
            updated.pop("ports", None)
            updated.update(copy.deepcopy(content))
            updated["metadata"]["labels"] = labels
            updated["metadata"]["generation"] = int(match["metadata"].get("generation", 1)) + 1
            self.store.put("endpointslices", updated, created=False)
        for stale in unused:
            self.store.remove("endpointslices", namespace, stale["metadata"]["name"])

    def _create(self, service: JSONDict, labels: dict[str, str], content: JSONDict) -> None:
        meta = service["metadata"]
        prefix = f"{meta['name']}-"
        name = generate_name(prefix)
        while self.store.get("endpointslices", meta.get("namespace", ""), name) is not None:
            name = generate_name(prefix)
        slice_object: JSONDict = {
            "kind": "EndpointSlice",
            "apiVersion": API_VERSION,
            "metadata": {
                "name": name,
                "generateName": prefix,
                "namespace": meta.get("namespace", ""),
                "uid": new_uid(),
                "creationTimestamp": now_rfc3339(),
                "generation": 1,
                "labels": labels,
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "Service",
                        "name": meta["name"],
                        "uid": meta.get("uid", ""),
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            **copy.deepcopy(content),
        }
        self.store.put("endpointslices", slice_object, created=True)
