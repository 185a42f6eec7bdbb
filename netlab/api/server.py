"""The lab's Kubernetes API server: aiohttp app, auth, routing, and the ``ApiServer`` facade
that netlab/lab.py and the kubelets use."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_fixed

from netlab.api import discovery
from netlab.api.admin import ADMIN_PREFIX, serve_admin
from netlab.api.controlplane import ControlPlane
from netlab.api.errors import ApiError, status_object
from netlab.api.eviction import serve_eviction
from netlab.api.execs import serve_exec
from netlab.api.faults import ApiFaults, FaultSwitch, parse_api_faults
from netlab.api.injector import FaultInjector
from netlab.api.kubeconfig import write_kubeconfig
from netlab.api.logs import serve_logs
from netlab.api.negotiation import (
    JSON,
    YAML,
    as_yaml,
    is_watch,
    negotiate_output,
    negotiated_paths,
)
from netlab.api.nodeproxy import PROXY_PATH, serve_node_proxy
from netlab.api.request import NOT_FOUND, Target, parse_path
from netlab.api.rest import Rest, respond
from netlab.api.store import DEFAULT_HISTORY, Store
from netlab.api.tls import ServingCert, make_serving_cert
from netlab.contract import JSONDict, KubeletAPI
from netlab.spec import LabSpec

log = logging.getLogger(__name__)

MAX_BODY = 3 * 1024 * 1024  # the real server's request body limit
# Go's http server (kube-apiserver sets MaxHeaderBytes 1 MiB) takes request lines this long;
# an exec's command travels in the URL, so long argv payloads must get through as they do.
MAX_HEADER_BYTES = 1 << 20
TLS_DIR = "apiserver-tls"  # under the lab's state dir
STOP_TIMEOUT = 5.0  # seconds streams get to end (an exec kills its process) on stop()
RELISTEN_TIMEOUT = 30.0  # seconds a restarted API server keeps trying to bind its port again
UNAUTHENTICATED = frozenset({"/healthz", "/readyz", "/livez"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _exempt_from_faults(path: str) -> bool:
    """Health checks and the lab's own admin endpoint never see an API fault."""
    return path in UNAUTHENTICATED or path.startswith(ADMIN_PREFIX)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes a Status; nothing a client sends can take the server down."""
    try:
        return await handler(request)
    except ApiError as error:
        return error.response()
    except web.HTTPException as error:
        if error.status == 413:
            message = f"Request entity too large: limit is {MAX_BODY}"
        else:
            message = error.text or error.reason
        return web.json_response(status_object(error.status, message), status=error.status)
    except Exception:
        log.exception("internal error serving %s %s", request.method, request.path)
        return web.json_response(
            status_object(500, "Internal error occurred: see the lab log"), status=500
        )


@web.middleware
async def _negotiate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The Accept header, as kube-apiserver reads it: 406 before anything is done when the lab
    can answer in none of its types; a YAML answer where YAML comes first."""
    if not negotiated_paths(request.path):
        return await handler(request)
    kind = negotiate_output(request.headers.get("Accept", ""), watch=is_watch(request))
    response = await handler(request)
    if kind == YAML and isinstance(response, web.Response) and response.content_type == JSON:
        return as_yaml(response)
    return response


def _auth(token: str) -> Middleware:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in UNAUTHENTICATED:
            given = request.headers.get("Authorization", "").encode()
            if not secrets.compare_digest(given, expected):
                return web.json_response(status_object(401, "Unauthorized"), status=401)
        return await handler(request)

    return middleware


