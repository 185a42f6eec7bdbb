"""The run namespace: named from the run id, labelled for sweeping, admitted as privileged
(hostNetwork and NET_RAW probes), leased while its run lives (`conformance.kit.cluster.lease`), dumped
before deletion, deleted whatever happened; and the sweep of namespaces whose run is gone."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from conformance.kit.base.errors import ClusterError
from conformance.kit.base.jsondata import JSONData
from conformance.kit.base.settings import Timeouts
from conformance.kit.cluster.api import call_api, describe_api_error, labels_of, name_of
from conformance.kit.cluster.inventory import describe_pod
from conformance.kit.cluster.labels import MANAGED_BY, MANAGED_BY_LABEL, RUN_LABEL
from conformance.kit.cluster.lease import (
    DEFAULT_RUN_LEASE,
    UNLEASED_STALE_AFTER,
    format_time,
    lease_annotations,
    lease_of,
)
from conformance.kit.cluster.waiting import wait_on_list

NAME_PREFIX = "netconform"
#: The run-state record of the ``--cleanup-stale`` sweep (`StaleSweep`), for the report.
STALE_SWEEP_RECORD = "stale-sweep"
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


def namespace_manifest(
    name: str, run_id: str, lease_seconds: float = DEFAULT_RUN_LEASE
) -> client.V1Namespace:
    """The run namespace object, labelled for sweeping and for privileged pod admission, with
    the run's lease (``lease_seconds`` from now) in its annotations."""
    labels = {MANAGED_BY_LABEL: MANAGED_BY, RUN_LABEL: run_id, **POD_SECURITY_LABELS}
    return client.V1Namespace(
        api_version="v1",
        kind="Namespace",
        metadata=client.V1ObjectMeta(
            name=name, labels=labels, annotations=lease_annotations(lease_seconds)
        ),
    )


