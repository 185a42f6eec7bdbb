"""Honest verdicts under control-plane faults: the whole suite, as a user runs it, against 3-node
labs whose API server is busy, older or unreliable (``netlab up --api-fault``).

On a healthy network every check passes (after bounded retries that honour Retry-After) or is
"could not test" with its cause, and the run exits 0 or 2, never 1; with a data-plane fault
under the same API faults, the broken rule's checks still fail and no other does. After each
run nothing of it is left in the cluster, and after each lab's teardown nothing of the lab is
left on the machine (network namespaces, mounts, processes). One lab per case, three at a time,
each torn down whatever happened; labs are named ``$NETLAB_TEST_LAB_PREFIX`` (default ``tm``)
+ 6 hex digits. The honesty rules are `bench.soak.judge`, which the soak benchmark applies to
many runs of the same cases.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from labrun import LabCase, LabError, SuiteRun, run_on_lab

from bench.soak import PROBE_SELECTOR, SNAT_CROSS_NODE, judge, lab_residue

pytestmark = pytest.mark.needs_lab

POOL_SIZE = 3


@dataclass(frozen=True)
class FaultCase:
    """A lab's faults, what the run must exit with, and the checks it must fail."""

    id: str
    lab: LabCase
    exits: tuple[int, ...] = (0, 2)
    must_fail: str = ""


BUSY = ("throttle=0.1", "server-error=0.05", "slow=0.1:1")
CASES = (
    FaultCase("busy", LabCase(api_faults=BUSY)),
    FaultCase("cut-streams", LabCase(api_faults=("cut-streams=0.2",))),
    FaultCase("restart", LabCase(api_faults=("restart=15:3",))),
    FaultCase("evict", LabCase(api_faults=(f"evict={PROBE_SELECTOR}@12s",))),
    # A sandbox pod evicted about when the sandbox check restarts its container.
    FaultCase("evict-sandbox", LabCase(api_faults=("evict=netconform/role=sandbox@5s",))),
    # API servers before 1.30: exec payloads in argv, within Linux's 128 KiB per argument.
    FaultCase("exec-v4-only", LabCase(api_faults=("exec-v4-only",)), exits=(0,)),
    # A slow ServiceAccount controller: the suite waits for the account, so nothing is lost.
    FaultCase("sa-delay", LabCase(api_faults=("sa-delay=3:5",)), exits=(0,)),
    FaultCase(
        "snat-cross-node+busy",
        # As in the detection matrix: a data-plane fault also breaks NetworkPolicy (a policy
        # cannot match a source NATed to its node), which is not this case's question.
        LabCase(
            faults=("snat-cross-node",),
            api_faults=(*BUSY, "cut-streams=0.1"),
            marker="not netpol",
        ),
        exits=(1, 2),
        must_fail=SNAT_CROSS_NODE,
    ),
)


class Labs:
    """Every case's lab run, submitted at once to a bounded pool."""

    def __init__(self, cases: list[FaultCase], report_root: Path) -> None:
        self.started = time.monotonic()
        self.pool = ThreadPoolExecutor(max_workers=POOL_SIZE, thread_name_prefix="cpfaults")
        self.futures: dict[str, Future[SuiteRun]] = {
            case.id: self.pool.submit(run_on_lab, case.lab, report_root / case.id) for case in cases
        }

    def result(self, case: FaultCase) -> SuiteRun:
        return self.futures[case.id].result()

    def close(self) -> float:
        self.pool.shutdown(wait=True, cancel_futures=True)
        return time.monotonic() - self.started


@pytest.fixture(scope="module")
def labs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Labs]:
    selected = [
        item.callspec.params["case"]
        for item in request.session.items
        if getattr(item, "module", None) is request.module and hasattr(item, "callspec")
    ]
    running = Labs(
        list({case.id: case for case in selected}.values()), tmp_path_factory.mktemp("cp")
    )
    try:
        yield running
    finally:
        wall = running.close()
        print(f"control-plane faults: {len(running.futures)} labs in {wall:.0f} s")


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_verdicts_stay_honest_under_api_faults(case: FaultCase, labs: Labs) -> None:
    try:
        run = labs.result(case)
    except LabError as error:
        pytest.fail(f"{case.id}: {error}", pytrace=False)
    verdict = judge(run.cases, run.exitstatus, case.must_fail, leftovers=run.leftovers)
    residue = lab_residue(run.lab)
    print(
        f"{case.id} ({', '.join(case.lab.api_faults)}): exit {run.exitstatus}, "
        f"{run.ran} ran, {len(verdict.could_not_test)} could not test, caught {verdict.caught}, "
        f"suite {run.suite_seconds:.0f} s"
    )
    tail = run.output[-4000:]
    assert run.exitstatus in case.exits, f"{case.id}: exit {run.exitstatus}:\n{tail}"
    assert not verdict.false_failures, f"{case.id}: false failures {verdict.false_failures}"
    assert not verdict.false_passes, f"{case.id}: false passes {verdict.false_passes}"
    assert verdict.honest, f"{case.id}: {verdict}"
    if case.must_fail:
        assert verdict.caught, f"{case.id}: the data-plane fault went unseen:\n{tail}"
    for check in run.cases:
        if check.outcome == "error":
            assert "COULD NOT TEST" in check.message, f"{check.test_id}: {check.message}"
            if "evict" in case.id:  # the cause names the probe the control plane took away
                assert re.search(r"evicted|deleted|gone", check.message), check.message
                # A probe pod by name, or a NetworkPolicy model pod as namespace/pod (node).
                pod = r"(probe|peer|hostprobe|sandbox)-\S+|\b[xyz]/[abc] \(node-\d+\)"
                assert re.search(pod, check.message), check.message
    if case.id == "evict-sandbox":  # one node's sandbox went: only its check could not test
        lost = [test_id for test_id in verdict.could_not_test if "test_sandbox" in test_id]
        # Evicted before the probes were all up (a loaded machine): no probe check could run.
        deployment_lost = not any(
            c.outcome == "passed" for c in run.cases if c.test_id.startswith("test_no_snat::")
        )
        said = [c.message for c in run.cases if c.test_id in lost]
        assert deployment_lost or len(lost) <= 1, f"{case.id}: {lost}: {said}"
    assert run.leftovers == [], f"{case.id}: left in the cluster: {run.leftovers}"
    assert residue == [], f"{case.id}: left on the machine after teardown: {residue}"
