"""Report building: JUnit properties, merging test phases, the JSON summary, failure text."""

from __future__ import annotations

import json
from pathlib import Path

import execnet
import pytest

from conformance.kit.cluster.facts import ClusterFacts
from conformance.kit.reporting.results import (
    OUTCOMES,
    CheckResult,
    SummaryCollector,
    build_summary,
    count_outcomes,
    flaky_line,
    phase_outcome,
    shorten,
    write_summary,
)
from conformance.kit.verdicts.failures import (
    FAILURE_ATTRIBUTE,
    FLAKY_PROPERTY,
    RuleBroken,
    RuleFailure,
    fail_rule,
    failure_of,
    pod_label,
    rule_from_docstring,
)

FACTS = ClusterFacts(
    server_version="v1.30.2",
    node_count=3,
    nodes_tested=("node-1", "node-2"),
    pod_cidrs=("10.244.1.0/24", "10.244.2.0/24"),
    service_cidr=None,
    ip_families=("IPv4",),
    probe_image="nicolaka/netshoot:v0.13",
)


def test_junit_properties() -> None:
    assert FACTS.junit_properties() == [
        ("netconform.server_version", "v1.30.2"),
        ("netconform.node_count", "3"),
        ("netconform.nodes_tested", "node-1,node-2"),
        ("netconform.pod_cidrs", "10.244.1.0/24,10.244.2.0/24"),
        ("netconform.service_cidr", "unknown"),
        ("netconform.ip_families", "IPv4"),
        ("netconform.probe_image", "nicolaka/netshoot:v0.13"),
        ("netconform.cni", "unknown"),
    ]


def test_rule_from_docstring_takes_the_first_paragraph() -> None:
    doc = """
        Pods on a node MUST reach pods on every other node
        without NAT.

        How: a UDP datagram carries a nonce.
    """
    assert (
        rule_from_docstring(doc)
        == "Pods on a node MUST reach pods on every other node without NAT."
    )
    assert rule_from_docstring(None) == ""


@pytest.mark.parametrize(
    ("when", "outcome", "wasxfail", "meaning"),
    [
        ("setup", "passed", False, "passed"),
        ("setup", "failed", False, "error"),
        ("setup", "skipped", False, "skipped"),
        ("call", "failed", False, "failed"),
        ("call", "skipped", True, "xfailed"),
        ("call", "passed", True, "xpassed"),
        ("teardown", "failed", False, "error"),
    ],
)
def test_phase_outcome(when: str, outcome: str, wasxfail: bool, meaning: str) -> None:
    assert phase_outcome(when, outcome, wasxfail=wasxfail) == meaning


def test_phase_outcome_rejects_unknown_reports() -> None:
    with pytest.raises(ValueError, match="unknown phase report"):
        phase_outcome("collect", "passed")


def run_phases(collector: SummaryCollector, nodeid: str, *phases: tuple[str, str]) -> None:
    for when, outcome in phases:
        message = f"{when} went wrong" if outcome == "failed" else None
        collector.record_phase(nodeid, when, outcome, 0.5, message=message, rule="R MUST hold")


def run_test(collector: SummaryCollector, nodeid: str, call: str, teardown: str = "passed") -> None:
    """A test whose setup passed: its call's outcome, then its teardown's."""
    run_phases(collector, nodeid, ("setup", "passed"), ("call", call), ("teardown", teardown))


def test_collector_merges_phases() -> None:
    collector = SummaryCollector()
    run_test(collector, "t::pass", "passed")
    run_test(collector, "t::fail", "failed", "failed")
    run_phases(collector, "t::setup_error", ("setup", "failed"), ("teardown", "passed"))
    run_phases(collector, "t::skip", ("setup", "skipped"), ("teardown", "passed"))
    run_test(collector, "t::teardown_error", "passed", "failed")
    results = {r.nodeid: r for r in collector.results()}
    assert {nodeid: r.outcome for nodeid, r in results.items()} == {
        "t::pass": "passed",
        "t::fail": "failed",
        "t::setup_error": "error",
        "t::skip": "skipped",
        "t::teardown_error": "error",
    }
    assert results["t::pass"].duration == pytest.approx(1.5)
    assert results["t::pass"].message is None
    assert results["t::fail"].message == "call went wrong\n[teardown] teardown went wrong"
    assert results["t::fail"].rule == "R MUST hold"
    assert list(results) == [
        "t::pass",
        "t::fail",
        "t::setup_error",
        "t::skip",
        "t::teardown_error",
    ]