def create_namespace(
    core: client.CoreV1Api,
    name: str,
    run_id: str,
    timeouts: Timeouts,
    *,
    lease_seconds: float = DEFAULT_RUN_LEASE,
) -> client.V1Namespace:
    """Create the run namespace, leased for ``lease_seconds``; raise `ClusterError` with the
    server's reason when refused."""
    result: client.V1Namespace = call_api(
        f"create namespace {name}",
        core.create_namespace,
        namespace_manifest(name, run_id, lease_seconds),
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
    found = wait_on_list(
        f"serviceaccounts in {namespace}",
        core.list_namespaced_service_account,
        namespace,
        field_selector="metadata.name=default",
        done=lambda accounts: "default" in accounts,
        timeout=timeouts.service_account,
        timeouts=timeouts,
    )
    if found is None:
        raise ClusterError(
            f"the default ServiceAccount of namespace {namespace} did not appear within "
            f"{timeouts.service_account:.0f}s (is the controller manager running?)"
        )


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
    gone = wait_on_list(
        f"namespace {name}",
        core.list_namespace,
        field_selector=f"metadata.name={name}",
        done=lambda namespaces: name not in namespaces,
        timeout=timeouts.namespace_delete,
        timeouts=timeouts,
    )
    return gone is not None


def _duration(delta: timedelta) -> str:
    """``42 s``, ``7 min``, ``3.5 h`` (for people; never negative)."""
    seconds = max(0.0, delta.total_seconds())
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


@dataclass(frozen=True)
class StaleNamespace(JSONData):
    """What ``--cleanup-stale`` did with one suite namespace, and why."""

    name: str
    deleted: bool
    reason: str

    def line(self) -> str:
        """``--cleanup-stale: deleted namespace N: lease expired 3 min ago ...``."""
        verb = "deleted" if self.deleted else "kept"
        return f"--cleanup-stale: {verb} namespace {self.name}: {self.reason}"


@dataclass(frozen=True)
class StaleSweep(JSONData):
    """The outcome of one ``--cleanup-stale`` sweep: every suite namespace it saw, or why it
    could not look (``error``: the run went on without sweeping)."""

    namespaces: tuple[StaleNamespace, ...] = ()
    error: str | None = None

    @property
    def deleted(self) -> tuple[str, ...]:
        return tuple(ns.name for ns in self.namespaces if ns.deleted)

    def lines(self) -> list[str]:
        """One line per namespace, then the count (or the reason there was no sweep)."""
        if self.error is not None:
            return [f"--cleanup-stale: no sweep: {self.error}"]
        kept = len(self.namespaces) - len(self.deleted)
        return [
            *(ns.line() for ns in self.namespaces),
            f"--cleanup-stale: {len(self.deleted)} stale namespace(s) deleted, {kept} kept",
        ]


def stale_verdict(namespace: client.V1Namespace, current_run: str, now: datetime) -> StaleNamespace:
    """Whether a suite namespace is stale at ``now``: its lease expired, or it has none and is
    older than `UNLEASED_STALE_AFTER`. Never this run's own, never one already terminating."""
    name = name_of(namespace)
    run = labels_of(namespace).get(RUN_LABEL, "?")
    if run == current_run:
        return StaleNamespace(name, False, "this run's own namespace")
    if namespace.status is not None and namespace.status.phase == "Terminating":
        return StaleNamespace(name, False, f"run {run}: already being deleted")
    lease = lease_of(namespace)
    if lease is not None:
        holder = f" by {lease.holder}" if lease.holder else ""
        if lease.expired(now):
            return StaleNamespace(
                name,
                True,
                f"run {run}: lease{holder} expired {_duration(now - lease.expires)} ago "
                f"({format_time(lease.expires)}): its run is gone",
            )
        return StaleNamespace(
            name,
            False,
            f"run {run}: lease held{holder} until {format_time(lease.expires)} "
            f"({_duration(lease.expires - now)} from now): its run is alive",
        )
    created = namespace.metadata.creation_timestamp if namespace.metadata else None
    if not isinstance(created, datetime):
        return StaleNamespace(name, False, f"run {run}: no lease and no creation time")
    age = now - (created if created.tzinfo else created.replace(tzinfo=UTC))
    if age >= UNLEASED_STALE_AFTER:
        return StaleNamespace(
            name,
            True,
            f"run {run}: no lease (made before leases, or by hand), created {_duration(age)} ago",
        )
    return StaleNamespace(
        name,
        False,
        f"run {run}: no lease, created {_duration(age)} ago: it may belong to a live run "
        f"without leases (swept once older than {_duration(UNLEASED_STALE_AFTER)})",
    )


def sweep_stale(
    core: client.CoreV1Api,
    current_run: str,
    timeouts: Timeouts,
    now: datetime | None = None,
) -> StaleSweep:
    """Delete the suite's namespaces whose run is gone (`stale_verdict`); keep every other one,
    saying why. Does not wait for deletions. Never raises for the cluster: a sweep that cannot
    list namespaces returns the cause in ``error`` (testing goes on), a delete that fails keeps
    the namespace with the cause."""
    try:
        listed = call_api(
            "list netconform namespaces",
            core.list_namespace,
            label_selector=selector_for_run(),
            timeouts=timeouts,
        )
    except (ClusterError, ApiException) as exc:
        return StaleSweep(
            error=describe_api_error(exc) if isinstance(exc, ApiException) else str(exc)
        )
    moment = now or datetime.now(UTC)
    found: list[StaleNamespace] = []
    for ns in sorted(listed.items, key=name_of):
        verdict = stale_verdict(ns, current_run, moment)
        if verdict.deleted:
            try:
                delete_namespace(core, verdict.name, timeouts, wait=False)
            except (ClusterError, ApiException) as exc:
                verdict = StaleNamespace(
                    verdict.name, False, f"{verdict.reason}; but the delete failed: {exc}"
                )
        found.append(verdict)
    return StaleSweep(namespaces=tuple(found))
