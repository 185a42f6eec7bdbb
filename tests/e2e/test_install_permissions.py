"""Least privilege against a real lab (root): every request of a whole run is granted by
``manifests/rbac.yaml``; a run missing one permission (the lab answering 403 as RBAC does,
``--api-fault forbid=...``) exits 2 naming the permission and what needs it; probe pods that Pod
Security admission refuses (the lab enforces the namespace's ``enforce`` label) exit 2 at once
with the admission's message, never a wait for pods that cannot exist.

The suite runs as users run it: ``python -m pytest --kubeconfig PATH`` from an empty folder.
Labs are named ``$NETLAB_TEST_LAB_PREFIX`` (default ``ti``) + 6 hex digits.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
import yaml
from netlab_commands import booted_lab, netlab

from conformance.kit.base.settings import Timeouts
from conformance.kit.cluster.permissions import Grant, Permission, needed, rbac_grants
from netlab.api.requestinfo import request_info

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = Path(__file__).resolve().parents[1] / "support"  # the plugins loaded with -p
LAB_PREFIX = os.environ.get("NETLAB_TEST_LAB_PREFIX", "ti")
SUITE_TIMEOUT = 600
#: A refused pod must end the run long before the probes' Ready deadline would.
REFUSED_RUN_BOUND = Timeouts().pods_ready / 2

pytestmark = pytest.mark.needs_lab


@dataclass(frozen=True)
class Lab:
    name: str
    kubeconfig: Path

    def forbid(self, *rules: str) -> None:
        """403 for these VERB:RESOURCE rules from now on (none: a healthy API again)."""
        args = [f"--set=forbid={rule}" for rule in rules] or ["--clear"]
        done = netlab("api-faults", "--name", self.name, *args)
        assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    name = LAB_PREFIX + secrets.token_hex(3)
    with booted_lab(name, "--nodes", "2") as kubeconfig:
        yield Lab(name, kubeconfig)


@dataclass(frozen=True)
class SuiteRun:
    returncode: int
    output: str
    seconds: float


def run_suite(
    lab: Lab,
    workdir: Path,
    *args: str,
    plugin: str | None = None,
    env: dict[str, str] | None = None,
) -> SuiteRun:
    """The suite from an empty folder, as a user runs it, with ``plugin`` (a module of
    tests/support) loaded into it."""
    workdir.mkdir(parents=True, exist_ok=True)
    environ = {**os.environ, **(env or {})}
    extra = []
    if plugin:
        environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(SUPPORT), environ.get("PYTHONPATH")])
        )
        extra = ["-p", plugin]
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--kubeconfig",
            str(lab.kubeconfig),
            "-p",
            "no:cacheprovider",
            *extra,
            *args,
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=SUITE_TIMEOUT,
        check=False,
        env=environ,
    )
    return SuiteRun(done.returncode, done.stdout + done.stderr, time.monotonic() - started)


def manifest_grants() -> tuple[Grant, ...]:
    return rbac_grants(list(yaml.safe_load_all((ROOT / "manifests" / "rbac.yaml").read_text())))


@dataclass(frozen=True)
class Asked:
    """One authorization question a request poses: verb on resource (or a non-resource path)."""

    verb: str
    resource: str
    group: str = ""
    namespace: str = ""
    name: str = ""

    def describe(self) -> str:
        where = f" in {self.namespace}" if self.namespace else ""
        return f"{Permission(self.verb, self.resource, self.group).describe()}{where} {self.name}"


def questions(recorded: Path) -> list[Asked]:
    """What RBAC is asked for each request the client recorded (a WebSocket exec asks twice)."""
    asked = []
    for line in recorded.read_text().splitlines():
        entry = json.loads(line)
        url = urlsplit(entry["url"])
        headers = {"Upgrade": "websocket"} if entry["websocket"] else {}
        info = request_info(entry["method"], url.path, dict(parse_qsl(url.query)), headers)
        if not info.is_resource:
            asked.append(Asked(info.verb, url.path))
            continue
        resource = info.resource + (f"/{info.subresource}" if info.subresource else "")
        asked.extend(
            Asked(verb, resource, info.group, info.namespace, info.name)
            for verb in info.verbs_checked
        )
    return asked


def granted(grants: tuple[Grant, ...], question: Asked) -> bool:
    return any(
        g.allows(
            question.verb, question.resource, question.group, question.namespace, question.name
        )
        for g in grants
    )


def test_every_request_of_a_run_is_granted_by_the_rbac_manifest(lab: Lab, tmp_path: Path) -> None:
    recorded = tmp_path / "requests.jsonl"

    def recording(workdir: str, *args: str) -> SuiteRun:
        """A quiet run of the suite in ``tmp_path/workdir`` whose requests go to ``recorded``."""
        env = {"NETCONFORM_RECORD_REQUESTS": str(recorded)}
        return run_suite(lab, tmp_path / workdir, "-q", *args, plugin="record_requests", env=env)

    # The whole suite with the options that add requests (the stale sweep; a short lease, so
    # that it is renewed within the run) ...
    whole = recording("run", "--cleanup-stale", "--run-lease=5")
    assert whole.returncode == 0, whole.output[-6000:]
    # ... and --image-pull-secret, which the lab cannot serve (it has no Secrets): the run stops
    # at the read, so the copy's create is never asked.
    secret = recording(
        "secret", "-k", "test_localhost_between_containers", "--image-pull-secret", "regcred"
    )
    assert secret.returncode == 2, secret.output[-4000:]
    asked = questions(recorded)
    grants = manifest_grants()
    denied = sorted({q.describe() for q in asked if not granted(grants, q)})
    assert not denied, f"requests manifests/rbac.yaml does not grant: {denied}"
    used = {
        g
        for g in grants
        if any(g.allows(q.verb, q.resource, q.group, q.namespace, q.name) for q in asked)
    }
    unused = sorted(Permission(g.verb, g.resource, g.group).describe() for g in set(grants) - used)
    print(
        f"{len(asked)} authorization questions from {len(recorded.read_text().splitlines())} "
        f"requests; {len(used)} of {len(set(grants))} grants used; unused: {unused}"
    )
    # Every rule is exercised but those no healthy lab run reaches: the Secret copy, the service
    # range's fallbacks (a dry-run Service, the kubernetes Service's ClusterIPs), asked only
    # when the sources before them name no range, a crash-looping probe's previous log
    # (tests/e2e/test_probe_crash_loop.py reaches that one), and the watch on nodes, made only
    # while a node is not ready yet (the network-not-ready-on-node matrix case reaches it), and
    # a pod's labels patched, by the NetworkPolicy scenario that needs a third node's pod.
    assert set(unused) <= {
        "patch pods",
        "create secrets",
        "create services",
        "get services",
        "get pods/log",
        "watch nodes",
    }, unused


@dataclass(frozen=True)
class Missing:
    """A forbid rule for the lab, the permission it takes away, and a quick selection."""

    rule: str
    permission: Permission
    args: tuple[str, ...] = ("-k", "test_localhost_between_containers")


def only(verb: str, resource: str, group: str = "") -> Permission:
    found = needed(verb, resource, group)
    assert found, (verb, resource, group)
    return found[0]


MISSING = [
    Missing("list:nodes", only("list", "nodes")),
    Missing("create:namespaces", only("create", "namespaces")),
    Missing("list:serviceaccounts", only("list", "serviceaccounts")),
    Missing("create:configmaps", only("create", "configmaps")),
    Missing("create:pods/exec", only("create", "pods/exec")),
    Missing(
        "get:secrets",
        only("get", "secrets"),
        ("-k", "test_localhost_between_containers", "--image-pull-secret=regcred"),
    ),
    Missing(
        "list:ippools.crd.projectcalico.org",
        only("list", "ippools", "crd.projectcalico.org"),
        ("-k", "test_pod_ips_inside_node_pod_cidrs"),
    ),
]


@pytest.mark.parametrize("missing", MISSING, ids=[m.rule for m in MISSING])
def test_a_missing_permission_exits_2_naming_it(lab: Lab, tmp_path: Path, missing: Missing) -> None:
    lab.forbid(missing.rule)
    try:
        run = run_suite(lab, tmp_path, *missing.args)
    finally:
        lab.forbid()
    print(f"forbid {missing.rule}: exit {run.returncode} after {run.seconds:.1f} s")
    assert run.returncode == 2, run.output[-4000:]
    wanted = (
        f"missing RBAC permission: {missing.permission.describe()}, "
        f"needed by {missing.permission.needed_by}"
    )
    assert wanted in run.output, run.output[-4000:]
    assert "rbac.yaml" in run.output


def test_probe_pods_refused_by_pod_security_exit_2_at_once(lab: Lab, tmp_path: Path) -> None:
    run = run_suite(
        lab, tmp_path, "-k", "test_localhost_between_containers", plugin="psa_baseline_namespace"
    )
    print(f"Pod Security baseline: exit {run.returncode} after {run.seconds:.1f} s")
    assert run.returncode == 2, run.output[-4000:]
    assert run.seconds < REFUSED_RUN_BOUND, "the run waited for pods that cannot exist"
    assert 'violates PodSecurity "baseline:latest"' in run.output, run.output[-4000:]
    assert "NET_RAW" in run.output
    assert "host namespaces (hostNetwork=true)" in run.output
