"""The sandbox check's disruption, once per run for every node at once: kill one container of
each node's sandbox pod, wait until every one has restarted and is Ready again, then read each
pod's IPs and probe localhost between its containers (the same sweep and verdict as every
reachability check). Done for all nodes together so the cost does not grow with the nodes."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

from kubernetes import client

from conformance.kit.cluster import call_api, name_of, pod_ips
from conformance.kit.deploy import (
    PodLife,
    blame_removal,
    container_running,
    pod_life,
    pod_lives,
    removal_reason,
    restart_count,
    wait_for_pods,
)
from conformance.kit.errors import ProbeCallError, ProbeDeploymentError
from conformance.kit.parallel import in_parallel
from conformance.kit.podspecs import ping_command
from conformance.kit.probe_client import ProbeClient, require_ok
from conformance.kit.probes import ROLE_SANDBOX, Probe, ProbeMap
from conformance.kit.reachability import Endpoint, Outcome, Target, run_sweep
from conformance.kit.runstate import RunInfo, once
from conformance.kit.serial import JSONData

KILLED = "b"
SURVIVOR = "a"
CHECK = "test_sandbox_survives_container_restart"
RECORD = "sandboxes"
# The agent handles SIGTERM (and exits), so this works for a PID 1 too.
KILL_SCRIPT = "import os, signal, sys; os.kill(int(sys.argv[1]), signal.SIGTERM)"


@dataclass(frozen=True)
class SandboxRestart(JSONData):
    """One node's sandbox pod across a restart of its container `KILLED`."""

    node: str
    pod: str
    ips_before: tuple[str, ...]
    ips_after: tuple[str, ...] = ()
    localhost: Outcome | None = None
    error: str | None = None


def localhost_target(sandbox: Probe) -> Target:
    """The exchange that must work again after the restart: TCP over 127.0.0.1 from the
    surviving container to the restarted one."""
    return Target(
        check=CHECK,
        proto="tcp",
        family=4,
        source=Endpoint(sandbox.name, SURVIVOR, sandbox.node),
        destination=Endpoint(sandbox.name, KILLED, sandbox.node),
        host="127.0.0.1",
        port=sandbox.container(KILLED).tcp_port,
        capture=False,
        measure_loss=False,  # loopback: no network to lose packets on
    )


