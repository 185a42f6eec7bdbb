"""The run namespace: named from the run id, labelled for sweeping, admitted as privileged
(hostNetwork and NET_RAW probes), dumped before deletion, deleted whatever happened."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from conformance.kit.cluster import (
    call_api,
    describe_api_error,
    labels_of,
    name_of,
    resource_version_of,
    watch_events,
)
from conformance.kit.errors import ClusterError
from conformance.kit.settings import Timeouts

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "k8s-netconform"
RUN_LABEL = "netconform/run"
NAME_PREFIX = "netconform"
POD_SECURITY_LABELS = {
    f"pod-security.kubernetes.io/{mode}": "privileged" for mode in ("enforce", "audit", "warn")
}


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, label-safe id for one run: UTC time to the second plus 4 random hex digits."""
    moment = now or datetime.now(UTC)
    return f"{moment:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def namespace_name(run_id: str, worker: str = "main") -> str:
    """``netconform-<runid>[-<worker>]-<random>``, a valid DNS label (at most 63 characters).

    The worker part is left out for the one namespace a run shares ("main", "controller").
    """
    parts = [NAME_PREFIX, run_id.lower()]
    if worker not in ("main", "controller", "master"):
        parts.append(worker.lower())
    parts.append(secrets.token_hex(3))
    return "-".join(parts)[:63].rstrip("-")


def selector_for_run(run_id: str | None = None) -> str:
    """Label selector for namespaces of this suite (of one run when ``run_id`` is given)."""
    selector = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
    return f"{selector},{RUN_LABEL}={run_id}" if run_id else selector


def namespace_manifest(name: str, run_id: str) -> client.V1Namespace:
    """The run namespace object, labelled for sweeping and for privileged pod admission."""
    labels = {MANAGED_BY_LABEL: MANAGED_BY, RUN_LABEL: run_id, **POD_SECURITY_LABELS}
    return client.V1Namespace(
        api_version="v1",
        kind="Namespace",
        metadata=client.V1ObjectMeta(name=name, labels=labels),
    )


def create_namespace(
    core: client.CoreV1Api, name: str, run_id: str, timeouts: Timeouts
) -> client.V1Namespace:
    """Create the run namespace; raise `ClusterError` with the server's reason when refused."""
    result: client.V1Namespace = call_api(
        f"create namespace {name}",
        core.create_namespace,
        namespace_manifest(name, run_id),
        timeouts=timeouts,
    )
    return result


def wait_for_default_service_account(
    core: client.CoreV1Api, namespace: str, timeouts: Timeouts
) -> None:
    """Wait until the namespace's ``default`` ServiceAccount exists.

    The controller manager creates it asynchronously after the namespace; a pod created before
    it is refused (403 "serviceaccount default not found"), so, as the upstream e2e framework
    does, pods wait for it. `ClusterError` when it does not appear within
    ``Timeouts.service_account``.
    """
    selector = "metadata.name=default"
    listed = call_api(
        f"list serviceaccounts in {namespace}",
        core.list_namespaced_service_account,
        namespace,
        field_selector=selector,
        timeouts=timeouts,
    )
    if listed.items:
        return
    try:
        for event in watch_events(
            core.list_namespaced_service_account,
            namespace,
            field_selector=selector,
            resource_version=resource_version_of(listed),
            timeout=timeouts.service_account,
        ):
            if event["type"] in ("ADDED", "MODIFIED"):
                return
    except ApiException as exc:
        if exc.status != 410:  # 410: the watch expired; look once more below
            raise ClusterError(
                f"watch serviceaccounts in {namespace}: {describe_api_error(exc)}"
            ) from exc
    except urllib3.exceptions.HTTPError:
        pass  # the watch connection dropped; look once more below
    again = call_api(
        f"list serviceaccounts in {namespace}",
        core.list_namespaced_service_account,
        namespace,
        field_selector=selector,
        timeouts=timeouts,
    )
    if not again.items:
        raise ClusterError(
            f"the default ServiceAccount of namespace {namespace} did not appear within "
            f"{timeouts.service_account:.0f}s (is the controller manager running?)"
        )


def _container_state(status: client.V1ContainerStatus) -> str:
    state = status.state
    if state is None:
        return "unknown"
    if state.waiting is not None:
        return (
            f"waiting ({state.waiting.reason}: {state.waiting.message or ''})".rstrip(": )") + ")"
        )
    if state.terminated is not None:
        t = state.terminated
        return f"terminated ({t.reason}, exit {t.exit_code}: {t.message or ''})".rstrip(": )") + ")"
    if state.running is not None:
        return "running"
    return "unknown"


