"""The reports of a real run of the plugin (in pytester, against no cluster): the summary
follows its schema, the HTML page starts with the report's block, and the terminal ends with
one line per rule."""

from __future__ import annotations

import json

import jsonschema
import pytest
from report_runs import Elements

from conformance.kit.reporting.results import summary_schema

pytest_plugins = ["pytester"]

pytestmark = pytest.mark.usefixtures("kubernetes_client_fully_imported", "no_ambient_cluster")


SUITES = (
    "--pyargs",
    "conformance.test_no_snat",
    "conformance.test_pod_ips",
    "-p",
    "no:cacheprovider",
)


@pytest.mark.parametrize("parallel", [(), ("-n", "2")], ids=["serial", "xdist"])
def test_a_run_that_could_not_test_reports_so_everywhere(
    pytester: pytest.Pytester, parallel: tuple[str, ...]
) -> None:
    html = pytester.path / "html" / "report.html"
    collected = pytester.runpytest(*SUITES, "--collect-only", "-q", "--kubeconfig", "/nonexistent")
    order = [line for line in collected.outlines if "::" in line]
    result = pytester.runpytest(
        *SUITES,
        *parallel,
        "--kubeconfig",
        "/nonexistent/kubeconfig",
        f"--junitxml={pytester.path / 'out' / 'junit.xml'}",
        f"--html={html}",
        "--self-contained-html",
    )
    assert result.ret == 2
    summary = json.loads((pytester.path / "out" / "summary.json").read_text())
    # The suite's order, also when xdist workers report in the order they finish.
    assert [test["nodeid"] for test in summary["tests"]] == order
    jsonschema.Draft202012Validator(summary_schema()).validate(summary)
    assert {r["status"] for r in summary["rules"]} == {"could not test"}
    assert summary["matrices"] == []  # the cluster was never read: no pairs to draw
    assert summary["namespace_dump"] is None
    assert summary["exit_meaning"].startswith("could not test")

    lines = result.outlines
    section = next(i for i, line in enumerate(lines) if "= netconform =" in line)
    short_summary = next(i for i, line in enumerate(lines) if "short test summary info" in line)
    assert section > short_summary  # the rules come last, after pytest's own summary
    rules = [line for line in lines[section:] if line.startswith("COULD NOT TEST  ")]
    assert [line.split(":")[0] for line in rules] == [
        f"COULD NOT TEST  {r['check']}" for r in summary["rules"]
    ]
    assert any(line.startswith("verdict: all ") for line in lines[section:])

    page = html.read_text()
    dom = Elements(page)
    assert dom.having("section", data_verdict="could not test")
    assert dom.having("table", id="nc-rule-table")
    assert "Environment of the test runner (not the cluster)" in page
    # The block comes before pytest-html's own counts.
    assert page.index('class="nc-report"') < page.index('class="run-count"')
