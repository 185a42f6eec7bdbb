"""List paging (``limit`` and ``continue``) as the real API server pages a list from etcd.

A continue token is what k8s.io/apiserver/pkg/storage/continue.go writes: raw-URL base64 of
``{"v":"meta.k8s.io/v1","rv":N,"start":KEY}``, where KEY is the storage key after the last
returned item (``name\\x00`` in a namespace, ``namespace/name\\x00`` across namespaces),
relative to the list's key prefix. Every page is served from the snapshot at ``rv``; once that
version has left the history the token is Expired (410), as a compacted etcd revision is.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from netlab.api.errors import ApiError
from netlab.api.selectors import match_all
from netlab.api.store import Place
from netlab.contract import JSONDict

TOKEN_VERSION = "meta.k8s.io/v1"
INCONSISTENT_RV = -1  # a token that continues from the newest state (after an Expired one)
EXPIRED_MESSAGE = (
    "The provided continue parameter is too old to display a consistent list result. You can "
    "start a new list without the continue parameter, or use the continue token in this "
    "response to retrieve the remainder of the results. Continuing with the provided token "
    "results in an inconsistent list - objects that were created, modified, or deleted between "
    "the time the first chunk was returned and now may show up in the list."
)


@dataclass(frozen=True)
class Continue:
    rv: int  # the snapshot's resourceVersion, or INCONSISTENT_RV
    start: str  # first storage key (relative to the list's prefix) of the next page


def encode_continue(start: str, rv: int) -> str:
    token = json.dumps({"v": TOKEN_VERSION, "rv": rv, "start": start}, separators=(",", ":"))
    return base64.urlsafe_b64encode(token.encode()).rstrip(b"=").decode()


def _invalid(detail: str) -> ApiError:
    return ApiError(400, f"invalid continue token: continue key is not valid{detail}")


def decode_continue(token: str) -> Continue:
    """The token's snapshot and start key; 400 BadRequest with the real server's words."""
    try:
        raw = base64.b64decode(token.encode() + b"=" * (-len(token) % 4), b"-_", validate=True)
    except (binascii.Error, ValueError) as error:
        raise _invalid(
            f": incorrect encoded start resourceVersion (version {TOKEN_VERSION}): {error}"
        ) from None
    try:
        data = json.loads(raw)
    except ValueError as error:
        raise _invalid(f": {error}") from None
    if not isinstance(data, dict):
        raise _invalid(": not an object")
    if data.get("v") != TOKEN_VERSION:
        raise _invalid(f": server does not recognize this encoded version {data.get('v')}")
    rv, start = data.get("rv"), data.get("start")
    if not isinstance(rv, int) or isinstance(rv, bool) or rv == 0 or rv < INCONSISTENT_RV:
        raise _invalid(f": incorrect encoded start resourceVersion (version {TOKEN_VERSION})")
    if not isinstance(start, str) or not start:
        raise _invalid(f": encoded start key empty (version {TOKEN_VERSION})")
    # Go's path.Clean check: a start key may not climb out of the list's prefix.
    parts = start.split("/")
    if start.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise _invalid(f": {start}")
    return Continue(rv, start)


def storage_key(place: Place, all_namespaces: bool) -> str:
    """An object's key relative to the list's prefix, which orders the list as etcd does."""
    namespace, name = place
    return f"{namespace}/{name}" if all_namespaces and namespace else name


@dataclass(frozen=True)
class Page:
    items: list[JSONDict]
    next_start: str | None  # the next page's start key, None on the last page
    remaining: int | None  # items after this page, None when a selector makes it costly


def paginate(
    objects: Mapping[Place, JSONDict],
    *,
    namespace: str | None,
    match: Callable[[JSONDict], bool],
    selective: bool,
    limit: int | None,
    start: str | None,
) -> Page:
    """One page of ``objects`` (those in ``namespace`` that ``match``), in key order."""
    all_namespaces = namespace is None
    keyed = sorted(
        (
            (storage_key(place, all_namespaces), obj)
            for place, obj in objects.items()
            if namespace is None or place[0] == namespace
        ),
        key=lambda pair: pair[0],
    )
    if start is not None:
        keyed = keyed[bisect.bisect_left(keyed, start, key=lambda pair: pair[0]) :]
    if match is match_all and limit is None:
        return Page([obj for _, obj in keyed], None, None)
    items: list[JSONDict] = []
    last = ""
    for index, (key, obj) in enumerate(keyed):
        if limit is not None and len(items) >= limit:
            remaining = None
            if not selective:
                remaining = len(keyed) - index
            return Page(items, last + "\x00", remaining)
        if match(obj):
            items.append(obj)
            last = key
    return Page(items, None, None)
