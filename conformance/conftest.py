"""Fixtures the conformance suites share: settings, the cluster, the probes, the probe client,
and each test item's own results from the run's sweep and prefetch.

The probes are deployed once per run (whichever process needs them first, xdist workers
included; see `conformance.kit.base.runstate.once`) and deleted by the controller at the end. A
cluster that cannot be read, or probes that cannot be deployed, make every test that needs
them a setup error carrying the cause (a `CouldNotTest`, reported as could not test by the
plugin): never a pass, never a network failure.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping
from time import monotonic
from typing import Any, Protocol, TypeVar

import pytest
from kubernetes import client

from conformance.kit.base.errors import CouldNotTest
from conformance.kit.base.runstate import RunInfo, write
from conformance.kit.base.settings import Settings, Timeouts
from conformance.kit.cluster.api import make_api_client
from conformance.kit.cluster.discovery import Discovery
from conformance.kit.cluster.inventory import list_nodes
from conformance.kit.cluster.namespace import (
    STALE_SWEEP_RECORD,
    create_namespace,
    sweep_stale,
    wait_for_default_service_account,
)
from conformance.kit.cluster.survey import cluster_facts
from conformance.kit.exchanges.prefetch import ItemAnswers, answers_for_item, prefetch_once
from conformance.kit.exchanges.reachability import Sweep, outcomes_for_item, sweep_once
from conformance.kit.probes.client import ProbeClient
from conformance.kit.probes.deploy import Deployment, deploy_once, deploy_probes
from conformance.kit.probes.lives import PodLife, pod_lives
from conformance.kit.probes.model import ProbeMap
from conformance.kit.probes.service_deployment import (
    HostPortProbes,
    create_services,
    finish_service_probes,
    start_hostport_probes,
)
from conformance.kit.run.session import RUN_KEY, SETTINGS_KEY
from conformance.kit.verdicts.judge import ItemExchanges
from conformance.plugin import discovery_for

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class RunPass(Protocol[T_co]):
    """`sweep_once` or `prefetch_once`: the run's one pass over the items that ask for it."""

    def __call__(
        self,
        run: RunInfo,
        items: Iterable[Any],
        probe_map: ProbeMap,
        client: ProbeClient,
        *,
        pods: Callable[[], Mapping[str, PodLife] | None] | None = None,
    ) -> T_co: ...


def run_pass_once(
    what: str,
    run_pass: RunPass[T],
    request: pytest.FixtureRequest,
    run_info: RunInfo,
    probe_map: ProbeMap,
    probe_client: ProbeClient,
) -> T:
    """``run_pass`` over the session's items, computed once in the whole run (xdist workers
    included) and read back everywhere else; could not test (``what``: the cause) when it
    failed. A probe evicted, deleted or restarted under it is named as the cause of the
    exchanges or requests it broke, never a verdict."""

    def pods() -> Mapping[str, PodLife] | None:
        return pod_lives(probe_client.core, probe_map.namespace, probe_client.timeouts)

    try:
        return run_pass(run_info, request.session.items, probe_map, probe_client, pods=pods)
    except CouldNotTest as exc:
        raise CouldNotTest(f"{what}: {exc}") from exc


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
        raise CouldNotTest(found.error)
    return found


@pytest.fixture(scope="session")
def discovered(pytestconfig: pytest.Config) -> Discovery:
    """The run's discovery as found, also when no node can carry probes (checks made through
    the API alone still judge the nodes)."""
    return discovery_for(pytestconfig)


@pytest.fixture(scope="session")
def node_api(settings: Settings, discovered: Discovery) -> client.CoreV1Api:
    """An API client for checks made through the API alone (no probes); could not test when
    the cluster could not be read."""
    if not discovered.checked:
        raise CouldNotTest(discovered.error or "the run found no node to check")
    return client.CoreV1Api(make_api_client(settings))


@pytest.fixture(scope="session")
def api_client(settings: Settings, discovery: Discovery) -> client.ApiClient:
    return make_api_client(settings)