def describe_pod(pod: client.V1Pod) -> str:
    """One paragraph on a pod: node, phase, IPs, conditions, each container's state and restarts."""
    status = pod.status or client.V1PodStatus()
    node = pod.spec.node_name if pod.spec else None
    ips = ",".join(p.ip for p in status.pod_ips or []) or status.pod_ip or "-"
    lines = [f"pod {name_of(pod)} node={node} phase={status.phase} ips={ips}"]
    for condition in status.conditions or []:
        if condition.status != "True":
            lines.append(
                f"  condition {condition.type}={condition.status} "
                f"{condition.reason or ''} {condition.message or ''}".rstrip()
            )
    for cs in (status.init_container_statuses or []) + (status.container_statuses or []):
        lines.append(
            f"  container {cs.name}: {_container_state(cs)} ready={cs.ready} "
            f"restarts={cs.restart_count}"
        )
    return "\n".join(lines)


def dump_namespace(core: client.CoreV1Api, name: str, timeouts: Timeouts) -> str:
    """Pod states and events of the namespace, oldest event first, as text for the report.

    Never raises: a dump that cannot be taken says why, since it runs on the way to deletion.
    """
    sections: list[str] = [f"namespace {name}"]
    try:
        pods = call_api(f"list pods in {name}", core.list_namespaced_pod, name, timeouts=timeouts)
        sections.extend(describe_pod(p) for p in pods.items)
        events = call_api(
            f"list events in {name}", core.list_namespaced_event, name, timeouts=timeouts
        )

        def when(event: client.CoreV1Event) -> str:
            stamp = event.last_timestamp or event.event_time or event.first_timestamp
            return stamp.isoformat() if stamp else ""

        sections.append("events:")
        for event in sorted(events.items, key=when):
            obj = event.involved_object
            sections.append(
                f"  {when(event)} {event.type} {obj.kind}/{obj.name} {event.reason}: "
                f"{event.message} (x{event.count or 1})"
            )
    except (ClusterError, ApiException) as exc:
        sections.append(f"(dump incomplete: {describe_api_error(exc)})")
    return "\n".join(sections)


def delete_namespace(
    core: client.CoreV1Api, name: str, timeouts: Timeouts, *, wait: bool = True
) -> bool:
    """Delete the namespace (foreground); with ``wait``, watch until it is gone.

    Returns True when it is gone (or was never there), False when the wait ran out.
    """
    try:
        call_api(
            f"delete namespace {name}",
            core.delete_namespace,
            name,
            body=client.V1DeleteOptions(propagation_policy="Foreground", grace_period_seconds=0),
            timeouts=timeouts,
        )
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    if not wait:
        return True
    try:
        listed = call_api(
            f"list namespace {name}",
            core.list_namespace,
            field_selector=f"metadata.name={name}",
            timeouts=timeouts,
        )
        if not listed.items:
            return True
        for event in watch_events(
            core.list_namespace,
            field_selector=f"metadata.name={name}",
            resource_version=resource_version_of(listed),
            timeout=timeouts.namespace_delete,
        ):
            if event["type"] == "DELETED":
                return True
    except ApiException as exc:
        if exc.status != 410:  # 410: the watch expired; look once more
            raise ClusterError(f"watch namespace {name}: {describe_api_error(exc)}") from exc
        again = call_api(
            f"list namespace {name}",
            core.list_namespace,
            field_selector=f"metadata.name={name}",
            timeouts=timeouts,
        )
        return not again.items
    return False


def sweep_stale(core: client.CoreV1Api, current_run: str, timeouts: Timeouts) -> list[str]:
    """Delete namespaces labelled by earlier runs of the suite (killed runs leave them behind).

    Returns the names deleted; does not wait for them to go.
    """
    listed = call_api(
        "list netconform namespaces",
        core.list_namespace,
        label_selector=selector_for_run(),
        timeouts=timeouts,
    )
    deleted = []
    for ns in listed.items:
        labels = labels_of(ns)
        if labels.get(RUN_LABEL) == current_run:
            continue
        if ns.status is not None and ns.status.phase == "Terminating":
            continue
        delete_namespace(core, name_of(ns), timeouts, wait=False)
        deleted.append(name_of(ns))
    return deleted
