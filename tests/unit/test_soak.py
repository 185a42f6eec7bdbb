"""The soak benchmark's pure parts (`bench.soak`): how one run is judged (false failures, false
passes, could-not-test, the exit code that goes with them), the table, and the section of
``bench/results.md`` it owns, which the other benchmarks keep."""

from __future__ import annotations

import re

from bench import soak

CaseResult = soak.CaseResult  # tests/support/labrun.py's, which bench.soak puts on the path

HEALTHY = [
    CaseResult("test_no_snat::test_no_snat[tcp-node-1->node-2]", "passed"),
    CaseResult("test_no_snat::test_no_snat[tcp-node-1->node-1]", "passed"),
    CaseResult("test_pod_ips::test_pod_ips_unique[ipv4]", "passed"),
]


def test_snat_pattern_matches_cross_node_pairs_only() -> None:
    pattern = re.compile(soak.SNAT_CROSS_NODE)
    assert pattern.search("test_no_snat::test_no_snat[udp-node-1->node-3]")
    assert pattern.search("test_no_snat::test_no_snat[ipv6-icmp-node-2->node-1]")
    assert not pattern.search("test_no_snat::test_no_snat[tcp-node-2->node-2]")
    assert not pattern.search("test_full_size::test_full_size_packets[tcp-node-1->node-2]")


def test_a_healthy_run_is_honest_with_exit_0_or_2() -> None:
    assert soak.judge(HEALTHY, 0).honest
    untested = [*HEALTHY, CaseResult("test_sandbox::x[node-1]", "error", "COULD NOT TEST: ...")]
    verdict = soak.judge(untested, 2)
    assert verdict.honest
    assert verdict.could_not_test == ("test_sandbox::x[node-1]",)
    assert not soak.judge(HEALTHY, 1).honest  # exit 1 without a failure: dishonest


def test_a_failure_on_a_healthy_lab_is_false() -> None:
    broken = [*HEALTHY[:2], CaseResult("test_pod_ips::test_pod_ips_unique[ipv4]", "failed")]
    verdict = soak.judge(broken, 1)
    assert verdict.false_failures == ("test_pod_ips::test_pod_ips_unique[ipv4]",)
    assert not verdict.honest


def test_under_a_data_plane_fault_its_checks_must_not_pass() -> None:
    caught = [
        CaseResult("test_no_snat::test_no_snat[tcp-node-1->node-2]", "failed"),
        CaseResult("test_no_snat::test_no_snat[tcp-node-2->node-1]", "error", "COULD NOT TEST"),
        CaseResult("test_no_snat::test_no_snat[tcp-node-1->node-1]", "passed"),
    ]
    verdict = soak.judge(caught, 2, soak.SNAT_CROSS_NODE)
    assert (verdict.caught, verdict.false_passes, verdict.false_failures) == (1, (), ())
    assert verdict.honest
    assert soak.judge(caught, 1, soak.SNAT_CROSS_NODE).honest
    missed = [
        CaseResult("test_no_snat::test_no_snat[tcp-node-1->node-2]", "passed"),
        CaseResult("test_no_snat::test_no_snat[tcp-node-1->node-1]", "passed"),
    ]
    verdict = soak.judge(missed, 0, soak.SNAT_CROSS_NODE)
    assert verdict.false_passes == ("test_no_snat::test_no_snat[tcp-node-1->node-2]",)
    assert not verdict.honest
    # Every check of the rule could not test: exit 2 is honest, exit 0 never is.
    untested = [CaseResult("test_no_snat::test_no_snat[tcp-node-1->node-2]", "error", "")]
    assert soak.judge(untested, 2, soak.SNAT_CROSS_NODE).honest
    assert not soak.judge(untested, 0, soak.SNAT_CROSS_NODE).honest


def test_the_issue_21_patterns_name_exactly_the_matrix_checks() -> None:
    lossy = re.compile(soak.LOSSY_PAIR)
    for pair in ("2->node-3", "3->node-2"):
        for proto in ("tcp", "udp", "icmp", "ipv6-udp"):
            assert lossy.search(f"test_no_snat::test_no_snat[{proto}-node-{pair}]")
    for other in ("1->node-3", "2->node-2", "3->node-1"):
        assert not lossy.search(f"test_no_snat::test_no_snat[tcp-node-{other}]")
    assert not lossy.search("test_full_size::test_full_size_packets[tcp-node-2->node-3]")
    # Nodes masquerade pod traffic leaving the pod network: a hostPort's answer goes to a node.
    assert not lossy.search("test_hostport::test_host_port_from_pods[udp-node-3->node-2]")
    chance = re.compile(soak.LOSSY_PAIR_MAY)
    assert chance.search("test_full_size::test_full_size_packets[tcp-node-2->node-3]")
    assert chance.search("test_services::test_cluster_ip[tcp-node-3]")
    assert not chance.search("test_services::test_cluster_ip[udp-node-3]")
    assert not chance.search("test_services::test_cluster_ip[tcp-node-1]")
    resets = re.compile(soak.SERVICE_RESETS)
    assert resets.search("test_services::test_hairpin[tcp-node-1]")
    assert resets.search("test_services::test_cluster_ip[ipv6-tcp-node-3]")
    assert not resets.search("test_services::test_cluster_ip[udp-node-3]")
    assert resets.search("test_services::test_node_port_from_hosts[tcp-node-1->node-2]")
    assert not resets.search("test_services::test_node_port_from_pods[udp-node-1->node-1]")


def test_a_failure_the_fault_leaves_to_chance_is_not_false() -> None:
    run = [
        CaseResult("test_no_snat::test_no_snat[udp-node-2->node-3]", "failed"),
        CaseResult("test_services::test_cluster_ip[tcp-node-2]", "failed"),
        CaseResult("test_services::test_cluster_ip[tcp-node-1]", "failed"),
    ]
    verdict = soak.judge(run, 1, soak.LOSSY_PAIR, may_fail=soak.LOSSY_PAIR_MAY)
    assert verdict.false_failures == ("test_services::test_cluster_ip[tcp-node-1]",)
    assert verdict.caught == 1


def test_leftovers_make_a_run_dishonest() -> None:
    assert not soak.judge(HEALTHY, 0, leftovers=["namespace/netconform-x"]).honest


def test_the_section_is_replaced_in_place_and_kept_by_the_benchmark() -> None:
    runs = soak.CaseRuns(soak.CASES[1], lab="hs0001", runs=[soak.judge(HEALTHY, 0, seconds=20)])
    facts = {
        "date": "2026-01-01T00:00:00Z",
        "git_commit": "0123456789abcdef",
        "git_dirty": False,
        "cores": 2,
        "wall_s": 61.0,
        "parallel": 3,
    }
    section = soak.render_section([runs], 1, facts)
    assert "| throttle | `throttle=0.1` | - | 1 | 1 x 0 | 0 / 0 | 0 | 0 | - | 0 | 20 s |" in section
    document = "# Benchmarks\n\n## Suite\n\ntable\n"
    once = soak.SECTION.replaced(document, section)
    assert once.startswith(document.rstrip("\n"))
    again = soak.SECTION.replaced(once, section.replace("20 s", "21 s"))
    assert again.count(soak.SECTION_BEGIN) == 1
    assert "21 s |" in again
    assert "20 s |" not in again
    kept = soak.SECTION.found_in(again)
    assert kept.strip().startswith(soak.SECTION_BEGIN)
    assert "## Soak under control-plane faults" in kept
    assert soak.SECTION.found_in(document) == ""
