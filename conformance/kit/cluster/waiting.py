"""Waiting on the API as a controller does: list, then watch from the list's resourceVersion until
a condition holds or the deadline passes.

A watch ends early more often than one would think: the server closes it (its own timeout, a
restart), a connection is cut mid-stream, a 410 Gone says the resourceVersion is too old, and a
busy server answers the watch request itself 429 or 5xx. Each of those is only a reason to list
and watch again, after a short back-off (tenacity), until the deadline; the list goes through
`call_api`, which retries transient errors and honours Retry-After. A non-transient refusal
(403, 404 of the list) raises `ClusterError` at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from time import monotonic
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from conformance.kit.base.errors import ClusterError
from conformance.kit.base.settings import Timeouts
from conformance.kit.cluster.api import (
    call_api,
    describe_api_error,
    is_transient,
    name_of,
    resource_version_of,
    watch_events,
)

#: ``done(objects)``: True once the wait is over; it may raise to end the wait early.
Condition = Callable[[Mapping[str, Any]], bool]
#: ``on_event(type, object)``: every watch event, before ``done`` looks (ADDED, MODIFIED,
#: DELETED; BOOKMARK and ERROR are not passed on).
EventHook = Callable[[str, Any], None]


class _WatchEnded(Exception):
    """The watch ended or broke before the condition held: list and watch again."""


def wait_on_list(
    what: str,
    list_fn: Callable[..., Any],
    *args: Any,
    done: Condition,
    timeout: float,
    timeouts: Timeouts,
    on_event: EventHook | None = None,
    **kwargs: Any,
) -> dict[str, Any] | None:
    """The objects ``list_fn(*args, **kwargs)`` returns, by name, once ``done(objects)`` holds
    (kept current by a watch); None when it still does not hold after ``timeout`` seconds.

    ``what`` names the wait in errors (``pods in NS``). Exceptions ``done`` raises propagate.
    "It did not happen" rests on a look: a wait whose watch broke (or stalled) past the
    deadline lists once more and judges that list, so a watch the API server keeps dropping
    never stands for a state nobody saw; a list that cannot be made raises `ClusterError`.
    """
    deadline = monotonic() + timeout
    objects: dict[str, Any] = {}

    def look() -> Any:
        listed = call_api(f"list {what}", list_fn, *args, timeouts=timeouts, **kwargs)
        objects.clear()
        objects.update({name_of(item): item for item in listed.items})
        return listed

    def list_and_watch() -> bool:
        listed = look()
        if done(objects):
            return True
        remaining = deadline - monotonic()
        if remaining <= 0:
            return False
        try:
            for event in watch_events(
                list_fn,
                *args,
                resource_version=resource_version_of(listed),
                timeout=remaining,
                **kwargs,
            ):
                kind, item = event.get("type"), event.get("object")
                if kind not in ("ADDED", "MODIFIED", "DELETED") or item is None:
                    continue
                if on_event is not None:
                    on_event(str(kind), item)
                if kind == "DELETED":
                    objects.pop(name_of(item), None)
                else:
                    objects[name_of(item)] = item
                if done(objects):
                    return True
                if monotonic() >= deadline:
                    return False
        except ApiException as exc:
            if exc.status != 410 and not is_transient(exc):
                raise ClusterError(f"watch {what}: {describe_api_error(exc)}") from exc
            broke = True
        except (urllib3.exceptions.HTTPError, OSError):
            broke = True  # the connection dropped mid-stream, or stalled to its read timeout
        else:
            broke = False  # the server ended the watch (its own timeout: the deadline)
        if monotonic() >= deadline:
            if broke:  # the watch saw nothing to the end: one more look decides
                look()
                return bool(done(objects))
            return False
        raise _WatchEnded

    try:
        for attempt in Retrying(
            retry=retry_if_exception_type(_WatchEnded),
            stop=stop_after_delay(timeout),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            reraise=True,
        ):
            with attempt:
                if list_and_watch():
                    return objects
                return None
    except _WatchEnded:
        return None
    return None  # pragma: no cover (tenacity returns from inside the loop)
