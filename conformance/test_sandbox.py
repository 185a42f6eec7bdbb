"""The pod sandbox outlives its containers: when one container restarts, the pod keeps its
network namespace, so its IP and localhost between its containers survive."""

from __future__ import annotations

import contextlib

import pytest
from kubernetes import client

from conformance.kit.agent_client import AgentClient, AgentError, exchange, require_ok
from conformance.kit.cluster import call_api, pod_ips
from conformance.kit.probes import (
    ROLE_SANDBOX,
    ProbeDeploymentError,
    ProbeMap,
    pod_ready,
    restart_count,
    wait_for_pods,
)
from conformance.kit.report import format_rule_failure
from conformance.kit.settings import Timeouts

KILLED = "b"
SURVIVOR = "a"
# The agent handles SIGTERM (and exits), so this works for a PID 1 too.
KILL_SCRIPT = "import os, signal, sys; os.kill(int(sys.argv[1]), signal.SIGTERM)"


@pytest.mark.disruptive
def test_sandbox_survives_container_restart(
    probe_map: ProbeMap,
    agents: AgentClient,
    core: client.CoreV1Api,
    timeouts: Timeouts,
    nonce: str,
) -> None:
    """When a container of a pod restarts, the pod MUST keep its IP and its containers MUST
    reach each other over localhost again (the sandbox and its network namespace persist)."""
    sandboxes = probe_map.of_role(ROLE_SANDBOX)
    if not sandboxes:
        raise ProbeDeploymentError("the run deployed no sandbox pod")
    sandbox = sandboxes[0]
    namespace = probe_map.namespace
    before = call_api(
        f"read pod {sandbox.name}",
        core.read_namespaced_pod,
        sandbox.name,
        namespace,
        timeouts=timeouts,
    )
    ips_before = pod_ips(before)
    restarts_before = restart_count(before, KILLED)
    info = require_ok(
        agents.call_one(sandbox.name, KILLED, {"op": "info"}),
        pod=sandbox.name,
        container=KILLED,
        what="info",
    )
    # The container may die before the exec reports back; the restart count decides.
    with contextlib.suppress(AgentError):
        agents.exec(
            sandbox.name,
            KILLED,
            ["python3", "-c", KILL_SCRIPT, str(info["pid"])],
            timeout=timeouts.exec_overhead,
        )

    restarted = wait_for_pods(
        core,
        namespace,
        [sandbox.name],
        timeout=timeouts.container_restart,
        condition=lambda p: restart_count(p, KILLED) > restarts_before and pod_ready(p),
        what=f"restarted (container {KILLED}) and Ready again",
        timeouts=timeouts,
    )[sandbox.name]
    ips_after = pod_ips(restarted)
    problems = []
    if ips_after != ips_before:
        problems.append(f"pod IPs changed from {list(ips_before)} to {list(ips_after)}")
    agent = sandbox.agent(KILLED)
    result = exchange(
        agents,
        proto="tcp",
        source=(sandbox.name, SURVIVOR),
        destination=(sandbox.name, KILLED),
        host="127.0.0.1",
        port=agent.tcp_port,
        nonce=nonce,
        capture=False,
    )
    if not result.reached:
        problems.append(f"localhost {SURVIVOR} -> {KILLED} broken: {result.describe()}")
    if problems:
        pytest.fail(
            format_rule_failure(
                "a pod MUST keep its IP and network namespace across a container restart",
                expected=f"IPs {list(ips_before)} kept and localhost between containers working "
                f"after container {KILLED} restarted",
                observed="; ".join(problems),
                pods=[sandbox.describe()],
                nodes=[sandbox.node],
            ),
            pytrace=False,
        )
