"""The conformance suite run as a user runs it, from the project's own tests: a ``pytest
--kubeconfig PATH`` subprocess against any cluster (a netlab, the genuine Kubernetes fixture),
its JUnit cases and properties read back, its exit code, whether the verdicts are the ones
expected, and what it left in the cluster. Shared by the end-to-end tests (``tests/e2e``), the
genuine-cluster tier (``tests/realk8s``) and the benchmarks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
#: A whole run of the suite, on a loaded 2-core machine.
SUITE_TIMEOUT = 900


class SuiteRunError(RuntimeError):
    """The suite could not be run or wrote no report; or a cluster it ran against failed."""


@dataclass(frozen=True)
class CaseResult:
    """One check of the suite: its ID ``module::name[id]`` and its verdict."""

    test_id: str
    outcome: str  # "passed", "failed", "error", "skipped"
    message: str = ""


def _case_id(case: ET.Element) -> str:
    # classname is "conformance.test_no_snat" (or a deeper path): keep the module's own name.
    return f"{(case.get('classname') or '').split('.')[-1]}::{case.get('name')}"


def _outcome(case: ET.Element) -> tuple[str, str]:
    for tag, outcome in (("error", "error"), ("failure", "failed"), ("skipped", "skipped")):
        found = case.find(tag)
        if found is not None:
            return outcome, found.get("message") or ""
    return "passed", ""


def read_junit(junit: Path) -> tuple[list[CaseResult], dict[str, str]]:
    """The cases and the suite properties of a JUnit report written by pytest."""
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        raise SuiteRunError(f"{junit}: no testsuite element")
    cases = [CaseResult(_case_id(case), *_outcome(case)) for case in suite.iter("testcase")]
    properties = {str(prop.get("name")): str(prop.get("value")) for prop in suite.iter("property")}
    return cases, properties


def summary_exitstatus(report_dir: Path) -> int | None:
    """The exit code the suite wrote into ``report_dir/summary.json`` (None without one)."""
    try:
        return int(json.loads((report_dir / "summary.json").read_text())["exitstatus"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class SuiteResult:
    """One finished run of the suite: its exit code, checks, JUnit properties and output."""

    returncode: int
    cases: list[CaseResult]
    properties: dict[str, str]
    output: str
    seconds: float
    report_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)

    def ids(self, outcome: str) -> list[str]:
        """The IDs of the checks with this outcome, in report order."""
        return [case.test_id for case in self.cases if case.outcome == outcome]

    @property
    def ran(self) -> int:
        """Checks that ran (not skipped)."""
        return sum(1 for case in self.cases if case.outcome != "skipped")

    def tail(self, characters: int = 4000) -> str:
        return self.output[-characters:]


def suite_command(kubeconfig: Path, junit: Path, *extra: str) -> list[str]:
    """``python -m pytest --kubeconfig PATH`` as the README tells users to write it (two words),
    with a JUnit report and no cache."""
    return [
        sys.executable,
        "-m",
        "pytest",
        "--kubeconfig",
        str(kubeconfig),
        f"--junitxml={junit}",
        "-p",
        "no:cacheprovider",
        "-q",
        *extra,
    ]


def run_suite(
    kubeconfig: Path,
    report_dir: Path,
    *extra: str,
    timeout: float = SUITE_TIMEOUT,
    env: dict[str, str] | None = None,
) -> SuiteResult:
    """Run the whole suite against ``kubeconfig`` from the repository root (options
    ``extra``); reports go to ``report_dir``. `SuiteRunError` when it wrote no JUnit report."""
    report_dir.mkdir(parents=True, exist_ok=True)
    junit = report_dir / "junit.xml"
    started = time.monotonic()
    done = subprocess.run(
        suite_command(kubeconfig, junit, *extra),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )
    seconds = time.monotonic() - started
    output = done.stdout + done.stderr
    if not junit.exists():
        raise SuiteRunError(
            f"the suite wrote no JUnit report (exit {done.returncode}):\n{output[-6000:]}"
        )
    cases, properties = read_junit(junit)
    try:
        summary = dict(json.loads((report_dir / "summary.json").read_text()))
    except (OSError, ValueError):
        summary = {}
    return SuiteResult(done.returncode, cases, properties, output, seconds, report_dir, summary)


def unexpected_verdicts(
    cases: Sequence[CaseResult],
    must: Sequence[Any],
    may: Sequence[Any] = (),
) -> list[str]:
    """Checks whose verdict is off: every check matching a ``must`` pattern fails (a skip is off
    too), and no check fails unless it matches ``must`` or ``may`` (verdicts the fault leaves
    open). Patterns are compiled regular expressions searched in ``module::name[id]``."""
    off = []
    for case in cases:
        must_fail = any(pattern.search(case.test_id) for pattern in must)
        may_fail = must_fail or any(pattern.search(case.test_id) for pattern in may)
        failed = case.outcome == "failed"
        if (must_fail and not failed) or (failed and not may_fail):
            message = f" ({case.message[:300]})" if case.message else ""
            off.append(f"{case.outcome}: {case.test_id}{message}")
    return off


def cluster_leftovers(kubeconfig: Path) -> list[str]:
    """The suite's namespaces and any pods still in the cluster after a run (the clusters the
    project tests on run no other pods). A cluster
    whose API is down for a moment, throttles or fails is asked again, for up to a minute."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException
    from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed
    from urllib3.exceptions import HTTPError

    def transient(error: BaseException) -> bool:
        if isinstance(error, ApiException):
            return error.status in (429, 500, 502, 503, 504)
        return isinstance(error, HTTPError | ConnectionError)

    for attempt in Retrying(
        retry=retry_if_exception(transient),
        stop=stop_after_delay(60),
        wait=wait_fixed(1),
        reraise=True,
    ):
        with attempt:
            return _cluster_leftovers(
                client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))  # type: ignore[no-untyped-call]
            )
    raise AssertionError("unreachable: tenacity returns or raises")  # pragma: no cover


def _cluster_leftovers(api: Any) -> list[str]:
    names = [ns.metadata.name if ns.metadata else "" for ns in api.list_namespace().items]
    namespaces = [f"namespace/{name}" for name in names if (name or "").startswith("netconform-")]
    pods = [
        f"pod/{pod.metadata.namespace}/{pod.metadata.name}" if pod.metadata else "pod/?"
        for pod in api.list_pod_for_all_namespaces().items
    ]
    return namespaces + pods