def restart_sandboxes(
    probe_map: ProbeMap, probe_client: ProbeClient, core: client.CoreV1Api
) -> dict[str, SandboxRestart]:
    """Kill `KILLED` in every sandbox pod at once, wait until all run again and their agents
    answer, and look."""
    timeouts = probe_client.timeouts
    namespace = probe_map.namespace
    sandboxes = {p.name: p for p in probe_map.of_role(ROLE_SANDBOX)}
    if not sandboxes:
        raise ProbeDeploymentError("the run deployed no sandbox pod")
    listed = call_api(
        f"list pods in {namespace}", core.list_namespaced_pod, namespace, timeouts=timeouts
    )
    listed_sandboxes = {name_of(p): p for p in listed.items if name_of(p) in sandboxes}
    before = {n: p for n, p in listed_sandboxes.items() if removal_reason(p) is None}
    if not before:
        raise ProbeDeploymentError(
            f"every sandbox pod was gone before the check: {sorted(sandboxes)}"
        )
    # A pod that went (evicted, deleted) costs its own node's check, not the others'.
    went_away = name_vanished(
        {name: "before the check" for name in sandboxes if name not in before},
        {n: pod_life(p) for n, p in listed_sandboxes.items()},
    )
    errors: dict[str, str] = {}
    restarts = {name: restart_count(pod, KILLED) for name, pod in before.items()}

    def kill(own: ProbeClient, pod: str, _sandbox: Probe) -> None:
        info = require_ok(
            own.call(pod, KILLED, [{"op": "info"}])[0], pod=pod, container=KILLED, what="info"
        )
        # The container may die before the exec reports back; the restart count decides.
        with contextlib.suppress(ProbeCallError):
            own.exec(
                pod,
                KILLED,
                ["python3", "-c", KILL_SCRIPT, str(info["pid"])],
                timeout=timeouts.exec_overhead,
            )

    def could_not_kill(sandbox: Probe, exc: ProbeCallError) -> None:
        errors[sandbox.name] = f"could not kill container {KILLED}: {exc}"

    in_parallel(
        probe_client, {n: sandboxes[n] for n in before}, kill, could_not_kill, max_parallel=16
    )
    waiting = [name for name in before if name not in errors]
    after: Mapping[str, client.V1Pod] = {}
    while waiting:
        try:
            after = wait_for_pods(
                core,
                namespace,
                waiting,
                timeout=timeouts.container_restart,
                condition=lambda p: (
                    restart_count(p, KILLED) > restarts[name_of(p)] and container_running(p, KILLED)
                ),
                what=f"restarted (container {KILLED}) and running again",
                timeouts=timeouts,
            )
            break
        except ProbeDeploymentError:
            # A pod taken away meanwhile costs its own node's check; the others wait on.
            lives = pod_lives(core, namespace, timeouts)
            why = f"while container {KILLED} restarted"
            vanished = {n: b for n in waiting if (b := blame_removal(n, why, lives)) is not None}
            if not vanished:
                raise
            went_away.update(vanished)
            waiting = [n for n in waiting if n not in vanished]

    # The restarted agent is asked itself whether it listens (one exec each), rather than
    # kubelet's readiness probe: probing every sandbox often enough to notice quickly would
    # cost every node an exec every few seconds for the whole run.
    def await_agent(own: ProbeClient, pod: str, _sandbox: Probe) -> None:
        result = own.exec(
            pod,
            KILLED,
            ping_command(KILLED, timeouts.container_restart / 2),
            timeout=timeouts.container_restart,
        )
        if result.returncode != 0:
            errors[pod] = (
                f"the restarted agent in container {KILLED} does not answer: "
                f"{result.stderr.strip()[-300:] or f'ping exited {result.returncode}'}"
            )

    def could_not_ask(sandbox: Probe, exc: ProbeCallError) -> None:
        errors[sandbox.name] = f"could not ask the restarted container {KILLED}: {exc}"

    in_parallel(
        probe_client, {n: sandboxes[n] for n in after}, await_agent, could_not_ask, max_parallel=16
    )
    after = {name: pod for name, pod in after.items() if name not in errors}
    if errors:
        errors = name_vanished(errors, pod_lives(core, namespace, timeouts))
    errors.update(went_away)
    outcomes = {
        o.target.source.pod: o
        for o in run_sweep(
            probe_client,
            [localhost_target(sandboxes[name]) for name in after],
            pods=lambda: pod_lives(core, namespace, timeouts),
        )
    }
    return {
        sandbox.node: SandboxRestart(
            node=sandbox.node,
            pod=name,
            ips_before=pod_ips(before[name]) if name in before else (),
            ips_after=pod_ips(after[name]) if name in after else (),
            localhost=outcomes.get(name),
            error=errors.get(name),
        )
        for name, sandbox in sandboxes.items()
    }


def name_vanished(errors: Mapping[str, str], lives: Mapping[str, PodLife] | None) -> dict[str, str]:
    """``errors``, each behind its first cause where the pod itself went away
    (`conformance.kit.deploy.blame_removal`)."""
    return {pod: blame_removal(pod, error, lives) or error for pod, error in errors.items()}


def restart_sandboxes_once(
    run: RunInfo, probe_map: ProbeMap, probe_client: ProbeClient, core: client.CoreV1Api
) -> dict[str, SandboxRestart]:
    """`restart_sandboxes` once in the whole run (xdist workers read the result back); a
    failure is not repeated: later callers get the same `ProbeDeploymentError`."""
    return once(
        run,
        RECORD,
        lambda: restart_sandboxes(probe_map, probe_client, core),
        encode=lambda found: {node: r.to_dict() for node, r in found.items()},
        decode=lambda raw: {node: SandboxRestart.from_dict(r) for node, r in raw.items()},
        error=lambda cause: ProbeDeploymentError(f"the sandbox restarts failed: {cause}"),
    )
