"""The object store: one global resourceVersion counter, a bounded event history, watchers.

Stored objects are never mutated in place (writers always store a fresh dict), so lists and
watch events can hand out the stored dicts without copying, and each stored object's JSON is
encoded once and reused until the object changes.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from netlab.api.encode import dumps
from netlab.contract import JSONDict

Key = tuple[str, str, str]  # (resource, namespace or "", name)
Place = tuple[str, str]  # (namespace or "", name) within one resource

DEFAULT_HISTORY = 10_000
WATCH_QUEUE_LIMIT = 10_000  # a watcher this far behind is dropped, as the real cacher does


@dataclass(frozen=True)
class Event:
    """One change: ADDED, MODIFIED or DELETED; ``previous`` is the object before the change."""

    rv: int
    resource: str
    type: str
    object: JSONDict
    previous: JSONDict | None


class Watcher:
    """A subscription to one resource (optionally one namespace); events arrive on ``queue``."""

    def __init__(self, resource: str, namespace: str | None) -> None:
        self.resource = resource
        self.namespace = namespace
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(WATCH_QUEUE_LIMIT)

    def wants(self, event: Event) -> bool:
        if event.resource != self.resource:
            return False
        return self.namespace is None or namespace_of(event.object) == self.namespace


class TooOld(Exception):
    """The requested resourceVersion is older than the retained history (410 Gone)."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


def namespace_of(obj: JSONDict) -> str:
    return str(obj.get("metadata", {}).get("namespace") or "")


def name_of(obj: JSONDict) -> str:
    return str(obj.get("metadata", {}).get("name") or "")


class Store:
    """In-memory objects keyed by (resource, namespace, name)."""

    def __init__(self, history_limit: int = DEFAULT_HISTORY) -> None:
        self._objects: dict[str, dict[Place, JSONDict]] = {}
        # Encoded JSON of stored objects: (the object it encodes, full form, list-item form).
        self._encoded: dict[Key, tuple[JSONDict, bytes | None, bytes | None]] = {}
        self._history: deque[Event] = deque(maxlen=history_limit)
        self._compacted_rv = 0  # newest rv that has fallen out of the history
        self._watchers: set[Watcher] = set()
        self.rv = 1

    # reads
    def get(self, resource: str, namespace: str, name: str) -> JSONDict | None:
        return self._objects.get(resource, {}).get((namespace, name))

    def list(self, resource: str, namespace: str | None = None) -> list[JSONDict]:
        objects = self._objects.get(resource, {})
        if namespace is None:
            return list(objects.values())
        return [obj for (ns, _), obj in objects.items() if ns == namespace]

    def objects(self, resource: str) -> dict[Place, JSONDict]:
        """Every object of ``resource`` (a fresh mapping over the stored, shared objects)."""
        return dict(self._objects.get(resource, {}))

    def items(self) -> Iterator[tuple[Key, JSONDict]]:
        return iter(
            [
                ((resource, ns, name), obj)
                for resource, objects in self._objects.items()
                for (ns, name), obj in objects.items()
            ]
        )

    @property
    def oldest_rv(self) -> int:
        """The oldest resourceVersion the history can still rewind to (or replay from)."""
        return self._compacted_rv

    def snapshot(self, resource: str, rv: int) -> dict[Place, JSONDict]:
        """``resource``'s objects as they were at ``rv`` (TooOld once the history lost it):
        the current objects with every newer change undone, newest first."""
        if rv < self._compacted_rv:
            raise TooOld(rv, self._compacted_rv + 1)
        objects = dict(self._objects.get(resource, {}))
        for event in reversed(self._history):
            if event.rv <= rv:
                break
            if event.resource != resource:
                continue
            place = (namespace_of(event.object), name_of(event.object))
            if event.previous is None:
                objects.pop(place, None)
            else:
                objects[place] = event.previous
        return objects

    def encoded_items(self, resource: str, objects: Sequence[JSONDict]) -> bytes:
        """The list-item encodings of ``objects``, comma-joined (a list's ``items`` body)."""
        return b",".join([self.encoded(resource, obj, item=True) for obj in objects])

    def encoded(self, resource: str, obj: JSONDict, *, item: bool = False) -> bytes:
        """``obj`` as JSON, cached while it is the stored object; ``item`` drops kind and
        apiVersion, as the items of a typed list carry neither."""
        key = (resource, namespace_of(obj), name_of(obj))
        current = self._objects.get(resource, {}).get(key[1:])
        entry = self._encoded.get(key)
        if entry is None or entry[0] is not obj:
            entry = (obj, None, None)
        full, listed = entry[1], entry[2]
        if item:
            if listed is None:
                listed = dumps({k: v for k, v in obj.items() if k not in ("kind", "apiVersion")})
            result = listed
        else:
            if full is None:
                full = dumps(obj)
            result = full
        if current is obj:  # only the stored version is worth keeping
            self._encoded[key] = (obj, full, listed)
        return result

    # writes: each takes a fresh dict, stamps a new resourceVersion and emits an event
    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _stamp(self, obj: JSONDict) -> JSONDict:
        obj["metadata"] = {**obj.get("metadata", {}), "resourceVersion": self._next_rv()}
        return obj

    def put(self, resource: str, obj: JSONDict, *, created: bool) -> JSONDict:
        place = (namespace_of(obj), name_of(obj))
        objects = self._objects.setdefault(resource, {})
        previous = objects.get(place)
        self._stamp(obj)
        objects[place] = obj
        self._encoded.pop((resource, *place), None)
        self._emit(Event(self.rv, resource, "ADDED" if created else "MODIFIED", obj, previous))
        return obj

    def remove(self, resource: str, namespace: str, name: str) -> JSONDict | None:
        previous = self._objects.get(resource, {}).pop((namespace, name), None)
        if previous is None:
            return None
        self._encoded.pop((resource, namespace, name), None)
        # The DELETED event carries the object at a new resourceVersion, like etcd3's delete.
        gone = self._stamp(dict(previous))
        self._emit(Event(self.rv, resource, "DELETED", gone, previous))
        return gone

    def _emit(self, event: Event) -> None:
        if len(self._history) == self._history.maxlen:
            self._compacted_rv = self._history[0].rv
        self._history.append(event)
        for watcher in list(self._watchers):
            if not watcher.wants(event):
                continue
            try:
                watcher.queue.put_nowait(event)
            except asyncio.QueueFull:
                self._end(watcher)

    # watch
    def watch(self, resource: str, namespace: str | None, since: int | None) -> Watcher:
        """Subscribe; with ``since``, first queue every retained event newer than it."""
        if since is not None and since < self._compacted_rv:
            raise TooOld(since, self._compacted_rv + 1)
        watcher = Watcher(resource, namespace)
        if since is not None:
            for event in self._history:
                if event.rv > since and watcher.wants(event):
                    watcher.queue.put_nowait(event)
        self._watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def close_watchers(self) -> None:
        for watcher in list(self._watchers):
            self._end(watcher)

    def _end(self, watcher: Watcher) -> None:
        """Drop a watcher and wake its handler with None so the stream ends (client re-lists)."""
        self.unwatch(watcher)
        while not watcher.queue.empty():
            watcher.queue.get_nowait()
        watcher.queue.put_nowait(None)
