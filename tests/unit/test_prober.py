"""netlab's prober against a fake runtime: the young kubelet's start jitter (upstream
pkg/kubelet/prober/worker.go), startup probes gating readiness and liveness, and a failed
startup probe restarting the container. Waits are recorded, never slept, so nothing here
depends on the machine's speed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from netlab.contract import JSONDict
from netlab.kubelet.pods import ContainerRecord, PodRecord
from netlab.kubelet.prober import Prober, start_jitter

PING = {"exec": {"command": ["ping"]}}


def test_start_jitter_only_while_the_kubelet_is_younger_than_the_period() -> None:
    assert start_jitter(60, kubelet_age=5, draw=0.5) == 30
    assert start_jitter(60, kubelet_age=59.9, draw=0.99) == pytest.approx(59.4)
    assert start_jitter(60, kubelet_age=60, draw=0.99) == 0
    assert start_jitter(1, kubelet_age=5, draw=0.99) == 0
    assert start_jitter(1, kubelet_age=0.2, draw=0.0) == 0


@dataclass
class FakeProcess:
    returncode: int | None

    async def communicate(self) -> tuple[bytes, bytes]:
        return b"", b"" if self.returncode == 0 else b"agent not answering"

    def kill(self) -> None:
        pass


@dataclass
class FakeRunning:
    exited: bool = False


@dataclass
class FakeRuntime:
    """Answers each exec with the next exit code of ``answers`` (0 once they run out); the
    container exits after ``exit_after`` execs."""

    answers: Iterator[int]
    exit_after: int = 1000
    execs: list[str] = field(default_factory=list)
    stopped: int = 0
    running: FakeRunning = field(default_factory=FakeRunning)

    async def exec(self, container_id: str, argv: list[str]) -> FakeProcess:
        self.execs.append(argv[0])
        if len(self.execs) >= self.exit_after:
            self.running.exited = True
        return FakeProcess(next(self.answers, 0))

    async def stop(self, running: FakeRunning, grace: float) -> int:
        self.stopped += 1
        running.exited = True
        return 137


class RecordingPod(PodRecord):
    """A pod whose waits are recorded and return at once."""

    waits: list[float]

    async def stopped_within(self, seconds: float) -> bool:
        self.waits.append(seconds)
        await asyncio.sleep(0)
        return self.stopping.is_set()


def pod_with(container: JSONDict) -> tuple[RecordingPod, ContainerRecord]:
    record = ContainerRecord(spec={"name": "agent", "image": "probe", **container}, init=False)
    pod = RecordingPod(
        pod={"metadata": {"uid": "u1", "name": "p"}, "spec": {}},
        directory=Path("/nonexistent"),
        init_containers=[],
        containers=[record],
    )
    pod.waits = []
    return pod, record


def run_probes(
    container: JSONDict, answers: list[int], *, age: float, draw: float = 0.5, exit_after: int = 8
) -> tuple[RecordingPod, ContainerRecord, FakeRuntime, list[tuple[str, str]], int]:
    """Start ``container``'s probe workers under a kubelet ``age`` s old and run them until the
    container exits; (pod, container, runtime, events, status reports)."""
    events: list[tuple[str, str]] = []
    reports = [0]
    runtime = FakeRuntime(iter(answers), exit_after=exit_after)

    async def scenario() -> None:
        prober = Prober(
            runtime,  # type: ignore[arg-type]
            "node-netns",
            record_event=lambda _pod, _type, reason, message: events.append((reason, message)),
            report=lambda _pod: reports.__setitem__(0, reports[0] + 1),
            started=time.monotonic() - age,
            draw=lambda: draw,
        )
        prober.add_container(pod, record, runtime.running)  # type: ignore[arg-type]
        await asyncio.wait_for(asyncio.gather(*record.probe_tasks), timeout=10)

    pod, record = pod_with(container)
    asyncio.run(scenario())
    return pod, record, runtime, events, reports[0]


def test_a_young_kubelet_delays_each_worker_by_a_part_of_its_period() -> None:
    probe: dict[str, Any] = {**PING, "periodSeconds": 60}
    pod, _, runtime, _, _ = run_probes({"readinessProbe": probe}, [0], age=5, draw=0.25)
    assert pod.waits[0] == 15  # 0.25 of the 60 s period, before the first probe
    assert runtime.execs, "the worker never probed"


def test_a_warm_kubelet_probes_at_once() -> None:
    probe: dict[str, Any] = {**PING, "periodSeconds": 60}
    pod, _, _, _, reports = run_probes({"readinessProbe": probe}, [0], age=120)
    assert pod.waits[0] == 0
    assert reports >= 1


def test_a_startup_probe_gates_readiness_and_a_container_without_readiness_is_ready() -> None:
    startup = {**PING, "periodSeconds": 1, "failureThreshold": 5}
    _, record, runtime, events, _ = run_probes({"startupProbe": startup}, [1, 1, 0], age=120)
    assert runtime.execs == ["ping"] * 3  # two failures, then success, then never again
    assert record.started
    assert record.ready
    assert [reason for reason, _ in events] == ["Unhealthy", "Unhealthy"]
    assert runtime.stopped == 0


def test_readiness_waits_for_startup() -> None:
    startup = {"exec": {"command": ["startup"]}, "periodSeconds": 1, "failureThreshold": 5}
    readiness = {"exec": {"command": ["ready"]}, "periodSeconds": 1}
    _, _, runtime, _, _ = run_probes(
        {"startupProbe": startup, "readinessProbe": readiness}, [1, 0], age=120, exit_after=5
    )
    first_ready = runtime.execs.index("ready")
    assert runtime.execs[:first_ready] == ["startup", "startup"]
    assert "startup" not in runtime.execs[first_ready:]


def test_a_failed_startup_probe_restarts_the_container() -> None:
    startup = {**PING, "periodSeconds": 1, "failureThreshold": 3}
    _, record, runtime, events, _ = run_probes({"startupProbe": startup}, [1, 1, 1], age=120)
    assert runtime.stopped == 1
    assert not record.started
    assert not record.ready
    assert ("Killing", "Container agent failed startup probe, will be restarted") in events
