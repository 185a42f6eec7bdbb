"""The kubelet of one lab node (implements ``contract.KubeletAPI``): the node's pod lifecycle.

Per pod: volumes, a sandbox (netns + CNI + pause), init containers in order, then the app
containers, each under a supervisor that applies the restart policy with a short, bounded
back-off. Probes run in ``prober.py``, container configs are built in ``containers.py``, and
the status (``status.py``) is sent through ``on_status`` whenever it changes; events go
through ``on_event``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
from collections.abc import AsyncIterator, Coroutine
from typing import Any, cast

from netlab.contract import (
    ConfigMapLookup,
    ContainerNotRunning,
    EventCallback,
    ExecProcess,
    JSONDict,
    NodeInfo,
    PodNotFound,
    ServiceLookup,
    StatusCallback,
)
from netlab.dataplane.cni import SAME_IP_FAULT, NodeCNI
from netlab.dataplane.images import ImageLookup
from netlab.dataplane.nsexec import netns_exists
from netlab.dataplane.runtime import (
    ContainerRuntime,
    ContainerStartError,
    RunningContainer,
    now_rfc3339,
)
from netlab.dataplane.sandbox import PodSandbox
from netlab.kubelet.containers import (
    MISSING_CLUSTER_DNS,
    NO_CLUSTER_DNS_FAULT,
    PodContext,
    container_config,
    service_environment,
    wants_cluster_dns,
    write_etc_files,
)
from netlab.kubelet.errors import ContainerConfigError
from netlab.kubelet.hostports import host_port_conflict
from netlab.kubelet.logs import container_logs
from netlab.kubelet.pods import ContainerRecord, PodRecord, pod_dir
from netlab.kubelet.prober import Prober
from netlab.kubelet.status import WRONG_SELF_IP_FAULT, pod_phase, pod_status, reported_ips
from netlab.kubelet.volumes import PodVolumes
from netlab.spec import LabSpec, NodePlan

log = logging.getLogger(__name__)

BACKOFF_INITIAL = 0.5  # seconds; kubelet uses 10 s doubling to 5 min, far too slow for a lab
BACKOFF_MAX = 5.0
CLOSE_GRACE_MAX = 2  # seconds of grace per pod when the whole kubelet closes
TASK_SETTLE_TIMEOUT = 30.0  # seconds for a pod's tasks to notice a stop (a start in flight)
START_ERROR_EXIT_CODE = 128  # what kubelet reports for a process that could not start
SPLIT_NETNS_FAULT = "split-netns"
SANDBOX_RESET_FAULT = "sandbox-reset"
#: kubelet's NetworkNotReadyErrorMsg, the start of its NetworkNotReady event.
NETWORK_NOT_READY_MESSAGE = "network is not ready"


def backoff_delay(restart_count: int) -> float:
    """The wait before restart number ``restart_count + 1``: none for the first, then doubling."""
    if restart_count <= 0:
        return 0.0
    return float(min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** (restart_count - 1)))


class Kubelet:
    """The kubelet of one lab node; see the module docstring."""

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
        services: ServiceLookup | None = None,
        images: ImageLookup | None = None,
    ) -> None:
        self.spec = spec
        self.plan = plan
        self.node = node
        self.on_status = on_status
        self.on_event = on_event
        self.configmaps = configmaps
        self.services = services
        self.images = images
        self.runtime = ContainerRuntime(spec)
        self.cni = NodeCNI(spec, plan, ipam_ranges)
        self.prober = Prober(
            self.runtime, plan.netns, record_event=self._event, report=self._report
        )
        self._pods: dict[str, PodRecord] = {}
        self._started = False

    # --- kubelet life --------------------------------------------------------------------------

    async def start(self) -> None:
        if not netns_exists(self.plan.netns):
            raise RuntimeError(f"node namespace {self.plan.netns} does not exist")
        self.runtime.start()
        self.cni.write_config_files()
        (self.spec.state_dir / "pods").mkdir(parents=True, exist_ok=True)
        self._started = True
        log.info("kubelet %s started", self.plan.name)

    async def close(self) -> None:
        """Stop every pod (short grace) and release what the kubelet holds."""
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
        log.info("kubelet %s closed", self.plan.name)

    # --- KubeletAPI ----------------------------------------------------------------------------

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
        conflict = host_port_conflict(pod, [p.pod for p in self._admitted_pods(uid)])
        if conflict is not None:
            self._reject(record, *conflict)
            return
        if self.node.network_errors and not spec.get("hostNetwork"):
            # kubelet's SyncPod: no sandbox for a pod-network pod while the runtime's network
            # is not ready; the pod stays Pending with a warning (the next sync tries again).
            message = f"{NETWORK_NOT_READY_MESSAGE}: {','.join(self.node.network_errors)}"
            self._event(record, "Warning", "NetworkNotReady", message)
            self._report(record)
            return
        self._report(record)
        self._spawn(record, self._run_pod(record), f"pod-{record.name}")

    def _admitted_pods(self, except_uid: str) -> list[PodRecord]:
        """The pods this kubelet admitted that still hold their ports (not finished, not
        rejected, not torn down)."""
        return [
            record
            for uid, record in self._pods.items()
            if uid != except_uid and record.final_phase is None and not record.stopping.is_set()
        ]

    def _reject(self, record: PodRecord, reason: str, message: str) -> None:
        """kubelet's rejectPod: a Warning event, and the pod Failed with the reason and
        "Pod was rejected: MESSAGE"; nothing of it is run."""
        record.final_phase = "Failed"
        record.rejected = (reason, message)
        self._event(record, "Warning", reason, message)
        self._report(record)

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

    async def logs(
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
        record = self._pod(uid)
        async for chunk in container_logs(
            record, container, follow=follow, tail_lines=tail_lines, previous=previous
        ):
            yield chunk

    # --- pod lifecycle -------------------------------------------------------------------------

    def _pod(self, uid: str) -> PodRecord:
        record = self._pods.get(uid)
        if record is None:
            raise PodNotFound(f"pod {uid} is not running on node {self.plan.name}")
        return record

    def _spawn(
        self, record: PodRecord, coroutine: Coroutine[Any, Any, None], name: str
    ) -> asyncio.Task[None]:
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
        phase = pod_phase(record)
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
            if await record.stopped_within(backoff_delay(attempt) or BACKOFF_INITIAL):
                return False
        return False

    def _write_etc(self, record: PodRecord) -> None:
        sandbox = record.sandbox
        assert sandbox is not None
        pod_spec = record.pod.get("spec", {})
        if NO_CLUSTER_DNS_FAULT in self.spec.faults and wants_cluster_dns(
            pod_spec, host_network=sandbox.host_network
        ):
            self._event(
                record,
                "Warning",
                "MissingClusterDNS",
                f'pod: "{record.name}_{record.namespace}({record.uid})". {MISSING_CLUSTER_DNS}',
            )
        record.etc_files = write_etc_files(
            record.directory / "_etc",
            hostname=sandbox.hostname,
            pod_ips=sandbox.ips,
            host_network=sandbox.host_network,
            namespace=record.namespace,
            spec=self.spec,
            pod_spec=record.pod.get("spec", {}),
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
            if await record.stopped_within(delay):
                return False
        container.restart_count += 1
        if self.spec.faults & {SANDBOX_RESET_FAULT, SAME_IP_FAULT} and not container.init:
            if container.name in record.moved:
                record.moved.discard(container.name)  # restarted into the new sandbox: no reset
            else:
                await self._reset_sandbox(record, container)
        return not record.stopping.is_set()

    async def _reset_sandbox(self, record: PodRecord, restarting: ContainerRecord) -> None:
        """The sandbox-reset faults: a restart gets a brand new netns and a new IP (or, under
        sandbox-reset-same-ip, the same IP back from IPAM). As kubelet does for a new sandbox,
        the pod's other running containers are killed and restarted in it (else they would
        stay behind in the old, detached namespace)."""
        async with record.reset_lock:
            sandbox = record.sandbox
            assert sandbox is not None
            await sandbox.reset(keep_ips=SAME_IP_FAULT in self.spec.faults)
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
            if await record.stopped_within(BACKOFF_MAX):
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
                service_env=self._service_env(record),
            )
        try:
            image = self.images(str(container.spec.get("image") or "")) if self.images else None
            config = container_config(context, container.spec, image=image)
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
        container.ready = container.started = False
        self._event(record, "Normal", "Started", f"Started container {container.name}")
        if not container.init:
            self.prober.add_container(record, container, running)
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

    def _service_env(self, record: PodRecord) -> dict[str, str]:
        """The Service variables for a container starting now (kubelet reads its Service
        lister at each container start)."""
        if self.services is None:
            return {}
        spec = record.pod.get("spec", {})
        enable = bool(spec.get("enableServiceLinks", True))
        services = list(self.services(record.namespace))
        if record.namespace != "default":
            services += self.services("default")
        try:
            return service_environment(services, record.namespace, enable_service_links=enable)
        except (KeyError, TypeError, ValueError):  # a malformed Service must not stop the pod
            log.exception("service environment for pod %s", record.name)
            return {}

    # --- status --------------------------------------------------------------------------------

    def _reported_ips(self, record: PodRecord) -> tuple[str, ...]:
        return reported_ips(record, wrong_self_ip=WRONG_SELF_IP_FAULT in self.spec.faults)

    def _report(self, record: PodRecord) -> None:
        status = pod_status(record, self.node, self._reported_ips(record))
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
