"""Probe deployment: the agent ConfigMap, pull secrets and every probe pod created in parallel,
then a watch until all are Ready that explains, per pod, why a probe never came up."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from conformance.kit.base.errors import ClusterError, ProbeCallError, ProbeDeploymentError
from conformance.kit.base.jsondata import JSONData
from conformance.kit.base.runstate import RunInfo, once_data
from conformance.kit.base.settings import Settings, Timeouts
from conformance.kit.cluster.api import call_api, describe_api_error, name_of
from conformance.kit.cluster.facts import ClusterFacts
from conformance.kit.cluster.inventory import describe_pod, list_nodes, node_ip_addresses, pod_ips
from conformance.kit.cluster.labels import MANAGED_BY, MANAGED_BY_LABEL, RUN_LABEL
from conformance.kit.cluster.waiting import wait_on_list
from conformance.kit.probes.client import ProbeClient, require_ok
from conformance.kit.probes.layout import AGENT_CONFIGMAP
from conformance.kit.probes.lives import disruption, pod_ready, removal_reason
from conformance.kit.probes.model import Probe, ProbeMap, planned_probes
from conformance.kit.probes.parallel import in_parallel
from conformance.kit.probes.podspecs import agent_configmap, pod_spec

# Reasons a container will not get past however long we wait.
FATAL_WAITING_REASONS = frozenset(
    {"InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError", "CreateContainerError"}
)
#: A container restarted more often than this while the probes start is crash-looping: the
#: wait stops (kubelet says CrashLoopBackOff earlier, during its back-off).
CRASH_LOOP_RESTARTS = 2
#: Log lines of a crash-looping container's previous run quoted in the error.
LAST_WORDS_LINES = 20


def provide_agent(core: client.CoreV1Api, namespace: str, run_id: str, settings: Settings) -> None:
    """What probe pods in ``namespace`` need before they are created: the agent's ConfigMap and
    the ``--image-pull-secret`` Secrets."""
    call_api(
        f"create configmap {AGENT_CONFIGMAP} in {namespace}",
        core.create_namespaced_config_map,
        namespace,
        agent_configmap(namespace, run_id),
        timeouts=settings.timeouts,
    )
    copy_pull_secrets(core, namespace, run_id, settings)


def copy_pull_secrets(
    core: client.CoreV1Api, namespace: str, run_id: str, settings: Settings
) -> None:
    """Copy the ``--image-pull-secret`` Secrets into the run namespace (pods can only use
    Secrets of their own namespace). A missing or unreadable Secret is a `ProbeDeploymentError`."""
    for secret in settings.image_pull_secrets:
        try:
            source = call_api(
                f"read secret {secret}",
                core.read_namespaced_secret,
                secret.name,
                secret.namespace,
                timeouts=settings.timeouts,
            )
        except ApiException as exc:
            raise ProbeDeploymentError(
                f"--image-pull-secret {secret}: {describe_api_error(exc)}"
            ) from exc
        except ClusterError as exc:
            raise ProbeDeploymentError(f"--image-pull-secret {secret}: {exc}") from exc
        copy = client.V1Secret(
            api_version="v1",
            kind="Secret",
            metadata=client.V1ObjectMeta(
                name=secret.name,
                namespace=namespace,
                labels={MANAGED_BY_LABEL: MANAGED_BY, RUN_LABEL: run_id},
            ),
            type=source.type,
            data=source.data,
        )
        try:
            call_api(
                f"create secret {secret.name} in {namespace}",
                core.create_namespaced_secret,
                namespace,
                copy,
                timeouts=settings.timeouts,
            )
        except (ApiException, ClusterError) as exc:
            raise ProbeDeploymentError(
                f"--image-pull-secret {secret}: copy into {namespace} failed: {exc}"
            ) from exc


# --- deployment ------------------------------------------------------------------------------


def fatal_reason(pod: client.V1Pod) -> str | None:
    """Why ``pod`` will never become Ready, when that is already certain (crash loops aside:
    see `crash_looping`, whose last words need the API)."""
    removed = removal_reason(pod)
    if removed is not None:
        return removed
    status = pod.status
    if status is None:
        return None
    if status.phase in ("Failed", "Succeeded"):
        why = " ".join(p for p in (status.reason, status.message, disruption(pod)) if p)
        return f"pod phase {status.phase}{f': {why}' if why else ''}"
    for cs in (status.init_container_statuses or []) + (status.container_statuses or []):
        waiting = cs.state.waiting if cs.state else None
        if waiting is not None and waiting.reason in FATAL_WAITING_REASONS:
            return f"container {cs.name}: {waiting.reason}: {waiting.message or ''}".rstrip(": ")
    return None


def crash_looping(pod: client.V1Pod) -> list[client.V1ContainerStatus]:
    """The pod's containers (init containers included) that crash-loop: waiting in
    CrashLoopBackOff, or restarted more than `CRASH_LOOP_RESTARTS` times."""
    status = pod.status
    if status is None:
        return []
    looping = []
    for cs in (status.init_container_statuses or []) + (status.container_statuses or []):
        waiting = cs.state.waiting if cs.state else None
        if (waiting is not None and waiting.reason == "CrashLoopBackOff") or (
            cs.restart_count or 0
        ) > CRASH_LOOP_RESTARTS:
            looping.append(cs)
    return looping


def restarts(count: int | None) -> str:
    """``restarted 1 time``, ``restarted 3 times``."""
    return f"restarted {count or 0} time{'' if count == 1 else 's'}"


def terminated_words(cs: client.V1ContainerStatus) -> str | None:
    """The last termination of a container as its status tells it: exit code, reason and the
    termination message (with ``FallbackToLogsOnError``, the tail of its log when it failed);
    None when it never terminated."""
    for state in (cs.state, cs.last_state):
        terminated = state.terminated if state is not None else None
        if terminated is not None:
            head = f"exit {terminated.exit_code} ({terminated.reason or 'no reason'})"
            message = (terminated.message or "").strip()
            return f"{head}: {message}" if message else head
    return None


def container_last_words(
    core: client.CoreV1Api,
    namespace: str,
    pod: str,
    cs: client.V1ContainerStatus,
    timeouts: Timeouts,
) -> str:
    """What a crash-looping container said last: its termination message when the status
    carries one, else the tail of its previous run's log (`LAST_WORDS_LINES` lines)."""
    words = terminated_words(cs)
    if words is not None and ":" in words:
        return words
    try:
        log = call_api(
            f"read the log of {pod}/{cs.name}",
            core.read_namespaced_pod_log,
            pod,
            namespace,
            container=cs.name,
            previous=True,
            tail_lines=LAST_WORDS_LINES,
            timeouts=timeouts,
        )
    except (ClusterError, ApiException) as exc:
        reason = exc.reason if isinstance(exc, ApiException) else str(exc)
        return f"{words or 'no termination recorded'}; its log could not be read: {reason}"
    tail = str(log or "").strip()
    if not tail:
        return f"{words or 'no termination recorded'}; its previous log is empty"
    return f"{words or 'terminated'}; last log lines:\n" + "\n".join(
        f"      {line}" for line in tail.splitlines()[-LAST_WORDS_LINES:]
    )


