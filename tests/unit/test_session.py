"""`conformance.kit.run.session` without a cluster: the run's JUnit properties from its deployment
record, the end of the run (summary written whatever happened; namespace dumped and deleted
only when a deployment started; cleanup problems reported, never raised), the discovery and
run identity handed between processes, and the exit gate (2 could not test, 1 rule broken)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from report_runs import DEPLOYED_FACTS

from conformance.kit.base.errors import ClusterError, CouldNotTest
from conformance.kit.base.runstate import DONE, FAILED, STARTED, Record, RunInfo, once, peek
from conformance.kit.base.settings import Settings
from conformance.kit.cluster.discovery import DISCOVERY_RECORD, Discovery
from conformance.kit.cluster.families import FamilyPlan
from conformance.kit.cluster.nodes import NETWORK_NOT_READY, WINDOWS, Exclusion
from conformance.kit.probes.deploy import DEPLOYMENT_RECORD, Deployment
from conformance.kit.probes.model import ProbeMap
from conformance.kit.run import session
from conformance.kit.verdicts.failures import ACCOUNTS_FOR_PROPERTY, UNTESTED_PROPERTY

pytest_plugins = ["pytester"]


def run_info(tmp_path: Path) -> RunInfo:
    return RunInfo(run_id="r1", namespace="netconform-r1-abc", shared_dir=str(tmp_path / "run"))


def ready_record() -> Record:
    return Record(
        DONE,
        Deployment(
            probes=ProbeMap("netconform-r1-abc"), cluster=DEPLOYED_FACTS, seconds=7.5
        ).to_dict(),
    )


# --- run properties --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "status"),
    [
        (None, "not started"),
        (Record(STARTED), "deploying"),
        (Record(FAILED, error="probe-n1: ImagePullBackOff\nmore"), "failed"),
        (ready_record(), "ready"),
    ],
)
def test_run_properties_follow_the_deployment(
    tmp_path: Path, record: Record | None, status: str
) -> None:
    run = run_info(tmp_path)
    properties = dict(session.run_properties(run, record))
    assert properties["netconform.run_id"] == "r1"
    assert properties["netconform.namespace"] == run.namespace
    assert properties["netconform.deployment"] == status == session.deployment_status(record)
    if status == "failed":
        assert properties["netconform.deployment_error"] == "probe-n1: ImagePullBackOff"
    else:
        assert "netconform.deployment_error" not in properties
    if status == "ready":
        assert properties["netconform.server_version"] == "v1.33.1"
        assert properties["netconform.nodes_tested"] == "n1,n2"
    else:
        assert "netconform.server_version" not in properties


def test_deployment_of_reads_only_finished_records() -> None:
    assert session.deployment_of(None) is None
    assert session.deployment_of(Record(STARTED)) is None
    assert session.deployment_of(Record(DONE, {"probes": "not a map"})) is None
    found = session.deployment_of(ready_record())
    assert found is not None
    assert found.cluster == DEPLOYED_FACTS


# --- the end of the run ----------------------------------------------------------------------


@pytest.fixture
def cluster_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the end of the run asked of the cluster (dump, delete), answered in memory."""
    calls: list[str] = []

    def dump(core: Any, namespace: str, timeouts: Any) -> str:
        calls.append(f"dump {namespace}")
        return f"pod probe-n1 in {namespace}"

    def delete(core: Any, namespace: str, timeouts: Any, *, wait: bool) -> bool:
        calls.append(f"delete {namespace}")
        return True

    monkeypatch.setattr(session, "dump_namespace", dump)
    monkeypatch.setattr(session, "delete_namespace", delete)
    return calls


def end_run(
    tmp_path: Path, record: Record | None, *, keep: bool = False, core: Any = "core"
) -> tuple[list[str], dict[str, Any]]:
    summary: dict[str, Any] = {"totals": {}}
    lines = session.end_run(
        settings=Settings(kubeconfig=None, context=None, keep_namespace=keep),
        run=run_info(tmp_path),
        record=record,
        summary=summary,
        reports_dir=tmp_path / "reports",
        make_core=lambda: core,
    )
    written = json.loads((tmp_path / "reports" / "summary.json").read_text())
    return lines, written


def test_no_deployment_writes_the_summary_and_touches_no_cluster(
    tmp_path: Path, cluster_calls: list[str]
) -> None:
    lines, summary = end_run(tmp_path, None)
    assert cluster_calls == []
    assert lines == [f"summary: {tmp_path / 'reports' / 'summary.json'}"]
    assert summary["run"] == {
        "run_id": "r1",
        "namespace": "netconform-r1-abc",
        "deployment": "not started",
        "deployment_error": None,
        "deployment_seconds": None,
    }


