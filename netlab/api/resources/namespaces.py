"""Namespaces: names are DNS labels, the ``kubernetes.io/metadata.name`` label is always set,
``default``, ``kube-system`` and ``kube-public`` cannot be deleted, a create sets off the
ServiceAccount controller and a delete the namespace finalizer."""

from __future__ import annotations

from netlab.api.controllers.namespaces import NamespaceFinalizer
from netlab.api.controllers.serviceaccounts import ServiceAccountController
from netlab.api.errors import ApiError
from netlab.api.resources.strategy import Strategy
from netlab.contract import JSONDict

UNDELETABLE = ("default", "kube-system", "kube-public")
NAME_LABEL = "kubernetes.io/metadata.name"


class NamespaceStrategy(Strategy):
    name_is_label = True

    def __init__(
        self, finalizer: NamespaceFinalizer, service_accounts: ServiceAccountController
    ) -> None:
        self.finalizer = finalizer
        self.service_accounts = service_accounts

    def prepare_for_create(self, obj: JSONDict) -> JSONDict:
        name = obj["metadata"]["name"]
        obj["metadata"].setdefault("labels", {})[NAME_LABEL] = name
        obj["spec"] = {"finalizers": ["kubernetes"]}
        obj["status"] = {"phase": "Active"}
        return obj

    def after_create(self, obj: JSONDict) -> None:
        self.service_accounts.namespace_added(obj["metadata"]["name"])

    def prepare_for_update(self, obj: JSONDict, existing: JSONDict) -> JSONDict:
        obj["spec"] = existing.get("spec", {})
        # The namespace strategy sets it on every update too: it cannot be removed.
        obj["metadata"].setdefault("labels", {})[NAME_LABEL] = existing["metadata"]["name"]
        return obj

    def delete(self, obj: JSONDict, grace: int | None) -> JSONDict | None:
        name = obj["metadata"]["name"]
        if name in UNDELETABLE:
            raise ApiError(
                403,
                f'namespaces "{name}" is forbidden: this namespace may not be deleted',
                "Forbidden",
                {"name": name, "kind": "namespaces"},
            )
        return self.finalizer.delete(obj)
