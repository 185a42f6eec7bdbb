"""The rule table and the node-by-node matrices of a run, and their terminal lines: built from
check results alone (`conformance.kit.reporting.rules`, `conformance.kit.reporting.matrices`)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from report_runs import NO_SNAT_RULE, node_check, pair, run_results, untested

from conformance.kit.cluster.families import FamilyPlan
from conformance.kit.cluster.nodes import CONTROL_PLANE, NOT_READY, Exclusion
from conformance.kit.cluster.survey import recognise_cni
from conformance.kit.reporting.matrices import (
    CELL_FAILED,
    CELL_FLAKY,
    CELL_LOSSY,
    CELL_NOT_CHECKED,
    CELL_PASSED,
    CELL_SKIPPED,
    CELL_UNTESTED,
    Matrix,
    build_matrices,
    merge_identical,
    merged_title,
    text_matrices,
)
from conformance.kit.reporting.results import (
    CNI_UNKNOWN,
    CheckResult,
    SummaryCollector,
    exit_meaning,
    lossy_lines,
)
from conformance.kit.reporting.rules import (
    RULE_BROKEN,
    RULE_HELD,
    RULE_SKIPPED,
    RULE_UNTESTED,
    RULE_XFAILED,
    Coverage,
    anchor_for,
    rule_counts,
    rule_line,
    rule_status,
    summarize_rules,
    verdict,
)
from conformance.kit.verdicts.failures import (
    LOSS_PROPERTY,
    LOSS_RATIO_PROPERTY,
    PROBES_LOST_PROPERTY,
    PROBES_PROPERTY,
    Place,
    RuleFailure,
)

NODES = ("node-1", "node-2", "node-3")


# --- the rule table ----------------------------------------------------------------------------


def test_a_broken_run_has_one_row_per_rule_worst_named() -> None:
    rules = {r.check: r for r in summarize_rules(run_results(NODES, broken=True))}
    assert list(rules) == [
        "test_no_snat",
        "test_node_to_pod",
        "test_localhost_between_containers",
        "test_required_family_on_every_pod_and_node",
    ]
    no_snat = rules["test_no_snat"]
    assert no_snat.status == RULE_BROKEN
    assert no_snat.rule == NO_SNAT_RULE
    assert no_snat.module == "conformance/test_no_snat.py"
    assert (no_snat.counts["failed"], no_snat.counts["passed"], no_snat.counts["total"]) == (
        18,
        9,
        27,
    )
    assert len(no_snat.failed) == 18
    assert no_snat.nodes == NODES
    assert no_snat.anchor == "rule-test_no_snat"
    assert rules["test_node_to_pod"].status == RULE_HELD
    skipped = rules["test_required_family_on_every_pod_and_node"]
    assert skipped.status == RULE_SKIPPED
    assert skipped.skip_reasons == ("IPv4 is not required (--ip-family auto follows the cluster)",)


@pytest.mark.parametrize(
    ("outcomes", "status"),
    [
        (["passed", "failed", "error"], RULE_BROKEN),
        (["passed", "error", "skipped"], RULE_UNTESTED),
        (["passed", "skipped"], RULE_HELD),
        (["skipped", "skipped"], RULE_SKIPPED),
        (["xfailed"], RULE_XFAILED),  # an xfail is never "held"
        (["passed", "xfailed"], RULE_XFAILED),
        (["passed", "xpassed"], RULE_HELD),
    ],
)
def test_rule_status(outcomes: list[str], status: str) -> None:
    counts = {o: outcomes.count(o) for o in set(outcomes)}
    assert rule_status(counts) == status


@given(st.lists(st.sampled_from(["passed", "failed", "error", "skipped"]), min_size=1))
def test_a_rule_is_broken_exactly_when_a_check_failed(outcomes: list[str]) -> None:
    results = [node_check("test_x", f"node-{i}", o) for i, o in enumerate(outcomes)]
    (rule,) = summarize_rules(results)
    assert (rule.status == RULE_BROKEN) == ("failed" in outcomes)
    assert rule.counts["total"] == len(outcomes)
    assert len(rule.failed) + len(rule.could_not_test) == sum(
        o in ("failed", "error") for o in outcomes
    )


def test_the_focus_names_the_nodes_every_failure_involves() -> None:
    nodes = tuple(f"node-{i}" for i in range(1, 31))
    into_17 = [
        pair("test_no_snat", "tcp", s, d, "failed" if d == "node-17" and s != d else "passed")
        for s in nodes
        for d in nodes
    ]
    (rule,) = summarize_rules(into_17)
    assert rule.common_nodes == ("node-17",)
    assert rule.focus == "every failure involves node-17 (as destination 29)"
    assert rule_line(rule).endswith("; every failure involves node-17 (as destination 29)")
    one_way = [pair("test_no_snat", p, "node-1", "node-3", "failed") for p in ("tcp", "udp")]
    one_way += [pair("test_no_snat", "tcp", "node-2", "node-2", "failed")]
    (rule,) = summarize_rules(one_way[:2])
    assert rule.focus == (
        "every failure involves node-1 (as source 2) and node-3 (as destination 2)"
    )
    (rule,) = summarize_rules(one_way)
    assert rule.common_nodes == ()
    assert rule.focus == "nodes node-1, node-2, node-3"
    everywhere = [pair("test_no_snat", "tcp", s, d, "failed") for s in nodes for d in nodes]
    (rule,) = summarize_rules(everywhere)
    assert rule.focus == (
        "nodes node-1, node-2, node-3, node-4, node-5, node-6, node-7, node-8 and 22 more"
    )


def test_flaky_passes_are_counted_on_the_rule() -> None:
    results = [node_check("test_x", "node-1"), node_check("test_x", "node-2")]
    (rule,) = summarize_rules(results, {results[0].nodeid: "passed on attempt 2 of 3"})
    assert rule.status == RULE_HELD
    assert rule.flaky == 1
    assert rule.counts_text() == "2 passed (1 flaky)"


def test_a_pass_with_lost_probes_is_lossy_in_the_rule_the_cells_and_the_terminal() -> None:
    """Lost probes under --max-loss pass, and say so wherever the pass is shown."""
    collector = SummaryCollector()
    nodeid = "conformance/test_no_snat.py::test_no_snat[udp-node-1->node-2]"
    properties = {
        "netconform.check": "test_no_snat",
        "netconform.protocol": "udp",
        "netconform.family": "ipv4",
        "netconform.source": "node-1",
        "netconform.destination": "node-2",
        PROBES_PROPERTY: "100",
        PROBES_LOST_PROPERTY: "3",
        LOSS_RATIO_PROPERTY: "0.0300",
        LOSS_PROPERTY: "3 of 100 probes lost (3.0 %)",
    }
    collector.record_phase(nodeid, "call", "passed", 0.1, rule="r", properties=properties)
    clean = pair("test_no_snat", "udp", "node-2", "node-1")
    (lossy, *_) = results = [*collector.results(), clean]
    assert (lossy.probes, lossy.probes_lost, lossy.loss_ratio) == (100, 3, 0.03)
    assert lossy.lossy
    assert not clean.lossy
    (rule,) = summarize_rules(results)
    assert (rule.status, rule.lossy) == (RULE_HELD, 1)
    assert rule.counts_text() == "2 passed (1 lossy)"
    (matrix,) = build_matrices(results, {}, ("node-1", "node-2"))
    cell = matrix.cell("node-1", "node-2")
    assert cell is not None
    assert cell.status == CELL_LOSSY
    assert cell.cause == "3 of 100 probes lost (3.0 %)"
    assert cell.loss_ratio == 0.03  # the cell carries the ratio as data, as the item does
    assert not matrix.broken
    assert lossy_lines(results) == [
        "lossy: test_no_snat[udp-node-1->node-2] 3 of 100 probes lost (3.0 %)"
    ]
    failed = CheckResult.from_dict({**lossy.to_dict(), "outcome": "failed"})
    assert not failed.lossy  # a failure is a failure, lost probes or not


def test_terminal_rule_lines_and_verdict() -> None:
    rules = summarize_rules(run_results(NODES, broken=True))
    lines = [rule_line(r) for r in rules]
    assert lines[0] == (
        "BROKEN          test_no_snat: 18 failed, 9 passed; nodes node-1, node-2, node-3"
    )
    assert lines[1] == "HELD            test_node_to_pod: 9 passed"
    assert lines[3] == (
        "SKIPPED         test_required_family_on_every_pod_and_node: 1 skipped "
        "(IPv4 is not required (--ip-family auto follows the cluster))"
    )
    assert rule_counts(rules) == "1 of 4 rules broken, 2 held, 1 skipped"
    healthy = summarize_rules(run_results(NODES, broken=False))
    assert rule_counts(healthy) == "3 of 4 rules held, 1 skipped"
    assert rule_counts(healthy[:1]) == "the only rule held"
    assert rule_counts(healthy[:3]) == "all 3 rules held"
    assert rule_counts([]) == "no rule was checked"


# --- the verdict ---------------------------------------------------------------------------------

DUAL = FamilyPlan(tested=(4, 6), required=(4, 6), declared={"4": ("x",), "6": ("x",)})


def test_every_rule_held_only_when_nothing_was_left_unchecked() -> None:
    healthy = summarize_rules(run_results(NODES, broken=False, skipped=False))
    whole = verdict(healthy, Coverage(nodes=NODES, families=DUAL))
    assert whole.every_rule_held
    assert whole.text == (
        "every rule held: 3 rules on every node (3 nodes), in every family (IPv4 and IPv6), "
        "with every pair"
    )
    assert whole.not_checked == ()


def test_the_verdict_names_what_was_not_checked() -> None:
    rules = summarize_rules(run_results(NODES, broken=False))  # one rule skipped
    narrowed = FamilyPlan(tested=(4,), required=(4,), declared=DUAL.declared, option="ipv4")
    coverage = Coverage(
        nodes=NODES,
        left_out={
            "cp-1": Exclusion(CONTROL_PLANE, "control-plane node", narrowed=True),
            "node-9": Exclusion(NOT_READY, "not Ready (Ready=Unknown)"),
            "node-10": Exclusion(NOT_READY, "not Ready (Ready=Unknown)"),
        },
        families=narrowed,
        sampled="sampled 6 of 12 cross-node pairs",
    )
    judged = verdict(rules, coverage)
    assert not judged.every_rule_held
    assert judged.not_checked == (
        "test_required_family_on_every_pod_and_node skipped (IPv4 is not required (--ip-family "
        "auto follows the cluster))",
        "IPv6 not tested (the cluster declares it; --ip-family ipv4)",
        "2 nodes node-9, node-10 left out (not-ready)",
        "node cp-1 narrowed away (control-plane node)",
        "pairs sampled: sampled 6 of 12 cross-node pairs",
    )
    assert judged.text.startswith("3 of 4 rules held, 1 skipped; not checked: ")
    held_where_checked = verdict(rules[:3], Coverage(nodes=NODES, families=narrowed))
    assert held_where_checked.text == (
        "all 3 rules held where checked; not checked: IPv6 not tested (the cluster declares "
        "it; --ip-family ipv4)"
    )
    assert not verdict([], Coverage()).every_rule_held


def test_xfailed_and_partly_skipped_rules_are_not_held_everywhere() -> None:
    results = [
        node_check("test_localhost_between_containers", "node-1"),
        node_check("test_localhost_between_containers", "node-2", "xfailed"),
        node_check("test_x", "node-1"),
        node_check("test_x", "node-2", "skipped", reason="IPv6: not here"),
    ]
    rules = summarize_rules(results)
    assert [r.status for r in rules] == [RULE_XFAILED, RULE_HELD]
    judged = verdict(rules, Coverage(nodes=("node-1", "node-2")))
    assert not judged.every_rule_held
    assert judged.not_checked == (
        "test_localhost_between_containers xfailed on 1 checks",
        "test_x skipped on 1 checks: IPv6: not here",
    )
    assert judged.text.startswith("1 of 2 rules xfailed, 1 held; not checked:")


def test_anchors_are_valid_distinct_fragment_ids() -> None:
    one = anchor_for("t", "conformance/test_no_snat.py::test_no_snat[tcp-node-1->node-2]")
    other = anchor_for("t", "conformance/test_no_snat.py::test_no_snat[tcp-node-1-node-2]")
    assert one.startswith("t-conformance-test_no_snat-py-test_no_snat-tcp-node-1-node-2-")
    assert re.fullmatch(r"[A-Za-z0-9_-]+", one)
    assert one != other
    assert anchor_for("rule", "test_no_snat") == "rule-test_no_snat"


# --- what a failure says -------------------------------------------------------------------


def test_a_failure_travels_as_data_from_the_report_to_the_result() -> None:
    failure = RuleFailure(
        rule="R MUST hold",
        expected="the source pod's IP",
        observed="a node's IP: the source was NATed",
        protocol="udp over IPv4",
        pods=("probe-node-1", "probe-node-2"),
        nodes=("node-1", "node-2"),
    )
    collector = SummaryCollector()
    # The message is the failure's text, as pytest prints it; the result keeps the data.
    collector.record_phase("t::f", "call", "failed", 0.1, message=failure.text(), failure=failure)
    collector.record_phase("t::f", "teardown", "failed", 0.0, message="teardown went wrong")
    # An error with no failure attached (a fixture's exception): its first line is observed.
    collector.record_phase("t::e", "setup", "failed", 0.0, message="\nRuntimeError: boom\n  at x")
    collector.record_phase("t::p", "call", "passed", 0.1)
    results = {r.nodeid: r for r in collector.results()}
    assert results["t::f"].failure == failure
    assert results["t::f"].message == failure.text() + "\n[teardown] teardown went wrong"
    assert results["t::e"].failure == RuleFailure(rule="", observed="RuntimeError: boom")
    assert results["t::p"].failure is None
    assert RuleFailure.from_dict(results["t::f"].to_dict()["failure"]) == failure


def test_skip_reasons_are_kept_for_skipped_checks_only() -> None:
    collector = SummaryCollector()
    collector.record_phase("t::skip", "setup", "skipped", 0.0, skip_reason="not here")
    collector.record_phase("t::pass", "setup", "passed", 0.0)
    collector.record_phase("t::pass", "call", "passed", 0.0)
    results = {r.nodeid: r for r in collector.results()}
    assert results["t::skip"].reason == "not here"
    assert results["t::pass"].reason is None


def test_exit_meanings() -> None:
    assert exit_meaning(0).startswith("every rule checked held, on every node asked for")
    assert exit_meaning(1) == "a rule is broken"
    assert exit_meaning(2).startswith("could not test")
    assert exit_meaning(None) == "not recorded"
    assert exit_meaning(77) == "exit code 77"


# --- matrices ------------------------------------------------------------------------------


def test_one_matrix_per_check_family_and_protocol_in_a_stable_order() -> None:
    results = run_results(NODES, broken=True)
    results += [pair("test_no_snat", "tcp", "node-1", "node-2", family="ipv6")]
    matrices = build_matrices(results, {}, NODES)
    assert [(m.check, m.family, m.protocol, m.source_kind) for m in matrices] == [
        ("test_no_snat", "ipv4", "tcp", "pod"),
        ("test_no_snat", "ipv4", "udp", "pod"),
        ("test_no_snat", "ipv4", "icmp", "pod"),
        ("test_no_snat", "ipv6", "tcp", "pod"),
        ("test_node_to_pod", "ipv4", "tcp", "host"),
        ("test_node_to_pod", "ipv4", "udp", "host"),
        ("test_node_to_pod", "ipv4", "icmp", "host"),
    ]
    tcp = matrices[0]
    assert tcp.nodes == NODES
    assert tcp.status("node-1", "node-1") == CELL_PASSED  # same node: the diagonal
    assert tcp.status("node-1", "node-2") == CELL_FAILED
    assert tcp.counts()[CELL_FAILED] == 6
    failed = tcp.cell("node-2", "node-3")
    assert failed is not None
    assert failed.nodeid == "conformance/test_no_snat.py::test_no_snat[tcp-node-2->node-3]"
    assert failed.cause is not None
    assert failed.cause.startswith("listener saw source ['172.18.0.2'] from node-2 to node-3")
    # Only node-1 -> node-2 was checked over IPv6: the rest is "not checked".
    assert matrices[3].status("node-2", "node-1") == CELL_NOT_CHECKED
    host = matrices[4]
    assert host.row_label("node-1") == "node-1 (host)"
    assert host.status("node-2", "node-2") == CELL_PASSED
    assert host.status("node-1", "node-2") == CELL_NOT_CHECKED


def test_protocols_come_in_their_own_order_whatever_reported_first() -> None:
    results = [pair("test_no_snat", p, "node-1", "node-2") for p in ("sctp", "icmp", "udp", "tcp")]
    matrices = build_matrices(results, {}, NODES)
    assert [m.protocol for m in matrices] == ["tcp", "udp", "icmp", "sctp"]


def test_cells_say_flaky_skipped_and_could_not_test_with_a_cause() -> None:
    results = [
        pair("test_no_snat", "udp", "node-1", "node-2"),
        pair(
            "test_no_snat",
            "udp",
            "node-2",
            "node-1",
            "error",
            failure=untested("exec into probe-node-2 failed: HTTP 500"),
        ),
        CheckResult(
            nodeid="conformance/test_no_snat.py::test_no_snat[udp-node-2->node-2]",
            outcome="skipped",
            duration=0.0,
            place=Place(
                check="test_no_snat",
                protocol="udp",
                family="ipv4",
                source="node-2",
                destination="node-2",
                source_kind="pod",
            ),
            reason="no IPv4 address on probe-node-2",
        ),
    ]
    flaky = {results[0].nodeid: "passed on attempt 2 of 3 (first: ETIMEDOUT)"}
    (matrix,) = build_matrices(results, flaky, ("node-1", "node-2"))
    flaky_cell = matrix.cell("node-1", "node-2")
    untested_cell = matrix.cell("node-2", "node-1")
    skipped_cell = matrix.cell("node-2", "node-2")
    assert flaky_cell is not None
    assert flaky_cell.status == CELL_FLAKY
    assert flaky_cell.cause == "passed on attempt 2 of 3 (first: ETIMEDOUT)"
    assert untested_cell is not None
    assert untested_cell.status == CELL_UNTESTED
    assert untested_cell.cause == "COULD NOT TEST: exec into probe-node-2 failed: HTTP 500"
    assert skipped_cell is not None
    assert skipped_cell.status == CELL_SKIPPED
    assert skipped_cell.cause == "no IPv4 address on probe-node-2"
    assert not matrix.broken


def test_nodes_seen_only_in_results_join_the_axis_in_node_order() -> None:
    results = [
        pair("test_no_snat", "tcp", "node-10", "node-2"),
        pair("test_no_snat", "tcp", "node-1", "node-9"),
    ]
    (matrix,) = build_matrices(results, {}, ("node-1",))
    assert matrix.nodes == ("node-1", "node-2", "node-9", "node-10")


def test_matrices_survive_json() -> None:
    matrices = build_matrices(run_results(NODES, broken=True), {}, NODES)
    assert [Matrix.from_dict(m.to_dict()) for m in matrices] == matrices


def test_large_grids_draw_failing_rows_and_columns_first() -> None:
    nodes = tuple(f"node-{i}" for i in range(1, 41))
    # Only node-37's traffic to node-38 and node-40 to node-2 fail, in a 40-node grid.
    results = [
        pair(
            "test_no_snat",
            "tcp",
            s,
            d,
            "failed" if (s, d) in {("node-37", "node-38"), ("node-40", "node-2")} else "passed",
        )
        for s in nodes
        for d in nodes
    ]
    (matrix,) = build_matrices(results, {}, nodes)
    small = matrix.axes(limit=50)
    assert small.rows == nodes
    assert small.hidden_rows == 0
    axes = matrix.axes(limit=30)
    assert len(axes.rows) == len(axes.columns) == 30
    assert axes.rows[:2] == ("node-37", "node-40")
    assert axes.columns[:2] == ("node-2", "node-38")
    assert axes.rows[2:5] == ("node-1", "node-2", "node-3")  # then the rest in node order
    assert (axes.hidden_rows, axes.hidden_columns, axes.hidden_trouble) == (10, 10, 0)
    tight = matrix.axes(limit=1)
    assert tight.rows == ("node-37",)
    assert tight.columns == ("node-2",)
    assert tight.hidden_trouble == 2  # node-40's row and node-38's column are not drawn


# --- the terminal's text grids -----------------------------------------------------------------


def test_text_grids_of_broken_rules_identical_protocols_printed_once() -> None:
    matrices = build_matrices(run_results(NODES, broken=True), {}, NODES)
    lines = text_matrices(matrices)
    assert lines[:5] == [
        "test_no_snat (tcp, udp, icmp over ipv4): 6 of 9 checked cells failed",
        "  source \\ destination   1  2  3",
        "  1 node-1               .  X  X",
        "  2 node-2               X  .  X",
        "  3 node-3               X  X  .",
    ]
    assert lines[5].startswith("  legend: X failed  ! could not test  ~ flaky  % lossy  . passed")
    assert len(lines) == 6  # the held rule (node-to-pod) prints nothing


def test_no_text_grid_when_healthy_or_too_large() -> None:
    assert text_matrices(build_matrices(run_results(NODES, broken=False), {}, NODES)) == []
    eleven = tuple(f"n{i}" for i in range(11))
    broken = build_matrices([pair("test_no_snat", "tcp", "n0", "n1", "failed")], {}, eleven)
    assert broken[0].broken
    assert text_matrices(broken) == []
    assert text_matrices(broken, max_nodes=11)[0].startswith("test_no_snat (tcp over ipv4)")


def test_grids_differing_by_one_cell_are_not_merged() -> None:
    results = run_results(NODES, broken=True)
    results = [
        pair("test_no_snat", "udp", "node-1", "node-2")
        if r.nodeid.endswith("[udp-node-1->node-2]")
        else r
        for r in results
    ]
    broken = [m for m in build_matrices(results, {}, NODES) if m.broken]
    groups = merge_identical(broken)
    assert [merged_title(g) for g in groups] == ["tcp, icmp over ipv4", "udp over ipv4"]


# --- the CNI -------------------------------------------------------------------------------


def _daemonset(namespace: str, name: str, image: str = "img:1") -> object:
    from kubernetes import client

    return client.V1DaemonSet(
        metadata=client.V1ObjectMeta(namespace=namespace, name=name),
        spec=client.V1DaemonSetSpec(
            selector=client.V1LabelSelector(),
            template=client.V1PodTemplateSpec(
                spec=client.V1PodSpec(containers=[client.V1Container(name="c", image=image)])
            ),
        ),
    )


def test_well_known_daemonsets_name_the_cni() -> None:
    sets = [
        _daemonset("monitoring", "node-exporter"),
        _daemonset("calico-system", "calico-node", "calico/node:v3.27.0"),
        _daemonset("kube-system", "cilium", "quay.io/cilium/cilium:v1.15.1"),
    ]
    assert recognise_cni(sets) == (
        "Cilium",
        "DaemonSet kube-system/cilium, image quay.io/cilium/cilium:v1.15.1",
    )
    assert recognise_cni(sets[:2])[0] == "Calico"
    assert recognise_cni([_daemonset("kube-flannel", "kube-flannel-ds-amd64")])[0] == "Flannel"
    assert recognise_cni([_daemonset("kube-system", "ciliumx")])[0] == CNI_UNKNOWN
    assert recognise_cni([]) == (CNI_UNKNOWN, "no well-known CNI DaemonSet among 0 DaemonSets")
