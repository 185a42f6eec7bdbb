"""Fixtures the conformance suites share: settings, the cluster, the probes, the agent client.

The probes are deployed once per run (whichever process needs them first, xdist workers
included; see `conformance.kit.probes.deploy_once`) and deleted by the controller at the end.
A cluster that cannot be read, or probes that cannot be deployed, make every test that needs
them a setup error carrying the cause: never a pass, never a network failure.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any, NoReturn

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from conformance.kit.agent_client import AgentClient, AgentError
from conformance.kit.cluster import (
    ClusterError,
    Discovery,
    cluster_facts,
    list_nodes,
    make_api_client,
)
from conformance.kit.namespace import create_namespace, dump_namespace, sweep_stale
from conformance.kit.prefetch import Prefetch, prefetch_once, run_prefetch
from conformance.kit.prefetch import plan_for_items as plan_prefetch
from conformance.kit.probes import (
    ProbeDeploymentError,
    ProbeMap,
    RunInfo,
    deploy_once,
    deploy_probes,
)
from conformance.kit.reachability import Sweep, plan_for_items, run_sweep, sweep_once
from conformance.kit.settings import Settings, Timeouts
from conformance.plugin import DUMP_KEY, RUN_KEY, SETTINGS_KEY, discovery_for


def could_not_test(reason: str) -> NoReturn:
    """Fail the fixture: every test using it becomes a setup ERROR with ``reason`` (no traceback:
    the reason is the report). Never a pass, never a broken-rule failure."""
    pytest.fail(f"COULD NOT TEST: {reason}", pytrace=False)


@pytest.fixture(scope="session")
def settings(pytestconfig: pytest.Config) -> Settings:
    """The parsed netconform options."""
    return pytestconfig.stash[SETTINGS_KEY]


@pytest.fixture(scope="session")
def timeouts(settings: Settings) -> Timeouts:
    return settings.timeouts


@pytest.fixture(scope="session")
def run_info(pytestconfig: pytest.Config) -> RunInfo:
    return pytestconfig.stash[RUN_KEY]


@pytest.fixture(scope="session")
def discovery(pytestconfig: pytest.Config) -> Discovery:
    """Nodes and IP families found at collection; a setup error when the cluster was unreadable."""
    found = discovery_for(pytestconfig)
    if found.error is not None:
        could_not_test(found.error)
    return found


@pytest.fixture(scope="session")
def api_client(settings: Settings, discovery: Discovery) -> client.ApiClient:
    return make_api_client(settings)


@pytest.fixture(scope="session")
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture(scope="session")
def cluster_info(
    pytestconfig: pytest.Config,
    settings: Settings,
    run_info: RunInfo,
    api_client: client.ApiClient,
    core: client.CoreV1Api,
    discovery: Discovery,
) -> tuple[ProbeMap, Mapping[str, Any]]:
    """The deployed probes and the cluster facts recorded with them."""

    def deploy() -> tuple[ProbeMap, Mapping[str, Any]]:
        timeouts = settings.timeouts
        facts: dict[str, Any] = {}
        if settings.cleanup_stale:
            swept = sweep_stale(core, run_info.run_id, timeouts)
            facts["stale_namespaces_deleted"] = ",".join(swept) or "none"
        create_namespace(core, run_info.namespace, run_info.run_id, timeouts)
        probes = deploy_probes(core, run_info.namespace, run_info.run_id, discovery.nodes, settings)
        facts["cluster"] = cluster_facts(
            api_client, list_nodes(core, timeouts), discovery, settings
        ).as_dict()
        return probes, facts

    try:
        probes, facts = deploy_once(run_info, deploy)
    except (ProbeDeploymentError, ClusterError, ApiException) as exc:
        could_not_test(f"probe deployment in namespace {run_info.namespace} failed: {exc}")
    pytestconfig.stash[DUMP_KEY] = lambda: dump_namespace(
        core, run_info.namespace, settings.timeouts
    )
    return probes, facts


@pytest.fixture(scope="session")
def probe_map(cluster_info: tuple[ProbeMap, Mapping[str, Any]]) -> ProbeMap:
    """Every probe pod of the run, Ready, with IPs."""
    return cluster_info[0]


@pytest.fixture(scope="session")
def agents(core: client.CoreV1Api, probe_map: ProbeMap, timeouts: Timeouts) -> AgentClient:
    """Runs agent request batches in probe containers (through exec)."""
    return AgentClient(core, probe_map.namespace, timeouts)


@pytest.fixture(scope="session")
def reachability(
    request: pytest.FixtureRequest, run_info: RunInfo, probe_map: ProbeMap, agents: AgentClient
) -> Sweep:
    """The run's two-pass reachability sweep over every selected check `swept_by` a planner:
    computed once in the whole run (xdist workers included), read back everywhere else."""
    try:
        return sweep_once(
            run_info, lambda: run_sweep(agents, plan_for_items(request.session.items, probe_map))
        )
    except AgentError as exc:
        could_not_test(f"reachability sweep: {exc}")


@pytest.fixture(scope="session")
def prefetch(
    request: pytest.FixtureRequest, run_info: RunInfo, probe_map: ProbeMap, agents: AgentClient
) -> Prefetch:
    """The run's staged, batched agent requests of every selected check `prefetched_by` a
    planner: run once in the whole run (xdist workers included), read back everywhere else.
    A test reads its own answers with ``prefetch.answers(request.node)``."""
    try:
        answers = prefetch_once(
            run_info,
            lambda: run_prefetch(
                agents, plan_prefetch(request.session.items, probe_map, run_info.run_id)
            ),
        )
    except AgentError as exc:
        could_not_test(f"prefetch: {exc}")
    return Prefetch(answers, agents, probe_map, run_info.run_id)


@pytest.fixture
def nonce() -> str:
    """A random token naming this test's packets, so records and captures match only them."""
    return f"nc-{secrets.token_hex(8)}"