def test_flaky_from_reruns_and_marks() -> None:
    collector = SummaryCollector()
    run_test(collector, "t::rerun", "failed")
    run_test(collector, "t::rerun", "passed")
    run_test(collector, "t::steady", "passed")
    collector.mark_flaky("t::steady", "reachable only on try 3 of 3")
    assert collector.flaky() == {
        "t::rerun": "call outcomes across reruns: failed, passed",
        "t::steady": "reachable only on try 3 of 3",
    }
    assert {r.nodeid: r.outcome for r in collector.results()}["t::rerun"] == "passed"


def test_rerun_reports_count_as_attempts_and_never_raise() -> None:
    collector = SummaryCollector()
    collector.record_phase("t::r", "call", "rerun", 1.0, message="first try failed")
    collector.record_phase("t::r", "call", "passed", 1.0)
    collector.record_phase("t::odd", "call", "weird", 1.0)
    outcomes = {r.nodeid: r.outcome for r in collector.results()}
    assert outcomes == {"t::r": "passed", "t::odd": "weird"}
    assert collector.flaky() == {"t::r": "call outcomes across reruns: rerun, passed"}
    assert count_outcomes(collector.results())["weird"] == 1


def test_summary_round_trips_through_json(tmp_path: Path) -> None:
    results = [
        CheckResult("t::a", "passed", 1.235, "A MUST hold"),
        CheckResult("t::b", "failed", 2.0, "B MUST hold", "RULE BROKEN: B"),
    ]
    summary = build_summary(
        results,
        facts=FACTS,
        flaky={"t::a": "try 2"},
        session_duration=12.5,
        generated_at=0.0,
    )
    path = write_summary(tmp_path / "reports" / "summary.json", summary)
    loaded = json.loads(path.read_text())
    assert loaded["schema"] == "netconform-summary/1"
    assert loaded["generated_at"] == "1970-01-01T00:00:00Z"
    assert loaded["totals"]["passed"] == 1
    assert loaded["totals"]["failed"] == 1
    assert loaded["totals"]["total"] == 2
    assert loaded["cluster"]["nodes_tested"] == ["node-1", "node-2"]
    assert loaded["tests"][0]["duration"] == 1.235
    assert loaded["tests"][1]["message"] == "RULE BROKEN: B"
    assert loaded["flaky"] == [{"nodeid": "t::a", "reason": "try 2"}]
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]  # no temp file left


def test_durations_are_summed_over_phases_to_the_millisecond() -> None:
    collector = SummaryCollector()
    collector.record_phase("t::a", "setup", "passed", 0.12345)
    collector.record_phase("t::a", "call", "passed", 1.1)
    collector.record_phase("t::a", "teardown", "passed", 0.0001)
    (result,) = collector.results()
    assert result.duration == 1.224
    assert result.to_dict()["duration"] == 1.224


def test_summary_without_cluster_facts() -> None:
    summary = build_summary([], facts=None, flaky={}, session_duration=0.0)
    assert summary["cluster"] is None
    assert summary["totals"] == {**dict.fromkeys(OUTCOMES, 0), "total": 0}


def test_count_outcomes() -> None:
    results = [CheckResult(f"t::{i}", o, 0.0) for i, o in enumerate(["passed", "passed", "error"])]
    counts = count_outcomes(results)
    assert counts["passed"] == 2
    assert counts["error"] == 1
    assert counts["total"] == 3


