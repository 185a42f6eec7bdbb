"""The lab's Kubernetes API server: aiohttp app, auth, routing, and the ``ApiServer`` facade
that netlab/lab.py and the node agents use."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from netlab.api import discovery
from netlab.api.cluster import Cluster
from netlab.api.errors import ApiError, status_object
from netlab.api.execs import serve_exec
from netlab.api.kubeconfig import write_kubeconfig
from netlab.api.logs import serve_logs
from netlab.api.request import NOT_FOUND, Target, parse_path
from netlab.api.rest import Rest, respond
from netlab.api.store import DEFAULT_HISTORY, Store
from netlab.api.tls import ServingCert, make_serving_cert
from netlab.contract import JSONDict, NodeAgentAPI
from netlab.spec import LabSpec

log = logging.getLogger(__name__)

MAX_BODY = 3 * 1024 * 1024
TLS_DIR = "apiserver-tls"  # under the lab's state dir
STOP_TIMEOUT = 5.0  # seconds streams get to end (an exec kills its process) on stop()  # the real server's request body limit
UNAUTHENTICATED = frozenset({"/healthz", "/readyz", "/livez"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
    ) -> None:
        self.spec = spec
        self._host = host
        self._port = port
        self._token = token or secrets.token_urlsafe(32)
        self.store = Store(history_limit)
        self.cluster = Cluster(self.store, spec)
        self.rest = Rest(self.cluster, bookmark_interval)
        self._tls = tls
        self._cert: ServingCert | None = None
        self._runner: web.AppRunner | None = None
        self._inflight: set[asyncio.Task[object]] = set()  # handlers still running (watch, exec)
        self._url = ""

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

    def register_node(self, agent: NodeAgentAPI) -> None:
        self.cluster.register_node(agent)

    def pod_status_changed(self, uid: str, status: JSONDict) -> None:
        self.cluster.pod_status_changed(uid, status)

    def record_event(self, uid: str, type_: str, reason: str, message: str) -> None:
        self.cluster.record_pod_event(uid, type_, reason, message)

    def configmap_data(self, namespace: str, name: str) -> Mapping[str, str] | None:
        obj = self.store.get("configmaps", namespace, name)
        return None if obj is None else dict(obj.get("data") or {})

    async def start(self) -> str:
        app = web.Application(middlewares=[_errors, _auth(self._token)], client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        try:
            context = None
            if self._tls:
                self._cert = await make_serving_cert(self._host, self.spec.state_dir / TLS_DIR)
                context = self._cert.server_context()
            site = web.TCPSite(self._runner, self._host, self._port, ssl_context=context)
            await site.start()
        except BaseException:
            await self.stop()  # nothing half-started is left behind (port, certificate)
            raise
        server = site._server  # the bound port when port=0
        sockets = getattr(server, "sockets", None) or []
        port = sockets[0].getsockname()[1] if sockets else self._port
        self._url = f"{'https' if self._tls else 'http'}://{self._host}:{port}"
        return self._url

    async def stop(self) -> None:
        """End every stream (watches, exec processes, log follows), then the listener."""
        self.store.close_watchers()
        for task in list(self._inflight):
            task.cancel()
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=STOP_TIMEOUT)
        await self.cluster.stop()
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
        simple = self._simple(path)
        if simple is not None:
            if request.method not in ("GET", "HEAD"):
                raise ApiError(
                    405, "the server does not allow this method on the requested resource"
                )
            return simple
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
            "/openapi/v3/api/v1": discovery.openapi_v3_core,
        }
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
            return {"GET": lambda r: serve_logs(r, self.cluster, rest._existing(base))}
        if kind == "pods/exec":
            exec_handler: Handler = lambda r: serve_exec(r, self.cluster, rest._existing(base))  # noqa: E731
            return {"GET": exec_handler, "POST": exec_handler}
        raise ApiError(404, NOT_FOUND, details={})