def test_a_deployment_is_dumped_then_deleted(tmp_path: Path, cluster_calls: list[str]) -> None:
    lines, summary = end_run(tmp_path, ready_record())
    assert summary["run"]["deployment_seconds"] == 7.5  # the deploy phase apart (bench, report)
    assert cluster_calls == ["dump netconform-r1-abc", "delete netconform-r1-abc"]
    dump = tmp_path / "reports" / "netconform-r1-abc.txt"
    assert dump.read_text() == "pod probe-n1 in netconform-r1-abc\n"
    assert lines[:2] == [
        f"pod states and events of the run: {dump}",
        "namespace netconform-r1-abc deleted",
    ]
    assert summary["run"]["deployment"] == "ready"


def test_keep_namespace_and_a_failed_deployment(tmp_path: Path, cluster_calls: list[str]) -> None:
    failed = Record(FAILED, error="probe-n1: ImagePullBackOff\nsecond line")
    lines, summary = end_run(tmp_path, failed, keep=True)
    assert cluster_calls == ["dump netconform-r1-abc"]  # dumped, kept
    assert "namespace netconform-r1-abc kept (--keep-namespace)" in lines
    assert "probe deployment failed: probe-n1: ImagePullBackOff" in lines
    assert summary["run"]["deployment"] == "failed"
    assert summary["run"]["deployment_error"] == "probe-n1: ImagePullBackOff\nsecond line"


def test_a_namespace_still_terminating_is_reported(
    tmp_path: Path, cluster_calls: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session, "delete_namespace", lambda *a, **k: False)
    lines, _ = end_run(tmp_path, Record(STARTED))
    assert any("still terminating after 180s; sweep later with --cleanup-stale" in x for x in lines)


def test_a_cleanup_failure_is_reported_and_the_summary_still_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(*args: Any, **kwargs: Any) -> str:
        raise ClusterError("connection refused")

    monkeypatch.setattr(session, "dump_namespace", unreachable)
    lines, summary = end_run(tmp_path, ready_record())
    assert any(
        line.startswith(
            "cleanup of namespace netconform-r1-abc failed: ClusterError: connection refused"
        )
        and "--cleanup-stale" in line
        for line in lines
    )
    assert summary["run"]["deployment"] == "ready"


# --- between the run's processes -------------------------------------------------------------


def test_discovery_goes_from_the_collecting_processes_to_the_reporting_one(
    tmp_path: Path,
) -> None:
    run = run_info(tmp_path)
    assert session.recorded_discovery(run) is None
    found = Discovery(
        nodes=("n1", "n2"),
        excluded={"win-1": Exclusion(WINDOWS, "OS is windows")},
        family_plan=FamilyPlan(tested=(4, 6)),
    )
    computed: list[Discovery] = []

    def discover() -> Discovery:
        computed.append(found)
        return found

    for _ in range(2):  # the first collecting process computes, every later one reads back
        assert (
            once(
                run,
                DISCOVERY_RECORD,
                discover,
                encode=Discovery.to_dict,
                decode=Discovery.from_dict,
                error=CouldNotTest,
            )
            == found
        )
    assert computed == [found]
    assert session.recorded_discovery(run) == found
    assert peek(run, DEPLOYMENT_RECORD) is None  # a separate record


def test_xdist_workers_get_the_run_identity(tmp_path: Path) -> None:
    class Node:
        def __init__(self) -> None:
            self.workerinput: dict[str, Any] = {}

    run = run_info(tmp_path)
    node = Node()
    session.XdistController(run).pytest_configure_node(node)
    handed = json.loads(json.dumps(node.workerinput[session.WORKERINPUT_KEY]))
    assert RunInfo.from_dict(handed) == run


# --- the exit gate -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "broken", "untested", "expected"),
    [
        (pytest.ExitCode.OK, False, False, 0),
        (pytest.ExitCode.TESTS_FAILED, True, False, 1),
        (pytest.ExitCode.TESTS_FAILED, False, True, 2),
        (pytest.ExitCode.TESTS_FAILED, True, True, 2),  # could-not-test wins
        (pytest.ExitCode.TESTS_FAILED, False, False, 1),  # another plugin's test failed
        (pytest.ExitCode.INTERRUPTED, True, False, 2),
        (pytest.ExitCode.INTERNAL_ERROR, True, True, 3),
        (pytest.ExitCode.USAGE_ERROR, False, False, 4),
        (pytest.ExitCode.NO_TESTS_COLLECTED, False, False, 5),
    ],
)
def test_gate_exit_status_table(
    status: pytest.ExitCode, broken: bool, untested: bool, expected: int
) -> None:
    assert session.gate_exit_status(status, broken=broken, untested=untested) == expected


