"""NetworkPolicy (networking.k8s.io/v1), as truth tables on every node.

The model (`conformance.kit.netpol`): namespaces x, y, z of the run, one agent pod per tested
node in each (every node hosts a server and a client of every namespace), serving TCP and UDP
on 8080 and 8081. Each scenario applies its policies (and label changes) step by step, waits
for the expected table within a bound (measured, reported), probes every ordered pair of pods
in one sweep (one exec per source pod) and asks the destinations' listeners which denied
traffic reached them: denied must mean never delivered, not only unanswered.

A cluster that enforces no NetworkPolicy at all (the enforcement canary: a default-deny
ingress policy leaves every cell open) gets one verdict, "NetworkPolicy not enforced by this
cluster": the family skips with that reason (exit 0), or fails once under
``--require-network-policy``. A cluster that enforces some policies is judged on all.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from kubernetes import client

from conformance.kit.base.runstate import RunInfo
from conformance.kit.base.settings import Settings
from conformance.kit.cluster.api import make_api_client
from conformance.kit.cluster.discovery import Discovery
from conformance.kit.netpol.deployment import (
    Enforcement,
    ModelDeployment,
    deploy_model,
    enforcement_canary,
    keep_leases,
    remove_model,
    run_step,
    scenario_changes,
)
from conformance.kit.netpol.judge import TableResult, table_failure, table_property
from conformance.kit.netpol.scenarios import SCENARIOS, Scenario, policy_texts
from conformance.kit.verdicts.failures import RuleBroken

pytestmark = pytest.mark.netpol

#: JUnit properties (and ``summary.json``): the scenario, and its judged tables as JSON.
SCENARIO_PROPERTY = "netconform.netpol_scenario"
TABLES_PROPERTY = "netconform.netpol_tables"


def _worker(config: pytest.Config) -> str:
    workerinput = getattr(config, "workerinput", None)
    return str(workerinput["workerid"]) if workerinput else "main"


@pytest.fixture(scope="session")
def netpol_model(
    request: pytest.FixtureRequest,
    settings: Settings,
    run_info: RunInfo,
    discovery: Discovery,
) -> Iterator[ModelDeployment]:
    """The model's namespaces and pods, deleted at the end of the session whatever happened
    (failure, Ctrl-C); leased like the run namespace meanwhile, so ``--cleanup-stale`` sweeps
    them when the run died."""
    api = make_api_client(settings)
    core = client.CoreV1Api(api)
    created: list[str] = []
    deployment: ModelDeployment | None = None
    try:
        deployment = deploy_model(
            api,
            run_info.run_id,
            _worker(request.config),
            discovery.nodes,
            discovery.families,
            settings,
            created.append,
        )
        keep_leases(deployment)
        yield deployment
    finally:
        if deployment is not None:
            for keeper in deployment.keepers:
                keeper.stop()
        if created and not settings.keep_namespace:
            remove_model(core, created, settings)


@pytest.fixture(scope="session")
def netpol_enforcement(netpol_model: ModelDeployment) -> Enforcement:
    """Whether the cluster enforces NetworkPolicy at all (the canary), found once."""
    return enforcement_canary(netpol_model)


def test_network_policy_enforced(
    netpol_enforcement: Enforcement, settings: Settings, request: pytest.FixtureRequest
) -> None:
    """The cluster MUST enforce NetworkPolicy on every node: a default-deny ingress policy in
    each namespace of the model closes every cell between its pods within the bound.

    A cluster enforcing none skips this check and the whole family with the one verdict
    "NetworkPolicy not enforced by this cluster" (exit 0), unless ``--require-network-policy``
    (then this check fails)."""
    table = netpol_enforcement.table
    _record(request, [table])
    if not netpol_enforcement.enforced:
        if settings.require_network_policy:
            pytest.fail(f"{netpol_enforcement.reason} (--require-network-policy)", pytrace=False)
        pytest.skip(netpol_enforcement.reason)
    if table.wrong:
        raise RuleBroken(
            table_failure(
                "a default-deny ingress policy MUST close every cell into its namespace's pods",
                ["default deny ingress (podSelector {}) in x, y and z"],
                [table],
            )
        )


@pytest.mark.parametrize("scenario", [pytest.param(s, id=s.id) for s in SCENARIOS])
def test_network_policy(
    scenario: Scenario,
    netpol_enforcement: Enforcement,
    netpol_model: ModelDeployment,
    request: pytest.FixtureRequest,
) -> None:
    """NetworkPolicies MUST be enforced as the API defines them, on every node and in both
    directions: every cell of the scenario's truth table (source pod -> destination pod,
    protocol, port, family) allowed or denied as its policies say, denied traffic never
    delivered to the destination, and each change in force within the bound."""
    if not netpol_enforcement.enforced:
        pytest.skip(netpol_enforcement.reason)
    present = {pod.key for pod in netpol_model.model.pods}
    missing = [pod for pod in scenario.pods_named() if pod not in present]
    if missing:
        pytest.skip(
            f"needs model pod {', '.join(missing)}: the model has one pod per tested node in"
            f" each namespace, and {len(present) // max(1, len(netpol_model.model.namespaces))}"
            " nodes are tested"
        )
    tables: list[TableResult] = []
    with scenario_changes(netpol_model, scenario):
        for step in scenario.steps:
            tables.append(run_step(netpol_model, scenario, step))
    _record(request, tables, scenario)
    if any(t.wrong for t in tables):
        raise RuleBroken(
            table_failure(
                f"{scenario.id}: {scenario.rule}",
                policy_texts(scenario, netpol_model.model),
                tables,
            )
        )


def _record(
    request: pytest.FixtureRequest, tables: list[TableResult], scenario: Scenario | None = None
) -> None:
    """The judged tables on the JUnit item (and from there in ``summary.json``)."""
    properties = request.node.user_properties
    if scenario is not None:
        properties.append((SCENARIO_PROPERTY, scenario.id))
    properties.append((TABLES_PROPERTY, json.dumps(table_property(tables), separators=(",", ":"))))