@pytest.fixture(scope="session")
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture(scope="session")
def deployment(
    settings: Settings,
    run_info: RunInfo,
    api_client: client.ApiClient,
    core: client.CoreV1Api,
    discovery: Discovery,
) -> Deployment:
    """The deployed probes and the cluster facts recorded with them."""

    def deploy() -> Deployment:
        timeouts = settings.timeouts
        started = monotonic()
        swept = None
        if settings.cleanup_stale:
            stale = sweep_stale(core, run_info.run_id, timeouts)
            write(run_info, STALE_SWEEP_RECORD, stale.to_dict())  # the reporter says what and why
            swept = stale.deleted
            started = monotonic()
        # Leased from the start; the controller renews it (`conformance.kit.run.session.LeaseRenewer`).
        create_namespace(
            core, run_info.namespace, run_info.run_id, timeouts, lease_seconds=settings.run_lease
        )
        wait_for_default_service_account(core, run_info.namespace, timeouts)
        # The Services before any pod: kubelet gives pods the variables of existing Services.
        services = create_services(core, run_info.namespace, run_info.run_id, timeouts)
        hostports: list[HostPortProbes] = []
        probes = deploy_probes(
            core,
            run_info.namespace,
            run_info.run_id,
            discovery.nodes,
            settings,
            required_families=discovery.required_families,
            meanwhile=lambda: hostports.append(
                start_hostport_probes(
                    core, run_info.namespace, run_info.run_id, discovery.nodes, settings
                )
            ),
        )
        probes = finish_service_probes(
            core, probes, services, hostports[0], run_info.run_id, settings
        )
        seconds = round(monotonic() - started, 3)
        facts = cluster_facts(
            api_client, list_nodes(core, timeouts), discovery, settings, run_info.namespace
        )
        return Deployment(
            probes=probes, cluster=facts, stale_namespaces_deleted=swept, seconds=seconds
        )

    try:
        found = deploy_once(run_info, deploy)
    except CouldNotTest as exc:
        raise CouldNotTest(
            f"probe deployment in namespace {run_info.namespace} failed: {exc}"
        ) from exc
    return found


@pytest.fixture(scope="session")
def probe_map(deployment: Deployment) -> ProbeMap:
    """Every probe pod of the run, Ready, with IPs."""
    return deployment.probes


@pytest.fixture(scope="session")
def probe_client(core: client.CoreV1Api, probe_map: ProbeMap, timeouts: Timeouts) -> ProbeClient:
    """Runs agent request batches in probe containers (through exec)."""
    return ProbeClient(core, probe_map.namespace, timeouts)


@pytest.fixture(scope="session")
def reachability(
    request: pytest.FixtureRequest,
    run_info: RunInfo,
    probe_map: ProbeMap,
    probe_client: ProbeClient,
) -> Sweep:
    """The run's two-pass reachability sweep over every selected check marked ``swept_by``:
    computed once in the whole run (xdist workers included), read back everywhere else."""
    return run_pass_once(
        "reachability sweep", sweep_once, request, run_info, probe_map, probe_client
    )


@pytest.fixture
def exchanges(
    request: pytest.FixtureRequest,
    reachability: Sweep,
    probe_map: ProbeMap,
    probe_client: ProbeClient,
    settings: Settings,
) -> ItemExchanges:
    """This test item's own exchanges from the sweep, judged by ``assert_rule``."""
    outcomes, unplanned = outcomes_for_item(reachability, request.node, probe_map, probe_client)
    return ItemExchanges(
        outcomes=outcomes,
        unplanned=unplanned,
        sweep=reachability,
        user_properties=request.node.user_properties,
        strict=settings.strict,
        max_loss=settings.max_loss_ratio,
    )


@pytest.fixture(scope="session")
def prefetch(
    request: pytest.FixtureRequest,
    run_info: RunInfo,
    probe_map: ProbeMap,
    probe_client: ProbeClient,
) -> dict[str, ItemAnswers]:
    """The run's staged, batched agent requests of every selected check marked
    ``prefetched_by``: run once in the whole run (xdist workers included), read back
    everywhere else."""
    return run_pass_once("prefetch", prefetch_once, request, run_info, probe_map, probe_client)


@pytest.fixture
def answers(
    request: pytest.FixtureRequest,
    prefetch: dict[str, ItemAnswers],
    probe_map: ProbeMap,
    probe_client: ProbeClient,
    run_info: RunInfo,
) -> ItemAnswers:
    """This test item's own answers from the prefetch, by step name; a setup error (could not
    test) when a container of the item could not be asked."""
    try:
        return answers_for_item(prefetch, request.node, probe_map, probe_client, run_info.run_id)
    except CouldNotTest as exc:
        raise CouldNotTest(f"prefetch: {exc}") from exc


@pytest.fixture
def nonce() -> str:
    """A random token naming this test's packets, so records and captures match only them."""
    return f"nc-{secrets.token_hex(8)}"
