"""The hostPort conflict check's judge (`conformance.kit.exchanges.port_conflict`): kubelet refusing the
clash pod, or keeping it from running while the holder runs, holds; both running, or their
container lives overlapping, is broken; a holder gone or stopped while the clash pod ran or was
undecided is could-not-test, never a pass."""

from __future__ import annotations

from datetime import UTC, datetime

from kubernetes import client

from conformance.kit.exchanges.port_conflict import BROKEN, HELD, UNKNOWN, judge_port_conflict

HOLDER = "hostport-n1"


def at(second: int) -> datetime:
    return datetime(2025, 1, 1, 12, 0, second, tzinfo=UTC)


def pod(
    name: str,
    phase: str,
    *,
    running_since: int | None = None,
    ran: tuple[int, int] | None = None,
    reason: str = "",
    message: str = "",
) -> client.V1Pod:
    """A one-container pod: running since ``running_since``, or terminated after running
    ``ran`` (start, finish), or never started."""
    state = client.V1ContainerState()
    if running_since is not None:
        state.running = client.V1ContainerStateRunning(started_at=at(running_since))
    elif ran is not None:
        state.terminated = client.V1ContainerStateTerminated(
            exit_code=0, started_at=at(ran[0]), finished_at=at(ran[1])
        )
    else:
        state.waiting = client.V1ContainerStateWaiting(reason="ContainerCreating")
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(containers=[], node_name="n1"),
        status=client.V1PodStatus(
            phase=phase,
            reason=reason or None,
            message=message or None,
            container_statuses=[
                client.V1ContainerStatus(
                    name="agent", image="i", image_id="", ready=False, restart_count=0, state=state
                )
            ],
        ),
    )


REFUSED = pod(
    "hostport-clash-n1",
    "Failed",
    reason="NodePorts",
    message="Pod was rejected: Predicate NodePorts failed",
)
PENDING = pod("hostport-clash-n1", "Pending")
HOLDING = pod(HOLDER, "Running", running_since=1)


def test_a_refused_clash_pod_holds_even_when_the_holder_went_since() -> None:
    assert judge_port_conflict(HOLDER, HOLDING, REFUSED).verdict == HELD
    verdict = judge_port_conflict(HOLDER, None, REFUSED)
    assert verdict.verdict == HELD
    assert "NodePorts" in verdict.why


def test_a_clash_pod_kept_from_running_while_the_holder_runs_holds() -> None:
    assert judge_port_conflict(HOLDER, HOLDING, PENDING).verdict == HELD


def test_both_running_is_broken() -> None:
    clash = pod("hostport-clash-n1", "Running", running_since=5)
    verdict = judge_port_conflict(HOLDER, HOLDING, clash)
    assert verdict.verdict == BROKEN
    assert verdict.why == "hostport-n1 and hostport-clash-n1 both run"


def test_a_clash_pod_that_ran_while_the_holder_ran_is_broken_even_after_both_stopped() -> None:
    holder = pod(HOLDER, "Succeeded", ran=(1, 30))
    clash = pod("hostport-clash-n1", "Succeeded", ran=(5, 8))
    verdict = judge_port_conflict(HOLDER, holder, clash)
    assert verdict.verdict == BROKEN
    assert "ran from 2025-01-01T12:00:05" in verdict.why


def test_a_holder_gone_is_could_not_test_not_a_pass() -> None:
    running_clash = pod("hostport-clash-n1", "Running", running_since=40)
    for clash in (running_clash, PENDING):
        verdict = judge_port_conflict(HOLDER, None, clash)
        assert verdict.verdict == UNKNOWN, clash
        assert "hostport-n1, the pod holding the port, is gone" in verdict.why
    # The holder stopped before the clash pod started: the port was free by then.
    stopped = pod(HOLDER, "Failed", ran=(1, 30))
    assert judge_port_conflict(HOLDER, stopped, running_clash).verdict == UNKNOWN
