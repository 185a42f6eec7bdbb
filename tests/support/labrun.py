"""Boot a 3-node netlab, run the conformance suite against it as a user would, read the JUnit.

Used by the end-to-end tests and the detection matrix. Lab names start with ``tm`` (or
``$NETLAB_TEST_LAB_PREFIX``) so concurrent lab tests of other prefixes never collide with these;
every lab is torn down whatever happened.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import suite_runs
from suite_runs import (
    CaseResult,
    SuiteRunError,
    cluster_leftovers,
    summary_exitstatus,
)

# Re-exported: the matrix and the concurrent runs take them from here.
from suite_runs import read_junit as read_junit
from suite_runs import unexpected_verdicts as unexpected_verdicts

ROOT = Path(__file__).resolve().parents[2]
NETLAB = [sys.executable, "-m", "netlab"]
LAB_PREFIX = os.environ.get("NETLAB_TEST_LAB_PREFIX", "tm")
# Generous bounds for a loaded 2-core machine; a healthy lab boots in seconds.
BOOT_TIMEOUT = 180
SUITE_TIMEOUT = 900
DOWN_TIMEOUT = 120


#: netlab up/down failed, a lab left namespaces behind, or the suite wrote no report.
LabError = SuiteRunError


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
    #: The suite's ``-m`` selection on this lab ("" for every check); not part of the case's ID.
    marker: str = ""

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
    result = suite_runs.run_suite(kubeconfig, report_dir, *extra, timeout=SUITE_TIMEOUT)
    return result.cases, result.properties, result.output, result.returncode


def external_host_args(name: str) -> list[str]:
    """``--external-host`` for each address of lab ``name``'s outside host, as the lab file
    records them (the edge checks run against it)."""
    from netlab.dataplane.outside import EXTERNAL_HOSTS_FILE
    from netlab.spec import STATE_ROOT

    values = (STATE_ROOT / name / EXTERNAL_HOSTS_FILE).read_text().split()
    return [arg for value in values for arg in ("--external-host", value)]


def run_on_lab(case: LabCase, report_dir: Path, *extra: str) -> SuiteRun:
    """Boot the lab of ``case``, run the suite against it (with its outside host), tear it
    down; the run's results."""
    started = time.monotonic()
    with running_lab(case) as (name, kubeconfig):
        booted = time.monotonic()
        outside = external_host_args(name)
        marker = ("-m", case.marker) if case.marker else ()
        cases, properties, output, returncode = run_suite_process(
            kubeconfig, report_dir, *outside, *marker, *case.suite_args, *extra
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