def explain_not_ready(
    pod: client.V1Pod | None, name: str, events: Iterable[client.CoreV1Event]
) -> str:
    """Why pod ``name`` is not Ready: its state, waiting reasons, scheduling and events."""
    if pod is None:
        lines = [f"pod {name}: not found (never created, or deleted)"]
    else:
        lines = [describe_pod(pod)]
    for event in events:
        obj = event.involved_object
        if obj is not None and obj.name == name and event.type != "Normal":
            lines.append(f"  event {event.reason}: {event.message} (x{event.count or 1})")
    return "\n".join(lines)


def wait_for_pods(
    core: client.CoreV1Api,
    namespace: str,
    names: Iterable[str],
    *,
    timeout: float,
    condition: Callable[[client.V1Pod], bool] = pod_ready,
    what: str = "Ready",
    timeouts: Timeouts,
) -> dict[str, client.V1Pod]:
    """Watch the namespace until every pod in ``names`` meets ``condition`` (default Ready).

    Raises `ProbeDeploymentError` at the deadline, or early when a pod cannot recover, with the
    cause per pod: an image that cannot be pulled, a pod deleted or evicted, a container in a
    crash loop (with its own last words: its termination message, else its previous log).
    The watch survives cut connections, restarts and throttling (`wait_on_list`).
    """
    wanted = set(names)
    seen: set[str] = set()
    removed: dict[str, client.V1Pod] = {}

    def note_removal(kind: str, pod: client.V1Pod) -> None:
        if kind == "DELETED" and name_of(pod) in wanted:
            removed[name_of(pod)] = pod

    def check(pods: Mapping[str, client.V1Pod]) -> bool:
        seen.update(n for n in wanted if n in pods)
        fatal = {n: r for n in wanted if n in pods and (r := fatal_reason(pods[n]))}
        for n in sorted(wanted & seen - set(pods)):  # seen before, gone now: deleted
            last = removed.get(n)
            why = disruption(last) if last is not None else None
            fatal[n] = (
                f"pod was deleted{f' ({why})' if why else ''}: evicted or deleted by someone else"
            )
        for n in sorted(wanted & set(pods)):
            if n in fatal:
                continue
            looping = crash_looping(pods[n])
            if looping:
                fatal[n] = "; ".join(
                    f"container {cs.name} is crash-looping ({restarts(cs.restart_count)}): "
                    + container_last_words(core, namespace, n, cs, timeouts)
                    for cs in looping
                )
        if fatal:
            raise ProbeDeploymentError(
                "probe pods cannot start:\n"
                + "\n".join(f"  {n}: {r}" for n, r in sorted(fatal.items()))
            )
        return all(n in pods and condition(pods[n]) for n in wanted)

    latest: dict[str, client.V1Pod] = {}

    def check_and_keep(pods: Mapping[str, client.V1Pod]) -> bool:
        latest.clear()
        latest.update({n: p for n, p in pods.items() if n in wanted})
        return check(pods)

    found = wait_on_list(
        f"pods in {namespace}",
        core.list_namespaced_pod,
        namespace,
        done=check_and_keep,
        on_event=note_removal,
        timeout=timeout,
        timeouts=timeouts,
    )
    if found is not None:
        return {n: p for n, p in found.items() if n in wanted}

    events: list[client.CoreV1Event] = []
    try:
        events = list(
            call_api(
                f"list events in {namespace}",
                core.list_namespaced_event,
                namespace,
                timeouts=timeouts,
            ).items
        )
    except (ClusterError, ApiException):
        events = []
    pending = sorted(n for n in wanted if not (n in latest and condition(latest[n])))
    raise ProbeDeploymentError(
        f"{len(pending)} of {len(wanted)} probe pods not {what} after {timeout:.0f}s:\n"
        + "\n".join(explain_not_ready(latest.get(n), n, events) for n in pending)
    )


