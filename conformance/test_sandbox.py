"""The pod sandbox outlives its containers: when one container restarts, the pod keeps its
network namespace, so its IP and localhost between its containers survive. Checked on every
node: each node's sandbox pod loses a container (all nodes at once, see
`conformance.kit.exchanges.sandboxes`); the restarted container must be back in the same network
namespace (not merely one with the same IP), beside the other container, which must not have
been restarted with it."""

from __future__ import annotations

import pytest
from kubernetes import client

from conformance.kit.base.errors import ProbeCallError
from conformance.kit.base.runstate import RunInfo
from conformance.kit.exchanges.sandboxes import (
    KILLED,
    SURVIVOR,
    SandboxRestart,
    restart_sandboxes_once,
    sandbox_changes,
)
from conformance.kit.probes.client import ProbeClient
from conformance.kit.probes.model import ProbeMap
from conformance.kit.verdicts.failures import fail_rule
from conformance.kit.verdicts.judge import problems

RULE = "a pod MUST keep its IP and network namespace across a container restart"


@pytest.fixture(scope="session")
def sandbox_restarts(
    run_info: RunInfo, probe_map: ProbeMap, probe_client: ProbeClient, core: client.CoreV1Api
) -> dict[str, SandboxRestart]:
    """Every node's sandbox pod, before and after one of its containers restarted (a
    `CouldNotTest` when the restarts could not be made)."""
    return restart_sandboxes_once(
        run_info, test_sandbox_survives_container_restart.__name__, probe_map, probe_client, core
    )


@pytest.mark.disruptive
def test_sandbox_survives_container_restart(
    probe_node: str, sandbox_restarts: dict[str, SandboxRestart]
) -> None:
    """When a container of a pod restarts, the pod MUST keep its IP and its network namespace
    (the same one, not a new one with the same IP), no other container of the pod restarts, and
    its containers MUST reach each other over localhost again (the sandbox persists)."""
    restart = sandbox_restarts[probe_node]
    if restart.error is not None:
        raise ProbeCallError(f"{restart.pod}: {restart.error}")
    outcome = restart.localhost
    if outcome is None or outcome.error is not None:
        raise ProbeCallError(f"{restart.pod}: localhost not probed: {outcome and outcome.error}")
    found = sandbox_changes(restart)
    if problems(outcome):
        found.append(f"localhost {SURVIVOR} -> {KILLED} broken: {outcome.describe()}")
    if found:
        fail_rule(
            RULE,
            expected=f"IPs {list(restart.ips_before)} and the network namespace "
            f"{restart.netns_before.describe() if restart.netns_before else '?'} kept, "
            f"only container {KILLED} restarted, and localhost between containers working "
            f"after container {KILLED} restarted",
            observed="; ".join(found),
            pods=[restart.pod],
            nodes=[probe_node],
        )
