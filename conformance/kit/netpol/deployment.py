"""The model in a cluster, through the Kubernetes API only: its namespaces (labelled, leased
like the run namespace, swept by ``--cleanup-stale`` alike) and pods (the probe agent, one
container per port, pinned by nodeName); the scenarios' changes (policies, labels); the sweep
of a truth table (one exec per source pod, every cell of it at once, then the destinations'
listener records); and the bounded, measured wait for a step's table.

The sweep's verdict per cell is `conformance.kit.netpol.judge`'s: ``open``, ``blocked`` or
``reached`` (the destination recorded the nonce, the client got no answer)."""

from __future__ import annotations

import itertools
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from time import monotonic
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_none

from conformance.kit.base.errors import ClusterError, CouldNotTest, ProbeCallError
from conformance.kit.base.settings import Settings
from conformance.kit.cluster.api import call_api
from conformance.kit.cluster.inventory import pod_ips
from conformance.kit.cluster.lease import LeaseKeeper
from conformance.kit.cluster.namespace import (
    delete_namespace,
    namespace_manifest,
    namespace_name,
    wait_for_default_service_account,
)
from conformance.kit.netpol.judge import BLOCKED, OPEN, REACHED, TableResult, judge_table
from conformance.kit.netpol.model import (
    NAMESPACES,
    NS_LABEL,
    POD_LABEL,
    PORTS,
    Cell,
    Model,
    ModelPod,
    container_name,
    plan_model,
    port_name,
)
from conformance.kit.netpol.scenarios import (
    DENY_INGRESS,
    Action,
    ApplyPolicy,
    DeletePolicy,
    LabelNamespace,
    LabelPod,
    Scenario,
    Step,
)
from conformance.kit.probes.client import ExecProtocol, ProbeClient
from conformance.kit.probes.deploy import provide_agent, wait_for_pods
from conformance.kit.probes.lives import blame_removal, pod_lives
from conformance.kit.probes.model import Probe as AgentProbe
from conformance.kit.probes.model import ProbeContainer
from conformance.kit.probes.podspecs import agent_container, pod_spec

ROLE_NETPOL = "netpol"
#: Seconds a step's table may take to equal the expected one (policies, labels followed).
ENFORCE_BOUND = 10.0
#: Seconds the enforcement canary waits for its first denied cell before it calls the
#: cluster not enforcing.
CANARY_BOUND = 15.0
#: A probe's own deadline in a sweep: a cell without an answer by then counts as not answered.
PROBE_TIMEOUT = 1.0
#: An allowed cell must be reachable eventually, a denied one consistently unreachable: an
#: allowed cell still unanswered when its step settled is tried this many times more, each
#: with `RETRY_TIMEOUT` (a busy node may answer a datagram late), before it counts as closed.
RETRIES = 2
RETRY_TIMEOUT = 3.0
#: Agent requests of one source at once (every cell of a source in one exec).
PARALLEL_REQUESTS = 64
#: Source pods asked at once.
MAX_PARALLEL_SOURCES = 16
#: The agent whose container every source's requests go through.
CLIENT_CONTAINER = container_name(PORTS[0])

Observed = dict[Cell, tuple[str, str]]


# --- deployment ------------------------------------------------------------------------------


def model_namespace_names(run_id: str, worker: str) -> dict[str, str]:
    """Short name -> namespace: ``netconform-<run>[-<worker>]-np<x>-<random>``."""
    prefix = "" if worker in ("main", "controller", "master") else f"{worker}-"
    return {short: namespace_name(run_id, f"{prefix}np{short}") for short in NAMESPACES}


def model_pod(pod: ModelPod, namespace: str, run_id: str, settings: Settings) -> client.V1Pod:
    """The agent pod of ``pod``: a container per port (TCP and UDP each), ports named
    ``serve-<port>-<proto>``, running as nobody without any capability."""
    containers = []
    for port in PORTS:
        container = agent_container(
            ProbeContainer(container_name(port), port, port), settings, net_raw=False
        )
        container.ports = [
            client.V1ContainerPort(
                name=port_name(port, proto), container_port=port, protocol=proto.upper()
            )
            for proto in ("tcp", "udp")
        ]
        containers.append(container)
    probe = AgentProbe(name=pod.name, role=ROLE_NETPOL, node=pod.node, containers=())
    spec = pod_spec(probe, namespace, run_id, settings, containers=containers)
    assert spec.metadata is not None
    assert spec.metadata.labels is not None
    spec.metadata.labels[POD_LABEL] = pod.letter
    return spec


