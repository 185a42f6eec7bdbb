"""What the kubelet tracks of each pod and container it runs, and where a pod's files live.

One ``PodRecord`` per pod the kubelet was asked to run, holding the pod as the API sent it,
one ``ContainerRecord`` per (init) container, the sandbox and volumes, and what the status
is computed from (``status.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from netlab.contract import ContainerNotFound, JSONDict
from netlab.dataplane.runtime import RunningContainer, now_rfc3339
from netlab.dataplane.sandbox import PodSandbox
from netlab.kubelet.volumes import PodVolumes
from netlab.spec import LabSpec


def pod_dir(spec: LabSpec, uid: str) -> Path:
    """A pod's own directory: /etc files, volumes, container logs (``<state>/pods/<uid>``)."""
    return spec.state_dir / "pods" / uid


@dataclass
class ContainerRecord:
    """One container of a pod, as kubelet tracks it."""

    spec: JSONDict
    init: bool
    restart_count: int = 0
    state: JSONDict = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: JSONDict = field(default_factory=dict)
    ready: bool = False
    #: Its startup probe succeeded (or it has none); meaningful while it runs.
    started: bool = False
    container_id: str = ""
    running: RunningContainer | None = None
    log_index: int = 0
    created_ids: set[str] = field(default_factory=set)
    probe_tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def image(self) -> str:
        return str(self.spec.get("image", ""))

    @property
    def is_running(self) -> bool:
        return self.running is not None and not self.running.exited


@dataclass
class PodRecord:
    """One pod the kubelet runs, from ``start_pod`` until its stop has torn everything down."""

    pod: JSONDict
    directory: Path
    init_containers: list[ContainerRecord]
    containers: list[ContainerRecord]
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    reset_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sandbox: PodSandbox | None = None
    volumes: PodVolumes | None = None
    etc_files: dict[str, Path] = field(default_factory=dict)
    initialized: bool = False
    final_phase: str | None = None
    start_time: str = field(default_factory=now_rfc3339)
    conditions: dict[str, JSONDict] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    stop_task: asyncio.Task[None] | None = None
    last_sent: JSONDict | None = None
    released_ips: tuple[str, ...] | None = None  # the IPs reported after the sandbox went
    moved: set[str] = field(default_factory=set)  # sandbox-reset: following the pod's new sandbox
    rejected: tuple[str, str] | None = None  # (reason, message) when admission refused the pod

    @property
    def uid(self) -> str:
        return str(self.pod["metadata"]["uid"])

    @property
    def name(self) -> str:
        return str(self.pod["metadata"].get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.pod["metadata"].get("namespace", "default"))

    @property
    def short_uid(self) -> str:
        return self.uid.replace("-", "")[:8]

    @property
    def restart_policy(self) -> str:
        return str(self.pod.get("spec", {}).get("restartPolicy", "Always"))

    @property
    def grace_seconds(self) -> int:
        return int(self.pod.get("spec", {}).get("terminationGracePeriodSeconds", 30))

    def all_containers(self) -> list[ContainerRecord]:
        return self.init_containers + self.containers

    def find(self, name: str) -> ContainerRecord:
        for record in self.all_containers():
            if record.name == name:
                return record
        raise ContainerNotFound(f'container "{name}" not found in pod {self.namespace}/{self.name}')

    async def stopped_within(self, seconds: float) -> bool:
        """Wait ``seconds`` unless the pod is being stopped; True when it is."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.stopping.wait()
        return self.stopping.is_set()
