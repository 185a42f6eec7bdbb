"""Every served resource's strategy: the one table the generic verbs look rules up in."""

from __future__ import annotations

from collections.abc import Mapping

from netlab.api.cluster.pods import PodLifecycle
from netlab.api.controllers.bootstrap import Bootstrap
from netlab.api.controllers.namespaces import NamespaceFinalizer
from netlab.api.controllers.serviceaccounts import ServiceAccountController
from netlab.api.discovery import RESOURCES
from netlab.api.resources.namespaces import NamespaceStrategy
from netlab.api.resources.networkpolicies import NetworkPolicyStrategy
from netlab.api.resources.pods import PodStrategy
from netlab.api.resources.serviceaccounts import ServiceAccountStrategy
from netlab.api.resources.services import ServiceRegistry, ServiceStrategy
from netlab.api.resources.strategy import Strategy
from netlab.api.store import Store
from netlab.spec import LabSpec

__all__ = ["Strategy", "strategies"]


def strategies(
    store: Store,
    spec: LabSpec,
    pods: PodLifecycle,
    namespaces: NamespaceFinalizer,
    service_accounts: ServiceAccountController,
    bootstrap: Bootstrap,
) -> Mapping[str, Strategy]:
    """Resource (plural) -> its strategy, for every resource discovery serves; the plain
    ``Strategy`` for configmaps, events, endpointslices and nodes."""
    own: dict[str, Strategy] = {
        "pods": PodStrategy(store, pods),
        "namespaces": NamespaceStrategy(namespaces, service_accounts),
        "services": ServiceStrategy(ServiceRegistry(store, spec), bootstrap),
        "serviceaccounts": ServiceAccountStrategy(service_accounts),
        "networkpolicies": NetworkPolicyStrategy(),
    }
    return {name: own.get(name, Strategy()) for name in RESOURCES}