@dataclass
class ModelDeployment:
    """The deployed model, the clients that reach it and the leases on its namespaces."""

    model: Model
    core: client.CoreV1Api
    networking: client.NetworkingV1Api
    settings: Settings
    protocol: ExecProtocol = field(default_factory=ExecProtocol)
    keepers: list[LeaseKeeper] = field(default_factory=list)

    def could_not_ask(self, short: str, pod: str, error: ProbeCallError) -> str:
        """Why a model pod could not be asked: its eviction or deletion first, when that is
        what happened (an exec into a stopped container says only that it failed)."""
        lives = pod_lives(self.core, self.model.real(short), self.settings.timeouts)
        return blame_removal(pod, str(error), lives) or str(error)

    def agents(self, short: str) -> ProbeClient:
        """A probe client of model namespace ``short`` with its own API client (threads)."""
        api = client.ApiClient(self.core.api_client.configuration)
        return ProbeClient(
            client.CoreV1Api(api), self.model.real(short), self.settings.timeouts, self.protocol
        )


def deploy_model(
    api: client.ApiClient,
    run_id: str,
    worker: str,
    nodes: Sequence[str],
    families: Sequence[int],
    settings: Settings,
    created: Callable[[str], None],
) -> ModelDeployment:
    """Create the model's namespaces (``created`` is told each, for cleanup, as soon as it
    exists), their agent ConfigMaps, pull secrets and pods; wait until every pod is Ready.
    `CouldNotTest` (a `ClusterError`, a `ProbeDeploymentError`) when the cluster refuses."""
    core = client.CoreV1Api(api)
    timeouts = settings.timeouts
    names = model_namespace_names(run_id, worker)
    for short, name in names.items():
        body = namespace_manifest(name, run_id, settings.run_lease)
        assert body.metadata is not None
        assert body.metadata.labels is not None
        body.metadata.labels[NS_LABEL] = short
        call_api(f"create namespace {name}", core.create_namespace, body, timeouts=timeouts)
        created(name)
    planned = plan_model(names, nodes, families)
    for name in names.values():
        wait_for_default_service_account(core, name, timeouts)
        provide_agent(core, name, run_id, settings)

    def create(pod: ModelPod) -> None:
        namespace = names[pod.namespace]
        call_api(
            f"create pod {pod.name} in {namespace}",
            core.create_namespaced_pod,
            namespace,
            model_pod(pod, namespace, run_id, settings),
            timeouts=timeouts,
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(create, planned.pods))
    ready: dict[str, client.V1Pod] = {}
    for short, name in names.items():
        found = wait_for_pods(
            core,
            name,
            [p.name for p in planned.in_namespace(short)],
            timeout=timeouts.pods_ready,
            timeouts=timeouts,
        )
        ready.update({f"{short}/{n}": pod for n, pod in found.items()})
    pods = tuple(
        ModelPod(p.namespace, p.name, p.letter, p.node, tuple(pod_ips(ready[p.key])))
        for p in planned.pods
    )
    missing = [p.key for p in pods for f in families if p.ip(f) is None]
    if missing:
        raise CouldNotTest(
            f"model pods without an address of every family {list(families)}: {missing}"
        )
    model = Model(namespaces=names, pods=pods, families=tuple(families))
    return ModelDeployment(model, core, client.NetworkingV1Api(api), settings)


def keep_leases(deployment: ModelDeployment) -> None:
    """Renew the model namespaces' leases for as long as the family runs."""
    settings = deployment.settings
    for name in deployment.model.namespaces.values():
        keeper = LeaseKeeper(
            name,
            settings.run_lease,
            make_core=lambda: client.CoreV1Api(
                client.ApiClient(deployment.core.api_client.configuration)
            ),
            wanted=lambda: True,
            timeouts=settings.timeouts,
        )
        keeper.start()
        deployment.keepers.append(keeper)


def remove_model(
    core: client.CoreV1Api, namespaces: Sequence[str], settings: Settings
) -> list[str]:
    """Delete the model's namespaces (all at once, then wait for each); the ones still there
    after the wait, for the person to sweep with ``--cleanup-stale``."""
    for name in namespaces:
        delete_namespace(core, name, settings.timeouts, wait=False)
    return [n for n in namespaces if not delete_namespace(core, n, settings.timeouts, wait=True)]


