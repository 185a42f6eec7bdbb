"""Boot a 3-node netlab, run the conformance suite against it as a user would, read the JUnit.

Used by the end-to-end tests and the detection matrix. Lab names start with ``tm`` (or
``$NETLAB_TEST_LAB_PREFIX``) so concurrent lab tests of other prefixes never collide with these;
every lab is torn down whatever happened.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
NETLAB = [sys.executable, "-m", "netlab"]
LAB_PREFIX = os.environ.get("NETLAB_TEST_LAB_PREFIX", "tm")
# Generous bounds for a loaded 2-core machine; a healthy lab boots in seconds.
BOOT_TIMEOUT = 180
SUITE_TIMEOUT = 900
DOWN_TIMEOUT = 120


class LabError(RuntimeError):
    """netlab up/down failed, or a lab left namespaces behind."""


@dataclass(frozen=True)
class CaseResult:
    """One check of the suite: its ID ``module::name[id]`` and its verdict."""

    test_id: str
    outcome: str  # "passed", "failed", "error", "skipped"
    message: str = ""


@dataclass(frozen=True)
class LabCase:
    """One lab of the matrix: its faults (none: healthy) and its IP family."""

    faults: tuple[str, ...] = ()
    family: str = "ipv4"
    #: Options the suite runs with on this lab (e.g. ``--ip-family dual``).
    suite_args: tuple[str, ...] = ()
    #: Control-plane faults the lab's API server is booted with (``netlab up --api-fault``).
    api_faults: tuple[str, ...] = ()
    #: OCI image archives the lab imports (``netlab up --image``); not part of the case's ID.
    images: tuple[Path, ...] = ()
    #: False: the lab serves NetworkPolicies but enforces none (``netlab up --no-network-policy``).
    network_policy: bool = True

    @property
    def id(self) -> str:
        """Test ID: ``healthy``, ``snat-cross-node``, ``a+b``; ``-ipv6``/``-dual`` when not IPv4;
        ``-no-network-policy`` when the lab enforces none; the suite's options after ``-with-``
        (``-with-ip-family-dual``); API faults after ``@`` (``healthy@throttle=0.1``)."""
        name = "+".join(self.faults) or "healthy"
        name = name if self.family == "ipv4" else f"{name}-{self.family}"
        if not self.network_policy:
            name += "-no-network-policy"
        if self.suite_args:
            name += "-with-" + "-".join(arg.lstrip("-") for arg in self.suite_args)
        return f"{name}@{'+'.join(self.api_faults)}" if self.api_faults else name

    @property
    def label(self) -> str:
        """For people: ``healthy (no fault)``, `` `a` + `b` ``, with the family when not IPv4."""
        name = " + ".join(f"`{fault}`" for fault in self.faults) or "healthy (no fault)"
        if self.family != "ipv4":
            name = f"{name}, {self.family}"
        if not self.network_policy:
            name = f"{name}, no NetworkPolicy enforcement"
        return f"{name} (suite: `{' '.join(self.suite_args)}`)" if self.suite_args else name


@dataclass
class SuiteRun:
    """What one run of the suite against one lab produced."""

    case: LabCase
    cases: list[CaseResult] = field(default_factory=list)
    properties: dict[str, str] = field(default_factory=dict)
    output: str = ""
    boot_seconds: float = 0.0
    suite_seconds: float = 0.0
    report_dir: Path = ROOT
    lab: str = ""
    leftovers: list[str] = field(default_factory=list)  # netconform namespaces and pods left
    #: The run's exit code as its summary.json records it (None: no summary written).
    exitstatus: int | None = None
    #: The exit code of the pytest process itself, as a CI gate sees it.
    returncode: int | None = None

    def ids(self, outcome: str) -> list[str]:
        """The IDs of the checks with this outcome, in report order."""
        return [case.test_id for case in self.cases if case.outcome == outcome]

    @property
    def ran(self) -> int:
        """Checks that ran (not skipped)."""
        return sum(1 for case in self.cases if case.outcome != "skipped")


def new_lab_name() -> str:
    """``tm`` + 6 random hex characters: valid, unique, and ours."""
    return LAB_PREFIX + secrets.token_hex(3)


def leftover_namespaces(name: str) -> list[str]:
    """Network namespaces of lab ``name`` still present."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [
        line.split()[0]
        for line in listing.stdout.splitlines()
        if line.split() and line.split()[0].startswith(f"netlab-{name}-")
    ]


