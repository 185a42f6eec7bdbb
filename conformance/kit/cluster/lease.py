"""A run's lease on its namespace: an annotation holding an expiry, written when the namespace is
created and renewed by the run's controller process for as long as the run lives, so that
``--cleanup-stale`` in another run deletes only namespaces whose run is gone.

Why an annotation on the namespace, not a ``coordination.k8s.io`` Lease inside it:

- the namespace is created with its lease in one request, so no other run ever sees it
  without one (a Lease object would follow the namespace, leaving a window in which a sweeper
  cannot tell a starting run from a dead one);
- the sweeper learns every run's liveness from the one namespace list it makes anyway, instead
  of one Lease read per namespace;
- it needs no permission beyond ``patch`` on namespaces, where a Lease needs create, get and
  update of leases in every run namespace; and a cluster that serves namespaces serves it.

The expiry is the renewing machine's UTC clock plus the lease; runs sharing a cluster are
assumed to keep their clocks within the lease of each other (NTP does, by far). A renewal
patches only the two annotations (a JSON merge patch), once every `renew_interval`, so a busy
API server may miss several in a row before the lease runs out.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from conformance.kit.base.errors import ClusterError
from conformance.kit.base.settings import DEFAULT_RUN_LEASE, Timeouts
from conformance.kit.cluster.api import call_api, describe_api_error

#: When the run's lease ends unless renewed (RFC 3339, UTC, whole seconds).
LEASE_EXPIRES_ANNOTATION = "netconform/lease-expires"
#: Who renews it (``host/pid``), for the person reading ``kubectl get ns -o yaml``.
LEASE_HOLDER_ANNOTATION = "netconform/lease-holder"
#: A suite namespace without a lease (made by a version before leases, or by hand) counts as
#: stale once it is this old: no run of the suite lasts that long.
UNLEASED_STALE_AFTER = timedelta(hours=6)
MERGE_PATCH = "application/merge-patch+json"

__all__ = ["DEFAULT_RUN_LEASE", "Lease", "LeaseKeeper", "lease_annotations", "lease_of"]


@dataclass(frozen=True)
class Lease:
    """A namespace's lease as its annotations state it."""

    expires: datetime
    holder: str = ""

    def expired(self, now: datetime) -> bool:
        return self.expires <= now


def lease_holder() -> str:
    """``host/pid`` of this process."""
    return f"{socket.gethostname()}/{os.getpid()}"


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC to the second, as Kubernetes writes timestamps."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def lease_annotations(
    seconds: float, now: datetime | None = None, holder: str | None = None
) -> dict[str, str]:
    """The annotations of a lease of ``seconds`` from ``now``."""
    moment = now or datetime.now(UTC)
    return {
        LEASE_EXPIRES_ANNOTATION: format_time(moment + timedelta(seconds=seconds)),
        LEASE_HOLDER_ANNOTATION: holder or lease_holder(),
    }


def parse_time(text: str) -> datetime | None:
    """An RFC 3339 time (``Z`` or an offset); None when it is not one."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def lease_of(namespace: Any) -> Lease | None:
    """The lease a namespace carries; None without one (or with an unreadable expiry)."""
    meta = getattr(namespace, "metadata", None)
    annotations = dict(meta.annotations or {}) if meta is not None else {}
    expires = parse_time(annotations.get(LEASE_EXPIRES_ANNOTATION, ""))
    if expires is None:
        return None
    return Lease(expires=expires, holder=annotations.get(LEASE_HOLDER_ANNOTATION, ""))


def renew_interval(seconds: float) -> float:
    """How often a lease of ``seconds`` is renewed: five times per lease (at most every minute,
    at least every second), so four renewals in a row may fail before it expires."""
    return max(1.0, min(60.0, seconds / 5))


def renew_lease(core: client.CoreV1Api, namespace: str, seconds: float, timeouts: Timeouts) -> None:
    """Push the lease of ``namespace`` to ``seconds`` from now. An ``ApiException`` 404 when the
    namespace does not exist (yet, or any more); `ClusterError` when the server refuses."""
    call_api(
        f"renew the lease of namespace {namespace}",
        core.patch_namespace,
        namespace,
        {"metadata": {"annotations": lease_annotations(seconds)}},
        _content_type=MERGE_PATCH,
        timeouts=timeouts,
    )


class LeaseKeeper:
    """Renews a namespace's lease from a background thread until `stop`.

    ``wanted()`` says whether renewing makes sense yet (the namespace may exist: the run's
    deployment started), so a run that never deploys never touches the cluster; ``make_core``
    builds the thread's own API client on first use. A renewal that fails is counted and
    retried at the next interval; the run goes on either way.
    """

    def __init__(
        self,
        namespace: str,
        seconds: float,
        *,
        make_core: Callable[[], client.CoreV1Api],
        wanted: Callable[[], bool],
        timeouts: Timeouts,
    ) -> None:
        self.namespace = namespace
        self.seconds = seconds
        self.interval = renew_interval(seconds)
        self._make_core = make_core
        self._wanted = wanted
        # A renewal retries transient errors for at most half a lease: the next one comes soon.
        self._timeouts = Timeouts(
            api_request=min(timeouts.api_request, self.interval),
            api_retry=min(timeouts.api_retry, seconds / 2),
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._core: client.CoreV1Api | None = None
        self.renewals = 0
        self.failures = 0
        self.last_error: str | None = None

    def start(self) -> None:
        """Start renewing (once)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"lease-{self.namespace}", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop renewing; waits at most ``timeout`` for a renewal under way."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._core is not None:
            self._core.api_client.close()
            self._core = None

    def renew_now(self) -> bool:
        """One renewal; True when the lease was pushed out (False: nothing to renew yet, or it
        failed, counted in ``failures``)."""
        if not self._wanted():
            return False
        try:
            if self._core is None:
                self._core = self._make_core()
            renew_lease(self._core, self.namespace, self.seconds, self._timeouts)
        except ApiException as exc:
            if exc.status != 404:  # 404: not created yet, or already deleted
                self._failed(describe_api_error(exc))
            return False
        except (ClusterError, urllib3.exceptions.HTTPError, OSError) as exc:
            self._failed(str(exc))
            return False
        self.renewals += 1
        return True

    def _failed(self, reason: str) -> None:
        self.failures += 1
        self.last_error = reason

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.renew_now()

    def summary(self) -> str | None:
        """One line on renewals that failed (None when none did)."""
        if not self.failures:
            return None
        return (
            f"lease of namespace {self.namespace}: {self.failures} renewal(s) failed "
            f"({self.renewals} succeeded); last: {self.last_error}"
        )
