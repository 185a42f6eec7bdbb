"""Startup, readiness and liveness probes, as kubelet's prober runs them.

``Prober.add_container`` starts one worker per probe of a started app container (upstream's
``prober_manager.AddPod``); a worker probes every ``periodSeconds``, counts successes and
failures against the thresholds, and marks the container started (startup), flips its
``ready`` (readiness) or stops it (a failed liveness or startup probe, for the kubelet to
restart it), as ``pkg/kubelet/prober/worker.go``. Readiness and liveness probes wait for the
startup probe to succeed; a container without a readiness probe is ready once started.

While the kubelet is younger than a probe's period, a worker first waits a random part of that
period (`start_jitter`), as upstream's does so that a restarted kubelet does not probe every
container at once: a probe with a long period makes a young node's pods wait for it.

One probe (``probe_once``) is an exec in the container, or a TCP connect or HTTP GET from the
node's own network namespace, where kubelet probes from.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from netlab.dataplane.nsexec import in_netns_thread
from netlab.dataplane.runtime import ContainerRuntime, RunningContainer
from netlab.kubelet.pods import ContainerRecord, PodRecord

# (pod, event type, reason, message), as the kubelet records events.
EventRecorder = Callable[[PodRecord, str, str, str], None]
# Called when a container's readiness changed, to send the pod's status.
StatusReporter = Callable[[PodRecord], None]


def start_jitter(period: float, kubelet_age: float, draw: float) -> float:
    """Seconds a new probe worker waits before its first probe: a random part (``draw`` in
    [0, 1)) of its period while the kubelet is younger than that period, else none. Upstream:
    "If kubelet restarted the probes could be started in rapid succession. Let the worker wait
    for a random portion of tickerPeriod before probing. Do it only if the kubelet has started
    recently." (pkg/kubelet/prober/worker.go, ``run``)."""
    return draw * period if period > kubelet_age else 0.0


