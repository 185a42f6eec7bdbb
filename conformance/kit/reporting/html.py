"""The HTML report people read: the verdict, the cluster under test, the rule table, the
node-by-node matrices, the failures grouped by rule and the run's pod states and events, drawn
from a run's summary (the ``summary.json`` mapping) as plain HTML and CSS: no script, no
fetch, so a ``--self-contained-html`` report stays one file.

Two outputs from one renderer: `render_block` is the block the plugin puts at the top of
pytest-html's page (``pytest_html_results_summary``); `render_page` is a whole page, which the
``netconform-report`` command writes from a kept ``summary.json``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

from conformance.kit.cluster.facts import ClusterFacts
from conformance.kit.cluster.families import FamilyPlan, family_name
from conformance.kit.cluster.nodes import Exclusion
from conformance.kit.reporting.matrices import (
    CELL_FAILED,
    CELL_FLAKY,
    CELL_LOSSY,
    CELL_NOT_CHECKED,
    CELL_PASSED,
    CELL_SKIPPED,
    CELL_STATUSES,
    CELL_UNTESTED,
    GRID_LIMIT,
    Matrix,
    merge_identical,
    merged_title,
)
from conformance.kit.reporting.results import CheckResult, exit_meaning
from conformance.kit.reporting.rules import (
    RULE_BROKEN,
    RULE_HELD,
    RULE_SKIPPED,
    RULE_STATUSES,
    RULE_UNTESTED,
    RULE_XFAILED,
    RuleSummary,
    Verdict,
    anchor_for,
    rule_counts,
)
from conformance.kit.verdicts.failures import RuleFailure, one_line

#: Glyphs drawn in matrix cells beside the colour, so the grid reads without colour too.
CELL_GLYPHS = {
    CELL_PASSED: "\u2713",
    CELL_FAILED: "\u2717",
    CELL_FLAKY: "~",
    CELL_LOSSY: "%",
    CELL_UNTESTED: "!",
    CELL_SKIPPED: "\u2013",
    CELL_NOT_CHECKED: "",
}
#: Failures of one rule shown with their full message; the others show expected and observed.
FULL_MESSAGES_PER_RULE = 50
#: Broken grids drawn in the verdict banner (identical ones drawn once), so the first screen
#: shows the failing cells.
BANNER_GRIDS = 4
#: Where no rule broke, the banner draws the grids of clusters up to this size.
BANNER_NODES_WHEN_HELD = 10
#: Node names listed in the cluster facts before "and N more".
NODES_LISTED = 12

STYLE = """
.nc-report { color: #1f2328; font-size: 13px; line-height: 1.4; max-width: 1600px; }
.nc-report h2 { font-size: 17px; margin: 18px 0 6px; color: #1f2328; }
.nc-report h3 { font-size: 14px; margin: 14px 0 4px; color: #1f2328; }
.nc-report p { color: #1f2328; margin: 4px 0; }
.nc-report a { color: #0b5cad; }
.nc-report code, .nc-report pre { font-family: Menlo, Consolas, monospace; font-size: 12px; }
.nc-verdict { border-radius: 6px; padding: 10px 14px; margin: 6px 0 10px;
  border-left: 8px solid; display: flex; flex-wrap: wrap; gap: 10px 28px;
  align-items: flex-start; }
.nc-verdict-text { flex: 1 1 420px; max-width: 900px; }
.nc-banner-grids { flex: 0 1 auto; background: #fff; padding: 6px; border-radius: 4px; }
.nc-verdict .nc-headline { font-size: 20px; font-weight: bold; }
.nc-verdict ul { margin: 4px 0 0 18px; padding: 0; }
.nc-v-broken { background: #fdecec; border-color: #c62828; }
.nc-v-could-not-test { background: #fff4e0; border-color: #e08a00; }
.nc-v-held { background: #e9f6ec; border-color: #2e7d32; }
.nc-v-held-where-checked { background: #eef5e6; border-color: #7a9a2e; }
.nc-v-xfailed { background: #f6eef9; border-color: #7b3f98; }
.nc-v-skipped { background: #f1f1f1; border-color: #777; }
.nc-facts { display: grid; grid-template-columns: max-content minmax(0, 1fr) max-content
  minmax(0, 1fr); gap: 2px 12px; margin: 0; }
.nc-facts dt { font-weight: bold; white-space: nowrap; }
.nc-facts dd { margin: 0; overflow-wrap: anywhere; }
.nc-row { display: flex; flex-wrap: wrap; gap: 8px 28px; align-items: flex-start; }
.nc-rules table, .nc-failure-table, .nc-checks table { border-collapse: collapse; }
.nc-rules th, .nc-rules td, .nc-failure-table th, .nc-failure-table td, .nc-checks td,
.nc-checks th { border: 1px solid #d8dee4; padding: 3px 6px; text-align: left;
  vertical-align: top; }
.nc-rules th, .nc-failure-table th, .nc-checks th { background: #f3f5f7; }
.nc-rule-text { color: #57606a; font-size: 12px; max-width: 460px; }
.nc-chip { display: inline-block; border-radius: 3px; padding: 0 6px; font-weight: bold;
  font-size: 11px; text-transform: uppercase; white-space: nowrap; color: #fff; }
.nc-chip-broken { background: #c62828; }
.nc-chip-could-not-test { background: #e08a00; }
.nc-chip-held { background: #2e7d32; }
.nc-chip-xfailed { background: #7b3f98; }
.nc-chip-skipped { background: #777; }
tr.nc-r-broken td { background: #fdecec; }
tr.nc-r-could-not-test td { background: #fff4e0; }
.nc-grids { display: flex; flex-wrap: wrap; gap: 10px 22px; align-items: flex-start; }
.nc-matrix { margin: 0; }
.nc-matrix figcaption { font-weight: bold; margin-bottom: 2px; }
.nc-matrix figcaption .nc-note { font-weight: normal; color: #57606a; }
table.nc-grid { border-collapse: collapse; }
table.nc-grid th { font-weight: normal; font-size: 11px; color: #1f2328; padding: 0 3px; }
table.nc-grid th.nc-rowh { text-align: right; white-space: nowrap; }
table.nc-grid th.nc-colh { vertical-align: bottom; padding: 2px 0; }
table.nc-grid th.nc-colh span { writing-mode: vertical-rl; transform: rotate(180deg);
  white-space: nowrap; }
table.nc-grid th.nc-corner { font-size: 10px; color: #57606a; text-align: right;
  vertical-align: bottom; }
table.nc-grid td { width: 16px; height: 16px; min-width: 16px; padding: 0;
  text-align: center; font-size: 11px; line-height: 16px; border: 1px solid #fff; }
table.nc-grid td a { color: inherit; text-decoration: none; display: block; }
.nc-s-passed { background: #4caf50; color: #fff; }
.nc-s-failed { background: #d32f2f; color: #fff; font-weight: bold; }
.nc-s-flaky { background: #f2c94c; color: #1f2328; }
.nc-s-lossy { background: #a5d6a7; color: #1f2328; font-weight: bold; }
.nc-tt table { border-collapse: collapse; margin: 4px 12px 8px 0; display: inline-table; }
.nc-tt td, .nc-tt th { border: 1px solid #d8dee4; padding: 1px 5px; text-align: center;
  font-family: monospace; font-size: 12px; }
.nc-tt-open { background: #c8e6c9; }
.nc-tt-blocked { background: #eceff1; }
.nc-tt-reached { background: #ffe0b2; }
.nc-tt-wrong { background: #c62828; color: #fff; font-weight: bold; }
.nc-s-could-not-test { background: #ef8e00; color: #fff; font-weight: bold; }
.nc-s-skipped { background: #c9ced4; color: #1f2328; }
.nc-s-not-checked { background: #eef0f2; }
td.nc-diag { outline: 1px solid #57606a; outline-offset: -2px; }
.nc-legend { display: flex; gap: 12px; flex-wrap: wrap; margin: 4px 0; font-size: 12px; }
.nc-legend span.nc-swatch { display: inline-block; width: 14px; height: 14px;
  vertical-align: middle; margin-right: 3px; text-align: center; font-size: 10px;
  line-height: 14px; }
.nc-failure-table td.nc-where { white-space: nowrap; }
.nc-failure-table td { max-width: 900px; overflow-wrap: anywhere; }
.nc-report pre { white-space: pre-wrap; background: #f6f8fa; padding: 6px; margin: 4px 0;
  max-height: 480px; overflow: auto; }
.nc-report details > summary { cursor: pointer; color: #0b5cad; }
"""

#: On pytest-html's page: the block above comes first, and the runner's own environment table
#: (Python, platform, plugins: not the cluster) moves below it, renamed so.
PYTEST_HTML_LAYOUT = """
body { display: flex; flex-direction: column; }
body > #environment-header, body > #environment { order: 1; }
body > #results-table, body > footer { order: 2; }
#environment-header h2 { font-size: 0; }
#environment-header h2::before { content: "Environment of the test runner (not the cluster)";
  font-size: 16px; }
"""


@dataclass(frozen=True)
class ReportData:
    """A run's summary read back into the kit's own types."""

    facts: ClusterFacts | None
    rules: tuple[RuleSummary, ...]
    matrices: tuple[Matrix, ...]
    tests: tuple[CheckResult, ...]
    flaky: Mapping[str, str] = field(default_factory=dict)
    exitstatus: int | None = None
    run: Mapping[str, Any] = field(default_factory=dict)
    excluded: Mapping[str, str] = field(default_factory=dict)
    pairs: str | None = None
    duration: float | None = None
    generated_at: str | None = None
    totals: Mapping[str, int] = field(default_factory=dict)
    dump_file: str | None = None
    dump_text: str | None = None
    #: The run's verdict as the session judged it (None in summaries from before it).
    judged: Verdict | None = None
    families: FamilyPlan | None = None
    #: Every node left out, and those the suite left out that made the run exit 2.
    left_out: Mapping[str, Exclusion] = field(default_factory=dict)
    unaccounted: tuple[str, ...] = ()

    @property
    def verdict(self) -> str:
        """The run's worst rule status; could not test when nodes the run was asked for were
        left out unaccounted, or when no rule reported at all but the run did not end clean."""
        statuses = {r.status for r in self.rules}
        for status in RULE_STATUSES:
            if status in statuses:
                if self.unaccounted and status in (RULE_HELD, RULE_XFAILED, RULE_SKIPPED):
                    return RULE_UNTESTED
                return status
        return RULE_UNTESTED if self.exitstatus not in (None, 0) else RULE_SKIPPED

    @property
    def every_rule_held(self) -> bool:
        """Whether the verdict says "every rule held" (everywhere, nothing left out)."""
        return self.judged.every_rule_held if self.judged is not None else False

    @property
    def verdict_text(self) -> str:
        return self.judged.text if self.judged is not None else rule_counts(self.rules)


def read_summary(summary: Mapping[str, Any]) -> ReportData:
    """The report's data from a summary mapping (as `conformance.kit.run.session` writes it)."""
    cluster = summary.get("cluster")
    pairs = summary.get("pairs")
    dump = summary.get("namespace_dump") or {}
    judged = summary.get("verdict")
    families = summary.get("families")
    nodes = summary.get("nodes") or {}
    return ReportData(
        facts=ClusterFacts.from_dict(cluster) if cluster else None,
        rules=tuple(RuleSummary.from_dict(r) for r in summary.get("rules") or ()),
        matrices=tuple(Matrix.from_dict(m) for m in summary.get("matrices") or ()),
        tests=tuple(CheckResult.from_dict(t) for t in summary.get("tests") or ()),
        flaky={str(f["nodeid"]): str(f["reason"]) for f in summary.get("flaky") or ()},
        exitstatus=summary.get("exitstatus"),
        run=summary.get("run") or {},
        excluded=summary.get("excluded_nodes") or {},
        pairs=pairs.get("description") if isinstance(pairs, Mapping) else None,
        duration=summary.get("duration"),
        generated_at=summary.get("generated_at"),
        totals=summary.get("totals") or {},
        dump_file=dump.get("file"),
        dump_text=dump.get("text"),
        judged=Verdict.from_dict(judged) if isinstance(judged, Mapping) else None,
        families=FamilyPlan.from_dict(families) if isinstance(families, Mapping) else None,
        left_out={
            str(n): Exclusion.from_dict(why) for n, why in (nodes.get("left_out") or {}).items()
        },
        unaccounted=tuple(nodes.get("unaccounted") or ()),
    )


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _slug(status: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", status.lower()).strip("-")


def _title_attribute(hover: str) -> str:
    return f' title="{_e(hover)}"' if hover else ""


def _chip(status: str) -> str:
    return f'<span class="nc-chip nc-chip-{_slug(status)}">{_e(status)}</span>'


# --- the verdict ---------------------------------------------------------------------------------

_HEADLINES = {
    RULE_BROKEN: "RULE BROKEN",
    RULE_UNTESTED: RULE_UNTESTED.upper(),
    RULE_XFAILED: "A RULE DID NOT HOLD (MARKED XFAIL)",
    RULE_HELD: "EVERY RULE HELD",
    RULE_SKIPPED: "NOTHING WAS TESTED",
}
#: Every rule that was checked held, but not everything was checked (see `Verdict`).
HELD_WHERE_CHECKED = "held where checked"


def _verdict(data: ReportData, failure_ids: Mapping[str, str]) -> str:
    verdict = data.verdict
    if verdict == RULE_HELD and not data.every_rule_held:
        verdict = HELD_WHERE_CHECKED
    totals = data.totals
    checks = ", ".join(
        f"{totals.get(k, 0)} {w}"
        for k, w in (("failed", "failed"), ("error", "could not test"), ("passed", "passed"))
        if totals.get(k, 0)
    )
    skipped = totals.get("skipped", 0)
    checks += f", {skipped} skipped" if skipped else ""
    headline = _HEADLINES.get(verdict, "RULES HELD WHERE CHECKED")
    lines = [
        f'<div class="nc-headline">{headline}</div>',
        f"<p>{_e(data.verdict_text)}; checks: {_e(checks or 'none')}. "
        f"Exit status {_e(data.exitstatus if data.exitstatus is not None else '?')}: "
        f"{_e(exit_meaning(data.exitstatus))}.</p>",
    ]
    items = []
    for rule in data.rules:
        if rule.status == RULE_BROKEN:
            where = f"; {rule.focus}" if rule.focus else ""
            items.append(
                f'<li><b>broken</b>: <a href="#{rule.anchor}"><code>{_e(rule.check)}</code></a>'
                f" &mdash; {_e(rule.rule)} <b>{_e(rule.counts_text())}{_e(where)}</b></li>"
            )
        elif rule.status == RULE_UNTESTED:
            first = next(
                (t.failure for t in data.tests if t.nodeid in rule.could_not_test and t.failure),
                None,
            )
            cause = f": {one_line(first.observed, 200)}" if first else ""
            items.append(
                f'<li><b>could not test</b>: <a href="#{rule.anchor}">'
                f"<code>{_e(rule.check)}</code></a> &mdash; {_e(rule.counts_text())}"
                f"{_e(cause)}</li>"
            )
    for name in data.unaccounted:
        why = data.left_out.get(name)
        items.append(
            f"<li><b>could not test node</b> <code>{_e(name)}</code>: left out by the suite"
            f"{_e(': ' + why.reason if why else '')}</li>"
        )
    deployment_error = data.run.get("deployment_error")
    if deployment_error:
        items.append(f"<li><b>probe deployment failed</b>: {_e(one_line(deployment_error))}</li>")
    listing = f"<ul>{''.join(items)}</ul>" if items else ""
    # The failing grids; on a small cluster where nothing failed, every grid (all green).
    shown_grids = [m for m in data.matrices if m.broken]
    if not shown_grids and all(len(m.nodes) <= BANNER_NODES_WHEN_HELD for m in data.matrices):
        shown_grids = list(data.matrices)
    grids = "".join(
        _grid(members, failure_ids, f"{members[0].check}: {merged_title(members)}")
        for members in merge_identical(shown_grids)[:BANNER_GRIDS]
    )
    shown = f'<div class="nc-grids nc-banner-grids">{grids}</div>' if grids else ""
    return (
        f'<section class="nc-verdict nc-v-{_slug(verdict)}" data-verdict="{_e(verdict)}">'
        f'<div class="nc-verdict-text">{"".join(lines)}{listing}</div>{shown}</section>'
    )


# --- the cluster under test ----------------------------------------------------------------------


def _listed(names: Sequence[str], limit: int = NODES_LISTED) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])} and {len(names) - limit} more"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)} min {rest:.0f} s" if minutes else f"{seconds:.1f} s"


def _families(data: ReportData, facts: ClusterFacts) -> str:
    """The families tested, why they are required, and any the cluster declares that the run
    left out (``--ip-family``)."""
    plan = data.families
    if plan is None:
        return ", ".join(facts.ip_families) or "unknown"
    text = plan.describe()
    narrowed = [family_name(f) for f in plan.narrowed]
    if narrowed:
        text += (
            f"; not tested: {', '.join(narrowed)}, which the cluster declares "
            f"(--ip-family {plan.option})"
        )
    return text


def _cluster(data: ReportData) -> str:
    facts = data.facts
    rows: list[tuple[str, str, str]] = []  # (label, value, hover)
    if facts is not None:
        rows += [
            ("Server version", facts.server_version, ""),
            ("CNI", facts.cni, facts.cni_evidence),
            (
                "Nodes tested",
                f"{len(facts.nodes_tested)} of {facts.node_count}: "
                + _listed(list(facts.nodes_tested)),
                ", ".join(facts.nodes_tested),
            ),
        ]
    left_out = "; ".join(
        f"{n}: {data.left_out[n].describe() if n in data.left_out else why}"
        for n, why in sorted(data.excluded.items())
    )
    rows.append(("Nodes left out", left_out or "none", ""))
    if facts is not None:
        rows += [
            ("podCIDRs", _listed(list(facts.pod_cidrs), 6) or "none", ", ".join(facts.pod_cidrs)),
            ("Service range", facts.service_cidr or "unknown", ""),
            ("IP families", _families(data, facts), ""),
            ("Probe image", facts.probe_image, ""),
        ]
    else:
        deployment = data.run.get("deployment", "not started")
        rows.append(("Cluster facts", f"not recorded (probe deployment {deployment})", ""))
    if data.pairs:
        rows.append(("Pairs", data.pairs, ""))
    run_id = data.run.get("run_id")
    if run_id:
        rows.append(("Run", f"{run_id} (namespace {data.run.get('namespace', '?')})", ""))
    rows += [
        ("Duration", _duration(data.duration), ""),
        (
            "Exit status",
            f"{data.exitstatus if data.exitstatus is not None else '?'}: "
            f"{exit_meaning(data.exitstatus)}",
            "",
        ),
    ]
    if data.generated_at:
        rows.append(("Generated", data.generated_at, ""))
    cells = "".join(
        f"<dt>{_e(label)}</dt><dd{_title_attribute(hover)}>{_e(value)}</dd>"
        for label, value, hover in rows
    )
    return (
        '<section class="nc-cluster"><h2>Cluster under test</h2>'
        f'<dl class="nc-facts">{cells}</dl></section>'
    )


# --- the rule table ------------------------------------------------------------------------------


def _rule_table(data: ReportData) -> str:
    if not data.rules:
        return '<section class="nc-rules"><h2>Rules</h2><p>No conformance check reported.</p></section>'
    rows = []
    for rule in data.rules:
        reasons = ""
        if rule.skip_reasons:
            reasons = (
                '<div class="nc-rule-text">skipped: ' + _e("; ".join(rule.skip_reasons)) + "</div>"
            )
        problems = len(rule.failed) + len(rule.could_not_test)
        link = (
            f'<a href="#{rule.anchor}">{problems} {"failure" if problems == 1 else "failures"}</a>'
            if problems
            else ""
        )
        nodes = rule.focus if rule.status == RULE_BROKEN else ""
        rows.append(
            f'<tr class="nc-r-{_slug(rule.status)}" data-check="{_e(rule.check)}">'
            f"<td>{_chip(rule.status)}</td>"
            f'<td><code>{_e(rule.check)}</code><div class="nc-rule-text">{_e(rule.rule)}</div>'
            f"{reasons}</td>"
            f"<td>{_e(rule.counts_text())}</td><td>{_e(nodes)}</td><td>{link}</td></tr>"
        )
    return (
        '<section class="nc-rules"><h2>Rules</h2><table id="nc-rule-table">'
        "<thead><tr><th>verdict</th><th>rule</th><th>checks</th><th>broken on</th>"
        "<th>failures</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )


# --- the matrices --------------------------------------------------------------------------------


def _legend() -> str:
    return (
        '<div class="nc-legend">'
        + "".join(
            f'<span><span class="nc-swatch nc-s-{_slug(s)}" style="display:inline-block">'
            f"</span>{_e(s)}</span>"
            for s in CELL_STATUSES
        )
        + "<span>rows: sources; columns: destinations; diagonal: same node</span></div>"
    )


def _grid(members: Sequence[Matrix], failure_ids: Mapping[str, str], caption: str) -> str:
    """One grid (``members``: a check's identical grids, drawn once)."""
    matrix = members[0]
    axes = matrix.axes(GRID_LIMIT)
    what = merged_title(members)
    counts = matrix.counts()
    note = f"{counts[CELL_FAILED]} of {len(matrix.cells)} failed" if counts[CELL_FAILED] else ""
    if axes.hidden_rows or axes.hidden_columns:
        note += (
            f"{'; ' if note else ''}{len(axes.rows)} of {len(matrix.nodes)} sources and "
            f"{len(axes.columns)} of {len(matrix.nodes)} destinations drawn, failing ones first"
        )
        if axes.hidden_trouble:
            note += f"; {axes.hidden_trouble} more with failures listed under Failures"
    head = "".join(f'<th class="nc-colh"><span>{_e(n)}</span></th>' for n in axes.columns)
    body = []
    for source in axes.rows:
        label = matrix.row_label(source)
        cells = []
        for destination in axes.columns:
            cell = matrix.cell(source, destination)
            status = cell.status if cell is not None else CELL_NOT_CHECKED
            hover = f"{label} \u2192 {destination}, {what}: {status}"
            if cell is not None and cell.cause:
                hover += f" \u2014 {cell.cause}"
            elif cell is not None and cell.loss_ratio is not None:
                hover += f" \u2014 {100 * cell.loss_ratio:.1f} % of probes lost"
            glyph = CELL_GLYPHS[status]
            target = failure_ids.get(cell.nodeid) if cell is not None else None
            inner = f'<a href="#{target}">{glyph}</a>' if target else glyph
            diagonal = " nc-diag" if source == destination else ""
            cells.append(
                f'<td class="nc-c nc-s-{_slug(status)}{diagonal}" data-status="{_e(status)}" '
                f'data-source="{_e(source)}" data-destination="{_e(destination)}" '
                + (
                    f'data-loss-ratio="{cell.loss_ratio:.4f}" '
                    if cell is not None and cell.loss_ratio is not None
                    else ""
                )
                + f'title="{_e(hover)}">{inner}</td>'
            )
        body.append(f'<tr><th class="nc-rowh">{_e(label)}</th>{"".join(cells)}</tr>')
    note_html = f' <span class="nc-note">({_e(note)})</span>' if note else ""
    return (
        f'<figure class="nc-matrix" data-check="{_e(matrix.check)}" data-title="{_e(what)}">'
        f"<figcaption>{_e(caption or what)}{note_html}</figcaption>"
        f'<table class="nc-grid"><thead><tr><th class="nc-corner">source \\ destination</th>'
        f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table></figure>"
    )


def _by_check(matrices: Sequence[Matrix]) -> dict[str, list[Matrix]]:
    grouped: dict[str, list[Matrix]] = {}
    for matrix in matrices:
        grouped.setdefault(matrix.check, []).append(matrix)
    return grouped


def _glance(data: ReportData, failure_ids: Mapping[str, str]) -> str:
    """Each reachability rule's grids, identical ones drawn once, broken rules first."""
    if not data.matrices:
        return ""
    grouped = _by_check(data.matrices)
    order = sorted(grouped, key=lambda c: not any(m.broken for m in grouped[c]))
    grids = []
    for check in order:
        for members in merge_identical(grouped[check]):
            grids.append(_grid(members, failure_ids, f"{check}: {merged_title(members)}"))
    return (
        '<section class="nc-glance"><h2>Node by node at a glance</h2>'
        f'<div class="nc-grids">{"".join(grids)}</div>{_legend()}</section>'
    )


def _all_matrices(data: ReportData, failure_ids: Mapping[str, str]) -> str:
    if not data.matrices:
        return ""
    parts = ['<section class="nc-matrices"><h2>Node by node, per protocol and family</h2>']
    rules = {r.check: r for r in data.rules}
    for check, matrices in _by_check(data.matrices).items():
        rule = rules.get(check)
        status = _chip(rule.status) + " " if rule is not None else ""
        parts.append(
            f'<h3 id="{anchor_for("grid", check)}">{status}<code>{_e(check)}</code></h3>'
            f'<div class="nc-rule-text">{_e(matrices[0].rule)}</div>'
            f'<div class="nc-grids">'
            + "".join(_grid([m], failure_ids, m.title) for m in matrices)
            + "</div>"
        )
    parts.append(_legend() + "</section>")
    return "".join(parts)


# --- failures ------------------------------------------------------------------------------------


def place_label(result: CheckResult) -> str:
    """Where a check looked, for people: ``tcp over ipv4: node-1 -> node-2`` (``node-1 (host)``
    for a host-network source), ``tcp over ipv4: node node-1``, or its test ID's parameters."""
    place = result.place
    what = " over ".join(p for p in (place.protocol, place.family) if p)
    source, destination = place.source, place.destination
    if source and destination:
        host = " (host)" if place.source_kind == "host" else ""
        where = f"{source}{host} \u2192 {destination}"
    elif place.node:
        where = f"node {place.node}"
    else:
        found = re.search(r"\[(.*)\]$", result.nodeid)
        where = found.group(1) if found else "cluster-wide"
    return f"{what}: {where}" if what else where


def _failures(data: ReportData, failure_ids: Mapping[str, str]) -> str:
    by_id = {t.nodeid: t for t in data.tests}
    groups = []
    for rule in data.rules:
        nodeids = [*rule.failed, *rule.could_not_test]
        if not nodeids:
            continue
        results = [by_id[n] for n in nodeids if n in by_id]
        failures = {r.nodeid: r.failure or RuleFailure(rule=r.rule, observed="") for r in results}
        expected = {f.expected for f in failures.values()}
        shared = expected.pop() if len(expected) == 1 else None
        rows = []
        for index, result in enumerate(results):
            failure = failures[result.nodeid]
            full = ""
            if result.message and index < FULL_MESSAGES_PER_RULE:
                full = (
                    f"<details><summary>full message</summary><pre>{_e(result.message)}</pre>"
                    "</details>"
                )
            kind = "failed" if result.outcome == "failed" else "could not test"
            expected_cell = "" if shared is not None else f"<td>{_e(failure.expected or '')}</td>"
            rows.append(
                f'<tr id="{failure_ids[result.nodeid]}" data-nodeid="{_e(result.nodeid)}">'
                f'<td class="nc-where">{_e(place_label(result))}</td><td>{_e(kind)}</td>'
                f"{expected_cell}<td>{_e(failure.observed)}{full}</td></tr>"
            )
        hidden = len(results) - FULL_MESSAGES_PER_RULE
        more = (
            f"<p>Full messages of the first {FULL_MESSAGES_PER_RULE} only; the other {hidden} "
            "are in the JUnit report.</p>"
            if hidden > 0
            else ""
        )
        expected_head = "" if shared is not None else "<th>expected</th>"
        groups.append(
            f'<section id="{rule.anchor}" class="nc-failure-group" data-check="{_e(rule.check)}">'
            f"<h3>{_chip(rule.status)} <code>{_e(rule.check)}</code>: {_e(rule.counts_text())}"
            "</h3>"
            f'<div class="nc-rule-text">{_e(rule.rule)}</div>'
            + (f"<p><b>expected</b>: {_e(shared)}</p>" if shared else "")
            + '<table class="nc-failure-table"><thead><tr><th>where</th><th>verdict</th>'
            f"{expected_head}<th>observed</th></tr></thead><tbody>{''.join(rows)}</tbody>"
            f"</table>{more}</section>"
        )
    if not groups:
        return '<section class="nc-failures"><h2>Failures by rule</h2><p>None.</p></section>'
    return f'<section class="nc-failures"><h2>Failures by rule</h2>{"".join(groups)}</section>'


def _dump(data: ReportData, dump_href: str | None) -> str:
    if not data.dump_text and not data.dump_file:
        return ""
    saved = ""
    if data.dump_file:
        target = dump_href or data.dump_file
        saved = f' (also saved as <a href="{_e(target)}">{_e(data.dump_file)}</a>)'
    lines = len((data.dump_text or "").splitlines())
    text = (
        f"<details><summary>{lines} lines</summary><pre>{_e(data.dump_text)}</pre></details>"
        if data.dump_text
        else ""
    )
    return (
        '<section class="nc-dump" id="nc-pod-states"><h2>Pod states and events of the run</h2>'
        f"<p>Namespace {_e(data.run.get('namespace', '?'))}, taken once at the end of the run"
        f"{saved}.</p>{text}</section>"
    )


def failure_anchors(data: ReportData) -> dict[str, str]:
    """Node ID -> the HTML id of its failure row, for every failed or untested check."""
    return {
        nodeid: anchor_for("t", nodeid)
        for rule in data.rules
        for nodeid in (*rule.failed, *rule.could_not_test)
    }


def render_block(
    summary: Mapping[str, Any], *, dump_href: str | None = None, extra_style: str = ""
) -> str:
    """The report's block: its style, then the verdict, the cluster under test, the rule table
    beside the grids at a glance, every grid, the failures by rule, the pod states and events."""
    data = read_summary(summary)
    anchors = failure_anchors(data)
    return (
        f"<style>{STYLE}{extra_style}</style>"
        '<div class="nc-report">'
        + _verdict(data, anchors)
        + _cluster(data)
        + f'<div class="nc-row">{_rule_table(data)}{_glance(data, anchors)}</div>'
        + _all_matrices(data, anchors)
        + _truth_tables(data)
        + _failures(data, anchors)
        + _dump(data, dump_href)
        + "</div>"
    )


def pytest_html_block(summary: Mapping[str, Any], *, dump_href: str | None = None) -> str:
    """`render_block` for pytest-html's summary prefix: also moves the runner's environment
    table below the block."""
    return render_block(summary, dump_href=dump_href, extra_style=PYTEST_HTML_LAYOUT)


TRUTH_SYMBOLS = {"open": "O", "blocked": ".", "reached": "R"}


def _truth_grid(cells: Sequence[Mapping[str, Any]]) -> str:
    """One probe's cells as a grid: sources in rows, destinations in columns; a wrong cell
    red, its hover saying expected against observed."""
    pods = sorted({str(c["source"]) for c in cells} | {str(c["destination"]) for c in cells})
    by_pair = {(str(c["source"]), str(c["destination"])): c for c in cells}
    head = "".join(f"<th>{_e(p)}</th>" for p in pods)
    rows = []
    for source in pods:
        tds = []
        for destination in pods:
            cell = by_pair.get((source, destination))
            if cell is None:
                tds.append("<td>-</td>")
                continue
            observed = str(cell["observed"])
            want = "allowed" if cell["expected_allowed"] else "denied"
            wrong = observed != ("open" if cell["expected_allowed"] else "blocked")
            css = "nc-tt-wrong" if wrong else f"nc-tt-{observed}"
            hover = (
                f"{source} ({cell['source_node']}) -> {destination} ({cell['destination_node']}): "
                f"expected {want}, observed {observed}"
            )
            tds.append(
                f'<td class="{css}"{_title_attribute(hover)}>{TRUTH_SYMBOLS.get(observed, "?")}'
                f"{'!' if wrong else ''}</td>"
            )
        rows.append(f"<tr><th>{_e(source)}</th>{''.join(tds)}</tr>")
    return f"<table><thead><tr><th></th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _truth_tables(data: ReportData) -> str:
    """The NetworkPolicy family: a table per scenario step, per probe (protocol, port,
    family), observed cells with the wrong ones red; steps with wrong cells open."""
    parts = []
    for test in data.tests:
        for table in test.truth_tables or ():
            cells = list(table.get("cells_detail") or ())
            by_probe: dict[str, list[Mapping[str, Any]]] = {}
            for cell in cells:
                key = f"{cell['proto']}/{cell['port']} IPv{cell['family']}"
                by_probe.setdefault(key, []).append(cell)
            wrong = int(table.get("wrong", 0))
            grids = "".join(
                f"<div><b>{_e(key)}</b><br>{_truth_grid(group)}</div>"
                for key, group in by_probe.items()
            )
            summary = (
                f"{_e(test.nodeid.rsplit('::', 1)[-1])} step {_e(table.get('step'))}: "
                f"{wrong} of {int(table.get('cells', 0))} cells wrong; in force within "
                f"{float(table.get('seconds', 0)):.1f} s (bound {float(table.get('bound', 0)):.0f} s)"
            )
            parts.append(
                f"<details{' open' if wrong else ''}><summary>{summary}</summary>{grids}</details>"
            )
    if not parts:
        return ""
    return (
        '<section class="nc-tt"><h2>NetworkPolicy truth tables</h2><p>Rows: source pods; '
        "columns: destination pods. O open, . blocked, R reached the destination without an "
        "answer back; red: not what the policies say.</p>" + "".join(parts) + "</section>"
    )


def _checks(data: ReportData) -> str:
    rows = "".join(
        f"<tr><td>{_e(t.nodeid)}</td><td>{_e(t.outcome)}</td><td>{t.duration:.3f}</td></tr>"
        for t in data.tests
    )
    return (
        f'<section class="nc-checks"><h2>Every check</h2><details><summary>{len(data.tests)} '
        "checks</summary><table><thead><tr><th>check</th><th>outcome</th><th>seconds</th></tr>"
        f"</thead><tbody>{rows}</tbody></table></details></section>"
    )


def render_page(summary: Mapping[str, Any], *, dump_href: str | None = None) -> str:
    """A whole, self-contained HTML page of the run (no script, no fetch)."""
    data = read_summary(summary)
    title = f"k8s-netconform: {_HEADLINES[data.verdict].lower()}"
    if data.run.get("run_id"):
        title += f" (run {data.run['run_id']})"
    block = render_block(summary, dump_href=dump_href)
    # The block's own closing tag is the report's: put the list of checks inside it.
    block = block[: -len("</div>")] + _checks(data) + "</div>"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title>"
        "<style>body { font-family: Helvetica, Arial, sans-serif; margin: 16px; }</style>"
        f"</head><body><h1>{_e(title)}</h1>{block}</body></html>\n"
    )