def deploy_probes(
    core: client.CoreV1Api,
    namespace: str,
    run_id: str,
    nodes: Sequence[str],
    settings: Settings,
    *,
    required_families: Sequence[int] = (),
    meanwhile: Callable[[], None] | None = None,
) -> ProbeMap:
    """Create the agent ConfigMap and every probe pod (in parallel), wait until all are Ready,
    and return the map with their IPs and the families every probe must have an address of
    (``required_families``: see `conformance.kit.cluster.families`). ``meanwhile`` runs once the pods
    are created, before the wait (more pods that need the ConfigMap: the hostPort probes)."""
    timeouts = settings.timeouts
    if not nodes:
        raise ProbeDeploymentError("no nodes selected for probes")
    provide_agent(core, namespace, run_id, settings)
    planned = planned_probes(nodes)

    def create(probe: Probe) -> str | None:
        try:
            call_api(
                f"create pod {probe.name}",
                core.create_namespaced_pod,
                namespace,
                pod_spec(probe, namespace, run_id, settings),
                timeouts=timeouts,
            )
        except (ClusterError, ApiException) as exc:
            return f"  {probe.name}: {exc}"
        return None

    with ThreadPoolExecutor(max_workers=min(16, len(planned))) as pool:
        failures = [f for f in pool.map(create, planned) if f]
    if failures:
        raise ProbeDeploymentError(
            "the API server refused probe pods (PodSecurity admission, quota, RBAC?):\n"
            + "\n".join(failures)
        )
    if meanwhile is not None:
        meanwhile()
    ready = wait_for_pods(
        core,
        namespace,
        [p.name for p in planned],
        timeout=timeouts.pods_ready,
        timeouts=timeouts,
    )
    deployed = [
        replace(probe, pod_ips=pod_ips(ready[probe.name]), host_ip=host_ip(ready[probe.name]))
        for probe in planned
    ]
    deployed = learn_ephemeral_ports(ProbeClient(core, namespace, timeouts), deployed)
    addresses = {
        name_of(node): node_ip_addresses(node)
        for node in list_nodes(core, timeouts)
        if name_of(node) in nodes
    }
    return ProbeMap(
        namespace=namespace,
        probes=tuple(deployed),
        node_addresses=addresses,
        required_families=tuple(required_families),
    )