class ApiServer:
    """A Kubernetes API (core/v1 subset) for one lab, on 127.0.0.1."""

    def __init__(
        self,
        spec: LabSpec,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        history_limit: int = DEFAULT_HISTORY,
        bookmark_interval: float = 60.0,
        tls: bool = True,
        api_faults: ApiFaults | None = None,
    ) -> None:
        self.spec = spec
        self._host = host
        self._port = port
        self._token = token or secrets.token_urlsafe(32)
        self.store = Store(history_limit)
        # API faults: from the spec (`netlab up --api-fault`) unless given; switchable later.
        self.faults = FaultSwitch(api_faults or parse_api_faults(spec.api_faults))
        self.control = ControlPlane(self.store, spec, self.faults)
        self.rest = Rest(self.store, self.control.resources, bookmark_interval)
        self.injector = FaultInjector(self.faults, exempt=_exempt_from_faults)
        self.faults.subscribe(self._faults_changed)
        self._tls = tls
        self._cert: ServingCert | None = None
        self._runner: web.AppRunner | None = None
        self._inflight: set[asyncio.Task[object]] = set()  # handlers still running (watch, exec)
        self._url = ""
        self._restarts: asyncio.Task[None] | None = None  # the restart fault's schedule
        self._listening = asyncio.Lock()  # start, restart and stop take turns
        self._stopping = asyncio.Event()

    # the facade
    @property
    def token(self) -> str:
        return self._token

    @property
    def ca_pem(self) -> bytes | None:
        """The serving certificate (its own CA) in PEM, None without TLS."""
        return self._cert.pem if self._cert else None

    @property
    def ca_path(self) -> Path | None:
        return self._cert.cert_path if self._cert else None

    @property
    def url(self) -> str:
        if not self._url:
            raise RuntimeError("ApiServer is not started")
        return self._url

    def register_node(self, kubelet: KubeletAPI) -> None:
        self.control.register_node(kubelet)

    def pod_status_changed(self, uid: str, status: JSONDict) -> None:
        self.control.pods.status_changed(uid, status)

    def record_event(self, uid: str, type_: str, reason: str, message: str) -> None:
        self.control.pods.record_event(uid, type_, reason, message)

    def services_in(self, namespace: str) -> list[JSONDict]:
        """A namespace's Services (the kubelets' service environment)."""
        return self.store.list("services", namespace)

    def services_and_slices(self) -> tuple[list[JSONDict], list[JSONDict]]:
        """Every Service and EndpointSlice (what the proxy and the cluster DNS serve from)."""
        return self.store.list("services"), self.store.list("endpointslices")

    def configmap_data(self, namespace: str, name: str) -> Mapping[str, str] | None:
        obj = self.store.get("configmaps", namespace, name)
        return None if obj is None else dict(obj.get("data") or {})

    async def start(self) -> str:
        try:
            async with self._listening:
                if self._tls:
                    self._cert = await make_serving_cert(self._host, self.spec.state_dir / TLS_DIR)
                ca = self._cert.pem.decode() if self._cert is not None else None
                self.control.start_controllers(ca)
                await self._listen()
        except BaseException:
            await self.stop()  # nothing half-started is left behind (port, certificate)
            raise
        self._faults_changed(self.faults.current)
        return self._url

    async def _listen(self) -> None:
        """Serve on the host and port (the port first bound, after a restart)."""
        app = web.Application(
            middlewares=[_errors, _auth(self._token), self.injector.middleware, _negotiate],
            client_max_size=MAX_BODY,
        )
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=1.0,
            max_line_size=MAX_HEADER_BYTES,
            max_field_size=MAX_HEADER_BYTES,
        )
        await self._runner.setup()
        context = self._cert.server_context() if self._cert is not None else None
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=context)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            self._runner = None
            raise
        server = site._server  # the bound port when port=0
        sockets = getattr(server, "sockets", None) or []
        self._port = sockets[0].getsockname()[1] if sockets else self._port
        self._url = f"{'https' if self._tls else 'http'}://{self._host}:{self._port}"

    async def _drop_everything(self) -> None:
        """Stop listening and drop every connection at once, as a dying process does: streams
        end without a last chunk or close frame, handlers are cancelled (an exec kills its
        process)."""
        runner = self._runner
        if runner is not None and runner.server is not None:
            for connection in runner.server.connections:
                if connection.transport is not None:
                    connection.transport.abort()
        for task in list(self._inflight):
            task.cancel()
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=STOP_TIMEOUT)
        if runner is not None:
            await runner.cleanup()
        self._runner = None

    async def restart(self, down: float) -> None:
        """What the restart fault does: the API stops listening and drops every connection,
        stays down ``down`` seconds, then serves the same objects on the same port again (no
        event is lost; resourceVersions go on; clients re-list or re-watch)."""
        async with self._listening:
            if self._runner is None or self._stopping.is_set():
                return
            log.warning("api fault: API server restarting, down for %.1f s", down)
            await self._drop_everything()
            if await self._pause(down):
                return
            # The port is the kubeconfig's: if something took it meanwhile, keep trying it.
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(OSError),
                stop=stop_after_delay(RELISTEN_TIMEOUT),
                wait=wait_fixed(0.2),
                reraise=True,
            ):
                with attempt:
                    await self._listen()
            log.warning("api fault: API server serving again at %s", self._url)

    async def _pause(self, seconds: float) -> bool:
        """Let ``seconds`` pass unless the server stops first (then True at once)."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def _faults_changed(self, faults: ApiFaults) -> None:
        """Re-arm the restart schedule (a fresh EVERY from now) when the faults change."""
        if self._restarts is not None:
            self._restarts.cancel()
            self._restarts = None
        if faults.restart_every > 0 and self._url and not self._stopping.is_set():
            self._restarts = asyncio.get_running_loop().create_task(
                self._restart_every(faults.restart_every, faults.restart_down)
            )

    async def _restart_every(self, every: float, down: float) -> None:
        while not await self._pause(every):
            # Shielded: a new schedule (faults switched) never leaves the API down half-way.
            await asyncio.shield(self.restart(down))

    async def stop(self) -> None:
        """End every stream (watches, exec processes, log follows), then the listener."""
        self._stopping.set()
        if self._restarts is not None:
            self._restarts.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restarts
            self._restarts = None
        async with self._listening:
            pass  # a restart under way sees the stop and ends first
        self.control.disruptions.stop()
        self.store.close_watchers()
        for task in list(self._inflight):
            task.cancel()
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=STOP_TIMEOUT)
        await self.control.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._cert is not None:
            self._cert.remove()

    def write_kubeconfig(self, path: Path) -> None:
        write_kubeconfig(path, self.spec.name, self.url, self._token, self.ca_pem)

    # routing
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            return await self._route(request)
        finally:
            if task is not None:
                self._inflight.discard(task)

    async def _route(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        if path.startswith(ADMIN_PREFIX):
            return await serve_admin(request, path, self.faults)
        simple = self._simple(path)
        if simple is not None:
            if request.method not in ("GET", "HEAD"):
                raise ApiError(
                    405, "the server does not allow this method on the requested resource"
                )
            return simple
        proxied = PROXY_PATH.match(path)
        if proxied is not None:
            return serve_node_proxy(
                request, self.store, proxied.group("name"), proxied.group("path") or "/"
            )
        target = parse_path(path)
        if target is None:
            raise ApiError(404, NOT_FOUND, details={})
        return await self._resource(request, target)

    def _simple(self, path: str) -> web.StreamResponse | None:
        if path in UNAUTHENTICATED:
            return web.Response(text="ok")
        documents: dict[str, Callable[[], JSONDict]] = {
            "/version": discovery.version,
            "/api": lambda: discovery.api_versions(self.url.split("://", 1)[1]),
            "/api/v1": discovery.api_resource_list,
            "/apis": discovery.api_group_list,
            "/openapi/v3": discovery.openapi_v3_root,
        }
        # Named groups (discovery.k8s.io): /apis/G, /apis/G/V and their OpenAPI v3 documents.
        for group, version in discovery.group_versions().items():
            documents[f"/apis/{group}"] = partial(discovery.api_group, group)
            documents[f"/apis/{group}/{version}"] = partial(discovery.group_resource_list, group)
        for openapi_path, group in discovery.openapi_v3_paths().items():
            documents[f"/openapi/v3/{openapi_path}"] = partial(discovery.openapi_v3_core, group)
        build = documents.get(path.rstrip("/") or "/")
        return None if build is None else respond(build())

    async def _resource(self, request: web.Request, target: Target) -> web.StreamResponse:
        rest, method = self.rest, request.method
        if target.name is None:
            # A list in a namespace that does not exist is empty, as on a real server.
            handlers: dict[str, Handler] = {
                "GET": lambda r: rest.list_or_watch(r, target),
                "POST": lambda r: rest.create(r, target),
                "DELETE": lambda r: rest.delete_collection(r, target),
            }
        elif target.subresource is None:
            handlers = {
                "GET": lambda r: rest.get(r, target),
                "PUT": lambda r: rest.update(r, target),
                "PATCH": lambda r: rest.patch(r, target),
                "DELETE": lambda r: rest.delete(r, target),
            }
        else:
            handlers = self._subresource(target)
        handler = handlers.get(method)
        if handler is None:
            raise ApiError(405, "the server does not allow this method on the requested resource")
        return await handler(request)

    def _subresource(self, target: Target) -> dict[str, Handler]:
        rest, kind = self.rest, f"{target.resource}/{target.subresource}"
        base = Target(target.resource, target.namespace, target.name)
        status = Target(target.resource, target.namespace, target.name, "status")
        if kind == "pods/status":
            return {
                "GET": lambda r: rest.get(r, base),
                "PUT": lambda r: rest.update(r, status),
                "PATCH": lambda r: rest.patch(r, status),
            }
        if kind in ("namespaces/status", "nodes/status"):
            return {"GET": lambda r: rest.get(r, base)}
        if kind == "pods/log":
            return {"GET": lambda r: serve_logs(r, self.control.nodes, rest.existing(base))}
        if kind == "pods/exec":
            exec_handler: Handler = lambda r: serve_exec(  # noqa: E731
                r, self.control.nodes, rest.existing(base), self.faults.current
            )
            return {"GET": exec_handler, "POST": exec_handler}
        if kind == "pods/eviction":
            return {"POST": lambda r: serve_eviction(r, self.control.pods, rest.existing(base))}
        raise ApiError(404, NOT_FOUND, details={})
