"""Probe deployment: the agent ConfigMap, pull secrets and every probe pod created in parallel,
then a watch until all are Ready that explains, per pod, why a probe never came up."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from time import monotonic

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from conformance.kit.cluster import (
    call_api,
    describe_api_error,
    list_nodes,
    name_of,
    node_ip_addresses,
    pod_ips,
    resource_version_of,
    watch_events,
)
from conformance.kit.errors import ClusterError, ProbeCallError, ProbeDeploymentError
from conformance.kit.namespace import MANAGED_BY, MANAGED_BY_LABEL, RUN_LABEL, describe_pod
from conformance.kit.parallel import in_parallel
from conformance.kit.podspecs import AGENT_CONFIGMAP, agent_configmap, pod_spec
from conformance.kit.probe_client import ProbeClient, require_ok
from conformance.kit.probes import Probe, ProbeMap, planned_probes
from conformance.kit.report import ClusterFacts
from conformance.kit.runstate import RunInfo, once
from conformance.kit.serial import JSONData
from conformance.kit.settings import Settings, Timeouts

#: ``--ip-family`` -> the families every probe must have (``auto``: whatever the cluster has).
REQUIRED_FAMILIES = {"ipv4": (4,), "ipv6": (6,), "dual": (4, 6)}

# Reasons a container will not get past however long we wait.
FATAL_WAITING_REASONS = frozenset(
    {"InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError", "CreateContainerError"}
)


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


def pod_ready(pod: client.V1Pod) -> bool:
    """The pod's Ready condition is True."""
    for condition in (pod.status.conditions if pod.status else None) or []:
        if condition.type == "Ready":
            return bool(condition.status == "True")
    return False


def fatal_reason(pod: client.V1Pod) -> str | None:
    """Why ``pod`` will never become Ready, when that is already certain."""
    status = pod.status
    if status is None:
        return None
    if status.phase in ("Failed", "Succeeded"):
        return f"pod phase {status.phase}: {status.reason or ''} {status.message or ''}".strip()
    for cs in (status.init_container_statuses or []) + (status.container_statuses or []):
        waiting = cs.state.waiting if cs.state else None
        if waiting is not None and waiting.reason in FATAL_WAITING_REASONS:
            return f"container {cs.name}: {waiting.reason}: {waiting.message or ''}".rstrip(": ")
    return None


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
    cause per pod (image pull, scheduling, admission, crash loop...).
    """
    wanted = set(names)
    latest: dict[str, client.V1Pod] = {}
    deadline = monotonic() + timeout

    def check() -> bool:
        fatal = {n: r for n in wanted if n in latest and (r := fatal_reason(latest[n]))}
        if fatal:
            raise ProbeDeploymentError(
                "probe pods cannot start:\n"
                + "\n".join(f"  {n}: {r}" for n, r in sorted(fatal.items()))
            )
        return all(n in latest and condition(latest[n]) for n in wanted)

    while (remaining := deadline - monotonic()) > 0:
        listed = call_api(
            f"list pods in {namespace}", core.list_namespaced_pod, namespace, timeouts=timeouts
        )
        latest = {name_of(p): p for p in listed.items if name_of(p) in wanted}
        if check():
            return latest
        try:
            for event in watch_events(
                core.list_namespaced_pod,
                namespace,
                resource_version=resource_version_of(listed),
                timeout=remaining,
            ):
                pod = event["object"]
                if name_of(pod) not in wanted:
                    continue
                if event["type"] == "DELETED":
                    latest.pop(name_of(pod), None)
                else:
                    latest[name_of(pod)] = pod
                if check():
                    return latest
                if monotonic() >= deadline:
                    break
        except ApiException as exc:
            if exc.status != 410:  # 410 Gone: the watch expired, list again
                raise ClusterError(f"watch pods in {namespace}: {describe_api_error(exc)}") from exc
        except urllib3.exceptions.HTTPError:
            pass  # the watch connection dropped; list again while time remains

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
) -> ProbeMap:
    """Create the agent ConfigMap and every probe pod (in parallel), wait until all are Ready,
    and return the map with their IPs."""
    timeouts = settings.timeouts
    if not nodes:
        raise ProbeDeploymentError("no nodes selected for probes")
    call_api(
        f"create configmap {AGENT_CONFIGMAP} in {namespace}",
        core.create_namespaced_config_map,
        namespace,
        agent_configmap(namespace, run_id),
        timeouts=timeouts,
    )
    copy_pull_secrets(core, namespace, run_id, settings)
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
        required_families=REQUIRED_FAMILIES.get(settings.ip_family, ()),
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


def restart_count(pod: client.V1Pod, container: str) -> int:
    """How often ``container`` of ``pod`` was restarted (0 when unknown)."""
    for cs in (pod.status.container_statuses if pod.status else None) or []:
        if cs.name == container:
            return int(cs.restart_count or 0)
    return 0


# --- one deployment per run, shared by xdist workers -------------------------------------------

#: The run-state record of the deployment.
RECORD = "deployment"


@dataclass(frozen=True)
class Deployment(JSONData):
    """What the deploying process made and learned: the probes, the cluster's facts, and the
    stale namespaces it deleted first (``--cleanup-stale``)."""

    probes: ProbeMap
    cluster: ClusterFacts | None = None
    stale_namespaces_deleted: tuple[str, ...] | None = None


def deploy_once(run: RunInfo, deploy: Callable[[], Deployment]) -> Deployment:
    """Deploy on the first call in the whole run (any process), reuse the result afterwards.

    A failed (or interrupted) deployment is not retried: every later caller gets the same
    `ProbeDeploymentError`, so each test needing probes errors with the real cause.
    """
    return once(
        run,
        RECORD,
        deploy,
        encode=Deployment.to_dict,
        decode=Deployment.from_dict,
        error=ProbeDeploymentError,
    )
