"""The node agent: a thin kubelet for one lab node (implements ``contract.NodeAgentAPI``).

Per pod: volumes, a sandbox (netns + CNI + pause), init containers in order, then the app
containers, each under a supervisor that applies the restart policy with a short, bounded
back-off. Status is computed the way kubelet computes it (phase, conditions, container states)
and sent through ``on_status`` whenever it changes; events go through ``on_event``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import shutil
import signal
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from netlab.contract import (
    ConfigMapLookup,
    ContainerNotFound,
    ContainerNotRunning,
    EventCallback,
    ExecProcess,
    JSONDict,
    NodeInfo,
    PodNotFound,
    StatusCallback,
)
from netlab.dataplane.cni import NodeCNI
from netlab.dataplane.nsexec import in_netns_thread, netns_exists
from netlab.dataplane.runtime import (
    ContainerConfigError,
    ContainerRuntime,
    ContainerStartError,
    PodContext,
    PodVolumes,
    RunningContainer,
    container_config,
    now_rfc3339,
    pod_dir,
    write_etc_files,
)
from netlab.dataplane.sandbox import PodSandbox
from netlab.spec import LabSpec, NodePlan

log = logging.getLogger(__name__)

BACKOFF_INITIAL = 0.5  # seconds; kubelet uses 10 s doubling to 5 min, far too slow for a lab
BACKOFF_MAX = 5.0
CLOSE_GRACE_MAX = 2  # seconds of grace per pod when the whole agent closes
TASK_SETTLE_TIMEOUT = 30.0  # seconds for a pod's tasks to notice a stop (a start in flight)
LOG_FOLLOW_INTERVAL = 0.2  # seconds between reads of a followed log
START_ERROR_EXIT_CODE = 128  # what kubelet reports for a process that could not start
SPLIT_NETNS_FAULT = "split-netns"
SANDBOX_RESET_FAULT = "sandbox-reset"
WRONG_SELF_IP_FAULT = "wrong-self-ip"
CONDITION_ORDER = (
    "PodReadyToStartContainers",
    "Initialized",
    "Ready",
    "ContainersReady",
    "PodScheduled",
)


@dataclass
class ContainerRecord:
    """One container of a pod, as kubelet tracks it."""

    spec: JSONDict
    init: bool
    restart_count: int = 0
    state: JSONDict = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: JSONDict = field(default_factory=dict)
    ready: bool = False
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

    def status(self) -> JSONDict:
        image_digest = hashlib.sha256(self.image.encode()).hexdigest()
        status: JSONDict = {
            "name": self.name,
            "state": self.state,
            "lastState": self.last_state,
            "ready": self.ready,
            "restartCount": self.restart_count,
            "image": self.image,
            "imageID": f"sha256:{image_digest}",
            "started": "running" in self.state,
        }
        if self.container_id:
            status["containerID"] = f"runc://{self.container_id}"
        return status


@dataclass
class PodRecord:
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


def qos_class(pod_spec: Mapping[str, Any]) -> str:
    """Guaranteed / Burstable / BestEffort from requests and limits, as the API computes it."""
    containers = (pod_spec.get("initContainers") or []) + (pod_spec.get("containers") or [])
    any_set = False
    guaranteed = True
    for container in containers:
        resources = container.get("resources") or {}
        requests = resources.get("requests") or {}
        limits = resources.get("limits") or {}
        if any(k in requests or k in limits for k in ("cpu", "memory")):
            any_set = True
        for kind in ("cpu", "memory"):
            if kind not in limits or (kind in requests and requests[kind] != limits[kind]):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def _neighbour_address(ip: str, cidrs: tuple[str, ...]) -> str:
    """The wrong-self-ip fault's address for ``ip``: mirrored from the top of its range, so it
    stays in the podCIDR and unique per pod but is no pod's address (IPAM counts up from the
    bottom), and traffic sent to it reaches nobody instead of another pod."""
    address = ipaddress.ip_address(ip)
    for cidr in cidrs:
        network = ipaddress.ip_interface(cidr).network
        if address in network:
            offset = int(address) - int(network.network_address)
            return str(ipaddress.ip_address(int(network.broadcast_address) - offset))
    return str(address + 1)


def backoff_delay(restart_count: int) -> float:
    """The wait before restart number ``restart_count + 1``: none for the first, then doubling."""
    if restart_count <= 0:
        return 0.0
    return float(min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** (restart_count - 1)))


class NodeAgent:
    """A kubelet for one lab node; see the module docstring."""

    def __init__(
        self,
        spec: LabSpec,
        plan: NodePlan,
        node: NodeInfo,
        *,
        ipam_ranges: list[str],
        on_status: StatusCallback,
        on_event: EventCallback,
        configmaps: ConfigMapLookup,
    ) -> None:
        self.spec = spec
        self.plan = plan
        self.node = node
        self.on_status = on_status
        self.on_event = on_event
        self.configmaps = configmaps
        self.runtime = ContainerRuntime(spec)
        self.cni = NodeCNI(spec, plan, ipam_ranges)
        self._pods: dict[str, PodRecord] = {}
        self._started = False

    # --- agent life ----------------------------------------------------------------------------

    async def start(self) -> None:
        if not netns_exists(self.plan.netns):
            raise RuntimeError(f"node namespace {self.plan.netns} does not exist")
        self.runtime.start()
        self.cni.write_config_files()
        (self.spec.state_dir / "pods").mkdir(parents=True, exist_ok=True)
        self._started = True
        log.info("node agent %s started", self.plan.name)

    async def close(self) -> None:
        """Stop every pod (short grace) and release what the agent holds."""
        pods = list(self._pods.values())
        results = await asyncio.gather(
            *(self.stop_pod(p.uid, min(p.grace_seconds, CLOSE_GRACE_MAX)) for p in pods),
            return_exceptions=True,
        )
        for pod, result in zip(pods, results, strict=True):
            if isinstance(result, BaseException):
                log.error(
                    "node %s: pod %s did not stop cleanly: %s", self.plan.name, pod.name, result
                )
        if self._started:
            self.runtime.close()
            self._started = False
        shutil.rmtree(self.cni.state_dir, ignore_errors=True)
        log.info("node agent %s closed", self.plan.name)

    # --- NodeAgentAPI --------------------------------------------------------------------------

    async def start_pod(self, pod: JSONDict) -> None:
        uid = str(pod["metadata"]["uid"])
        if uid in self._pods:
            return  # already running it (the API may repeat itself)
        spec = pod.get("spec", {})
        record = PodRecord(
            pod=pod,
            directory=pod_dir(self.spec, uid),
            init_containers=[ContainerRecord(c, True) for c in spec.get("initContainers") or []],
            containers=[ContainerRecord(c, False) for c in spec.get("containers") or []],
        )
        waiting = "PodInitializing" if record.init_containers else "ContainerCreating"
        for container in record.init_containers[1:] + record.containers:
            container.state = {"waiting": {"reason": waiting}}
        self._pods[uid] = record
        self._report(record)
        self._spawn(record, self._run_pod(record), f"pod-{record.name}")

    async def stop_pod(self, uid: str, grace_period_seconds: int) -> None:
        record = self._pods.get(uid)
        if record is None:
            return  # never started here, or already stopped: nothing to do
        if record.stop_task is None:
            record.stop_task = asyncio.create_task(
                self._stop(record, grace_period_seconds), name=f"stop-{record.name}"
            )
        # Shielded: a caller giving up must not leave the pod half torn down.
        await asyncio.shield(record.stop_task)

    async def exec(
        self, uid: str, container: str, command: list[str], *, stdin: bool, tty: bool
    ) -> ExecProcess:
        del tty  # no terminal: output goes through pipes, as `kubectl exec` without -t
        record = self._pod(uid)
        target = record.find(container)
        if not target.is_running or record.stopping.is_set():
            raise ContainerNotRunning(
                f"container {container} of pod {record.namespace}/{record.name} is not running"
            )
        process = await self.runtime.exec(
            target.container_id,
            command,
            cwd=str(target.spec.get("workingDir") or "/"),
            stdin=stdin,
        )
        # contract.ExecProcess declares returncode settable; asyncio's is a read-only property.
        return cast(ExecProcess, process)

    def logs(
        self,
        uid: str,
        container: str,
        *,
        follow: bool,
        tail_lines: int | None,
        previous: bool,
    ) -> AsyncIterator[bytes]:
        # An async generator: PodNotFound / ContainerNotFound surface on the first chunk,
        # where the API server awaits them.
        return self._logs(uid, container, follow=follow, tail_lines=tail_lines, previous=previous)

    async def _logs(
        self,
        uid: str,
        container: str,
        *,
        follow: bool,
        tail_lines: int | None,
        previous: bool,
    ) -> AsyncIterator[bytes]:
        record = self._pod(uid)
        target = record.find(container)
        index = target.log_index - 1 if previous else target.log_index
        path = record.directory / target.name / f"{index}.log"
        if previous and (index < 0 or not path.exists()):
            raise ContainerNotFound(
                f'previous terminated container "{container}" in pod "{record.name}" not found'
            )
        async for chunk in self._read_log(
            record, target, path, index, follow=follow and not previous, tail_lines=tail_lines
        ):
            yield chunk

    # --- pod lifecycle -------------------------------------------------------------------------

    def _pod(self, uid: str) -> PodRecord:
        record = self._pods.get(uid)
        if record is None:
            raise PodNotFound(f"pod {uid} is not running on node {self.plan.name}")
        return record

    def _spawn(self, record: PodRecord, coroutine: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coroutine, name=name)
        record.tasks.add(task)
        task.add_done_callback(record.tasks.discard)
        task.add_done_callback(self._log_task_failure)
        return task

    @staticmethod
    def _log_task_failure(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    def _event(self, record: PodRecord, kind: str, reason: str, message: str) -> None:
        try:
            self.on_event(record.uid, kind, reason, message)
        except Exception:  # the API's problem; the pod must go on
            log.exception("event callback failed for pod %s", record.name)

    async def _pause(self, record: PodRecord, seconds: float) -> bool:
        """Wait ``seconds`` unless the pod is being stopped; True when it is."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await record.stopping.wait()
        return record.stopping.is_set()

    async def _run_pod(self, record: PodRecord) -> None:
        if not await self._make_sandbox(record):
            return
        if not await self._run_init_containers(record):
            if record.final_phase is not None:
                await self._release_sandbox(record)
            return
        record.initialized = True
        self._report(record)
        supervisors = [
            self._spawn(
                record, self._supervise(record, container), f"{record.name}/{container.name}"
            )
            for container in record.containers
        ]
        await asyncio.gather(*supervisors, return_exceptions=True)
        phase = self._phase(record)
        if not record.stopping.is_set() and phase in ("Succeeded", "Failed"):
            record.final_phase = phase
            await self._release_sandbox(record)

    async def _release_sandbox(self, record: PodRecord) -> None:
        """A pod that reached a terminal phase gives its IP back, as kubelet tears down the
        sandbox of finished pods; the status keeps showing the IP it had."""
        if record.sandbox is None or record.stopping.is_set():
            return
        record.released_ips = self._reported_ips(record)
        async with record.reset_lock:
            await record.sandbox.remove()
        self._report(record)

    async def _make_sandbox(self, record: PodRecord) -> bool:
        """Volumes, sandbox and /etc files; retried (bounded by the pod's stop) on failure."""
        attempt = 0
        while not record.stopping.is_set():
            try:
                record.directory.mkdir(parents=True, exist_ok=True)
                (record.directory / "_shm").mkdir(exist_ok=True)
                if record.volumes is None:
                    volumes = PodVolumes(self.spec, record.pod, record.directory, self.configmaps)
                    record.volumes = volumes
                    volumes.prepare()
                sandbox = PodSandbox(self.spec, self.plan, self.runtime, self.cni, record.pod)
                record.sandbox = sandbox
                await sandbox.create()
                self._write_etc(record)
                self._report(record)
                return not record.stopping.is_set()
            except ContainerConfigError as error:
                record.volumes = None  # prepared again on the next try (a configMap may appear)
                for container in record.all_containers():
                    container.state = {
                        "waiting": {"reason": error.reason, "message": error.message}
                    }
                self._event(record, "Warning", "FailedMount", error.message)
            except Exception as error:  # reported as kubelet does, then retried
                record.sandbox = None
                self._event(
                    record,
                    "Warning",
                    "FailedCreatePodSandBox",
                    f"Failed to create pod sandbox: {error}",
                )
            self._report(record)
            attempt += 1
            if await self._pause(record, backoff_delay(attempt) or BACKOFF_INITIAL):
                return False
        return False

    def _write_etc(self, record: PodRecord) -> None:
        sandbox = record.sandbox
        assert sandbox is not None
        record.etc_files = write_etc_files(
            record.directory / "_etc",
            hostname=sandbox.hostname,
            pod_ips=sandbox.ips,
            host_network=sandbox.host_network,
            namespace=record.namespace,
            spec=self.spec,
        )

    async def _run_init_containers(self, record: PodRecord) -> bool:
        for index, container in enumerate(record.init_containers):
            while True:
                code = await self._run_once(record, container)
                if code is None:
                    return False
                if code == 0:
                    break
                if record.restart_policy == "Never":
                    record.final_phase = "Failed"
                    self._report(record)
                    return False
                if not await self._before_restart(record, container):
                    return False
            if index + 1 < len(record.init_containers):
                record.init_containers[index + 1].state = {"waiting": {"reason": "PodInitializing"}}
        return True

    async def _supervise(self, record: PodRecord, container: ContainerRecord) -> None:
        """Run one app container for the pod's life, restarting it per the restart policy."""
        while not record.stopping.is_set():
            code = await self._run_once(record, container)
            if code is None:
                return
            policy = record.restart_policy
            if policy == "Never" or (policy == "OnFailure" and code == 0):
                self._report(record)
                return
            if not await self._before_restart(record, container):
                return

    async def _before_restart(self, record: PodRecord, container: ContainerRecord) -> bool:
        """Back-off (CrashLoopBackOff while waiting), then count the restart. False: stopping."""
        if "terminated" in container.state:
            container.last_state = {"terminated": container.state["terminated"]}
        delay = backoff_delay(container.restart_count)
        if delay > 0:
            message = (
                f"back-off {delay:g}s restarting failed container={container.name} "
                f"pod={record.name}_{record.namespace}({record.uid})"
            )
            container.state = {"waiting": {"reason": "CrashLoopBackOff", "message": message}}
            self._event(
                record,
                "Warning",
                "BackOff",
                f"Back-off restarting failed container {container.name} in pod "
                f"{record.name}_{record.namespace}({record.uid})",
            )
            self._report(record)
            if await self._pause(record, delay):
                return False
        container.restart_count += 1
        if SANDBOX_RESET_FAULT in self.spec.faults and not container.init:
            if container.name in record.moved:
                record.moved.discard(container.name)  # restarted into the new sandbox: no reset
            else:
                await self._reset_sandbox(record, container)
        return not record.stopping.is_set()

    async def _reset_sandbox(self, record: PodRecord, restarting: ContainerRecord) -> None:
        """The sandbox-reset fault: a restart gets a brand new netns and IP. As kubelet does
        for a new sandbox, the pod's other running containers are killed and restarted in it
        (else they would stay behind in the old, detached namespace)."""
        async with record.reset_lock:
            sandbox = record.sandbox
            assert sandbox is not None
            await sandbox.reset()
            self._write_etc(record)
            others = [c for c in record.containers if c is not restarting and c.is_running]
            record.moved.update(c.name for c in others)
            self._report(record)
        for other in others:
            if other.running is not None:
                await self.runtime.kill(other.running.id, signal.SIGKILL)

    async def _run_once(self, record: PodRecord, container: ContainerRecord) -> int | None:
        """Start the container and wait for it to end; its exit code, or None when the pod is
        stopping (the stop owns whatever still runs). Config errors wait and count as None only
        when stopping; otherwise they are retried by the caller as a failed start."""
        while True:
            running = await self._start(record, container)
            if running is not None:
                break
            if "waiting" not in container.state:
                return START_ERROR_EXIT_CODE  # runc could not start it: a failed attempt
            # A config error (missing configMap key, ...): kubelet retries without a restart.
            if await self._pause(record, BACKOFF_MAX):
                return None
        code = await self._wait_exit(record, running)
        if code is None:
            return None
        self._finish(record, container, running, code)
        await self.runtime.delete(running.id)
        return code

    async def _wait_exit(self, record: PodRecord, running: RunningContainer) -> int | None:
        exit_wait = asyncio.ensure_future(running.wait())
        stop_wait = asyncio.ensure_future(record.stopping.wait())
        try:
            await asyncio.wait({exit_wait, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
            if not exit_wait.done():
                exit_wait.cancel()
        if exit_wait.done() and not exit_wait.cancelled():
            return exit_wait.result()
        return None

    def _finish(
        self, record: PodRecord, container: ContainerRecord, running: RunningContainer, code: int
    ) -> None:
        for task in container.probe_tasks:
            task.cancel()
        container.probe_tasks = []
        container.ready = False
        container.state = {
            "terminated": {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "startedAt": running.started_at,
                "finishedAt": now_rfc3339(),
                "containerID": f"runc://{running.id}",
            }
        }
        if container.init and code == 0:
            container.ready = True  # kubelet reports a completed init container as ready
        self._report(record)

    async def _start(
        self, record: PodRecord, container: ContainerRecord
    ) -> RunningContainer | None:
        sandbox = record.sandbox
        volumes = record.volumes
        assert sandbox is not None
        assert volumes is not None
        async with record.reset_lock:
            net_path = sandbox.net_path
            if (
                SPLIT_NETNS_FAULT in self.spec.faults
                and not container.init
                and not sandbox.host_network
                # The first container keeps the pod's namespace (and its IP answers): the
                # fault splits the pod's containers from each other, not the pod from the net.
                and container is not record.containers[0]
            ):
                net_path = await sandbox.container_netns(container.name)
            context = PodContext(
                pod=record.pod,
                node_name=self.plan.name,
                # The downward API shows what the API reports (wrong-self-ip: the wrong IP).
                pod_ips=self._reported_ips(record),
                host_ip=self.plan.internal_ip,
                host_ips=self.node.addresses,
                net_path=net_path,
                uts_path=sandbox.uts_path,
                ipc_path=sandbox.ipc_path,
                etc_files=record.etc_files,
                shm_dir=record.directory / "_shm",
                volumes=volumes,
                configmaps=self.configmaps,
            )
        try:
            config = container_config(context, container.spec)
        except ContainerConfigError as error:
            container.state = {"waiting": {"reason": error.reason, "message": error.message}}
            self._event(record, "Warning", "Failed", f"Error: {error.message}")
            self._report(record)
            return None
        container_id = f"{record.short_uid}-{container.name}-{container.restart_count}"
        container.log_index = container.restart_count
        log_path = record.directory / container.name / f"{container.log_index}.log"
        container.created_ids.add(container_id)
        self._event(record, "Normal", "Created", f"Created container {container.name}")
        try:
            running = await self.runtime.run(container_id, config, log_path)
        except ContainerStartError as error:
            await self.runtime.delete(container_id)
            container.container_id = container_id
            container.state = {
                "terminated": {
                    "exitCode": START_ERROR_EXIT_CODE,
                    "reason": "StartError",
                    "message": str(error),
                    "startedAt": "1970-01-01T00:00:00Z",
                    "finishedAt": now_rfc3339(),
                    "containerID": f"runc://{container_id}",
                }
            }
            self._event(record, "Warning", "Failed", f"Error: {error}")
            self._report(record)
            return None
        container.running = running
        container.container_id = container_id
        container.state = {"running": {"startedAt": running.started_at}}
        container.ready = False
        self._event(record, "Normal", "Started", f"Started container {container.name}")
        if not container.init:
            readiness = container.spec.get("readinessProbe")
            if readiness:
                container.probe_tasks.append(
                    asyncio.create_task(
                        self._probe(record, container, running, readiness, "Readiness")
                    )
                )
            else:
                container.ready = True
            liveness = container.spec.get("livenessProbe")
            if liveness:
                container.probe_tasks.append(
                    asyncio.create_task(
                        self._probe(record, container, running, liveness, "Liveness")
                    )
                )
        self._report(record)
        return running

    async def _stop(self, record: PodRecord, grace: int) -> None:
        record.stopping.set()
        pending = [task for task in record.tasks if not task.done()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=TASK_SETTLE_TIMEOUT)
            for task in late:  # bounded: a start stuck in runc is given up on, the sweep below
                task.cancel()
        running = [c for c in record.all_containers() if c.is_running]
        for container in running:
            self._event(record, "Normal", "Killing", f"Stopping container {container.name}")
        codes = await asyncio.gather(
            *(self.runtime.stop(c.running, grace) for c in running if c.running is not None),
            return_exceptions=True,
        )
        for container, code in zip(running, codes, strict=True):
            if isinstance(code, int) and container.running is not None:
                self._finish(record, container, container.running, code)
            for task in container.probe_tasks:
                task.cancel()
        # Every container this pod ever made, and anything runc still lists under its prefix.
        ids = {cid for c in record.all_containers() for cid in c.created_ids}
        pause = record.sandbox.pause_id if record.sandbox is not None else ""
        ids |= {
            cid
            for cid in await self.runtime.list_ids()
            if cid.startswith(f"{record.short_uid}-") and cid != pause  # pause: sandbox.remove
        }
        await asyncio.gather(*(self.runtime.delete(cid) for cid in ids))
        if record.sandbox is not None:
            await record.sandbox.remove()
        if record.volumes is not None:
            record.volumes.release()
        shutil.rmtree(record.directory, ignore_errors=True)
        if record.final_phase is None:
            exits = [c.state.get("terminated", {}).get("exitCode") for c in record.containers]
            record.final_phase = "Succeeded" if exits and all(e == 0 for e in exits) else "Failed"
        self._report(record)
        self._pods.pop(record.uid, None)

    # --- probes --------------------------------------------------------------------------------

    async def _probe(
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
        if await self._pause(record, float(probe.get("initialDelaySeconds", 0))):
            return
        successes = failures = 0
        while not running.exited and not record.stopping.is_set():
            ok, output = await self._probe_once(record, container, probe, timeout)
            if running.exited:
                return
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            if not ok:
                self._event(record, "Warning", "Unhealthy", f"{kind} probe failed: {output}")
            if kind == "Readiness":
                if ok and successes >= success_threshold and not container.ready:
                    container.ready = True
                    self._report(record)
                elif not ok and failures >= failure_threshold and container.ready:
                    container.ready = False
                    self._report(record)
            elif failures >= failure_threshold:
                self._event(
                    record,
                    "Normal",
                    "Killing",
                    f"Container {container.name} failed liveness probe, will be restarted",
                )
                await self.runtime.stop(running, record.grace_seconds)
                return
            if await self._pause(record, period):
                return

    async def _probe_once(
        self,
        record: PodRecord,
        container: ContainerRecord,
        probe: Mapping[str, Any],
        timeout: float,
    ) -> tuple[bool, str]:
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
                    action = probe["tcpSocket"]
                    host, port = self._probe_target(record, container, action)
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

    def _probe_target(
        self, record: PodRecord, container: ContainerRecord, action: Mapping[str, Any]
    ) -> tuple[str, int]:
        port = action.get("port")
        if isinstance(port, str) and not port.isdigit():
            named = [p for p in container.spec.get("ports") or [] if p.get("name") == port]
            if not named:
                raise OSError(f"port {port} not found in container {container.name}")
            port = named[0]["containerPort"]
        sandbox = record.sandbox
        host = action.get("host") or (sandbox.ips[0] if sandbox and sandbox.ips else "")
        return str(host), int(str(port))

    async def connect_from_node(self, host: str, port: int) -> socket.socket:
        """A TCP connection from the node's own namespace (where kubelet probes from)."""
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        # A socket belongs to the namespace it was created in, whichever thread uses it later.
        sock = await asyncio.to_thread(
            in_netns_thread, self.plan.netns, lambda: socket.socket(family, socket.SOCK_STREAM)
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
        host, port = self._probe_target(record, container, action)
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

    # --- logs ----------------------------------------------------------------------------------

    async def _read_log(
        self,
        record: PodRecord,
        container: ContainerRecord,
        path: Path,
        index: int,
        *,
        follow: bool,
        tail_lines: int | None,
    ) -> AsyncIterator[bytes]:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = b""
        offset = len(data)
        if tail_lines is not None:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-tail_lines:]) if tail_lines > 0 else b""
        if data:
            yield data
        while follow:
            # Bounded by the container attempt: following ends when it exits or the pod stops.
            alive = container.is_running and container.log_index == index
            try:
                with path.open("rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
            except FileNotFoundError:
                return
            if chunk:
                offset += len(chunk)
                yield chunk
                continue
            if not alive or record.stopping.is_set():
                return
            await self._pause(record, LOG_FOLLOW_INTERVAL)

    # --- status --------------------------------------------------------------------------------

    def _phase(self, record: PodRecord) -> str:
        """kubelet's getPhase."""
        if record.final_phase is not None:
            return record.final_phase
        if not record.initialized:
            return "Pending"
        running = stopped = succeeded = waiting = 0
        for container in record.containers:
            state = container.state
            if "running" in state:
                running += 1
            elif "terminated" in state:
                stopped += 1
                succeeded += state["terminated"].get("exitCode") == 0
            elif "terminated" in container.last_state:
                stopped += 1
            else:
                waiting += 1
        if waiting:
            return "Pending"
        if running:
            return "Running"
        if stopped:
            if record.restart_policy == "Always":
                return "Running"
            if stopped == succeeded:
                return "Succeeded"
            if record.restart_policy == "Never":
                return "Failed"
            return "Running"
        return "Pending"

    def _set_condition(
        self, record: PodRecord, kind: str, status: bool, reason: str = "", message: str = ""
    ) -> None:
        value = "True" if status else "False"
        previous = record.conditions.get(kind)
        condition: JSONDict = {"type": kind, "status": value, "lastProbeTime": None}
        if previous is not None and previous["status"] == value:
            condition["lastTransitionTime"] = previous["lastTransitionTime"]
        else:
            condition["lastTransitionTime"] = now_rfc3339()
        if reason and not status:
            condition["reason"] = reason
        if message and not status:
            condition["message"] = message
        record.conditions[kind] = condition

    def _reported_ips(self, record: PodRecord) -> tuple[str, ...]:
        if record.released_ips is not None:
            return record.released_ips
        sandbox = record.sandbox
        if sandbox is None or not sandbox.ips:
            return ()
        if WRONG_SELF_IP_FAULT in self.spec.faults and not sandbox.host_network:
            return tuple(_neighbour_address(ip, sandbox.ip_cidrs) for ip in sandbox.ips)
        return sandbox.ips

    def _status(self, record: PodRecord) -> JSONDict:
        phase = self._phase(record)
        completed = phase in ("Succeeded", "Failed")
        sandbox_ready = (
            record.sandbox is not None and record.sandbox.pause_pid is not None and not completed
        )
        self._set_condition(record, "PodReadyToStartContainers", sandbox_ready)
        unfinished = [
            c.name
            for c in record.init_containers
            if c.state.get("terminated", {}).get("exitCode") != 0
        ]
        self._set_condition(
            record,
            "Initialized",
            record.initialized or not unfinished,
            "ContainersNotInitialized",
            f"containers with incomplete status: [{' '.join(unfinished)}]",
        )
        unready = [c.name for c in record.containers if not c.ready]
        reason = "PodCompleted" if completed else "ContainersNotReady"
        message = "" if completed else f"containers with unready status: [{' '.join(unready)}]"
        ready = not unready and not completed and record.initialized
        self._set_condition(record, "ContainersReady", ready, reason, message)
        self._set_condition(record, "Ready", ready, reason, message)
        if "PodScheduled" not in record.conditions:
            self._set_condition(record, "PodScheduled", True)
        status: JSONDict = {
            "phase": phase,
            "conditions": [record.conditions[k] for k in CONDITION_ORDER],
            "hostIP": self.plan.internal_ip,
            "hostIPs": [{"ip": ip} for ip in self.node.addresses],
            "startTime": record.start_time,
            "qosClass": qos_class(record.pod.get("spec", {})),
            "containerStatuses": [c.status() for c in record.containers],
        }
        ips = self._reported_ips(record)
        if ips:
            status["podIP"] = ips[0]
            status["podIPs"] = [{"ip": ip} for ip in ips]
        if record.init_containers:
            status["initContainerStatuses"] = [c.status() for c in record.init_containers]
        return status

    def _report(self, record: PodRecord) -> None:
        status = self._status(record)
        if status == record.last_sent:
            return
        record.last_sent = status
        try:
            self.on_status(record.uid, status)
        except Exception:  # the API's problem; the pod must go on
            log.exception("status callback failed for pod %s", record.name)

    # --- introspection (tests, `netlab status`) ------------------------------------------------

    def pod_sandbox(self, uid: str) -> PodSandbox | None:
        """The sandbox of a running pod (None before it exists)."""
        return self._pod(uid).sandbox

    def pod_uids(self) -> list[str]:
        return list(self._pods)
