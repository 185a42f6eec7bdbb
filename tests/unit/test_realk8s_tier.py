"""The genuine-cluster tier's pure parts, without a cluster: finding the fixture (and the one
line saying why there is none), the faults' steps and patterns, the pages it writes
(``proof_docs``, reading the detection matrix's own document) and the benchmark's section."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest
import realk8s
from proof_docs import (
    CaseRecord,
    FaultRecord,
    Proof,
    RuleVerdict,
    check_of,
    lab_faults,
    matrix_catches,
    render_joined,
    render_tier,
    rule_verdicts,
)
from realk8s_faults import FAULTS, Facts, reconnect_to_api

from bench import realk8s as bench_realk8s

ROOT = Path(__file__).resolve().parents[2]

FACTS = Facts({1: "10.244.0.0/24", 2: "10.244.1.0/24", 3: "10.244.2.0/24"})


def test_no_fixture_is_one_line_saying_where_it_was_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(realk8s.FIXTURE_VARIABLE, str(tmp_path / "absent"))
    fixture, why = realk8s.locate()
    assert fixture is None
    assert why == (
        f"no genuine Kubernetes fixture at $NETCONFORM_REALK8S={tmp_path / 'absent'}"
        " (set $NETCONFORM_REALK8S to its folder)"
    )
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "up.sh").write_text("")
    monkeypatch.setenv(realk8s.FIXTURE_VARIABLE, str(tmp_path / "half"))
    fixture, why = realk8s.locate()
    assert fixture is None
    assert "lacks install.sh, down.sh" in why
    assert "\n" not in why


def test_the_default_fixture_is_next_to_the_checkout() -> None:
    assert ROOT.parent / "shared" / "realk8s" == realk8s.DEFAULT_FIXTURE


def test_every_fault_undoes_each_step_and_names_nodes_of_the_cluster() -> None:
    for fault in FAULTS:
        steps = fault.steps(FACTS)
        assert steps, fault.name
        assert 1 <= fault.node <= 3
        for step in steps:
            if step.apply[0] == "iptables":
                # -I CHAIN RULE is undone by -D CHAIN RULE, the rule word for word.
                at = step.apply.index("-I")
                assert step.undo[:at] == step.apply[:at]
                assert step.undo[at] == "-D"
                assert step.undo[at + 1 :] == step.apply[at + 1 :]
            elif step.apply[0] == "ss":
                # Connections closed (their clients open new ones): nothing to undo.
                assert step == reconnect_to_api()
                assert step.apply[:2] == ("ss", "-K")
                assert step.undo == ("true",)
            else:
                assert step.apply[:4] == ("ip", "link", "set", "eth0")
                assert step.undo == ("ip", "link", "set", "eth0", "mtu", "1500")
        re.compile(fault.expectation.pattern)
        if fault.expectation.may:
            re.compile(fault.expectation.may)


def test_no_fault_is_pending_and_each_has_a_netlab_twin() -> None:
    assert [fault.name for fault in FAULTS if fault.pending] == []
    assert all(fault.twin for fault in FAULTS)


def test_the_mtu_blackhole_reconnects_to_the_api_after_lowering_the_mtu() -> None:
    # A connection keeps its MSS: closed before the MTU drops, it would reopen at 1500.
    fault = next(f for f in FAULTS if f.name == "mtu-blackhole-node-2")
    kinds = [step.apply[0] for step in fault.steps(FACTS)]
    assert kinds.index("ss") == kinds.index("ip") + 1


def test_the_resets_go_to_a_closed_port_before_kube_proxys_rules() -> None:
    fault = next(f for f in FAULTS if f.name == "service-resets-node-2")
    (step,) = fault.steps(FACTS)
    assert step.apply[:7] == ("iptables", "-w", "-t", "nat", "-I", "PREROUTING", "-s")
    assert step.apply[-3:] == ("DNAT", "--to-destination", f"{_bridge(FACTS.pod_cidrs[2])}:1")


def _bridge(cidr: str) -> str:
    return str(next(ipaddress.ip_network(cidr).hosts()))


def test_the_one_way_drop_matches_only_its_pair() -> None:
    fault = next(f for f in FAULTS if f.name == "one-way-drop-1-to-3")
    must = re.compile(fault.expectation.pattern)
    assert must.search("test_no_snat::test_no_snat[udp-node-1->node-3]")
    assert not must.search("test_no_snat::test_no_snat[udp-node-3->node-1]")
    assert not must.search("test_no_snat::test_no_snat[udp-node-1->node-1]")
    assert must.search("test_services::test_cluster_ip[tcp-node-1]")


MATRIX = (ROOT / "docs" / "detection-matrix.md").read_text()


def test_the_matrix_document_is_read_back_lab_by_lab() -> None:
    catches = matrix_catches(MATRIX)
    assert catches["healthy (no fault)"] == []
    one_way = catches["`one-way-pair-drop`"]
    assert "test_no_snat::test_no_snat[tcp-node-1->node-3]" in one_way
    assert {check_of(test_id) for test_id in one_way} >= {"test_no_snat", "test_full_size_packets"}
    assert lab_faults("`snat-cross-node` + `unshared-emptydir`") == (
        "snat-cross-node",
        "unshared-emptydir",
    )
    assert lab_faults("`family-missing-on-node`, dual (suite: `--ip-family dual`)") == (
        "family-missing-on-node",
    )
    assert lab_faults("healthy (no fault), ipv6") == ()


def proof() -> Proof:
    found = Proof()
    rules = (
        RuleVerdict("test_no_snat", "conformance/test_no_snat.py", "held"),
        RuleVerdict(
            "test_service_names_resolve", "conformance/test_dns.py", "skipped", ("no DNS",)
        ),
    )
    found.add(CaseRecord("healthy, serial", "admin", (), 0, 21.5, 204, 6.2, 3.0, rules))
    found.cases[0].rules += (
        RuleVerdict(
            "test_volume_shared_between_containers", "conformance/test_shared_volumes.py", "held"
        ),
    )
    caught = ("test_no_snat::test_no_snat[tcp-node-2->node-1]",)
    fault = FaultRecord("snat-node-2", 2, "node-2 masquerades", "snat-cross-node", caught)
    pending = FaultRecord("loss-1-to-3", 1, "20 % loss", None, (), pending="issue 21 item 3")
    found.add(CaseRecord("snat+loss", "admin", (), 1, 60.0, 204, 6.0, faults=(fault, pending)))
    return found


def test_the_tier_page_lists_cases_rules_and_faults() -> None:
    page = render_tier(proof())
    assert "| healthy, serial | admin | `-` | 0 | 204 | 22 | 6.2 | proven |" in page
    assert "| `test_service_names_resolve` | `conformance/test_dns.py` | skipped: no DNS |" in page
    assert "| `snat-node-2` | 2 | node-2 masquerades | `snat-cross-node` | 1 |" in page
    assert "- `test_no_snat::test_no_snat[tcp-node-2->node-1]`" in page
    assert "pending: issue 21 item 3" in page


def test_the_joined_page_puts_each_check_with_the_faults_that_caught_it_on_each_cluster() -> None:
    page = render_joined(proof(), MATRIX)
    row = next(line for line in page.splitlines() if line.startswith("| `test_no_snat.py` |"))
    assert "`snat-cross-node`" in row  # caught on netlab (the matrix)
    assert row.endswith("| held | `snat-node-2` |")  # held, then caught on the genuine cluster
    assert "| `pmtu-blackhole` | netlab |" in page
    assert "| `snat-node-2` (netlab twin: `snat-cross-node`) | genuine 1.28 |" in page
    # A pending fault caught nothing that counts.
    assert "`loss-1-to-3`" not in row


def test_a_lab_with_two_faults_is_no_evidence_for_either() -> None:
    page = render_joined(proof(), MATRIX)
    volumes = next(
        line for line in page.splitlines() if "`test_volume_shared_between_containers`" in line
    )
    # `snat-cross-node` + `unshared-emptydir` fails the volume checks; only the second explains it.
    assert "`unshared-emptydir`" in volumes
    assert "`snat-cross-node`" not in volumes


def test_the_record_renders_the_same_pages_again(tmp_path: Path) -> None:
    from proof_docs import load, save

    original = proof()
    again = load(save(original, tmp_path / "realk8s.json"))
    assert render_tier(again) == render_tier(original)
    assert render_joined(again, MATRIX) == render_joined(original, MATRIX)


def test_rule_verdicts_read_the_summary_rule_table() -> None:
    summary = {
        "rules": [
            {"check": "a", "module": "m.py", "status": "held", "skip_reasons": []},
            {"check": "b", "module": "m.py", "status": "skipped", "skip_reasons": ["why"]},
        ]
    }
    assert rule_verdicts(summary) == (
        RuleVerdict("a", "m.py", "held"),
        RuleVerdict("b", "m.py", "skipped", ("why",)),
    )
    assert rule_verdicts({}) == ()


def test_the_bench_section_is_replaced_in_place_and_keeps_the_rest() -> None:
    found = [
        bench_realk8s.Measurement("serial", "young", 3.0, 18.0, 6.0, 0, 204, 0, 1.5),
        bench_realk8s.Measurement("serial", "young", 3.0, 22.0, 7.0, 0, 204, 0, 1.5),
        bench_realk8s.Measurement("serial", "warm", 95.0, 15.0, 5.0, 0, 204, 0, 1.5),
    ]
    section = bench_realk8s.render_section(found, {"runs": 2, "cores": 2})
    assert "| serial | young | 2 | 20.0 s (18.0-22.0) | 6.5 s (6.0-7.0) | 0 | 204 |" in section
    assert "| 3-node suite, serial, young kubelets (#22) | <= 20 s | 20.0 s | met |" in section
    document = "# Benchmark results\n\nnetlab table\n\n<!-- soak:begin x -->soak<!-- soak:end -->\n"
    once = bench_realk8s.SECTION.replaced(document, section)
    assert "netlab table" in once
    assert "soak<!-- soak:end -->" in once
    twice = bench_realk8s.SECTION.replaced(once, section.replace("20.0 s", "19.0 s"))
    assert twice.count(bench_realk8s.SECTION_BEGIN) == 1
    assert bench_realk8s.SECTION.found_in(twice).strip().startswith(bench_realk8s.SECTION_BEGIN)
