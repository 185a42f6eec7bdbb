"""Pods: the ServiceAccount and Pod Security admission plugins, defaults (``admission.
default_pod``), what an update may change (images, activeDeadlineSeconds, added tolerations),
and the pod lifecycle that a create or delete sets off."""

from __future__ import annotations

import copy
import json

from netlab.api import admission
from netlab.api.cluster.pods import PodLifecycle
from netlab.api.controllers.serviceaccounts import DEFAULT_ACCOUNT
from netlab.api.errors import ApiError
from netlab.api.resources.strategy import Strategy
from netlab.api.store import Store
from netlab.contract import JSONDict

MIRROR_POD_ANNOTATION = "kubernetes.io/config.mirror"


def admit_service_account(store: Store, namespace: str, pod: JSONDict, requested_name: str) -> None:
    """403 Forbidden, in the ServiceAccount admission plugin's words, when the pod's
    ServiceAccount does not exist. ``requested_name`` is the name as the client gave it
    (its generateName when it gave none): admission runs before names are generated."""
    meta = pod.get("metadata") or {}
    if MIRROR_POD_ANNOTATION in (meta.get("annotations") or {}):
        return
    spec = pod.get("spec") or {}
    account = str(spec.get("serviceAccountName") or spec.get("serviceAccount") or DEFAULT_ACCOUNT)
    if store.get("serviceaccounts", namespace, account) is not None:
        return
    name = requested_name or "Unknown"
    cause = (
        f"error looking up service account {namespace}/{account}: "
        f"serviceaccount {json.dumps(account)} not found"
    )
    raise ApiError(
        403,
        f"pods {json.dumps(name)} is forbidden: {cause}",
        "Forbidden",
        {"name": name, "kind": "pods"},
    )


class PodStrategy(Strategy):
    def __init__(self, store: Store, lifecycle: PodLifecycle) -> None:
        self.store = store
        self.lifecycle = lifecycle

    def admit(self, obj: JSONDict, namespace: str, requested_name: str) -> None:
        admit_service_account(self.store, namespace, obj, requested_name)
        admission.check_pod_security(
            self.store.get("namespaces", "", namespace), obj, requested_name
        )

    def prepare_for_create(self, obj: JSONDict) -> JSONDict:
        return admission.default_pod(obj)

    def after_create(self, obj: JSONDict) -> None:
        self.lifecycle.created(obj)

    def prepare_for_update(self, obj: JSONDict, existing: JSONDict) -> JSONDict:
        """Only images, activeDeadlineSeconds and added tolerations may change in a pod spec."""
        defaulted = admission.default_pod(obj)
        defaulted["status"] = existing.get("status", {})
        new_spec = copy.deepcopy(defaulted.get("spec", {}))
        old_spec = copy.deepcopy(existing.get("spec", {}))
        for spec in (new_spec, old_spec):
            for group in ("containers", "initContainers"):
                for container in spec.get(group) or []:
                    container.pop("image", None)
            spec.pop("activeDeadlineSeconds", None)
            spec.pop("tolerations", None)
        if not new_spec.get("nodeName"):
            new_spec["nodeName"] = old_spec.get("nodeName")
            defaulted["spec"]["nodeName"] = old_spec.get("nodeName")
        if {k: v for k, v in new_spec.items() if v is not None} != {
            k: v for k, v in old_spec.items() if v is not None
        }:
            raise ApiError(
                422,
                f'Pod "{obj["metadata"]["name"]}" is invalid: spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)',
                details={
                    "name": obj["metadata"]["name"],
                    "kind": "Pod",
                    "causes": [
                        {
                            "reason": "FieldValueForbidden",
                            "message": "Forbidden: pod updates may not change fields other than the image",
                            "field": "spec",
                        }
                    ],
                },
            )
        if not defaulted["spec"].get("nodeName"):
            defaulted["spec"].pop("nodeName", None)
        return defaulted

    def delete(self, obj: JSONDict, grace: int | None) -> JSONDict | None:
        return self.lifecycle.delete(obj, grace)
