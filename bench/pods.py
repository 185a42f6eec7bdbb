"""Pod waves and exec round trips on a real cluster, measured the way a user sees them.

A wave: list the namespace (for a resourceVersion), open the watch from there in a thread, THEN
create every pod at once, so no status change is missed and each pod's create-to-Running time is
(Running seen on the watch) - (its create request sent)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from time import monotonic, perf_counter
from typing import Any

from kubernetes import client
from kubernetes.stream import stream

from bench.stats import Spread
from conformance.kit.cluster.api import labels_of, name_of, resource_version_of, watch_events

CREATE_THREADS = 16  # as many creates in flight as the suite's deploy_probes uses
EXEC_METHOD = "kubernetes.stream.stream (official Python client, websocket exec, as the suite)"


class WaveError(RuntimeError):
    """A wave did not complete in time: the message says which pods were missing."""


def _ready(pod: client.V1Pod) -> bool:
    for condition in (pod.status.conditions if pod.status else None) or []:
        if condition.type == "Ready":
            return bool(condition.status == "True")
    return False


def plain_pod(name: str, node: str | None, labels: dict[str, str]) -> client.V1Pod:
    """A pod with one container that only sleeps: what the lab's floor is measured with."""
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1PodSpec(
            node_name=node,
            containers=[
                client.V1Container(name="main", image="busybox", command=["sleep", "3600"])
            ],
            termination_grace_period_seconds=0,
            automount_service_account_token=False,
            enable_service_links=False,
        ),
    )


class _Watcher(threading.Thread):
    """Watches pods of ``selector`` from ``resource_version``; calls ``on_event(type, pod,
    seen_at)`` for each event until it returns True or ``timeout`` passes."""

    def __init__(
        self,
        core: client.CoreV1Api,
        namespace: str,
        selector: str,
        resource_version: str | None,
        on_event: Callable[[str, client.V1Pod, float], bool],
        timeout: float,
    ) -> None:
        super().__init__(name=f"watch-{selector}", daemon=True)
        self.args = (core, namespace, selector, resource_version)
        self.on_event = on_event
        self.timeout = timeout
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        core, namespace, selector, resource_version = self.args
        deadline = monotonic() + self.timeout
        try:
            while not self.done.is_set() and (remaining := deadline - monotonic()) > 0:
                for event in watch_events(
                    core.list_namespaced_pod,
                    namespace,
                    label_selector=selector,
                    resource_version=resource_version,
                    timeout=remaining,
                ):
                    pod = event["object"]
                    resource_version = pod.metadata.resource_version or resource_version
                    if self.on_event(event["type"], pod, monotonic()):
                        self.done.set()
                        break
        except BaseException as exc:  # handed to the caller, who raises it
            self.error = exc


@dataclass
class Wave:
    """One wave's timestamps (monotonic seconds) per pod name."""

    created: dict[str, float] = field(default_factory=dict)
    running: dict[str, float] = field(default_factory=dict)
    ready: dict[str, float] = field(default_factory=dict)

    @property
    def start_seconds(self) -> list[float]:
        """Create-to-Running of every pod that ran."""
        return [self.running[n] - self.created[n] for n in self.running if n in self.created]

    @property
    def all_ready_seconds(self) -> float:
        """First create sent to last pod Ready: the wave's wall time."""
        return max(self.ready.values()) - min(self.created.values())


def run_wave(
    core: client.CoreV1Api, namespace: str, pods: Sequence[client.V1Pod], *, timeout: float
) -> Wave:
    """Create ``pods`` at once (they must share the label ``wave=<id>``) and wait, on a watch
    opened before the creates, until all are Ready. Raises `WaveError` at ``timeout``."""
    wave = Wave()
    names = {name_of(p) for p in pods}
    selector = ",".join(f"{k}={v}" for k, v in sorted(labels_of(pods[0]).items()))
    listed = core.list_namespaced_pod(namespace, label_selector=selector)
    lock = threading.Lock()

    def on_event(kind: str, pod: client.V1Pod, seen: float) -> bool:
        name = name_of(pod)
        with lock:
            if name in names and kind != "DELETED":
                if pod.status and pod.status.phase == "Running":
                    wave.running.setdefault(name, seen)
                if _ready(pod):
                    wave.ready.setdefault(name, seen)
            return len(wave.ready) == len(names)

    watcher = _Watcher(core, namespace, selector, resource_version_of(listed), on_event, timeout)
    watcher.start()

    def create(pod: client.V1Pod) -> None:
        with lock:
            wave.created[name_of(pod)] = monotonic()
        core.create_namespaced_pod(namespace, pod)

    with ThreadPoolExecutor(max_workers=min(CREATE_THREADS, len(pods))) as pool:
        list(pool.map(create, pods))
    watcher.join(timeout + 10)
    if watcher.error is not None:
        raise WaveError(f"watch on {selector} failed: {watcher.error}") from watcher.error
    if len(wave.ready) < len(names):
        missing = sorted(names - set(wave.ready))
        raise WaveError(
            f"{len(missing)} of {len(names)} pods not Ready after {timeout:.0f} s: "
            + ", ".join(missing[:10])
        )
    return wave


def delete_wave(
    core: client.CoreV1Api, namespace: str, selector: str, names: Sequence[str], *, timeout: float
) -> float:
    """Delete the pods of ``selector`` and wait (watch) until all of ``names`` are gone;
    returns the seconds it took. Raises `WaveError` at ``timeout``."""
    gone: set[str] = set()
    wanted = set(names)
    listed = core.list_namespaced_pod(namespace, label_selector=selector)
    started = monotonic()

    def on_event(kind: str, pod: client.V1Pod, seen: float) -> bool:
        if kind == "DELETED":
            gone.add(name_of(pod))
        return wanted <= gone

    watcher = _Watcher(core, namespace, selector, resource_version_of(listed), on_event, timeout)
    watcher.start()
    core.delete_collection_namespaced_pod(namespace, label_selector=selector)
    watcher.join(timeout + 10)
    if not wanted <= gone:
        raise WaveError(
            f"{len(wanted - gone)} pods of {selector} still there after {timeout:.0f} s"
        )
    return monotonic() - started


def exec_round_trips(
    core: client.CoreV1Api,
    namespace: str,
    pods: Sequence[str],
    count: int,
    command: Sequence[str] = ("true",),
) -> Spread:
    """``count`` sequential execs of ``command`` (silent) spread over ``pods``; seconds each,
    open to close."""
    trips: list[float] = []
    for index in range(count):
        pod = pods[index % len(pods)]
        started = perf_counter()
        output: Any = stream(
            core.connect_get_namespaced_pod_exec,
            pod,
            namespace,
            command=list(command),
            stdout=True,
            stderr=True,
            stdin=False,
            tty=False,
            _request_timeout=30,
        )
        trips.append(perf_counter() - started)
        if output:
            raise RuntimeError(f"exec {' '.join(command)} in {pod} printed {output!r}")
    return Spread.of(trips)