# --- changes ---------------------------------------------------------------------------------


def _policy_body(model: Model, action: ApplyPolicy) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": action.name},
        "spec": action.spec(model),
    }


def perform(deployment: ModelDeployment, action: Action) -> None:
    """One change through the API; `ClusterError` when refused."""
    model, timeouts = deployment.model, deployment.settings.timeouts
    net = deployment.networking
    if isinstance(action, ApplyPolicy):
        namespace = model.real(action.namespace)
        body = _policy_body(model, action)
        try:
            current = net.read_namespaced_network_policy(action.name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise ClusterError(f"read networkpolicy {action.name}: {exc.reason}") from exc
            call_api(
                f"create networkpolicy {action.name} in {namespace}",
                net.create_namespaced_network_policy,
                namespace,
                body,
                timeouts=timeouts,
            )
            return
        body["metadata"]["resourceVersion"] = (
            current.metadata or client.V1ObjectMeta()
        ).resource_version
        call_api(
            f"replace networkpolicy {action.name} in {namespace}",
            net.replace_namespaced_network_policy,
            action.name,
            namespace,
            body,
            timeouts=timeouts,
        )
    elif isinstance(action, DeletePolicy):
        namespace = model.real(action.namespace)
        call_api(
            f"delete networkpolicy {action.name} in {namespace}",
            net.delete_namespaced_network_policy,
            action.name,
            namespace,
            timeouts=timeouts,
        )
    elif isinstance(action, LabelPod):
        pod = model.pod(action.pod)
        call_api(
            f"label pod {action.pod}",
            deployment.core.patch_namespaced_pod,
            pod.name,
            model.real(pod.namespace),
            {"metadata": {"labels": dict(action.labels)}},
            timeouts=timeouts,
        )
    else:
        call_api(
            f"label namespace {action.namespace}",
            deployment.core.patch_namespace,
            model.real(action.namespace),
            {"metadata": {"labels": dict(action.labels)}},
            timeouts=timeouts,
        )


def undo_actions(actions: Sequence[Action]) -> list[Action]:
    """What returns the model to its base: every label a scenario added removed (policies go
    by `clear_policies`)."""
    undo: list[Action] = []
    for action in actions:
        if isinstance(action, LabelPod):
            undo.append(LabelPod(action.pod, {k: None for k in action.labels}))
        elif isinstance(action, LabelNamespace):
            undo.append(LabelNamespace(action.namespace, {k: None for k in action.labels}))
    return undo


def clear_policies(deployment: ModelDeployment) -> None:
    for name in deployment.model.namespaces.values():
        call_api(
            f"delete networkpolicies in {name}",
            deployment.networking.delete_collection_namespaced_network_policy,
            name,
            timeouts=deployment.settings.timeouts,
        )


@contextmanager
def scenario_changes(deployment: ModelDeployment, scenario: Scenario) -> Iterator[None]:
    """The scenario's changes are undone when it ends, whatever happened: its policies
    deleted, its labels removed."""
    try:
        yield
    finally:
        actions = [a for step in scenario.steps for a in step.actions]
        for undo in undo_actions(actions):
            try:
                perform(deployment, undo)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        clear_policies(deployment)


# --- the sweep -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sweep:
    """One sweep's findings: each cell's (state, the client's error), the nonce each cell's
    answered try carried, and the prefix all the sweep's nonces share."""

    observed: Observed
    nonces: Mapping[Cell, str]
    prefix: str


def sweep(
    deployment: ModelDeployment,
    cells: Sequence[Cell],
    *,
    records: bool,
    timeout: float = PROBE_TIMEOUT,
) -> Sweep:
    """Every cell probed once: one exec per source pod (its cells at once), then, with
    ``records``, one ``seen`` per destination container of the cells left unanswered.

    A batch sent again after a broken stream gets fresh nonces: the cut try may have run
    seconds earlier (an API server restarting), before a change was in force, and what its
    probes left in the destinations' records is not this try's."""
    model = deployment.model
    prefix = f"np{secrets.token_hex(5)}"
    nonces = {cell: f"{prefix}-{index}" for index, cell in enumerate(cells)}
    cell_of = {nonce: cell for cell, nonce in nonces.items()}
    by_source: dict[str, list[Cell]] = {}
    for cell in cells:
        by_source.setdefault(cell.source, []).append(cell)
    observed: Observed = {}
    lock = threading.Lock()
    failures: list[str] = []
    resends = itertools.count(1)

    def renew(batch: Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
        with lock:
            resend = next(resends)
            fresh: list[Mapping[str, Any]] = []
            for request in batch:
                cell = cell_of[str(request["nonce"])]
                nonce = f"{nonces[cell]}.{resend}"
                nonces[cell] = nonce
                cell_of[nonce] = cell
                fresh.append({**request, "nonce": nonce})
            return fresh

    def ask(source: str) -> None:
        pod = model.pod(source)
        agents = deployment.agents(pod.namespace)
        requests = []
        for cell in by_source[source]:
            destination = model.pod(cell.destination)
            requests.append(
                {
                    "op": "connect",
                    "proto": cell.probe.proto,
                    "host": destination.ip(cell.probe.family),
                    "port": cell.probe.port,
                    "nonce": nonces[cell],
                    "timeout": timeout,
                }
            )
        try:
            answers = agents.call(
                pod.name, CLIENT_CONTAINER, requests, parallel=PARALLEL_REQUESTS, renew=renew
            )
        except ProbeCallError as exc:
            why = deployment.could_not_ask(pod.namespace, pod.name, exc)
            with lock:
                failures.append(f"{source} ({pod.node}): {why}")
            return
        finally:
            agents.close()
        with lock:
            for cell, answer in zip(by_source[source], answers, strict=True):
                if answer.get("ok"):
                    observed[cell] = (OPEN, "")
                else:
                    observed[cell] = (BLOCKED, str(answer.get("errno") or answer.get("error")))

    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_SOURCES, len(by_source) or 1)) as pool:
        list(pool.map(ask, list(by_source)))
    if failures:
        raise CouldNotTest("the model's source pods could not be asked: " + "; ".join(failures))
    found = Sweep(observed, nonces, prefix)
    if records:
        _add_records(deployment, found)
    return found


