"""A live API server on 127.0.0.1:0 with fake node agents, run on its own event loop in a
background thread so the synchronous official client and kubectl can talk to it (the API
tier's ``live`` fixture, ``tests/api/conftest.py``, and ``bench/api_bench.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import polling
import pytest
from fake_agent import FakeAgent
from kubernetes import client, watch

from netlab.api.server import ApiServer
from netlab.contract import NodeInfo
from netlab.spec import LabSpec

T = TypeVar("T")
KUBECTL = shutil.which("kubectl")


def new_watch() -> Any:
    """kubernetes.watch.Watch (untyped in the client)."""
    return watch.Watch()  # type: ignore[no-untyped-call]


def watch_until(
    list_call: Callable[..., Any],
    *args: Any,
    until: Callable[[list[Any]], bool],
    missing: str | None = None,
    **options: Any,
) -> list[Any]:
    """The events of a watch through the official client on ``list_call(*args, **options)``
    (``timeout_seconds`` bounds it), up to the first after which ``until(the events so far)``
    holds. A watch that ends before that fails the test saying ``missing``, when given."""
    watcher = new_watch()
    events: list[Any] = []
    for event in watcher.stream(list_call, *args, **options):
        events.append(event)
        if until(events):
            watcher.stop()
            return events
    if missing is not None:
        pytest.fail(missing, pytrace=False)
    return events


def until(condition: Callable[[], T], timeout: float, what: str) -> T:
    """`polling.until` at the in-process server's pace: it answers in milliseconds, so every
    50 ms (short outages of the fault tests are caught)."""
    return polling.until(condition, timeout, what, interval=0.05)


@dataclass
class LiveServer:
    server: ApiServer
    loop: asyncio.AbstractEventLoop
    agents: list[FakeAgent]
    kubeconfig: Path
    api_client: client.ApiClient

    @property
    def core(self) -> Any:
        """CoreV1Api, typed loosely: tests pass plain dicts as bodies (the client coerces them)
        and read Optional model fields without an assert on every line."""
        return client.CoreV1Api(self.api_client)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        *,
        raw: bytes | None = None,
    ) -> tuple[int, Any, Any]:
        """A raw HTTP request (for what the typed client refuses to send): status, headers, body."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(self.server.url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.server.token}")
        request.add_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        try:
            context = ssl.create_default_context(cafile=str(self.server.ca_path))
            with urllib.request.urlopen(request, timeout=10, context=context) as response:
                status, reply_headers, payload = response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            status, reply_headers, payload = error.code, error.headers, error.read()
        try:
            decoded = json.loads(payload) if payload else None
        except ValueError:
            decoded = payload
        return status, reply_headers, decoded

    def call(self, func: Any, *args: Any) -> Any:
        """Run a plain function on the server's loop (its state is loop-owned)."""

        async def wrapper() -> Any:
            return func(*args)

        return self.run(wrapper())


def fake_nodes(spec: LabSpec) -> list[NodeInfo]:
    infos = []
    for plan in spec.node_plans():
        taints: tuple[dict[str, Any], ...] = ()
        labels = {"netlab.io/index": str(plan.index)}
        if plan.index == 3:  # a tainted node that only tolerating pods may land on
            taints = ({"key": "dedicated", "value": "infra", "effect": "NoSchedule"},)
            labels["node-role.kubernetes.io/infra"] = ""
        infos.append(
            NodeInfo(
                name=plan.name,
                internal_ip=plan.internal_ip,
                pod_cidrs=plan.pod_cidrs,
                labels=labels,
                taints=taints,
                kernel_version="6.1.0-test",
                os_image="Debian GNU/Linux 12 (bookworm)",
                container_runtime_version="runc://1.1.12",
            )
        )
    return infos


@contextlib.contextmanager
def serving(
    tmp_path_factory: pytest.TempPathFactory,
    api_faults: tuple[str, ...] = (),
    *,
    client_retries: int | None = None,
) -> Iterator[LiveServer]:
    """An API server with three fake nodes on its own loop and thread, and a client for it
    (``client_retries=0``: urllib3 does not retry a 429 or 503 carrying Retry-After itself)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="api-server", daemon=True)
    thread.start()
    spec = LabSpec(
        name="test", nodes=3, state_root=tmp_path_factory.mktemp("state"), api_faults=api_faults
    )
    server = ApiServer(spec, history_limit=2000, bookmark_interval=0.5)
    agents = [
        FakeAgent(info, server.pod_status_changed, server.record_event) for info in fake_nodes(spec)
    ]

    async def boot() -> str:
        url = await server.start()
        for agent in agents:
            server.register_node(agent)
        return url

    url = asyncio.run_coroutine_threadsafe(boot(), loop).result(10)
    kubeconfig = tmp_path_factory.mktemp("kube") / "config"
    server.write_kubeconfig(kubeconfig)
    configuration = client.Configuration()
    configuration.host = url
    configuration.api_key = {"authorization": f"Bearer {server.token}"}
    configuration.ssl_ca_cert = str(server.ca_path)
    configuration.retries = client_retries
    api_client = client.ApiClient(configuration)
    try:
        yield LiveServer(server, loop, agents, kubeconfig, api_client)
    finally:
        api_client.close()  # type: ignore[no-untyped-call]
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@contextlib.contextmanager
def scratch_namespace(live: LiveServer, prefix: str) -> Iterator[str]:
    """A namespace ``PREFIX-<8 hex>`` for one test, deleted afterwards (a test may have deleted
    it already; anything but 404 is a real failure)."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    live.core.create_namespace({"metadata": {"name": name}})
    try:
        yield name
    finally:
        status, _, _ = live.request("DELETE", f"/api/v1/namespaces/{name}")
        assert status in (200, 404)


def pod_body(
    name: str, *, labels: dict[str, str] | None = None, containers: int = 1, **spec: object
) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "containers": [
                {
                    "name": "main" if i == 0 else f"side{i}",
                    "image": "busybox:1.36",
                    "command": ["sleep", "3600"],
                }
                for i in range(containers)
            ],
            **spec,
        },
    }


def wait_ready(live: LiveServer, ns: str, name: str) -> Any:
    def ready(events: list[Any]) -> bool:
        conditions = events[-1]["object"].status.conditions or []
        return any(c.type == "Ready" and c.status == "True" for c in conditions)

    events = watch_until(
        live.core.list_namespaced_pod,
        ns,
        field_selector=f"metadata.name={name}",
        timeout_seconds=10,
        until=ready,
        missing=f"pod {ns}/{name} never became Ready",
    )
    return events[-1]["object"]


def kubectl(
    live: LiveServer, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    assert KUBECTL is not None
    result = subprocess.run(
        [KUBECTL, "--kubeconfig", str(live.kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}", pytrace=False
        )
    return result
