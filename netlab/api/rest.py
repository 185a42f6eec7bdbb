"""The generic verbs of every served resource: list, watch, get, create, update, patch,
delete, deletecollection, and the status subresource. What differs between resources is asked
of the resource's strategy (``netlab.api.resources``), as kube-apiserver's generic registry
asks a rest strategy; nothing here names a resource."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping

from aiohttp import web

from netlab.api import admission
from netlab.api.discovery import RESOURCES
from netlab.api.encode import dumps
from netlab.api.errors import ApiError, already_exists, not_found
from netlab.api.injector import STREAM_CUT
from netlab.api.meta import new_uid, now_rfc3339
from netlab.api.paging import (
    EXPIRED_MESSAGE,
    INCONSISTENT_RV,
    decode_continue,
    encode_continue,
    paginate,
)
from netlab.api.patch import SUPPORTED as PATCH_TYPES
from netlab.api.patch import apply_patch
from netlab.api.request import (
    Target,
    bool_param,
    field_validation,
    int_param,
    read_body,
)
from netlab.api.resources.strategy import Strategy
from netlab.api.selectors import match_all, matcher, parse_field_selector, parse_label_selector
from netlab.api.store import Store, TooOld
from netlab.api.tables import table, wants_table
from netlab.api.watch import WatchStream
from netlab.contract import JSONDict

# Metadata only the server sets; a client's values are ignored on create.
_SERVER_META = (
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "managedFields",
)


def respond(obj: JSONDict, status: int = 200, warnings: list[str] | None = None) -> web.Response:
    return respond_bytes(dumps(obj), status, warnings)


def respond_bytes(
    body: bytes, status: int = 200, warnings: list[str] | None = None
) -> web.Response:
    """A JSON response from encoded bytes; each warning becomes a ``Warning: 299`` header."""
    response = web.Response(body=body, status=status, content_type="application/json")
    for warning in warnings or []:
        # JSON string escaping: quotes, control and non-ASCII characters cannot reach the header.
        response.headers.add("Warning", f"299 - {json.dumps(warning)}")
    return response


def _include(request: web.Request) -> str:
    value = request.query.get("includeObject", "Metadata") or "Metadata"
    if value not in ("None", "Metadata", "Object"):
        raise ApiError(400, f"includeObject parameter unsupported: {value!r}")
    return value


class Rest:
    """Handlers for one Target at a time, over ``store``, with each resource's rules from
    ``strategies``; ``bookmark_interval`` is how often watches bookmark."""

    def __init__(
        self, store: Store, strategies: Mapping[str, Strategy], bookmark_interval: float = 60.0
    ) -> None:
        self.store = store
        self.strategies = strategies
        self.bookmark_interval = bookmark_interval

    # helpers
    def _kind(self, target: Target) -> str:
        return RESOURCES[target.resource].kind

    def _api_version(self, target: Target) -> str:
        return RESOURCES[target.resource].api_version

    def existing(self, target: Target) -> JSONDict:
        """The object ``target`` names (404 NotFound when there is none)."""
        assert target.name is not None
        obj = self.store.get(target.resource, target.namespace or "", target.name)
        if obj is None:
            raise not_found(target.resource, target.name, RESOURCES[target.resource].group)
        return obj

    def _allowed(self, target: Target, verb: str) -> None:
        """405 MethodNotAllowed (a Status) for a verb the resource does not serve."""
        info = RESOURCES[target.resource]
        if verb in info.verbs:
            return
        message = "the server does not allow this method on the requested resource"
        details: JSONDict = {"kind": target.resource}
        if target.name is not None:
            details["name"] = target.name
        raise ApiError(
            405, f"{message}: {info.read_only}" if info.read_only else message, details=details
        )

    def _namespace_must_exist(self, namespace: str) -> JSONDict:
        ns = self.store.get("namespaces", "", namespace)
        if ns is None:
            raise not_found("namespaces", namespace)
        return ns

    # collection verbs
    async def list_or_watch(self, request: web.Request, target: Target) -> web.StreamResponse:
        labels = parse_label_selector(request.query.get("labelSelector"))
        fields = parse_field_selector(request.query.get("fieldSelector"), target.resource)
        match = matcher(labels, fields)
        as_table = _include(request) if wants_table(request.headers.get("Accept", "")) else None
        timeout = int_param(request, "timeoutSeconds")
        if bool_param(request, "watch"):
            since_raw = request.query.get("resourceVersion", "")
            since: int | None = None
            if since_raw not in ("", "0"):
                since = int_param(request, "resourceVersion")
            bookmarks = bool_param(request, "allowWatchBookmarks")
            initial = bool_param(request, "sendInitialEvents")
            if initial:
                since = None
            return await self._watch(
                request, target, match, as_table, since, timeout, bookmarks, initial
            )
        return self._list(request, target, match, as_table)

    async def _watch(
        self,
        request: web.Request,
        target: Target,
        match: Callable[[JSONDict], bool],
        as_table: str | None,
        since: int | None,
        timeout: int | None,
        bookmarks: bool,
        initial: bool,
    ) -> web.StreamResponse:
        """Stream the events of ``target``'s objects that ``match`` after ``since`` (None: the
        current state first), for ``timeout`` seconds (None: until the client leaves)."""
        stream = WatchStream(
            request,
            self.store,
            target.resource,
            target.namespace,
            match,
            as_table=as_table,
            bookmark_interval=self.bookmark_interval,
            cut=request.get(STREAM_CUT),
        )
        return await stream.run(
            since, float(timeout) if timeout is not None else None, bookmarks, initial
        )

    def _list(
        self,
        request: web.Request,
        target: Target,
        match: Callable[[JSONDict], bool],
        as_table: str | None,
    ) -> web.Response:
        """A list, paged when ``limit`` is given (limit <= 0 means no limit, as in the API)."""
        limit = int_param(request, "limit")
        if limit is not None and limit <= 0:
            limit = None
        token = request.query.get("continue", "")
        selective = match is not match_all
        rv = self.store.rv
        start = None
        objects = None
        if token:
            position = decode_continue(token)
            if request.query.get("resourceVersion", "") not in ("", "0"):
                raise ApiError(
                    400, "specifying resource version is not allowed when using continue"
                )
            start = position.start
            if position.rv != INCONSISTENT_RV:
                try:
                    objects = self.store.snapshot(target.resource, position.rv)
                except TooOld:
                    error = ApiError(410, EXPIRED_MESSAGE, "Expired")
                    # The real answer carries a token that goes on, inconsistently, from now.
                    error.status["metadata"] = {
                        "continue": encode_continue(position.start, INCONSISTENT_RV)
                    }
                    raise error from None
                rv = position.rv
        if objects is None:
            objects = self.store.objects(target.resource)
        page = paginate(
            objects,
            namespace=target.namespace,
            match=match,
            selective=selective,
            limit=limit,
            start=start,
        )
        meta: JSONDict = {"resourceVersion": str(rv)}
        if page.next_start is not None:
            meta["continue"] = encode_continue(page.next_start, rv)
            if page.remaining is not None:
                meta["remainingItemCount"] = page.remaining
        if as_table is not None:
            listing = table(target.resource, page.items, str(rv), as_table)
            listing["metadata"] = meta
            return respond(listing)
        head = dumps(
            {
                "kind": f"{self._kind(target)}List",
                "apiVersion": self._api_version(target),
                "metadata": meta,
            }
        )
        # Items of a typed list carry no kind/apiVersion, as the real server sends them; each
        # stored object's encoding is cached until it changes.
        items = self.store.encoded_items(target.resource, page.items)
        return respond_bytes(head[:-1] + b',"items":[' + items + b"]}")

    async def create(self, request: web.Request, target: Target) -> web.Response:
        kind = self._kind(target)
        strategy = self.strategies[target.resource]
        self._allowed(target, "create")
        body = await read_body(request, kind=kind)
        if not isinstance(body, dict):
            raise ApiError(
                400,
                f"the object provided is unrecognized (must be of type {kind}): couldn't get version/kind; json parse error: not an object",
            )
        obj = admission.drop_nulls(body)
        self._check_type(obj, target)
        warnings = admission.check_fields(kind, obj, field_validation(request))
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(
                400,
                f"the object provided is unrecognized (must be of type {kind}): metadata is not an object",
            )
        # Admission sees the name as the client gave it (names are generated later).
        requested_name = str(meta.get("name") or meta.get("generateName") or "")
        name = admission.assign_name(obj, kind)
        if target.namespace is not None:
            if meta.get("namespace") not in (None, "", target.namespace):
                raise ApiError(
                    400,
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            meta["namespace"] = target.namespace
        strategy.decode(obj)
        admission.validate(
            kind, obj, label_name=strategy.name_is_label, group=RESOURCES[target.resource].group
        )
        if target.namespace is not None:
            ns = self._namespace_must_exist(target.namespace)
            if ns.get("status", {}).get("phase") == "Terminating":
                raise ApiError(
                    403,
                    f'{target.resource} "{name}" is forbidden: unable to create new content in namespace {target.namespace} because it is being terminated',
                    "Forbidden",
                    {
                        "name": name,
                        "kind": target.resource,
                        "causes": [
                            {
                                "reason": "NamespaceTerminating",
                                "message": f"namespace {target.namespace} is being terminated",
                                "field": "metadata.namespace",
                            }
                        ],
                    },
                )
        strategy.admit(obj, target.namespace or "", requested_name)
        if self.store.get(target.resource, target.namespace or "", name) is not None:
            raise already_exists(target.resource, name, RESOURCES[target.resource].group)
        for key in _SERVER_META:
            meta.pop(key, None)
        meta["uid"] = new_uid()
        meta["creationTimestamp"] = now_rfc3339()
        obj["kind"], obj["apiVersion"] = kind, self._api_version(target)
        obj = strategy.prepare_for_create(obj)
        if request.query.get("dryRun"):
            return respond(obj, 201, warnings)
        stored = self.store.put(target.resource, obj, created=True)
        strategy.after_create(stored)
        return respond(stored, 201, warnings)

    def _check_type(self, obj: JSONDict, target: Target) -> None:
        kind, api_version = self._kind(target), self._api_version(target)
        if obj.get("apiVersion") not in (None, "", api_version):
            raise ApiError(
                400,
                f"the API version in the data ({obj.get('apiVersion')}) does not match the expected API version ({api_version})",
            )
        if obj.get("kind") not in (None, "", kind):
            raise ApiError(
                400,
                f"the kind in the data ({obj.get('kind')}) does not match the expected kind ({kind})",
            )

    async def delete_collection(self, request: web.Request, target: Target) -> web.Response:
        self._allowed(target, "deletecollection")
        match = matcher(
            parse_label_selector(request.query.get("labelSelector")),
            parse_field_selector(request.query.get("fieldSelector"), target.resource),
        )
        grace = await self._grace(request)
        strategy = self.strategies[target.resource]
        deleted = []
        for obj in sorted(
            self.store.list(target.resource, target.namespace), key=lambda o: o["metadata"]["name"]
        ):
            if not match(obj):
                continue
            marked = strategy.delete(obj, grace)
            if marked is not None:
                deleted.append(marked)
                continue
            namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
            gone = self.store.remove(target.resource, namespace, name)
            if gone is not None:
                deleted.append(gone)
                strategy.after_delete(namespace, name)
        return respond(
            {
                "kind": f"{self._kind(target)}List",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self.store.rv)},
                "items": deleted,
            }
        )

    # item verbs
    async def get(self, request: web.Request, target: Target) -> web.StreamResponse:
        if bool_param(request, "watch"):  # deprecated single-object watch: a name field selector
            assert target.name is not None
            match = matcher((), (("metadata.name", True, target.name),))
            since = int_param(request, "resourceVersion") or None
            timeout = int_param(request, "timeoutSeconds")
            return await self._watch(request, target, match, None, since, timeout, False, False)
        obj = self.existing(target)
        if wants_table(request.headers.get("Accept", "")):
            return respond(
                table(target.resource, [obj], obj["metadata"]["resourceVersion"], _include(request))
            )
        return respond_bytes(self.store.encoded(target.resource, obj))

    async def update(self, request: web.Request, target: Target) -> web.Response:
        kind = self._kind(target)
        if target.subresource != "status":
            self._allowed(target, "update")
        body = await read_body(request, kind=kind)
        if not isinstance(body, dict):
            raise ApiError(
                400, f"the object provided is unrecognized (must be of type {kind}): not an object"
            )
        return self._replace(request, target, copy.deepcopy(body), self.existing(target))

    async def patch(self, request: web.Request, target: Target) -> web.Response:
        kind = self._kind(target)
        if target.subresource != "status":
            self._allowed(target, "patch")
        body = await read_body(request, kind=kind, accepted=PATCH_TYPES)
        existing = self.existing(target)
        patched = apply_patch(request.content_type or "", copy.deepcopy(existing), body)
        if not isinstance(patched, dict):
            raise ApiError(
                422, f'{kind} "{target.name}" is invalid: the patch produced a non-object'
            )
        meta = patched.get("metadata")
        if (
            isinstance(meta, dict)
            and meta.get("resourceVersion") == existing["metadata"]["resourceVersion"]
        ):
            meta.pop("resourceVersion")  # unchanged: no precondition was asked for
        return self._replace(request, target, patched, existing)

    def _replace(
        self, request: web.Request, target: Target, obj: JSONDict, existing: JSONDict
    ) -> web.Response:
        """Shared tail of PUT and PATCH: checks, keeps server-owned fields, stores."""
        kind = self._kind(target)
        strategy = self.strategies[target.resource]
        obj = admission.drop_nulls(obj)
        self._check_type(obj, target)
        warnings = admission.check_fields(kind, obj, field_validation(request))
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            meta = obj["metadata"] = {}
        if meta.get("name") not in (None, target.name):
            raise ApiError(
                400,
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({target.name})",
            )
        meta["name"] = target.name
        old_meta = existing["metadata"]
        if meta.get("resourceVersion") not in (None, "", old_meta["resourceVersion"]):
            raise ApiError(
                409,
                f'Operation cannot be fulfilled on {target.resource} "{target.name}": the object has been modified; please apply your changes to the latest version and try again',
                "Conflict",
                {"name": target.name, "kind": target.resource},
            )
        if target.namespace is not None:
            meta["namespace"] = target.namespace
        for key in _SERVER_META:
            if key in old_meta:
                meta[key] = old_meta[key]
            else:
                meta.pop(key, None)
        obj["kind"], obj["apiVersion"] = kind, self._api_version(target)
        status_only = target.subresource == "status"
        if status_only:
            obj = {**existing, "status": obj.get("status", {})}
        else:
            if "status" in existing:
                obj["status"] = existing["status"]
            obj = strategy.prepare_for_update(obj, existing)
            strategy.decode(obj)
        admission.validate(
            kind, obj, label_name=strategy.name_is_label, group=RESOURCES[target.resource].group
        )
        if not status_only:
            obj = strategy.validate_update(obj, existing)
        if request.query.get("dryRun"):
            return respond(obj, 200, warnings)
        return respond(self.store.put(target.resource, obj, created=False), 200, warnings)

    async def _grace(self, request: web.Request) -> int | None:
        options = await read_body(request, kind="DeleteOptions", required=False)
        grace = int_param(request, "gracePeriodSeconds")
        if isinstance(options, dict):
            value = options.get("gracePeriodSeconds")
            if value is not None:
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ApiError(400, "DeleteOptions.gracePeriodSeconds must be an integer")
                grace = value
        elif options is not None:
            raise ApiError(400, "the body of a delete must be a DeleteOptions object")
        if grace is not None and grace < 0:
            grace = 0
        return grace

    async def delete(self, request: web.Request, target: Target) -> web.Response:
        assert target.name is not None
        self._allowed(target, "delete")
        grace = await self._grace(request)
        obj = self.existing(target)
        strategy = self.strategies[target.resource]
        marked = strategy.delete(obj, grace)
        if marked is not None:
            return respond(marked)
        gone = self.store.remove(target.resource, target.namespace or "", target.name)
        strategy.after_delete(target.namespace or "", target.name)
        if strategy.returns_deleted_object and gone is not None:
            return respond(gone)
        return respond(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {
                    "name": target.name,
                    "kind": target.resource,
                    "uid": obj["metadata"]["uid"],
                },
            }
        )
