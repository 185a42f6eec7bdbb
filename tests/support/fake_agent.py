"""A test double of a node agent: pods are "Running" and Ready at once, exec runs the command
as a local subprocess, logs are a fixed text per container. Tests only."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

from netlab.contract import (
    ContainerNotFound,
    EventCallback,
    ExecProcess,
    JSONDict,
    NodeInfo,
    PodNotFound,
    StatusCallback,
)

_ips = itertools.count(2)


def log_text(container: str) -> bytes:
    return b"".join(f"{container} line {i}\n".encode() for i in range(1, 6))


class FakeAgent:
    """Implements netlab.contract.KubeletAPI without containers."""

    def __init__(self, node: NodeInfo, on_status: StatusCallback, on_event: EventCallback) -> None:
        self.node = node
        self._on_status = on_status
        self._on_event = on_event
        self.pods: dict[str, JSONDict] = {}
        self._stopped: dict[str, asyncio.Event] = {}
        self.stop_calls: list[tuple[str, int]] = []

    async def start_pod(self, pod: JSONDict) -> None:
        uid = pod["metadata"]["uid"]
        self.pods[uid] = pod
        self._stopped[uid] = asyncio.Event()
        now = pod["metadata"]["creationTimestamp"]
        ip = f"10.244.{self.node.name.rsplit('-', 1)[-1]}.{next(_ips) % 250 + 2}"
        ready = {"lastProbeTime": None, "lastTransitionTime": now, "status": "True"}
        self._on_status(
            uid,
            {
                "phase": "Running",
                "hostIP": self.node.internal_ip,
                "hostIPs": [{"ip": self.node.internal_ip}],
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "startTime": now,
                "conditions": [
                    {**ready, "type": t}
                    for t in (
                        "PodReadyToStartContainers",
                        "Initialized",
                        "Ready",
                        "ContainersReady",
                    )
                ],
                "containerStatuses": [
                    {
                        "name": c["name"],
                        "image": c["image"],
                        "imageID": "",
                        "containerID": f"fake://{uid[:8]}-{c['name']}",
                        "ready": True,
                        "started": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": now}},
                    }
                    for c in pod["spec"]["containers"]
                ],
            },
        )
        for container in pod["spec"]["containers"]:
            self._on_event(uid, "Normal", "Started", f"Started container {container['name']}")

    async def stop_pod(self, uid: str, grace_period_seconds: int) -> None:
        self.stop_calls.append((uid, grace_period_seconds))
        self.pods.pop(uid, None)
        stopped = self._stopped.pop(uid, None)
        if stopped is not None:
            stopped.set()

    def _container(self, uid: str, container: str) -> None:
        pod = self.pods.get(uid)
        if pod is None:
            raise PodNotFound(uid)
        if container not in {c["name"] for c in pod["spec"]["containers"]}:
            raise ContainerNotFound(container)

    async def exec(
        self, uid: str, container: str, command: list[str], *, stdin: bool, tty: bool
    ) -> ExecProcess:
        self._container(uid, container)
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return process  # type: ignore[return-value]  # asyncio's Process satisfies ExecProcess

    async def logs(
        self, uid: str, container: str, *, follow: bool, tail_lines: int | None, previous: bool
    ) -> AsyncIterator[bytes]:
        self._container(uid, container)
        lines = log_text(container).splitlines(keepends=True)
        if tail_lines is not None:
            lines = lines[-tail_lines:] if tail_lines else []
        yield b"".join(lines)
        if follow:  # bounded: ends when the pod stops (the test deletes it)
            stopped = self._stopped.get(uid)
            if stopped is not None:
                await asyncio.wait_for(stopped.wait(), 30)
            yield b"stopped\n"
