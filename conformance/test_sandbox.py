"""The pod sandbox outlives its containers: when one container restarts, the pod keeps its
network namespace, so its IP and localhost between its containers survive. Checked on every
node: each node's sandbox pod loses a container (all nodes at once, see
`conformance.kit.sandboxes`)."""

from __future__ import annotations

import pytest
from kubernetes import client

from conformance.kit.errors import ProbeCallError
from conformance.kit.probe_client import ProbeClient
from conformance.kit.probes import ProbeMap
from conformance.kit.report import format_rule_failure
from conformance.kit.runstate import RunInfo
from conformance.kit.sandboxes import KILLED, SURVIVOR, SandboxRestart, restart_sandboxes_once
from conformance.kit.verdicts import problems

RULE = "a pod MUST keep its IP and network namespace across a container restart"


@pytest.fixture(scope="session")
def sandbox_restarts(
    run_info: RunInfo, probe_map: ProbeMap, probe_client: ProbeClient, core: client.CoreV1Api
) -> dict[str, SandboxRestart]:
    """Every node's sandbox pod, before and after one of its containers restarted (a
    `CouldNotTest` when the restarts could not be made)."""
    return restart_sandboxes_once(run_info, probe_map, probe_client, core)


@pytest.mark.disruptive
def test_sandbox_survives_container_restart(
    probe_node: str, sandbox_restarts: dict[str, SandboxRestart]
) -> None:
    """When a container of a pod restarts, the pod MUST keep its IP and its containers MUST
    reach each other over localhost again (the sandbox and its network namespace persist)."""
    restart = sandbox_restarts[probe_node]
    if restart.error is not None:
        raise ProbeCallError(f"{restart.pod}: {restart.error}")
    outcome = restart.localhost
    if outcome is None or outcome.error is not None:
        raise ProbeCallError(f"{restart.pod}: localhost not probed: {outcome and outcome.error}")
    found = []
    if restart.ips_after != restart.ips_before:
        found.append(
            f"pod IPs changed from {list(restart.ips_before)} to {list(restart.ips_after)}"
        )
    if problems(outcome):
        found.append(f"localhost {SURVIVOR} -> {KILLED} broken: {outcome.describe()}")
    if found:
        pytest.fail(
            format_rule_failure(
                RULE,
                expected=f"IPs {list(restart.ips_before)} kept and localhost between containers "
                f"working after container {KILLED} restarted",
                observed="; ".join(found),
                pods=[restart.pod],
                nodes=[probe_node],
            ),
            pytrace=False,
        )
