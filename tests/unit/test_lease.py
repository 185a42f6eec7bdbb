"""`conformance.kit.cluster.lease` and the ``--cleanup-stale`` sweep of `conformance.kit.cluster.namespace`: the
lease annotations and their expiry, the keeper that renews them from a thread (only once the
run deployed, counting failures), and which suite namespaces a sweep deletes or keeps, and why.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from conformance.kit.base.settings import Settings, Timeouts, parse_run_lease
from conformance.kit.cluster import labels, lease, namespace

pytest_plugins = ["pytester"]

NOW = datetime(2026, 1, 2, 12, 0, 0, tzinfo=UTC)
QUICK = Timeouts(api_request=1, api_retry=0.5)


def suite_namespace(
    name: str,
    run: str,
    *,
    annotations: dict[str, str] | None = None,
    created: datetime = NOW - timedelta(minutes=1),
    phase: str = "Active",
) -> client.V1Namespace:
    return client.V1Namespace(
        metadata=client.V1ObjectMeta(
            name=name,
            labels={labels.MANAGED_BY_LABEL: labels.MANAGED_BY, labels.RUN_LABEL: run},
            annotations=annotations,
            creation_timestamp=created,
        ),
        status=client.V1NamespaceStatus(phase=phase),
    )


def leased(name: str, run: str, expires: datetime) -> client.V1Namespace:
    return suite_namespace(
        name, run, annotations=lease.lease_annotations(0, now=expires, holder="ci-7/4242")
    )


# --- annotations -------------------------------------------------------------------------------


def test_lease_annotations_round_trip() -> None:
    annotations = lease.lease_annotations(300, now=NOW, holder="host/1")
    assert annotations == {
        lease.LEASE_EXPIRES_ANNOTATION: "2026-01-02T12:05:00Z",
        lease.LEASE_HOLDER_ANNOTATION: "host/1",
    }
    found = lease.lease_of(suite_namespace("n", "r", annotations=annotations))
    assert found == lease.Lease(expires=NOW + timedelta(minutes=5), holder="host/1")
    assert not found.expired(NOW + timedelta(minutes=4, seconds=59))
    assert found.expired(NOW + timedelta(minutes=5))


def test_a_namespace_without_a_readable_lease_has_none() -> None:
    assert lease.lease_of(suite_namespace("n", "r")) is None
    unreadable = {lease.LEASE_EXPIRES_ANNOTATION: "tomorrow"}
    assert lease.lease_of(suite_namespace("n", "r", annotations=unreadable)) is None
    offset = {lease.LEASE_EXPIRES_ANNOTATION: "2026-01-02T13:00:00+01:00"}
    assert lease.lease_of(suite_namespace("n", "r", annotations=offset)) == lease.Lease(NOW)


def test_the_run_namespace_is_created_leased() -> None:
    manifest = namespace.namespace_manifest("netconform-r-1", "r", lease_seconds=60)
    assert manifest.metadata is not None
    found = lease.lease_of(manifest)
    assert found is not None
    remaining = found.expires - datetime.now(UTC)
    assert timedelta(seconds=55) < remaining <= timedelta(seconds=60)


def test_renewed_five_times_per_lease_within_bounds() -> None:
    assert lease.renew_interval(300) == 60
    assert lease.renew_interval(10) == 2
    assert lease.renew_interval(2) == 1
    assert lease.renew_interval(3600) == 60


def test_run_lease_option_values() -> None:
    assert parse_run_lease("45") == 45.0
    for bad in ("0", "4.9", "86401", "soon"):
        with pytest.raises(pytest.UsageError, match="--run-lease"):
            parse_run_lease(bad)
    assert Settings(kubeconfig=None, context=None).run_lease == lease.DEFAULT_RUN_LEASE


# --- the keeper ---------------------------------------------------------------------------------


class _PatchingCore:
    """``patch_namespace`` of a CoreV1Api: records each patch, or fails with ``errors`` first."""

    def __init__(self, errors: list[BaseException] | None = None) -> None:
        self.patches: list[tuple[str, Any, str | None]] = []
        self.errors = list(errors or [])
        self.renewed = threading.Event()
        self.api_client = client.ApiClient()

    def patch_namespace(self, name: str, body: Any, **kwargs: Any) -> client.V1Namespace:
        if self.errors:
            raise self.errors.pop(0)
        self.patches.append((name, body, kwargs.get("_content_type")))
        self.renewed.set()
        return client.V1Namespace(metadata=client.V1ObjectMeta(name=name))


def keeper_for(core: _PatchingCore, wanted: bool = True) -> lease.LeaseKeeper:
    return lease.LeaseKeeper(
        "netconform-r-1", 30, make_core=lambda: core, wanted=lambda: wanted, timeouts=QUICK
    )  # type: ignore[arg-type, return-value]


def test_keeper_renews_with_a_merge_patch_of_the_annotations() -> None:
    core = _PatchingCore()
    keeper = keeper_for(core)
    assert keeper.renew_now()
    ((name, body, content_type),) = core.patches
    assert name == "netconform-r-1"
    assert content_type == "application/merge-patch+json"
    annotations = body["metadata"]["annotations"]
    expires = lease.parse_time(annotations[lease.LEASE_EXPIRES_ANNOTATION])
    assert expires is not None
    assert timedelta(seconds=25) < expires - datetime.now(UTC) <= timedelta(seconds=30)
    assert keeper.renewals == 1
    assert keeper.summary() is None


def test_keeper_waits_for_the_deployment_and_tolerates_a_missing_namespace() -> None:
    core = _PatchingCore(errors=[ApiException(status=404, reason="Not Found")])
    assert not keeper_for(core, wanted=False).renew_now()  # no deployment: no API call at all
    assert core.errors  # untouched
    keeper = keeper_for(core)
    assert not keeper.renew_now()  # 404: the namespace is not there (yet): not a failure
    assert keeper.failures == 0
    assert keeper.renew_now()


def test_keeper_counts_refused_renewals_and_says_so() -> None:
    forbidden = ApiException(status=403, reason="Forbidden")
    core = _PatchingCore(errors=[forbidden, forbidden])
    keeper = keeper_for(core)
    assert not keeper.renew_now()
    assert not keeper.renew_now()
    assert keeper.renew_now()
    assert keeper.failures == 2
    assert "2 renewal(s) failed (1 succeeded)" in (keeper.summary() or "")
    assert "HTTP 403" in (keeper.summary() or "")


def test_keeper_thread_renews_until_stopped() -> None:
    core = _PatchingCore()
    keeper = keeper_for(core)
    keeper.interval = 0.05  # the thread's pace; renew_interval is tested above
    keeper.start()
    try:
        assert core.renewed.wait(5), "no renewal from the thread"
    finally:
        keeper.stop()
    count = len(core.patches)
    assert count >= 1
    assert not keeper._thread or not keeper._thread.is_alive()
    assert len(core.patches) == count  # stopped: no renewal after stop()


# --- the sweep ---------------------------------------------------------------------------------


def test_stale_verdicts() -> None:
    expired = namespace.stale_verdict(
        leased("ns-a", "run-a", NOW - timedelta(minutes=3)), "me", NOW
    )
    assert expired.deleted
    assert (
        "run run-a: lease by ci-7/4242 expired 3 min ago (2026-01-02T11:57:00Z)" in expired.reason
    )

    alive = namespace.stale_verdict(leased("ns-b", "run-b", NOW + timedelta(seconds=40)), "me", NOW)
    assert not alive.deleted
    assert "held by ci-7/4242 until 2026-01-02T12:00:40Z (40 s from now)" in alive.reason

    own = namespace.stale_verdict(leased("ns-c", "me", NOW - timedelta(hours=1)), "me", NOW)
    assert not own.deleted
    assert own.reason == "this run's own namespace"

    going = suite_namespace("ns-d", "run-d", phase="Terminating")
    assert not namespace.stale_verdict(going, "me", NOW).deleted

    young = namespace.stale_verdict(suite_namespace("ns-e", "run-e"), "me", NOW)
    assert not young.deleted
    assert "no lease, created 60 s ago" in young.reason

    old = suite_namespace("ns-f", "run-f", created=NOW - timedelta(hours=7))
    verdict = namespace.stale_verdict(old, "me", NOW)
    assert verdict.deleted
    assert "no lease (made before leases, or by hand), created 7.0 h ago" in verdict.reason


class _SweptCore:
    """``list_namespace`` and ``delete_namespace`` of a CoreV1Api, in memory."""

    def __init__(self, items: list[client.V1Namespace], fail: dict[str, int] | None = None):
        self.items = items
        self.fail = fail or {}
        self.deleted: list[str] = []
        self.selectors: list[str] = []

    def list_namespace(self, **kwargs: Any) -> client.V1NamespaceList:
        self.selectors.append(str(kwargs.get("label_selector")))
        return client.V1NamespaceList(items=self.items, metadata=client.V1ListMeta())

    def delete_namespace(self, name: str, **_: Any) -> None:
        if name in self.fail:
            raise ApiException(status=self.fail[name], reason="Forbidden")
        self.deleted.append(name)


def test_sweep_deletes_only_expired_namespaces_and_explains_every_one() -> None:
    core = _SweptCore(
        [
            leased("ns-live", "run-live", NOW + timedelta(minutes=2)),
            leased("ns-dead", "run-dead", NOW - timedelta(seconds=5)),
            leased("ns-me", "me", NOW + timedelta(minutes=2)),
            leased("ns-locked", "run-locked", NOW - timedelta(minutes=9)),
        ],
        fail={"ns-locked": 403},
    )
    sweep = namespace.sweep_stale(core, "me", QUICK, now=NOW)  # type: ignore[arg-type]
    assert core.selectors == ["app.kubernetes.io/managed-by=k8s-netconform"]
    assert core.deleted == ["ns-dead"]
    assert sweep.deleted == ("ns-dead",)
    by_name = {ns.name: ns for ns in sweep.namespaces}
    assert "but the delete failed" in by_name["ns-locked"].reason
    assert not by_name["ns-locked"].deleted
    lines = sweep.lines()
    assert lines[-1] == "--cleanup-stale: 1 stale namespace(s) deleted, 3 kept"
    assert any(line.startswith("--cleanup-stale: deleted namespace ns-dead: ") for line in lines)
    assert any(line.startswith("--cleanup-stale: kept namespace ns-live: ") for line in lines)
    assert namespace.StaleSweep.from_dict(sweep.to_dict()) == sweep


def test_a_sweep_that_cannot_list_says_why_and_lets_the_run_go_on() -> None:
    class Refusing(_SweptCore):
        def list_namespace(self, **kwargs: Any) -> client.V1NamespaceList:
            raise ApiException(status=403, reason="Forbidden")

    sweep = namespace.sweep_stale(Refusing([]), "me", QUICK, now=NOW)  # type: ignore[arg-type]
    assert sweep.error is not None
    assert "403" in sweep.error
    assert sweep.lines() == [f"--cleanup-stale: no sweep: {sweep.error}"]


# --- the controller renews it ---------------------------------------------------------------


@pytest.mark.usefixtures("kubernetes_client_fully_imported", "no_ambient_cluster")
def test_the_controller_renews_the_lease_the_option_asks_for(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from conformance.kit.run.session import SETTINGS_KEY

        def test_lease(pytestconfig):
            assert pytestconfig.stash[SETTINGS_KEY].run_lease == 45.0
            keeper = pytestconfig.pluginmanager.get_plugin("netconform-lease").keeper
            assert (keeper.seconds, keeper.interval) == (45.0, 9.0)
            assert keeper._thread is not None and keeper._thread.is_alive()
            # No deployment started: nothing to renew, and no API call is made.
            assert not keeper.renew_now()
            assert (keeper.renewals, keeper.failures) == (0, 0)
        """
    )
    pytester.runpytest("--run-lease=45").assert_outcomes(passed=1)
    refused = pytester.runpytest("--run-lease=2")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    assert "--run-lease: must be in [5, 86400] seconds" in refused.stderr.str()
