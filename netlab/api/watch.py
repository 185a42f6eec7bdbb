"""Watch streams: JSON lines {type, object}, resourceVersion replay, selectors, bookmarks,
410 Expired as an ERROR event (what the real server does for a compacted version)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from netlab.api.discovery import RESOURCES
from netlab.api.encode import dumps
from netlab.api.errors import status_object
from netlab.api.injector import StreamCut, drop_connection
from netlab.api.store import Event, Store, TooOld
from netlab.api.tables import table
from netlab.contract import JSONDict

log = logging.getLogger("netlab.api.faults")

DEFAULT_TIMEOUT = 1800.0  # the real server's minimum request timeout, before jitter


def translate(event: Event, match: Callable[[JSONDict], bool]) -> str | None:
    """The event type a selector-filtered watcher sees (an object leaving the selector is
    DELETED for it, one entering is ADDED), or None when it sees nothing."""
    now = match(event.object)
    before = event.previous is not None and match(event.previous)
    if event.type == "ADDED":
        return "ADDED" if now else None
    if event.type == "DELETED":
        return "DELETED" if now or before else None
    if now and before:
        return "MODIFIED"
    if now:
        return "ADDED"
    return "DELETED" if before else None


class _Cut(Exception):
    """The cut-streams fault's moment has come: drop the connection."""


class WatchStream:
    """One watch request's response; with ``cut``, its connection drops part-way."""

    def __init__(
        self,
        request: web.Request,
        store: Store,
        resource: str,
        namespace: str | None,
        match: Callable[[JSONDict], bool],
        *,
        as_table: str | None,
        bookmark_interval: float,
        cut: StreamCut | None = None,
    ) -> None:
        self.request = request
        self.store = store
        self.resource = resource
        self.namespace = namespace
        self.match = match
        self.as_table = as_table  # includeObject value when a Table is wanted
        self.bookmark_interval = bookmark_interval
        self.response = web.StreamResponse(headers={"Content-Type": "application/json"})
        self._columns_sent = False
        self.cut = cut
        self._frames = 0

    def _cut_due(self) -> None:
        if self.cut is not None and self._frames >= self.cut.frames:
            raise _Cut

    async def _send(self, type_: str, obj: JSONDict) -> None:
        self._cut_due()
        self._frames += 1
        if self.as_table is not None and type_ in ("ADDED", "MODIFIED", "DELETED"):
            obj = table(
                self.resource, [obj], obj["metadata"].get("resourceVersion", ""), self.as_table
            )
            if self._columns_sent:
                obj["columnDefinitions"] = None
            self._columns_sent = True
            encoded = dumps(obj)
        elif type_ in ("ADDED", "MODIFIED", "DELETED"):
            encoded = self.store.encoded(self.resource, obj)  # cached while obj is stored
        else:
            encoded = dumps(obj)
        await self.response.write(b'{"type":"' + type_.encode() + b'","object":' + encoded + b"}\n")

    def _bookmark(self, annotations: JSONDict | None = None) -> JSONDict:
        meta: JSONDict = {"resourceVersion": str(self.store.rv)}
        if annotations:
            meta["annotations"] = annotations
        info = RESOURCES[self.resource]
        return {"kind": info.kind, "apiVersion": info.api_version, "metadata": meta}

    async def run(
        self, since: int | None, timeout: float | None, bookmarks: bool, initial_end: bool
    ) -> web.StreamResponse:
        """Stream events newer than ``since``; without it, first every current object as ADDED."""
        # Subscribing and taking the snapshot happen with no await in between: no gap.
        try:
            watcher = self.store.watch(self.resource, self.namespace, since)
        except TooOld as error:
            self.cut = None  # one ERROR event, then the end: nothing to cut
            await self.response.prepare(self.request)
            await self._send("ERROR", status_object(410, str(error), "Expired"))
            return self.response
        initial = (
            []
            if since is not None
            else sorted(
                (o for o in self.store.list(self.resource, self.namespace) if self.match(o)),
                key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]),
            )
        )
        try:
            await self.response.prepare(self.request)
            for obj in initial:
                await self._send("ADDED", obj)
            if bookmarks and initial_end:
                await self._send("BOOKMARK", self._bookmark({"k8s.io/initial-events-end": "true"}))
            await self._stream(
                watcher, timeout if timeout is not None else DEFAULT_TIMEOUT, bookmarks
            )
        except _Cut:
            log.info("api fault: watch of %s cut after %d events", self.resource, self._frames)
            drop_connection(self.request)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.store.unwatch(watcher)
        return self.response

    async def _stream(self, watcher: Any, timeout: float, bookmarks: bool) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # A cut stream may also drop while nothing happens: at its time, if before the end.
        cut_on_time = self.cut is not None and self.cut.after < timeout
        if self.cut is not None and cut_on_time:
            deadline = loop.time() + self.cut.after
        while (remaining := deadline - loop.time()) > 0:
            wait = min(remaining, self.bookmark_interval) if bookmarks else remaining
            try:
                event = await asyncio.wait_for(watcher.queue.get(), wait)
            except TimeoutError:
                if bookmarks and deadline - loop.time() > 0:
                    await self._send("BOOKMARK", self._bookmark())
                continue
            if event is None:
                return
            kind = translate(event, self.match)
            if kind is not None:
                await self._send(kind, event.object)
        if cut_on_time:
            raise _Cut
