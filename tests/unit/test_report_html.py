"""The HTML report drawn from a run's summary (`conformance.kit.reporting.html`), the summary's JSON
Schema, and the ``netconform-report`` command that re-renders a kept summary."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from report_runs import Elements, pair, run_results, summary_of

from conformance.kit.cluster.namespace import StaleSweep
from conformance.kit.cluster.nodes import WINDOWS, Exclusion
from conformance.kit.reporting.command import main
from conformance.kit.reporting.html import (
    PYTEST_HTML_LAYOUT,
    pytest_html_block,
    render_block,
    render_page,
)
from conformance.kit.reporting.results import SUMMARY_SCHEMA, CheckResult, summary_schema
from conformance.kit.verdicts.failures import RuleFailure

ROOT = Path(__file__).resolve().parents[2]
NODES = ("node-1", "node-2", "node-3")


def broken_summary() -> dict[str, Any]:
    return summary_of(
        run_results(NODES, broken=True),
        NODES,
        exitstatus=1,
        excluded={
            "win-1": Exclusion(
                WINDOWS, "OS is windows, not linux (the probes are Linux containers)", True
            )
        },
    )


def healthy_summary() -> dict[str, Any]:
    return summary_of(run_results(NODES, broken=False, skipped=False), NODES)


def validate(summary: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(
        summary_schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(json.loads(json.dumps(summary)))


# --- the schema ------------------------------------------------------------------------------


def test_the_schema_is_valid_and_ships_in_the_package() -> None:
    schema = summary_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["schema"]["const"] == SUMMARY_SCHEMA
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "summary.schema.json" in project["tool"]["setuptools"]["package-data"]["conformance"]
    assert project["project"]["scripts"]["netconform-report"] == (
        "conformance.kit.reporting.command:main"
    )


def test_healthy_broken_and_undeployed_summaries_validate() -> None:
    validate(healthy_summary())
    validate(broken_summary())
    swept = healthy_summary()
    swept["stale_namespaces"] = StaleSweep(error="namespaces: HTTP 403 Forbidden").to_dict()
    validate(swept)
    undeployed = summary_of(
        [CheckResult("conformance/test_no_snat.py::test_no_snat[all]", "error", 0.0, "R")],
        (),
        exitstatus=2,
        dump=None,
    )
    undeployed["cluster"] = None
    undeployed["run"]["deployment"] = "failed"
    undeployed["run"]["deployment_error"] = "probe-node-1: ImagePullBackOff"
    validate(undeployed)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda s: s["matrices"][0]["cells"][0].update(status="green"), "status"),
        (lambda s: s.pop("rules"), "rules"),
        (lambda s: s["rules"][0].update(status="fine"), "status"),
        (lambda s: s["cluster"].pop("cni"), "cni"),
        (lambda s: s.update(surprise=1), "surprise"),
        (lambda s: s["tests"][0]["place"].update(colour="red"), "colour"),
    ],
)
def test_the_schema_catches_drift(change: Any, where: str) -> None:
    summary = broken_summary()
    change(summary)
    with pytest.raises(jsonschema.ValidationError, match=where):
        validate(summary)


# --- the block -------------------------------------------------------------------------------


def test_a_broken_run_names_the_rule_the_nodes_and_the_failing_cells() -> None:
    page = render_block(broken_summary())
    dom = Elements(page)
    (verdict,) = dom.having("section", data_verdict="broken")
    assert "nc-v-broken" in verdict["class"]
    text = " ".join(dom.text)
    assert "RULE BROKEN" in text
    assert "1 of 4 rules broken, 2 held, 1 skipped" in text
    assert "18 failed, 9 passed; nodes node-1, node-2, node-3" in text
    rows = dom.having("tr")
    assert [r["data-check"] for r in rows if "data-check" in r] == [
        "test_no_snat",
        "test_node_to_pod",
        "test_localhost_between_containers",
        "test_required_family_on_every_pod_and_node",
    ]
    (broken_row,) = dom.having("tr", data_check="test_no_snat")
    assert broken_row["class"] == "nc-r-broken"
    # The failing cell: in the banner, the grid at a glance and the per-protocol grids.
    cells = dom.having("td", data_status="failed", data_source="node-1", data_destination="node-2")
    assert len(cells) == 1 + 1 + 3
    assert cells[0]["title"].startswith(
        "node-1 \u2192 node-2, tcp, udp, icmp over ipv4: failed \u2014 listener saw source"
    )
    # Each failing cell links to its failure row, which says where, expected and observed.
    links = [a["href"] for a in dom.having("a") if a.get("href", "").startswith("#t-")]
    assert len(links) == 3 * 6 + 2 * 6  # per-protocol grids, then banner and glance grids
    failure_rows = {r["id"]: r for r in dom.having("tr") if r.get("id", "").startswith("t-")}
    assert len(failure_rows) == 18
    assert {link[1:] for link in links} <= set(failure_rows)
    assert "rule-test_no_snat" in dom.ids()
    assert page.count("<b>expected</b>: the destination sees only the source pod&#x27;s IP") == 1
    assert "tcp over ipv4: node-1 \u2192 node-2" in text
    # The run's pod states and events: once.
    assert page.count("pod probe-node-1 node=node-1 phase=Running") == 1
    assert 'href="netconform-r1.txt"' in page


def test_a_healthy_run_says_every_rule_held() -> None:
    dom = Elements(render_block(healthy_summary()))
    text = " ".join(dom.text)
    assert dom.having("section", data_verdict="held")
    assert "EVERY RULE HELD" in text
    assert not dom.having("td", data_status="failed")
    assert len(dom.having("td", data_status="passed")) > 0
    assert "Failures by rule None." in " ".join(text.split())
    # Small and healthy: the banner draws every rule's grid, all passed.
    banner = render_block(healthy_summary()).split('class="nc-cluster"')[0]
    assert Elements(banner).having("figure", data_check="test_node_to_pod")
    assert 'data-status="failed"' not in banner


def test_the_cluster_under_test_is_described() -> None:
    text = " ".join(Elements(render_block(broken_summary())).text)
    for fact in (
        "v1.31.0",
        "Cilium",
        "3 of 4: node-1, node-2, node-3",
        "win-1: OS is windows, not linux",
        "node-1=10.244.0.0/24",
        "10.96.0.0/12",
        "nicolaka/netshoot:v0.13",
        "r1 (namespace netconform-r1)",
        "42.5 s",
        "1: a rule is broken",
    ):
        assert fact in text, fact


def test_an_undeployed_run_says_why() -> None:
    summary = summary_of([], (), exitstatus=2, dump=None)
    summary["cluster"] = None
    summary["run"]["deployment"] = "failed"
    summary["run"]["deployment_error"] = "probe pods cannot start:\n  probe-node-1: ErrImagePull"
    text = " ".join(Elements(render_block(summary)).text)
    assert "COULD NOT TEST" in text
    assert "probe deployment failed : probe pods cannot start: probe-node-1: ErrImagePull" in text
    assert "not recorded (probe deployment failed)" in text


def test_text_from_the_cluster_is_escaped() -> None:
    results = run_results(NODES, broken=False)
    results[1] = pair(
        "test_no_snat",
        "tcp",
        "node-1",
        "node-2",
        "failed",
        failure=RuleFailure(rule="x", expected="<b>", observed="<script>alert(1)</script>"),
    )
    page = render_block(summary_of(results, NODES, exitstatus=1))
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_the_page_is_self_contained() -> None:
    page = render_page(broken_summary())
    assert page.startswith("<!DOCTYPE html>")
    for fetching in ("<script", "<link", "src=", "url(", "@import", "http://", "https://"):
        assert fetching not in page
    assert "Every check" in page
    assert "<title>k8s-netconform: rule broken (run r1)</title>" in page


def test_pytest_html_gets_the_block_and_the_runner_environment_moves_below() -> None:
    block = pytest_html_block(broken_summary(), dump_href="../reports/netconform-r1.txt")
    assert PYTEST_HTML_LAYOUT in block
    assert 'href="../reports/netconform-r1.txt"' in block


def test_large_grids_stay_readable() -> None:
    nodes = tuple(f"node-{i}" for i in range(1, 41))
    results = [
        pair(
            "test_no_snat", "tcp", s, d, "failed" if (s, d) == ("node-39", "node-40") else "passed"
        )
        for s in nodes
        for d in nodes
    ]
    summary = summary_of(results, nodes, exitstatus=1)
    dom = Elements(render_block(summary))
    (banner_grid, *_) = dom.having("figure", data_check="test_no_snat")
    assert banner_grid["data-title"] == "tcp over ipv4"
    page = render_block(summary)
    assert "30 of 40 sources and 30 of 40 destinations drawn, failing ones first" in page
    # Three grids (banner, glance, per protocol), 30 columns each.
    assert page.count('class="nc-colh"') == 3 * 30
    failed = dom.having("td", data_status="failed")
    assert {(c["data-source"], c["data-destination"]) for c in failed} == {("node-39", "node-40")}


# --- the command -----------------------------------------------------------------------------


def test_the_command_re_renders_a_kept_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kept = tmp_path / "artifacts" / "summary.json"
    kept.parent.mkdir()
    kept.write_text(json.dumps(broken_summary()))
    out = tmp_path / "html" / "report.html"
    assert main([str(kept), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    dom = Elements(out.read_text())
    assert dom.having("section", data_verdict="broken")
    assert dom.having("td", data_status="failed", data_source="node-2", data_destination="node-1")
    assert dom.having("a", href="../artifacts/netconform-r1.txt")
    assert main([str(kept)]) == 0  # default: beside the summary
    assert (kept.parent / "summary.html").is_file()


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("{not json", "is not JSON"),
        ('{"schema": "something/9"}', "is not a netconform-summary/1 summary"),
        ("[]", "is not a netconform-summary/1 summary"),
        (
            json.dumps({"schema": SUMMARY_SCHEMA, "matrices": [{"cells": []}]}),
            "is malformed: TypeError",
        ),
    ],
)
def test_the_command_refuses_what_is_not_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, says: str
) -> None:
    path = tmp_path / "summary.json"
    path.write_text(content)
    assert main([str(path), "-o", str(tmp_path / "out.html")]) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "out.html").exists()
    assert main([str(tmp_path / "missing.json")]) == 2
