"""The whole conformance suite, run as a user runs it, against 3-node netlabs.

The start of the detection matrix: on a healthy lab every check passes (or skips with a reason
that is not "could not test") and the run leaves nothing behind in the cluster; on a lab with a
fault, exactly the checks of the broken rule fail, and nothing errors.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NETLAB = [sys.executable, "-m", "netlab"]

if os.geteuid() != 0:
    pytest.skip("netlab needs root (network namespaces, runc)", allow_module_level=True)


# Fault -> the tests (a regular expression over "module::name[id]") that must fail, and only they.
EXPECTED_FAILURES: dict[str, str] = {
    # Cross-node pairs only (source node != destination node); same-node pairs must pass.
    "snat-cross-node": r"test_no_snat::test_no_snat\[(tcp|udp|icmp)-node-(\d+)->node-(?!\2\])\d+\]",
}


def boot_lab(*faults: str) -> tuple[str, Path]:
    name = "te" + secrets.token_hex(3)
    fault_args = [arg for fault in faults for arg in ("--fault", fault)]
    up = subprocess.run(
        [*NETLAB, "up", "--nodes", "3", "--name", name, *fault_args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if up.returncode != 0:
        stop_lab(name)
        pytest.fail(f"netlab up failed: {up.stderr}", pytrace=False)
    return name, Path(up.stdout.strip().splitlines()[-1])


def stop_lab(name: str) -> None:
    down = subprocess.run(
        [*NETLAB, "down", "--name", name], capture_output=True, text=True, timeout=120, check=False
    )
    assert down.returncode == 0, f"netlab down failed: {down.stderr}"
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert f"netlab-{name}-" not in left.stdout, f"lab {name} left namespaces: {left.stdout}"


@pytest.fixture(scope="module")
def lab_kubeconfig() -> Iterator[Path]:
    name = "te" + secrets.token_hex(3)
    try:
        up = subprocess.run(
            [*NETLAB, "up", "--nodes", "3", "--name", name],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert up.returncode == 0, f"netlab up failed: {up.stderr}"
        yield Path(up.stdout.strip().splitlines()[-1])
    finally:
        down = subprocess.run(
            [*NETLAB, "down", "--name", name],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert down.returncode == 0, f"netlab down failed: {down.stderr}"
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
        assert f"netlab-{name}-" not in left.stdout, f"lab {name} left namespaces: {left.stdout}"


def run_suite(kubeconfig: Path, report_dir: Path, *extra: str) -> tuple[ET.Element, str]:
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
        timeout=600,
        check=False,
    )
    assert junit.exists(), (
        f"the suite wrote no JUnit report:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
    )
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")  # type: ignore[assignment]
    assert suite is not None
    return suite, result.stdout


def test_healthy_lab_passes_every_check_and_leaves_nothing(
    lab_kubeconfig: Path, tmp_path: Path
) -> None:
    suite, output = run_suite(lab_kubeconfig, tmp_path)
    tests, failures, errors = (int(suite.get(k, "0")) for k in ("tests", "failures", "errors"))
    skipped = int(suite.get("skipped", "0"))
    assert (failures, errors) == (0, 0), f"a healthy lab must pass:\n{output[-6000:]}"
    assert tests - skipped >= 50, f"only {tests - skipped} checks ran:\n{output[-3000:]}"
    for case in suite.iter("testcase"):
        for skip in case.findall("skipped"):
            assert "COULD NOT TEST" not in (skip.get("message") or ""), case.get("name")
    properties = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert properties.get("netconform.node_count") == "3"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary, "the JSON summary is empty"

    from kubernetes import client, config

    api = client.CoreV1Api(config.new_client_from_config(str(lab_kubeconfig)))
    leftover = [
        ns.metadata.name
        for ns in api.list_namespace().items
        if ns.metadata.name.startswith("netconform-")
    ]
    assert not leftover, f"the run left namespaces behind: {leftover}"
    assert not api.list_pod_for_all_namespaces().items, "the run left pods behind"


@pytest.mark.parametrize("fault", sorted(EXPECTED_FAILURES))
def test_a_fault_fails_exactly_the_checks_of_its_rule(fault: str, tmp_path: Path) -> None:
    name, kubeconfig = boot_lab(fault)
    try:
        suite, output = run_suite(kubeconfig, tmp_path)
    finally:
        stop_lab(name)
    assert int(suite.get("errors", "0")) == 0, f"{fault}: checks errored:\n{output[-6000:]}"
    expected = re.compile(EXPECTED_FAILURES[fault])
    failed, missed = [], []
    for case in suite.iter("testcase"):
        # classname is "conformance.test_no_snat": keep the module's own name.
        test_id = f"{(case.get('classname') or '').split('.')[-1]}::{case.get('name')}"
        is_failed = case.find("failure") is not None
        if is_failed:
            failed.append(test_id)
        if is_failed != bool(expected.search(test_id)):
            missed.append(("failed" if is_failed else "passed") + ": " + test_id)
    assert failed, f"{fault}: the suite caught nothing:\n{output[-3000:]}"
    assert not missed, f"{fault}: verdicts off the expectation {expected.pattern}: {missed}"
