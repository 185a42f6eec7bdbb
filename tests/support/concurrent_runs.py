"""Runs that share a cluster, on any cluster (a netlab, the genuine Kubernetes fixture): three
runs of the suite at once, each with ``--cleanup-stale``, must all pass (their hostNetwork
probes pick ports that cannot collide) and none may delete another's namespace; a run killed
with SIGKILL is swept by the next run once its lease has expired, and nothing is left behind.

The killed run leases its namespace for `KILLED_LEASE` seconds (``--run-lease``), so the
scenario waits only that long for it to expire.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from suite_runs import ROOT, SUITE_TIMEOUT, cluster_leftovers, read_junit, suite_command
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

T = TypeVar("T")
RUNS = 3
KILLED_LEASE = 10  # seconds
LEASE_EXPIRES = "netconform/lease-expires"
SELECTOR = "app.kubernetes.io/managed-by=k8s-netconform"
#: The cluster deletes the swept namespaces after the runs (a genuine one takes seconds).
EMPTY_TIMEOUT = 120


def core_for(kubeconfig: Path) -> Any:
    from kubernetes import client, config  # the cluster's API, as a user of it sees it

    return client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))  # type: ignore[no-untyped-call]


def suite_namespaces(kubeconfig: Path) -> dict[str, Any]:
    """The suite's namespaces in the cluster, by name."""
    listed = core_for(kubeconfig).list_namespace(label_selector=SELECTOR)
    return {ns.metadata.name: ns for ns in listed.items}


def start_suite(kubeconfig: Path, report_dir: Path, *extra: str) -> subprocess.Popen[str]:
    """The suite as a user starts it, in the background; its temporary files in ``report_dir``
    (so a killed run's leftovers stay inside the test's own directory)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "tmp").mkdir(exist_ok=True)
    with (report_dir / "output.txt").open("w") as output:
        return subprocess.Popen(
            suite_command(kubeconfig, report_dir / "junit.xml", *extra),
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "TMPDIR": str(report_dir / "tmp")},
        )


def eventually(check: Callable[[], T], what: str, timeout: float) -> T:
    """``check()`` once it stops raising `LookupError` (polled every half second)."""
    for attempt in Retrying(
        retry=retry_if_exception_type(LookupError),
        stop=stop_after_delay(timeout),
        wait=wait_fixed(0.5),
        reraise=True,
    ):
        with attempt:
            return check()
    raise AssertionError(f"never: {what}")  # pragma: no cover


def wait_for_new_namespace(kubeconfig: Path, known: set[str], timeout: float = 180) -> str:
    """The name of a suite namespace not in ``known``, once one exists."""

    def fresh() -> str:
        found = sorted(set(suite_namespaces(kubeconfig)) - known)
        if not found:
            raise LookupError(f"no new suite namespace within {timeout:.0f} s")
        return found[0]

    return eventually(fresh, "a new suite namespace", timeout)


def lease_expiry(namespace: Any) -> datetime:
    text = (namespace.metadata.annotations or {})[LEASE_EXPIRES]
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def summary_of(report_dir: Path) -> dict[str, Any]:
    return dict(json.loads((report_dir / "summary.json").read_text()))


@dataclass(frozen=True)
class ConcurrentRuns:
    """What the scenario saw: the killed run's namespace, the runs' namespaces and seconds."""

    orphan: str
    namespaces: tuple[str, ...]
    seconds: float
    kept_alive: int


def three_runs_and_a_killed_one(kubeconfig: Path, workdir: Path) -> ConcurrentRuns:
    """The scenario of the module docstring against ``kubeconfig``; every assertion of it is
    made here (an `AssertionError` says which failed). Reports and outputs go to ``workdir``."""
    started = time.monotonic()
    # A run killed with SIGKILL once its namespace exists: no cleanup of its own.
    killed = start_suite(
        kubeconfig, workdir / "killed", "--run-lease", str(KILLED_LEASE), "-k", "unique"
    )
    try:
        orphan = wait_for_new_namespace(kubeconfig, set())
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait(30)
    assert killed.returncode == -signal.SIGKILL

    # Its lease runs out at most one lease after its last renewal.
    def expired() -> datetime:
        expiry = lease_expiry(suite_namespaces(kubeconfig)[orphan])
        if datetime.now(UTC) <= expiry:
            raise LookupError(f"lease of {orphan} still held until {expiry}")
        return expiry

    expiry = eventually(expired, "the killed run's lease expired", 3 * KILLED_LEASE)
    print(f"killed run's namespace {orphan}: lease expired at {expiry:%H:%M:%S}")

    # Three runs at once, each started once the previous one made its namespace, so each
    # later one finds the earlier ones alive.
    runs: list[tuple[Path, subprocess.Popen[str]]] = []
    namespaces: list[str] = []
    known = {orphan}
    try:
        for index in range(RUNS):
            report_dir = workdir / f"run-{index + 1}"
            runs.append((report_dir, start_suite(kubeconfig, report_dir, "--cleanup-stale")))
            namespaces.append(wait_for_new_namespace(kubeconfig, known))
            known.add(namespaces[-1])
        codes = [process.wait(SUITE_TIMEOUT) for _, process in runs]
    finally:
        for _, process in runs:
            if process.poll() is None:
                process.kill()
                process.wait(30)
    overlap = time.monotonic() - started
    outputs = {d.name: (d / "output.txt").read_text()[-3000:] for d, _ in runs if d.exists()}
    assert codes == [0] * RUNS, f"exit codes {codes}:\n{outputs}"

    deleted: dict[str, list[str]] = {}
    kept: dict[str, dict[str, str]] = {}
    for report_dir, _ in runs:
        summary = summary_of(report_dir)
        stale = summary["stale_namespaces"]
        assert stale["error"] is None
        deleted[report_dir.name] = [n["name"] for n in stale["namespaces"] if n["deleted"]]
        kept[report_dir.name] = {
            n["name"]: n["reason"] for n in stale["namespaces"] if not n["deleted"]
        }
        cases, _ = read_junit(report_dir / "junit.xml")
        host_checks = [c for c in cases if "test_host_to_pod" in c.test_id]
        assert host_checks, "no hostNetwork check ran"
        assert all(c.outcome == "passed" for c in host_checks), report_dir.name
    # The first run swept the killed run's namespace; nobody swept a live run's.
    assert deleted["run-1"] == [orphan]
    first_output = (workdir / "run-1" / "output.txt").read_text()
    assert f"--cleanup-stale: deleted namespace {orphan}: " in first_output
    for name, gone in deleted.items():
        assert not set(gone) & set(namespaces), f"{name} deleted a live run's namespace"
    # The last run found both earlier runs alive, and said so.
    for earlier in namespaces[:-1]:
        reason = kept["run-3"].get(earlier, "")
        assert "its run is alive" in reason, (earlier, kept["run-3"])
    print(
        f"{RUNS} concurrent runs passed in {overlap:.0f} s (from the killed run's start); "
        f"run-3 kept {len(kept['run-3'])} namespace(s) alive"
    )

    # Nothing of any run is left in the cluster once the sweep's deletion completed.
    def nothing_left() -> None:
        left = cluster_leftovers(kubeconfig)
        if left:
            raise LookupError(f"left in the cluster: {left}")

    eventually(nothing_left, "an empty cluster", EMPTY_TIMEOUT)
    return ConcurrentRuns(orphan, tuple(namespaces), overlap, len(kept["run-3"]))
