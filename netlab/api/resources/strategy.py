"""The interface between the generic verbs and one resource's rules, after kube-apiserver's
``rest.RESTCreateStrategy`` / ``RESTUpdateStrategy`` / ``RESTDeleteStrategy``: each hook is
called at one point of a create, update or delete; the base class is a resource with no rules
of its own."""

from __future__ import annotations

from netlab.contract import JSONDict


class Strategy:
    """One resource's rules. The verbs call, in order:

    create: ``decode`` (defaults at decoding), schema validation, ``admit`` (admission
    plugins), ``prepare_for_create`` (defaults, server-set fields, allocation), store,
    ``after_create``.
    update (not the status subresource): ``prepare_for_update`` (what may and may not
    change), ``decode``, schema validation, ``validate_update`` (allocation, admission), store.
    delete: ``delete`` (graceful: the object marked, it goes later) or, when that returns None,
    removal at once and ``after_delete``.
    """

    #: metadata.name is a DNS-1123 label (namespaces), not a subdomain.
    name_is_label = False
    #: A delete answers with the deleted object rather than a Status (the service registry's
    #: ReturnDeletedObject).
    returns_deleted_object = False

    def decode(self, obj: JSONDict) -> None:
        """Defaults set when the object is decoded, before any validation."""

    def admit(self, obj: JSONDict, namespace: str, requested_name: str) -> None:
        """Admission on create (raise ApiError to refuse); ``requested_name`` is the name as the
        client gave it (its generateName when it gave none)."""

    def prepare_for_create(self, obj: JSONDict) -> JSONDict:
        """The object as stored: defaults, fields the server owns, allocations."""
        return obj

    def after_create(self, obj: JSONDict) -> None:
        """What a stored create sets off (scheduling a pod, a namespace's ServiceAccount)."""

    def prepare_for_update(self, obj: JSONDict, existing: JSONDict) -> JSONDict:
        """The new object before validation, with what an update may not change taken from
        ``existing`` (its status is already kept)."""
        return obj

    def validate_update(self, obj: JSONDict, existing: JSONDict) -> JSONDict:
        """After schema validation: the resource's own update rules and allocations."""
        return obj

    def delete(self, obj: JSONDict, grace: int | None) -> JSONDict | None:
        """Graceful deletion: the object as marked for deletion, or None to remove it now."""
        return None

    def after_delete(self, namespace: str, name: str) -> None:
        """What a removal sets off (a ServiceAccount or ``default/kubernetes`` made again)."""