@contextmanager
def running_lab(case: LabCase) -> Iterator[tuple[str, Path]]:
    """A 3-node lab of ``case``: yields (name, kubeconfig); down and checked empty on exit."""
    name = new_lab_name()
    fault_args = [arg for fault in case.faults for arg in ("--fault", fault)]
    fault_args += ["--ip-family", case.family]
    fault_args += [arg for fault in case.api_faults for arg in ("--api-fault", fault)]
    fault_args += [arg for image in case.images for arg in ("--image", str(image))]
    fault_args += [] if case.network_policy else ["--no-network-policy"]
    try:
        up = subprocess.run(
            [*NETLAB, "up", "--nodes", "3", "--name", name, *fault_args],
            capture_output=True,
            text=True,
            timeout=BOOT_TIMEOUT,
            check=False,
        )
        if up.returncode != 0:
            raise LabError(f"netlab up {name} {fault_args} failed:\n{up.stderr[-4000:]}")
        yield name, Path(up.stdout.strip().splitlines()[-1])
    finally:
        down = subprocess.run(
            [*NETLAB, "down", "--name", name],
            capture_output=True,
            text=True,
            timeout=DOWN_TIMEOUT,
            check=False,
        )
        left = leftover_namespaces(name)
        if down.returncode != 0 or left:
            raise LabError(f"netlab down {name} failed ({down.stderr[-2000:]}) or left {left}")


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
        raise LabError(f"{junit}: no testsuite element")
    cases = [CaseResult(_case_id(case), *_outcome(case)) for case in suite.iter("testcase")]
    properties = {str(prop.get("name")): str(prop.get("value")) for prop in suite.iter("property")}
    return cases, properties


def run_suite(
    kubeconfig: Path, report_dir: Path, *extra: str
) -> tuple[list[CaseResult], dict[str, str], str]:
    """Run the suite against ``kubeconfig`` in a subprocess; JUnit goes to ``report_dir``."""
    cases, properties, output, _ = run_suite_process(kubeconfig, report_dir, *extra)
    return cases, properties, output


def run_suite_process(
    kubeconfig: Path, report_dir: Path, *extra: str
) -> tuple[list[CaseResult], dict[str, str], str, int]:
    """`run_suite`, and the exit code of the pytest process as a CI gate sees it."""
    report_dir.mkdir(parents=True, exist_ok=True)
    junit = report_dir / "junit.xml"
    # `--kubeconfig PATH` as two words, as the README tells users to write it.
    result = subprocess.run(
        [
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
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SUITE_TIMEOUT,
        check=False,
    )
    output = result.stdout + result.stderr
    if not junit.exists():
        raise LabError(f"the suite wrote no JUnit report:\n{output[-6000:]}")
    cases, properties = read_junit(junit)
    return cases, properties, output, result.returncode


def run_on_lab(case: LabCase, report_dir: Path, *extra: str) -> SuiteRun:
    """Boot the lab of ``case``, run the suite against it, tear it down; the run's results."""
    started = time.monotonic()
    with running_lab(case) as (name, kubeconfig):
        booted = time.monotonic()
        cases, properties, output, returncode = run_suite_process(
            kubeconfig, report_dir, *case.suite_args, *extra
        )
        done = time.monotonic()
        left = cluster_leftovers(kubeconfig)
    return SuiteRun(
        lab=name,
        exitstatus=summary_exitstatus(report_dir),
        returncode=returncode,
        leftovers=left,
        case=case,
        cases=cases,
        properties=properties,
        output=output,
        boot_seconds=booted - started,
        suite_seconds=done - booted,
        report_dir=report_dir,
    )


def summary_exitstatus(report_dir: Path) -> int | None:
    """The exit code the suite wrote into ``report_dir/summary.json`` (None without one)."""
    try:
        return int(json.loads((report_dir / "summary.json").read_text())["exitstatus"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cluster_leftovers(kubeconfig: Path) -> list[str]:
    """The suite's namespaces and any pods still in the cluster after a run. A lab whose API
    server is down for a moment, throttles or fails (``--api-fault restart=...``,
    ``throttle=...``, ``server-error=...``) is asked again, for up to a minute."""
    from kubernetes import client, config  # the lab's API, as any user of the cluster sees it
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


def unexpected_verdicts(
    run: SuiteRun, must: Sequence[re.Pattern[str]], may: Sequence[re.Pattern[str]] = ()
) -> list[str]:
    """Checks whose verdict is off: every check matching ``must`` fails (a skip is off too),
    and no check fails unless it matches ``must`` or ``may`` (verdicts the fault leaves open)."""
    off = []
    for case in run.cases:
        must_fail = any(pattern.search(case.test_id) for pattern in must)
        may_fail = must_fail or any(pattern.search(case.test_id) for pattern in may)
        failed = case.outcome == "failed"
        if (must_fail and not failed) or (failed and not may_fail):
            message = f" ({case.message[:300]})" if case.message else ""
            off.append(f"{case.outcome}: {case.test_id}{message}")
    return off
