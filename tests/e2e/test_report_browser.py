"""The HTML report in a real browser. A healthy and a ``snat-cross-node`` 3-node netlab, the
suite run against each as a user runs it (``--html ... --self-contained-html``), each report
loaded in headless Chromium (Debian's ``chromium``): the rule table and the failing cells are in
the page the browser built, the first screen of the faulted report names the broken rule and
its nodes and shows the failing cells, ``summary.json`` follows its JSON Schema, and
``netconform-report`` draws the same from the kept summary.

``NETCONFORM_REPORT_SCREENSHOTS=docs`` also writes the screenshots the README links
(``report-healthy.png``, ``report-snat-cross-node.png``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import jsonschema
import labrun
import pytest
from labrun import LabCase, run_on_lab

from conformance.kit.reporting.results import summary_schema

pytestmark = pytest.mark.needs_lab
CHROMIUM = shutil.which("chromium")
if CHROMIUM is None:
    pytest.skip(
        "Debian's chromium is not installed (./run.sh setup installs it)", allow_module_level=True
    )

SCREENSHOT_VARIABLE = "NETCONFORM_REPORT_SCREENSHOTS"
#: Lab names of this module (the lab tests' prefix variable, else our own two letters).
LAB_PREFIX = os.environ.get("NETLAB_TEST_LAB_PREFIX", "tr")
#: What "the first screen" is: a laptop's browser window.
FIRST_SCREEN = (1280, 800)
BROWSER_TIMEOUT = 120
# The faulted lab leaves out the NetworkPolicy family, as the matrix's fault labs do (a NATed
# source also breaks policies, which is not what this page is shown for).
CASES = {
    "healthy": LabCase(),
    "snat-cross-node": LabCase(faults=("snat-cross-node",), marker="not netpol"),
}
# Appended to a copy of the page only: where the broken rule and the failing cells are drawn.
FIRST_SCREEN_PROBE = """<script>
(() => {
  const onScreen = (el) => {
    const r = el.getBoundingClientRect();
    return r.width > 0 && r.top >= 0 && r.bottom <= window.innerHeight;
  };
  const verdict = document.querySelector("section[data-verdict]");
  const failed = [...document.querySelectorAll('td[data-status="failed"]')].filter(onScreen);
  document.body.setAttribute("data-first-screen", JSON.stringify({
    height: window.innerHeight,
    verdict: verdict && onScreen(verdict) ? verdict.innerText : "",
    failed: failed.map((td) => td.dataset.source + "->" + td.dataset.destination),
  }));
})();
</script>"""


class Elements(HTMLParser):
    """Every element of a page with its attributes."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, dict[str, str]]] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, {k: v or "" for k, v in attrs}))

    def having(self, tag: str, **wanted: str) -> list[dict[str, str]]:
        names = {k.replace("_", "-"): v for k, v in wanted.items()}
        return [
            a for t, a in self.found if t == tag and all(a.get(k) == v for k, v in names.items())
        ]


def browser(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    """Headless Chromium as the machine allows it (root: no sandbox; no network of its own)."""
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=BROWSER_TIMEOUT,
        check=False,
    )


