"""Helpers for the pod runtime and kubelet tests: a one-node lab network, a kubelet with
recording callbacks, waits on status changes, and a leak check of everything a lab makes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from netlab.contract import JSONDict
from netlab.dataplane.cleanup import sweep
from netlab.dataplane.nsexec import NETNS_RUN_DIR
from netlab.dataplane.runtime import mount_points_under
from netlab.dataplane.topology import build_topology, destroy_topology, node_infos
from netlab.kubelet import Kubelet
from netlab.spec import LabSpec

#: Pod runtime tests run containers: besides root (``needs_lab``), runc and the CNI plugins.
NEEDS_RUNTIME = pytest.mark.skipif(
    shutil.which("runc") is None or not Path("/usr/lib/cni/bridge").exists(),
    reason="pod runtime tests need runc and the CNI plugins in /usr/lib/cni",
)
STATUS_TIMEOUT = 20.0  # seconds for one awaited pod status change


def lab_name() -> str:
    """A fresh lab name (``tb``, or ``$NETLAB_TEST_LAB_PREFIX``, + 6 hex digits): parallel runs
    never collide."""
    return f"{os.environ.get('NETLAB_TEST_LAB_PREFIX', 'tb')}{secrets.token_hex(3)}"


@dataclass
class Leftovers:
    netns: list[str]
    mounts: list[str]
    runc: list[str]
    processes: list[int]
    cgroups: list[str]

    def empty(self) -> bool:
        return not (self.netns or self.mounts or self.runc or self.processes or self.cgroups)


def leftovers(spec: LabSpec, *, include_topology: bool = False) -> Leftovers:
    """What of ``spec``'s lab still exists (pod netns only, unless ``include_topology``)."""
    prefix = spec.netns_prefix
    names = (
        sorted(p.name for p in NETNS_RUN_DIR.glob(f"{prefix}*")) if NETNS_RUN_DIR.exists() else []
    )
    if not include_topology:
        names = [n for n in names if n.startswith(f"{prefix}pod-")]
    runc_root = spec.state_dir / "runc"
    ids: list[str] = []
    if runc_root.exists():
        listed = subprocess.run(
            ["runc", "--root", str(runc_root), "list", "-q"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        ids = listed.stdout.split()
    processes = []
    marker = str(spec.state_dir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "cmdline").read_bytes():
                processes.append(int(entry.name))
        except OSError:
            continue
    cgroups = [p.name for p in Path("/sys/fs/cgroup/memory").glob(f"netlab-{spec.name}-*")]
    return Leftovers(
        netns=names,
        mounts=[str(m) for m in mount_points_under(spec.state_dir)],
        runc=ids,
        processes=processes,
        cgroups=cgroups,
    )


@contextmanager
def lab_network(spec: LabSpec) -> Iterator[LabSpec]:
    """The lab's fabric and node namespaces (topology.py); after, everything of the lab goes."""
    build_topology(spec)
    try:
        yield spec
    finally:
        # Tests assert their own cleanliness; the sweep only keeps a failed test from leaking
        # running containers, mounts or namespaces into the next one.
        destroy_topology(spec)
        sweep(spec.name, spec.state_root)


@dataclass
class KubeletHarness:
    """A Kubelet with recording callbacks and waits on status changes."""

    kubelet: Kubelet
    statuses: dict[str, JSONDict] = field(default_factory=dict)
    history: dict[str, list[JSONDict]] = field(default_factory=dict)
    events: list[tuple[str, str, str, str]] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def record_status(self, uid: str, status: JSONDict) -> None:
        self.statuses[uid] = status
        self.history.setdefault(uid, []).append(status)
        asyncio.get_running_loop().create_task(self._notify())

    def record_event(self, uid: str, kind: str, reason: str, message: str) -> None:
        self.events.append((uid, kind, reason, message))

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def wait_status(
        self,
        uid: str,
        predicate: Callable[[JSONDict], bool],
        reason: str,
        timeout: float = STATUS_TIMEOUT,
    ) -> JSONDict:
        """The first status of ``uid`` satisfying ``predicate``; fails the test on timeout."""
        try:
            async with asyncio.timeout(timeout), self.changed:
                await self.changed.wait_for(
                    lambda: uid in self.statuses and predicate(self.statuses[uid])
                )
        except TimeoutError:
            pytest.fail(
                f"pod {uid}: {reason} not reached in {timeout}s; last status "
                f"{self.statuses.get(uid)}; events {[e for e in self.events if e[0] == uid]}",
                pytrace=False,
            )
        return self.statuses[uid]

    async def wait_running(self, uid: str, timeout: float = STATUS_TIMEOUT) -> JSONDict:
        return await self.wait_status(uid, is_running_ready, "Running and Ready", timeout)

    async def exec(self, uid: str, container: str, argv: list[str]) -> tuple[int, str]:
        process = await self.kubelet.exec(uid, container, argv, stdin=False, tty=False)
        assert process.stdout is not None
        assert process.stderr is not None
        async with asyncio.timeout(STATUS_TIMEOUT):
            output = await process.stdout.read()
            errors = await process.stderr.read()
            code = await process.wait()
        return code, (output + errors).decode()

    async def python(self, uid: str, container: str, source: str) -> str:
        """Run ``python3 -c source`` in the container; its stdout (fails the test on error)."""
        code, text = await self.exec(uid, container, ["python3", "-c", source])
        assert code == 0, f"python in {container} exited {code}: {text}"
        return text.strip()

    async def wait_log(self, uid: str, container: str, text: bytes) -> None:
        """Follow the container's log until ``text`` shows (a process announcing it is set up)."""
        seen = b""
        stream = self.kubelet.logs(uid, container, follow=True, tail_lines=None, previous=False)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STATUS_TIMEOUT):
                async for chunk in stream:
                    seen += chunk
                    if text in seen:
                        return
        pytest.fail(
            f"{container} of {uid} did not log {text!r}: {seen!r}; {self.statuses.get(uid)}",
            pytrace=False,
        )

    def reasons(self, uid: str) -> list[str]:
        return [reason for who, _, reason, _ in self.events if who == uid]


def is_running_ready(status: JSONDict) -> bool:
    ready = {c["type"]: c["status"] for c in status.get("conditions", [])}.get("Ready")
    return status.get("phase") == "Running" and ready == "True"


def container_status(status: JSONDict, name: str, *, init: bool = False) -> JSONDict:
    key = "initContainerStatuses" if init else "containerStatuses"
    for entry in status.get(key, []):
        if entry["name"] == name:
            return dict(entry)
    raise AssertionError(f"no status for container {name} in {status}")


@asynccontextmanager
async def running_kubelet(
    spec: LabSpec, configmaps: Mapping[str, Mapping[str, str]] | None = None, *, node: int = 1
) -> AsyncIterator[KubeletHarness]:
    """A started Kubelet on the lab's node number ``node`` (the first by default); closed (all
    pods stopped) on exit."""
    plan = spec.node_plans()[node - 1]
    info = node_infos(spec)[node - 1]
    store = dict(configmaps or {})
    harness: KubeletHarness | None = None

    def status(uid: str, value: JSONDict) -> None:
        assert harness is not None
        harness.record_status(uid, value)

    def event(uid: str, kind: str, reason: str, message: str) -> None:
        assert harness is not None
        harness.record_event(uid, kind, reason, message)

    kubelet = Kubelet(
        spec,
        plan,
        info,
        ipam_ranges=list(plan.pod_cidrs),
        on_status=status,
        on_event=event,
        configmaps=lambda namespace, name: store.get(f"{namespace}/{name}"),
    )
    harness = KubeletHarness(kubelet)
    await kubelet.start()
    try:
        yield harness
    finally:
        await kubelet.close()


def make_pod(
    name: str,
    containers: list[JSONDict],
    *,
    node: str = "node-1",
    **spec: Any,
) -> JSONDict:
    """A v1 Pod as the API server hands it to a kubelet (defaults applied)."""
    body: JSONDict = {
        "nodeName": node,
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "serviceAccountName": "default",
        "containers": containers,
    }
    body.update(spec)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": str(uuid.uuid4())},
        "spec": body,
        "status": {"phase": "Pending"},
    }


def sleeper(name: str, **extra: Any) -> JSONDict:
    """A container that runs until killed (and exits at once on SIGTERM, as a shell would not)."""
    container: JSONDict = {
        "name": name,
        "image": "netlab/host",
        "command": ["python3", "-c", SLEEP_UNTIL_TERM],
    }
    container.update(extra)
    return container


SLEEP_UNTIL_TERM = (
    "import signal,sys,threading; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); "
    "print('ready', flush=True); threading.Event().wait()"
)