def _add_records(deployment: ModelDeployment, found: Sweep) -> None:
    """Unanswered cells whose nonce the destination's listener recorded become ``reached``."""
    model = deployment.model
    observed, nonces, prefix = found.observed, found.nonces, found.prefix
    unanswered = [cell for cell, (state, _) in observed.items() if state != OPEN]
    places = sorted({(cell.destination, cell.probe.port) for cell in unanswered})
    recorded: set[str] = set()
    lock = threading.Lock()
    failures: list[str] = []

    def ask(place: tuple[str, int]) -> None:
        pod = model.pod(place[0])
        agents = deployment.agents(pod.namespace)
        try:
            answer = agents.call_one(
                pod.name, container_name(place[1]), {"op": "seen", "nonce_prefix": prefix + "-"}
            )
        except ProbeCallError as exc:
            why = deployment.could_not_ask(pod.namespace, pod.name, exc)
            with lock:
                failures.append(f"{place[0]} ({pod.node}): {why}")
            return
        finally:
            agents.close()
        with lock:
            recorded.update(str(r.get("nonce")) for r in answer.get("records") or [])

    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_SOURCES, len(places) or 1)) as pool:
        list(pool.map(ask, places))
    if failures:
        raise CouldNotTest(
            "the model's destination pods could not be asked for their records: "
            + "; ".join(failures)
        )
    for cell in unanswered:
        if nonces[cell] in recorded:
            observed[cell] = (REACHED, observed[cell][1])


def until_true(bound: float) -> Retrying:
    """Calls again at once while the call returns False, for ``bound`` seconds; then the last
    answer (False) stands."""
    return Retrying(
        stop=stop_after_delay(bound),
        wait=wait_none(),
        retry=retry_if_result(lambda ok: not ok),
        retry_error_callback=lambda state: False,
    )


def client_view_matches(expected: Mapping[Cell, bool], observed: Observed) -> bool:
    return all((observed[cell][0] == OPEN) == allowed for cell, allowed in expected.items())


