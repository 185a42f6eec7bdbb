"""The request-path API faults: slow answers, throttling, RBAC denials, server errors, and the
choice of which watch and exec streams get cut. One aiohttp middleware, after authentication,
in kube-apiserver's filter order: priority-and-fairness (429) comes before authorization
(403), and storage errors (500, 503) come from behind both."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from netlab.api.errors import ApiError, status_object
from netlab.api.faults import ApiFaults, FaultSwitch, chance
from netlab.api.requestinfo import RequestInfo, request_info

log = logging.getLogger("netlab.api.faults")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The text priority-and-fairness (and max-in-flight) answer with: plain text, not a Status.
THROTTLED_TEXT = "Too many requests, please try again later.\n"
# What the watch cache answers while it (re)initializes: a Status with retryAfterSeconds.
CACHE_NOT_READY = "storage is (re)initializing"
# An etcd client error that reaches the handler unconverted: 500 with no reason.
ETCD_TIMEOUT = "etcdserver: request timed out"
UNAVAILABLE = "the server is currently unable to handle the request"
# Remembered request counts (per method and path) before the table starts afresh.
COUNT_LIMIT = 50_000
# Where stream cuts fall (see StreamCut).
CUT_MAX_FRAMES = 8
CUT_SECONDS = (0.5, 5.0)
CUT_MAX_BYTES = 4096


@dataclass(frozen=True)
class StreamCut:
    """Where a stream loses its connection: a watch after ``frames`` events or ``after``
    seconds, whichever comes first; an exec after ``output_bytes`` bytes of output, or just
    before its exit status when the output is shorter."""

    frames: int
    after: float
    output_bytes: int


STREAM_CUT = web.RequestKey("stream_cut", StreamCut)


def forbidden(info: RequestInfo, user: str, verb: str) -> ApiError:
    """RBAC's denial, as kube-apiserver's authorization filter words it (NewForbidden)."""
    resource = info.resource + (f"/{info.subresource}" if info.subresource else "")
    where = (
        f"in the namespace {json.dumps(info.namespace)}"
        if info.namespace
        else "at the cluster scope"
    )
    reason = (
        f"User {json.dumps(user)} cannot {verb} resource {json.dumps(resource)} "
        f"in API group {json.dumps(info.group)} {where}"
    )
    qualified = info.resource + (f".{info.group}" if info.group else "")
    named = f" {json.dumps(info.name)}" if info.name else ""
    details: dict[str, object] = {"kind": info.resource}
    if info.group:
        details["group"] = info.group
    if info.name:
        details["name"] = info.name
    return ApiError(403, f"{qualified}{named} is forbidden: {reason}", "Forbidden", details)


def throttled(faults: ApiFaults, info: RequestInfo, draw: float) -> web.StreamResponse:
    """A 429. Reads are sometimes answered by the watch cache's Status; everything else, and
    the rest of the reads, by priority-and-fairness's plain text."""
    retry_after = faults.retry_after
    if info.reads and draw < 0.5:
        return ApiError(
            429, CACHE_NOT_READY, "TooManyRequests", {"retryAfterSeconds": retry_after}
        ).response()
    return web.Response(
        status=429,
        text=THROTTLED_TEXT,
        content_type="text/plain",
        charset="utf-8",
        headers={"Retry-After": str(retry_after), "X-Content-Type-Options": "nosniff"},
    )


def server_error(draw: float) -> web.StreamResponse:
    """A 500 as an unconverted etcd error reaches the client (no reason), or a 503."""
    if draw < 0.5:
        return web.json_response(status_object(500, ETCD_TIMEOUT, ""), status=500)
    return web.json_response(status_object(503, UNAVAILABLE, "ServiceUnavailable"), status=503)


class FaultInjector:
    """Applies the switch's request faults; ``middleware`` goes after authentication."""

    def __init__(self, switch: FaultSwitch, exempt: Callable[[str], bool]) -> None:
        self.switch = switch
        self._exempt = exempt  # paths no fault touches (health, the lab's admin endpoint)
        self._seen: dict[tuple[str, str], int] = {}

    def _draws(self, method: str, path: str, seed: int) -> Callable[[str], float]:
        """This request's dice: the nth request with this method and path gets the same
        numbers for the same seed, whatever else runs meanwhile."""
        key = (method, path)
        if len(self._seen) >= COUNT_LIMIT:
            self._seen.clear()
        count = self._seen.get(key, 0)
        self._seen[key] = count + 1
        return lambda what: chance(seed, what, method, path, count)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        faults = self.switch.current
        if self._exempt(request.path) or not (faults.on_requests or faults.forbid):
            return await handler(request)
        info = request_info(request.method, request.path, request.query, request.headers)
        draw = self._draws(request.method, request.path, faults.seed)
        if faults.slow and draw("slow") < faults.slow:
            # Injected latency, not a wait for something: the answer is simply late.
            await asyncio.sleep(faults.slow_seconds)
        # Priority-and-fairness leaves long-running requests alone, except watches.
        exempt_from_flow_control = info.long_running and info.verb != "watch"
        if faults.throttle and not exempt_from_flow_control and draw("throttle") < faults.throttle:
            log.info("api fault: 429 for %s %s", request.method, request.path)
            return throttled(faults, info, draw("throttle-shape"))
        if info.is_resource:
            for verb in info.verbs_checked:
                if faults.denied(verb, info.group, info.resource, info.subresource):
                    raise forbidden(info, faults.forbid_user, verb)
        if faults.server_error and draw("server-error") < faults.server_error:
            log.info("api fault: server error for %s %s", request.method, request.path)
            return server_error(draw("server-error-shape"))
        streams = info.verb == "watch" or info.subresource == "exec"
        if faults.cut_streams and streams and draw("cut") < faults.cut_streams:
            low, high = CUT_SECONDS
            request[STREAM_CUT] = StreamCut(
                frames=int(draw("cut-frames") * CUT_MAX_FRAMES),
                after=low + (high - low) * draw("cut-after"),
                output_bytes=int(draw("cut-bytes") * CUT_MAX_BYTES),
            )
        return await handler(request)


def drop_connection(request: web.Request) -> None:
    """Cut the request's connection as a dying peer or a dropped network path does: no close
    frame, no final chunk."""
    transport = request.transport
    if transport is not None:
        transport.abort()
