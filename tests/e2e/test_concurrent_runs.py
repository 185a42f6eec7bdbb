"""Runs that share a cluster: three runs of the suite at once against one 3-node lab, each with
``--cleanup-stale``, all pass (their hostNetwork probes, on every node, pick ports that cannot
collide) and none deletes another's namespace; a run killed with SIGKILL is swept by the next
run once its lease has expired, and nothing is left behind.

The killed run leases its namespace for 10 s (``--run-lease 10``) so the test waits only that
long for it to expire. Labs are named ``$NETLAB_TEST_LAB_PREFIX`` (default ``tm``) + 6 hex
digits, as every lab of ``labrun``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from labrun import (
    ROOT,
    SUITE_TIMEOUT,
    LabCase,
    cluster_leftovers,
    read_junit,
    running_lab,
)
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

if os.geteuid() != 0:
    pytest.skip("netlab needs root (network namespaces, runc)", allow_module_level=True)

T = TypeVar("T")
RUNS = 3
KILLED_LEASE = 10  # seconds
LEASE_EXPIRES = "netconform/lease-expires"
SELECTOR = "app.kubernetes.io/managed-by=k8s-netconform"


def core_for(kubeconfig: Path) -> Any:
    from kubernetes import client, config  # the lab's API, as a user of the cluster sees it

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
            [
                sys.executable,
                "-m",
                "pytest",
                "--kubeconfig",
                str(kubeconfig),
                f"--junitxml={report_dir / 'junit.xml'}",
                "-p",
                "no:cacheprovider",
                "-q",
                *extra,
            ],
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


def test_three_runs_at_once_and_a_killed_run_swept_after_its_lease(tmp_path: Path) -> None:
    started = time.monotonic()
    with running_lab(LabCase()) as (_lab, kubeconfig):
        # A run killed with SIGKILL once its namespace exists: no cleanup of its own.
        killed = start_suite(
            kubeconfig, tmp_path / "killed", "--run-lease", str(KILLED_LEASE), "-k", "unique"
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
                report_dir = tmp_path / f"run-{index + 1}"
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
        first_output = (tmp_path / "run-1" / "output.txt").read_text()
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

        eventually(nothing_left, "an empty cluster", 120)
