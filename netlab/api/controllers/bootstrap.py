"""What a fresh cluster holds before anyone writes to it, and keeps holding: the initial
namespaces with their `default` ServiceAccounts, ``default/kubernetes`` (kube-apiserver's
bootstrap controller puts it back when it is deleted) and kubeadm's ``kubeadm-config``."""

from __future__ import annotations

import asyncio
import ipaddress

from netlab.api.controllers.serviceaccounts import ServiceAccountController
from netlab.api.kubeadm import kubeadm_config
from netlab.api.meta import new_uid, now_rfc3339
from netlab.api.store import Store
from netlab.contract import JSONDict
from netlab.spec import LabSpec

INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
KUBERNETES_SERVICE_REPAIR_DELAY = 1.0  # seconds until a deleted default/kubernetes is back


def namespace_object(name: str) -> JSONDict:
    return {
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": new_uid(),
            "creationTimestamp": now_rfc3339(),
            "labels": {"kubernetes.io/metadata.name": name},
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


def kubernetes_service(spec: LabSpec) -> JSONDict:
    """default/kubernetes as kube-apiserver publishes it: the first host of the primary service
    range, single-stack also on dual-stack clusters (the apiserver creates it with one
    clusterIP), https 443 -> 6443. The lab serves the object; nothing routes to it."""
    cluster_ips = [str(ipaddress.ip_network(spec.service_cidrs[0])[1])]
    families = [f"IPv{ipaddress.ip_address(ip).version}" for ip in cluster_ips]
    return {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {
            "name": "kubernetes",
            "namespace": "default",
            "uid": new_uid(),
            "creationTimestamp": now_rfc3339(),
            "labels": {"component": "apiserver", "provider": "kubernetes"},
        },
        "spec": {
            "ports": [{"name": "https", "protocol": "TCP", "port": 443, "targetPort": 6443}],
            "clusterIP": cluster_ips[0],
            "clusterIPs": cluster_ips,
            "type": "ClusterIP",
            "sessionAffinity": "None",
            "ipFamilies": families,
            "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster",
        },
        "status": {"loadBalancer": {}},
    }


class Bootstrap:
    """Seeds the store with the initial objects and repairs ``default/kubernetes``."""

    def __init__(
        self, store: Store, spec: LabSpec, service_accounts: ServiceAccountController
    ) -> None:
        self.store = store
        self.spec = spec
        self.service_accounts = service_accounts

    def seed(self) -> None:
        for name in INITIAL_NAMESPACES:
            self.store.put("namespaces", namespace_object(name), created=True)
            self.service_accounts.ensure(name)  # a cluster that has run a while has them
        self.store.put("services", kubernetes_service(self.spec), created=True)
        # The service range, as kubeadm publishes it.
        self.store.put("configmaps", kubeadm_config(self.spec), created=True)

    def service_removed(self, namespace: str, name: str) -> None:
        if (namespace, name) == ("default", "kubernetes"):
            # kube-apiserver's bootstrap controller puts it back (within its repair interval).
            asyncio.get_running_loop().call_later(
                KUBERNETES_SERVICE_REPAIR_DELAY, self._ensure_kubernetes_service
            )

    def _ensure_kubernetes_service(self) -> None:
        if self.store.get("services", "default", "kubernetes") is None:
            self.store.put("services", kubernetes_service(self.spec), created=True)