def settle(
    deployment: ModelDeployment,
    scenario: str,
    step: str,
    expected: Mapping[Cell, bool],
    *,
    started: float,
    bound: float = ENFORCE_BOUND,
) -> TableResult:
    """Sweep until the clients' view equals ``expected`` or ``bound`` seconds after
    ``started`` (when the API answered the step's last change) passed; then the last sweep's
    unanswered cells are checked against the destinations' records. ``seconds``: from
    ``started`` to the end of the first sweep that saw the expected table, so the step was in
    force within it (the bound or more when no sweep saw it)."""
    cells = list(expected)
    last: dict[str, Any] = {}

    def one_sweep() -> bool:
        found = sweep(deployment, cells, records=False)
        last.update(found=found, ended=monotonic())
        return client_view_matches(expected, found.observed)

    matched = bool(until_true(bound)(one_sweep))
    seconds = (last["ended"] - started) if matched else max(bound, monotonic() - started)
    found: Sweep = last["found"]
    observed = found.observed
    _retry_allowed(deployment, expected, observed)
    _add_records(deployment, found)
    return judge_table(
        scenario, step, deployment.model, expected, observed, seconds=seconds, bound=bound
    )


def _retry_allowed(
    deployment: ModelDeployment, expected: Mapping[Cell, bool], observed: Observed
) -> None:
    """Allowed cells left unanswered are tried `RETRIES` times more, with `RETRY_TIMEOUT`;
    those that answer are open (denied cells are never retried: one answer is enough)."""
    for _ in range(RETRIES):
        again = [c for c, allowed in expected.items() if allowed and observed[c][0] != OPEN]
        if not again:
            return
        retried = sweep(deployment, again, records=False, timeout=RETRY_TIMEOUT).observed
        for cell, (state, error) in retried.items():
            if state == OPEN:
                observed[cell] = (state, error)


def run_step(deployment: ModelDeployment, scenario: Scenario, step: Step) -> TableResult:
    """The step's changes through the API, then its table, settled and judged."""
    for action in step.actions:
        perform(deployment, action)
    started = monotonic()
    return settle(
        deployment,
        scenario.id,
        step.name,
        scenario.expected(deployment.model, step),
        started=started,
    )


# --- is NetworkPolicy enforced at all? ----------------------------------------------------------


@dataclass(frozen=True)
class Enforcement:
    """The enforcement canary's finding: a default-deny ingress policy in every model
    namespace, and whether any cell closed within `CANARY_BOUND` (``enforced``); its table,
    judged (every cell expected denied)."""

    enforced: bool
    seconds: float
    table: TableResult

    @property
    def reason(self) -> str:
        counts = self.table.counts()
        return (
            f"NetworkPolicy not enforced by this cluster (default deny left all "
            f"{counts['cells']} cells open on every node for {self.seconds:.0f} s)"
        )


def enforcement_canary(deployment: ModelDeployment) -> Enforcement:
    """Default deny ingress in every model namespace; probe TCP cells of the first family until
    one is denied (at most `CANARY_BOUND` s); if any is, wait for the whole table to close
    (`ENFORCE_BOUND` more) and judge it; then remove the policies."""
    model = deployment.model
    probes = model.probes((PORTS[0],), ("tcp",))[:1]
    expected = {cell: False for cell in model.cells(probes)}
    cells = list(expected)
    canary = Scenario(
        "enforcement-canary",
        "",
        (
            Step(
                "applied",
                tuple(ApplyPolicy(s, "canary-deny", DENY_INGRESS) for s in NAMESPACES),
                lambda s, d, p: False,
            ),
        ),
    )
    with scenario_changes(deployment, canary):
        for action in canary.steps[0].actions:
            perform(deployment, action)
        started = monotonic()
        closed: dict[str, Any] = {}

        def any_closed() -> bool:
            observed = sweep(deployment, cells, records=False).observed
            closed["seconds"] = monotonic() - started
            shut = [cell for cell, (state, _) in observed.items() if state != OPEN]
            if not shut:
                return False
            # A busy node may answer late: a cell counts as closed only if it stays so.
            again = sweep(deployment, shut, records=False, timeout=RETRY_TIMEOUT).observed
            return any(state != OPEN for state, _ in again.values())

        found = bool(until_true(CANARY_BOUND)(any_closed))
        if not found:
            observed = sweep(deployment, cells, records=False).observed
            table = judge_table(
                "enforcement-canary",
                "applied",
                model,
                expected,
                observed,
                seconds=closed.get("seconds", CANARY_BOUND),
                bound=CANARY_BOUND,
            )
            return Enforcement(False, closed.get("seconds", CANARY_BOUND), table)
        table = settle(deployment, "enforcement-canary", "applied", expected, started=started)
        return Enforcement(True, table.seconds, table)
