"""The ServiceAccount controller as a real cluster has it: kube-controller-manager makes each
namespace's `default` ServiceAccount a little after the namespace (and again if it is deleted).
The admission plugin that refuses a pod whose ServiceAccount does not exist yet is
``netlab.api.resources.pods``."""

from __future__ import annotations

import asyncio
import logging

from netlab.api.faults import FaultSwitch
from netlab.api.meta import new_uid, now_rfc3339
from netlab.api.store import Store
from netlab.contract import JSONDict

log = logging.getLogger(__name__)

DEFAULT_ACCOUNT = "default"


def service_account_object(namespace: str, name: str = DEFAULT_ACCOUNT) -> JSONDict:
    """A ServiceAccount as the controller makes it (no token Secrets since Kubernetes 1.24)."""
    return {
        "kind": "ServiceAccount",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": new_uid(),
            "creationTimestamp": now_rfc3339(),
        },
    }


class ServiceAccountController:
    """Makes `default` ServiceAccounts ``sa-delay`` seconds after their namespace appears (or
    after the account is deleted); with a delay of 0, at once, in the same request."""

    def __init__(self, store: Store, switch: FaultSwitch) -> None:
        self.store = store
        self.switch = switch
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def namespace_added(self, namespace: str) -> None:
        delay = self.switch.current.sa_delay_for(namespace)
        pending = self._timers.pop(namespace, None)
        if pending is not None:
            pending.cancel()
        if delay <= 0:
            self.ensure(namespace)
            return
        loop = asyncio.get_running_loop()
        self._timers[namespace] = loop.call_later(delay, self._due, namespace)

    def account_removed(self, namespace: str, name: str) -> None:
        if name == DEFAULT_ACCOUNT:
            self.namespace_added(namespace)

    def _due(self, namespace: str) -> None:
        self._timers.pop(namespace, None)
        self.ensure(namespace)

    def ensure(self, namespace: str) -> None:
        """Create the namespace's `default` ServiceAccount if the namespace is active and has
        none."""
        ns = self.store.get("namespaces", "", namespace)
        if ns is None or ns.get("status", {}).get("phase") == "Terminating":
            return
        if self.store.get("serviceaccounts", namespace, DEFAULT_ACCOUNT) is None:
            self.store.put("serviceaccounts", service_account_object(namespace), created=True)
            log.debug("serviceaccount %s/default created", namespace)

    def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