def test_gate_sorts_report_phases() -> None:
    gate = session.ExitGate()
    rule = [(session.RULE_PROPERTY, "a rule")]

    def report(when: str, outcome: str, props: list[tuple[str, str]]) -> pytest.TestReport:
        return pytest.TestReport(
            "c.py::t",
            ("c.py", 1, "t"),
            {},
            outcome,  # type: ignore[arg-type]
            None,
            when,  # type: ignore[arg-type]
            user_properties=props,
        )

    gate.pytest_runtest_logreport(report("call", "passed", rule))
    gate.pytest_runtest_logreport(report("call", "failed", []))  # not a conformance check
    assert (gate.broken, gate.untested) == ([], [])
    gate.pytest_runtest_logreport(report("call", "failed", rule))
    assert gate.broken == ["c.py::t"]
    for when in ("setup", "teardown", "???"):  # "???": xdist's report of a crashed worker
        gate.pytest_runtest_logreport(report(when, "failed", rule))
    assert len(gate.untested) == 3


def gate_report(
    nodeid: str, when: str, outcome: str, props: list[tuple[str, object]]
) -> pytest.TestReport:
    return pytest.TestReport(
        nodeid,
        (nodeid.split("::")[0], 1, "t"),
        {},
        outcome,  # type: ignore[arg-type]
        None if outcome == "passed" else "why",
        when,  # type: ignore[arg-type]
        user_properties=props,
    )


def test_a_crashed_worker_could_not_test_even_without_the_checks_properties() -> None:
    gate = session.ExitGate()
    # xdist's crash report carries no user properties: the suite's node ID tells.
    gate.pytest_runtest_logreport(
        gate_report("conformance/test_no_snat.py::t[x]", "???", "failed", [])
    )
    gate.pytest_runtest_logreport(gate_report("tests/test_mine.py::t", "???", "failed", []))
    assert (gate.broken, gate.untested) == ([], ["conformance/test_no_snat.py::t[x]"])


def test_a_call_the_plugin_marked_could_not_test_is_no_broken_rule() -> None:
    gate = session.ExitGate()
    props: list[tuple[str, object]] = [
        (session.RULE_PROPERTY, "a rule"),
        (UNTESTED_PROPERTY, "ApiException"),
    ]
    gate.pytest_runtest_logreport(gate_report("conformance/t.py::t", "call", "failed", props))
    assert (gate.broken, gate.untested) == ([], ["conformance/t.py::t"])


def finish(gate: session.ExitGate, status: pytest.ExitCode) -> int:
    class Session:
        exitstatus: int = status

    ended = Session()
    hook = gate.pytest_sessionfinish(ended, status)  # type: ignore[arg-type]
    next(hook)
    with pytest.raises(StopIteration):
        hook.send(None)
    return int(ended.exitstatus)


def record(run: RunInfo, found: Discovery) -> None:
    once(
        run,
        DISCOVERY_RECORD,
        lambda: found,
        encode=Discovery.to_dict,
        decode=Discovery.from_dict,
        error=CouldNotTest,
    )


def test_a_node_left_out_by_the_suite_is_could_not_test_unless_a_failed_check_explains_it(
    tmp_path: Path,
) -> None:
    run = run_info(tmp_path)
    record(
        run,
        Discovery(
            nodes=("n1",),
            excluded={
                "cni": Exclusion(NETWORK_NOT_READY, "network not ready"),
                "cp": Exclusion("control-plane", "control plane", narrowed=True),
            },
        ),
    )
    nothing_failed = session.ExitGate(run)
    assert finish(nothing_failed, pytest.ExitCode.OK) == session.EXIT_COULD_NOT_TEST
    assert list(nothing_failed.left_out) == ["cni"]

    explained = session.ExitGate(run)
    network_check: list[tuple[str, object]] = [
        (session.RULE_PROPERTY, "every node's network MUST be ready"),
        ("netconform.node", "cni"),
        (ACCOUNTS_FOR_PROPERTY, NETWORK_NOT_READY),
    ]
    explained.pytest_runtest_logreport(
        gate_report("conformance/test_node_network.py::t[cni]", "call", "failed", network_check)
    )
    assert finish(explained, pytest.ExitCode.TESTS_FAILED) == session.EXIT_RULE_BROKEN
    assert explained.left_out == {}
    assert session.unaccounted_lines({}) == []
    line = session.unaccounted_lines(nothing_failed.left_out)[0]
    assert "cni (network not ready)" in line
    assert "--exclude-node cni" in line


def test_an_unknown_exclude_node_ends_the_run_as_a_usage_error(tmp_path: Path) -> None:
    run = run_info(tmp_path)
    record(run, Discovery(nodes=("n1",), usage_error="--exclude-node: no node named nod-2"))
    assert finish(session.ExitGate(run), pytest.ExitCode.NO_TESTS_COLLECTED) == 4


@pytest.mark.usefixtures("kubernetes_client_fully_imported", "no_ambient_cluster")
def test_the_gate_tolerates_a_session_finished_outside_pytest_main(
    pytester: pytest.Pytester,
) -> None:
    (collected,) = pytester.getitems("def test_plain(): pass")
    assert collected.name == "test_plain"