class Prober:
    """Runs the probes of one node's containers; see the module docstring."""

    def __init__(
        self,
        runtime: ContainerRuntime,
        node_netns: str,
        *,
        record_event: EventRecorder,
        report: StatusReporter,
        started: float | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.runtime = runtime
        self.node_netns = node_netns
        self.record_event = record_event
        self.report = report
        #: When the kubelet started (``time.monotonic()``): its workers' start jitter.
        self.started = time.monotonic() if started is None else started
        self.draw = draw

    def add_container(
        self, record: PodRecord, container: ContainerRecord, running: RunningContainer
    ) -> None:
        """Start the probe workers of a just-started app container. Without a startup probe it
        is started at once; without a readiness probe it is ready once started. The tasks end
        with the container (``probe_tasks``)."""
        startup = container.spec.get("startupProbe")
        readiness = container.spec.get("readinessProbe")
        container.started = not startup
        container.ready = container.started and not readiness
        liveness = container.spec.get("livenessProbe")
        for kind, probe in (("Startup", startup), ("Readiness", readiness), ("Liveness", liveness)):
            if probe:
                container.probe_tasks.append(
                    asyncio.create_task(self._worker(record, container, running, probe, kind))
                )

    async def _worker(
        self,
        record: PodRecord,
        container: ContainerRecord,
        running: RunningContainer,
        probe: Mapping[str, Any],
        kind: str,
    ) -> None:
        period = float(probe.get("periodSeconds", 10))
        timeout = float(probe.get("timeoutSeconds", 1))
        success_threshold = int(probe.get("successThreshold", 1))
        failure_threshold = int(probe.get("failureThreshold", 3))
        jitter = start_jitter(period, time.monotonic() - self.started, self.draw())
        if await record.stopped_within(jitter):
            return
        if await record.stopped_within(float(probe.get("initialDelaySeconds", 0))):
            return
        successes = failures = 0
        while not running.exited and not record.stopping.is_set():
            if kind != "Startup" and not container.started:
                # Upstream's readiness and liveness workers skip their ticks until started.
                if await record.stopped_within(period):
                    return
                continue
            ok, output = await self.probe_once(record, container, probe, timeout)
            if running.exited:
                return
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            if not ok:
                self.record_event(record, "Warning", "Unhealthy", f"{kind} probe failed: {output}")
            if kind == "Startup":
                if ok and successes >= success_threshold:
                    container.started = True
                    container.ready = not container.spec.get("readinessProbe")
                    self.report(record)
                    return  # a started container is never probed for startup again
            elif kind == "Readiness":
                if ok and successes >= success_threshold and not container.ready:
                    container.ready = True
                    self.report(record)
                elif not ok and failures >= failure_threshold and container.ready:
                    container.ready = False
                    self.report(record)
            if kind != "Readiness" and failures >= failure_threshold:
                self.record_event(
                    record,
                    "Normal",
                    "Killing",
                    f"Container {container.name} failed {kind.lower()} probe, will be restarted",
                )
                await self.runtime.stop(running, record.grace_seconds)
                return
            if await record.stopped_within(period):
                return

    async def probe_once(
        self,
        record: PodRecord,
        container: ContainerRecord,
        probe: Mapping[str, Any],
        timeout: float,
    ) -> tuple[bool, str]:
        """One probe: (success, output or the reason it failed)."""
        try:
            async with asyncio.timeout(timeout):
                if "exec" in probe:
                    process = await self.runtime.exec(
                        container.container_id, [str(a) for a in probe["exec"].get("command", [])]
                    )
                    try:
                        output, errors = await process.communicate()
                    finally:
                        if process.returncode is None:
                            process.kill()
                    text = (output + errors).decode(errors="replace").strip()
                    return process.returncode == 0, text
                if "tcpSocket" in probe:
                    host, port = _probe_target(record, container, probe["tcpSocket"])
                    sock = await self.connect_from_node(host, port)
                    sock.close()
                    return True, ""
                if "httpGet" in probe:
                    return await self._http_probe(record, container, probe["httpGet"])
                return False, f"unsupported probe {sorted(probe)}"
        except TimeoutError:
            return False, f"timeout after {timeout:g}s"
        except OSError as error:
            return False, str(error)

    async def connect_from_node(self, host: str, port: int) -> socket.socket:
        """A TCP connection from the node's own namespace (where kubelet probes from)."""
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        # A socket belongs to the namespace it was created in, whichever thread uses it later.
        sock = await asyncio.to_thread(
            in_netns_thread, self.node_netns, lambda: socket.socket(family, socket.SOCK_STREAM)
        )
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        return sock

    async def _http_probe(
        self, record: PodRecord, container: ContainerRecord, action: Mapping[str, Any]
    ) -> tuple[bool, str]:
        if str(action.get("scheme", "HTTP")).upper() != "HTTP":
            return False, "only HTTP probes are supported"
        host, port = _probe_target(record, container, action)
        sock = await self.connect_from_node(host, port)
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            headers = {h["name"]: h["value"] for h in action.get("httpHeaders") or []}
            headers.setdefault("Host", f"{host}:{port}")
            headers.setdefault("User-Agent", "kube-probe/1.31")
            headers.setdefault("Accept", "*/*")
            headers["Connection"] = "close"
            request = f"GET {action.get('path', '/')} HTTP/1.1\r\n"
            request += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
            writer.write(request.encode())
            await writer.drain()
            status_line = (await reader.readline()).decode(errors="replace").split()
        finally:
            writer.close()
        if len(status_line) < 2 or not status_line[1].isdigit():
            return False, f"bad HTTP response {' '.join(status_line)!r}"
        code = int(status_line[1])
        return 200 <= code < 400, f"HTTP probe failed with statuscode: {code}"


def _probe_target(
    record: PodRecord, container: ContainerRecord, action: Mapping[str, Any]
) -> tuple[str, int]:
    """(host, port) of a tcpSocket or httpGet probe: a named port resolved from the
    container's ports, the pod's first IP when no host is given."""
    port = action.get("port")
    if isinstance(port, str) and not port.isdigit():
        named = [p for p in container.spec.get("ports") or [] if p.get("name") == port]
        if not named:
            raise OSError(f"port {port} not found in container {container.name}")
        port = named[0]["containerPort"]
    sandbox = record.sandbox
    host = action.get("host") or (sandbox.ips[0] if sandbox and sandbox.ips else "")
    return str(host), int(str(port))
