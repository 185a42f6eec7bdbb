"""The control plane put together: the store's cluster parts (``netlab.api.cluster``), the
controllers (``netlab.api.controllers``) and the resources' rules (``netlab.api.resources``)
that the generic verbs (``netlab.api.rest``) call. The API server owns one."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

from netlab.api.cluster.events import EventRecorder
from netlab.api.cluster.nodes import NodeRegistry
from netlab.api.cluster.pods import PodLifecycle
from netlab.api.cluster.scheduler import Scheduler
from netlab.api.cluster.tasks import BackgroundTasks
from netlab.api.controllers.bootstrap import Bootstrap
from netlab.api.controllers.endpointslices import EndpointSliceController
from netlab.api.controllers.eviction import DisruptionScheduler
from netlab.api.controllers.namespaces import NamespaceFinalizer
from netlab.api.controllers.rootca import RootCAPublisher
from netlab.api.controllers.serviceaccounts import ServiceAccountController
from netlab.api.faults import FaultSwitch, parse_api_faults
from netlab.api.meta import new_uid, now_rfc3339
from netlab.api.resources.registry import Strategy, strategies
from netlab.api.store import Store, Watcher
from netlab.contract import JSONDict, KubeletAPI
from netlab.spec import LabSpec


class ControlPlane:
    """Owns the store's behaviour: every state change the API or a kubelet makes goes through
    one of its parts."""

    def __init__(self, store: Store, spec: LabSpec, switch: FaultSwitch | None = None) -> None:
        self.store = store
        self.switch = switch or FaultSwitch(parse_api_faults(spec.api_faults))
        self.tasks = BackgroundTasks()
        self.events = EventRecorder(store)
        self.nodes = NodeRegistry(store)
        self.pods = PodLifecycle(self.tasks, self.nodes, Scheduler(store, self.events))
        self.namespaces = NamespaceFinalizer(store, self.tasks, self.pods)
        self.service_accounts = ServiceAccountController(store, self.switch)
        self.endpoint_slices = EndpointSliceController(store)
        self.root_ca = RootCAPublisher(store)
        self.bootstrap = Bootstrap(store, spec, self.service_accounts)
        self.disruptions = DisruptionScheduler(store, self.pods, self.switch)
        self.pods.on_created.append(self.disruptions.pod_created)
        self.resources: Mapping[str, Strategy] = strategies(
            store, spec, self.pods, self.namespaces, self.service_accounts, self.bootstrap
        )
        self.bootstrap.seed()

    def start_controllers(self, ca_pem: str | None = None) -> None:
        """Controllers that run on the event loop: the EndpointSlice controller, and with the
        API server's CA (``ca_pem``; none without TLS) the root CA publisher."""
        self.endpoint_slices.start()
        if ca_pem is not None:
            self.root_ca.start(ca_pem)

    async def stop(self) -> None:
        self.service_accounts.stop()
        await self.endpoint_slices.stop()
        await self.root_ca.stop()
        await self.tasks.stop()

    def register_node(self, kubelet: KubeletAPI) -> None:
        self.nodes.register(kubelet)
        self.pods.schedule_pending()  # a new node may fit pods that were unschedulable so far

    # in-process consumers of changes (the lab's proxy and cluster DNS)
    def follow(self, resources: Sequence[str], callback: Callable[[], None]) -> None:
        """Call ``callback`` on the loop after changes to any of ``resources``: once per batch
        of queued events, and again if the store ever drops the subscription."""
        for resource in resources:
            # Subscribed now, not when the task first runs: no change made meanwhile is missed.
            watcher = self.store.watch(resource, None, None)
            self.tasks.spawn(self._follow(resource, callback, watcher))

    async def _follow(self, resource: str, callback: Callable[[], None], watcher: Watcher) -> None:
        while True:
            try:
                while await watcher.queue.get() is not None:
                    while not watcher.queue.empty():
                        if watcher.queue.get_nowait() is None:
                            break
                    callback()
            finally:
                self.store.unwatch(watcher)
            callback()
            watcher = self.store.watch(resource, None, None)

    def publish(self, resource: str, obj: JSONDict) -> JSONDict:
        """Store an object the lab itself makes (the kube-dns Service and its EndpointSlice),
        as a create through the API would: metadata, and the resource's defaults and
        allocation (a Service's cluster IPs)."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta["uid"] = new_uid()
        meta["creationTimestamp"] = now_rfc3339()
        obj = self.resources[resource].prepare_for_create(obj)
        existing = self.store.get(resource, meta.get("namespace", ""), meta["name"])
        return self.store.put(resource, obj, created=existing is None)