def test_a_rule_failure_is_data_and_its_text_is_drawn_from_it() -> None:
    with pytest.raises(RuleBroken) as raised:
        fail_rule(
            "Pods MUST reach pods on other nodes without NAT",
            protocol="udp",
            pods=[
                pod_label("nc-1", "probe-node-1", "node-1"),
                pod_label("nc-1", "probe-node-2", "node-2"),
            ],
            nodes=["node-1", "node-2"],
            expected="peer 10.244.1.5 (the source pod's IP)",
            observed="peer 192.168.0.11 (node-1's InternalIP): the source was NATed",
            details=["agent log: listener udp nonce=abc peer=192.168.0.11"],
        )
    failure = raised.value.failure
    assert failure == RuleFailure(
        rule="Pods MUST reach pods on other nodes without NAT",
        expected="peer 10.244.1.5 (the source pod's IP)",
        observed="peer 192.168.0.11 (node-1's InternalIP): the source was NATed",
        protocol="udp",
        pods=("nc-1/probe-node-1 (node node-1)", "nc-1/probe-node-2 (node node-2)"),
        nodes=("node-1", "node-2"),
        details=("agent log: listener udp nonce=abc peer=192.168.0.11",),
    )
    # pytest's failure, without a traceback: its message is the text people read.
    assert isinstance(raised.value, pytest.fail.Exception)
    assert not raised.value.pytrace
    assert str(raised.value) == failure.text()
    # Named as pytest.fail's exception is where pytest shows it (JUnit's failure message, the
    # terminal's short summary): the words stay as they were.
    assert raised.exconly() == f"Failed: {failure.text()}"
    assert failure.text().splitlines() == [
        "RULE BROKEN: Pods MUST reach pods on other nodes without NAT",
        "  protocol: udp",
        "  pods:     nc-1/probe-node-1 (node node-1) -> nc-1/probe-node-2 (node node-2)",
        "  nodes:    node-1, node-2",
        "  expected: peer 10.244.1.5 (the source pod's IP)",
        "  observed: peer 192.168.0.11 (node-1's InternalIP): the source was NATed",
        "  agent log: listener udp nonce=abc peer=192.168.0.11",
    ]
    assert RuleFailure.from_dict(failure.to_dict()) == failure


def test_a_failure_travels_on_its_report_between_xdist_processes() -> None:
    failure = RuleFailure(rule="R", expected="e", observed="o", nodes=("node-1",), pods=("p",))
    report = pytest.TestReport(
        nodeid="t::x",
        location=("t.py", 1, "x"),
        keywords={},
        outcome="failed",
        longrepr=failure.text(),
        when="call",
    )
    setattr(report, FAILURE_ATTRIBUTE, failure.to_dict())
    # What pytest-xdist does with a worker's report: serialize it, send it over execnet,
    # rebuild it on the controller.
    sent = execnet.loads(execnet.dumps(report._to_json()))
    received = pytest.TestReport._from_json(sent)
    assert failure_of(received) == failure
    assert received.longreprtext == failure.text()
    assert (
        failure_of(
            pytest.TestReport._from_json(
                pytest.TestReport("t::y", ("t.py", 2, "y"), {}, "passed", None, "call")._to_json()
            )
        )
        is None
    )


def test_shorten() -> None:
    assert shorten("abc", 5) == "abc"
    assert shorten("abcdefgh", 5) == "abcde\n... (3 more characters in the JUnit report)"


def test_flaky_line_names_the_test_and_how_it_passed() -> None:
    nodeid = "conformance/test_no_snat.py::test_no_snat[udp-node-1->node-2]"
    reason = "passed on attempt 2 of 3 (first: ETIMEDOUT no answer)"
    assert flaky_line(nodeid, reason) == (
        "flaky: test_no_snat[udp-node-1->node-2] passed on attempt 2 of 3 (first: ETIMEDOUT no answer)"
    )
    assert FLAKY_PROPERTY == "netconform.flaky"