def host_ip(pod: client.V1Pod) -> str:
    """``status.hostIP`` ("" when unset)."""
    return str(pod.status.host_ip or "") if pod.status is not None else ""


def learn_ephemeral_ports(client_: ProbeClient, probes: Sequence[Probe]) -> list[Probe]:
    """``probes`` with the ports their agents bound where they asked for free ones (port 0):
    each such agent is asked with ``info``, all at once. `ProbeDeploymentError` when one
    cannot say."""
    asking = {
        (p.name, c.name): p for p in probes for c in p.containers if 0 in (c.tcp_port, c.udp_port)
    }
    learned: dict[tuple[str, str], tuple[int, int]] = {}
    failures: list[str] = []

    def ask(own: ProbeClient, where: tuple[str, str], probe: Probe) -> None:
        pod, container = where
        answer = require_ok(
            own.call(pod, container, [{"op": "info"}])[0],
            pod=pod,
            container=container,
            what="learn the agent's ports",
        )
        ports = answer.get("ports") or {}
        try:
            learned[where] = (int(ports["tcp"]), int(ports["udp"]))
        except (KeyError, TypeError, ValueError):
            failures.append(f"  {pod}/{container}: info answered no ports: {answer}")

    def could_not_ask(probe: Probe, exc: ProbeCallError) -> None:
        failures.append(f"  {probe.name}: {exc}")

    in_parallel(client_, asking, ask, could_not_ask, max_parallel=16)
    if failures:
        raise ProbeDeploymentError(
            "hostNetwork probes did not say which ports they bound:\n" + "\n".join(failures)
        )
    return [
        replace(
            probe,
            containers=tuple(
                replace(
                    c,
                    tcp_port=learned[(probe.name, c.name)][0],
                    udp_port=learned[(probe.name, c.name)][1],
                )
                if (probe.name, c.name) in learned
                else c
                for c in probe.containers
            ),
        )
        for probe in probes
    ]


# --- one deployment per run, shared by xdist workers -------------------------------------------

#: The run-state record of the deployment.
DEPLOYMENT_RECORD = "deployment"


@dataclass(frozen=True)
class Deployment(JSONData):
    """What the deploying process made and learned: the probes, the cluster's facts, and the
    stale namespaces it deleted first (``--cleanup-stale``)."""

    probes: ProbeMap
    cluster: ClusterFacts | None = None
    stale_namespaces_deleted: tuple[str, ...] | None = None
    #: From creating the run namespace until every probe was Ready and known (seconds).
    seconds: float | None = None


def deploy_once(run: RunInfo, deploy: Callable[[], Deployment]) -> Deployment:
    """Deploy on the first call in the whole run (any process), reuse the result afterwards.

    A failed (or interrupted) deployment is not retried: every later caller gets the same
    `ProbeDeploymentError`, so each test needing probes errors with the real cause.
    """
    return once_data(
        run,
        DEPLOYMENT_RECORD,
        deploy,
        Deployment,
        ProbeDeploymentError,
    )