def rendered_dom(page: Path, profile: Path, size: tuple[int, int] = FIRST_SCREEN) -> str:
    """The page as the browser built it (pytest-html's script included)."""
    done = browser(
        f"--window-size={size[0]},{size[1]}", "--dump-dom", page.as_uri(), profile=profile
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "<html" in done.stdout
    return done.stdout


def screenshot(page: Path, target: Path, profile: Path) -> Path:
    done = browser(
        f"--window-size={FIRST_SCREEN[0]},{FIRST_SCREEN[1]}",
        f"--screenshot={target}",
        page.as_uri(),
        profile=profile,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return target


@dataclass(frozen=True)
class Report:
    """One lab's run: its report directory, summary and terminal output."""

    directory: Path
    summary: dict[str, Any]
    output: str

    @property
    def html(self) -> Path:
        return self.directory / "report.html"


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Report]:
    """Both labs, booted one after the other, each run once and torn down."""
    found: dict[str, Report] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(labrun, "LAB_PREFIX", LAB_PREFIX)
        for name, case in CASES.items():
            directory = tmp_path_factory.mktemp(name)
            run = run_on_lab(
                case, directory, f"--html={directory / 'report.html'}", "--self-contained-html"
            )
            summary = json.loads((directory / "summary.json").read_text())
            found[name] = Report(directory, summary, run.output)
    return found


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    """A fresh browser profile per test."""
    return tmp_path / "chromium-profile"


@pytest.mark.parametrize("name", list(CASES))
def test_summaries_follow_the_schema(reports: dict[str, Report], name: str) -> None:
    summary = reports[name].summary
    jsonschema.Draft202012Validator(summary_schema()).validate(summary)
    assert summary["exitstatus"] == (0 if name == "healthy" else 1)
    assert summary["cluster"]["cni"] == "unknown"  # the lab runs no CNI DaemonSet


def test_the_healthy_report_shows_every_rule_held(
    reports: dict[str, Report], profile: Path
) -> None:
    report = reports["healthy"]
    dom = Elements(rendered_dom(report.html, profile))
    assert dom.having("section", data_verdict="held")
    rows = [r for r in dom.having("tr") if "data-check" in r]
    assert len(rows) == len(report.summary["rules"]) >= 10
    assert {r["class"] for r in rows} <= {"nc-r-held", "nc-r-skipped"}
    assert not dom.having("td", data_status="failed")
    assert len(dom.having("td", data_status="passed")) >= 4 * 9  # every reachability rule drawn
    assert "verdict: every rule held: " in report.output
    assert report.summary["verdict"]["every_rule_held"] is True
    assert "EVERY RULE HELD" in rendered_dom(report.html, profile)
    assert "BROKEN" not in report.output.split("= netconform =")[-1]


def test_the_faulted_report_names_the_rule_and_the_failing_cells(
    reports: dict[str, Report], profile: Path, tmp_path: Path
) -> None:
    report = reports["snat-cross-node"]
    dom = Elements(rendered_dom(report.html, profile))
    assert dom.having("section", data_verdict="broken")
    (row,) = dom.having("tr", data_check="test_no_snat")
    assert row["class"] == "nc-r-broken"
    # The masquerade also hides the client pod from other nodes' Service endpoints.
    assert [r["data-check"] for r in dom.having("tr") if r.get("class") == "nc-r-broken"] == [
        "test_no_snat",
        "test_cluster_ip",
    ]
    cells = dom.having("td", data_status="failed", data_source="node-1", data_destination="node-2")
    assert cells
    assert all("listener saw source" in c["title"] for c in cells)
    failed_places = {
        (c["data-source"], c["data-destination"]) for c in dom.having("td", data_status="failed")
    }
    assert failed_places == {
        (s, d)
        for s in ("node-1", "node-2", "node-3")
        for d in ("node-1", "node-2", "node-3")
        if s != d
    }

    # The first screen: the broken rule, its nodes and the failing cells.
    probed = tmp_path / "report-probed.html"
    probed.write_text(report.html.read_text().replace("</body>", FIRST_SCREEN_PROBE + "</body>"))
    (body,) = Elements(rendered_dom(probed, profile)).having("body")
    first = json.loads(body["data-first-screen"])
    assert first["height"] <= FIRST_SCREEN[1]
    assert "RULE BROKEN" in first["verdict"]
    assert "test_no_snat" in first["verdict"]
    assert "nodes node-1, node-2, node-3" in first["verdict"]
    assert len(set(first["failed"])) == 6

    # The pod states and events: once in the page, not once per failed check.
    dump = report.summary["namespace_dump"]
    first_pod_line = next(line for line in dump["text"].splitlines() if line.startswith("pod "))
    assert report.html.read_text().count(first_pod_line) == 1
    assert (report.directory / dump["file"]).is_file()

    # The terminal ends with the rules and the broken rule's grid.
    tail = report.output.split("= netconform =")[-1]
    assert "BROKEN          test_no_snat: 18 failed, 9 passed; nodes node-1, node-2, node-3" in tail
    assert "test_no_snat (tcp, udp, icmp over ipv4): 6 of 9 checked cells failed" in tail
    assert "  1 node-1               .  X  X" in tail


def test_the_command_draws_the_same_from_the_kept_summary(
    reports: dict[str, Report], profile: Path, tmp_path: Path
) -> None:
    report = reports["snat-cross-node"]
    page = tmp_path / "again.html"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "conformance.kit.reporting.command",
            str(report.directory / "summary.json"),
            "-o",
            str(page),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    dom = Elements(rendered_dom(page, profile))
    assert dom.having("section", data_verdict="broken")
    assert dom.having("tr", data_check="test_no_snat", **{"class": "nc-r-broken"})
    assert dom.having("td", data_status="failed", data_source="node-3", data_destination="node-1")


@pytest.mark.parametrize("name", list(CASES))
def test_screenshots(reports: dict[str, Report], profile: Path, tmp_path: Path, name: str) -> None:
    shot = screenshot(reports[name].html, tmp_path / f"report-{name}.png", profile)
    wanted = os.environ.get(SCREENSHOT_VARIABLE)
    if wanted:
        Path(wanted).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, Path(wanted) / shot.name)
