"""``./run.sh bench --netpol [--runs N]``: the NetworkPolicy family alone (``-m netpol``),
serial, on a fresh 3-node lab, N times; its section of ``bench/results.md`` and
``bench/netpol.json``.

Per run: the wall time of the pytest process (the model deployed, the canary, every scenario,
the model deleted), the checks and their outcomes, and how long each step of each scenario took
to be in force (the `seconds` of its truth table in ``summary.json``: from the API's answer to
the change until the end of the first sweep that saw the expected table). Issue 24's target:
the family in at most 120 s serial on 3 nodes.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.sections import MarkedSection
from bench.stats import Spread

BENCH = Path(__file__).resolve().parent
NODES = 3
#: Issue 24, item 7.
TARGET_S = 120.0
SECTION_BEGIN = "<!-- netpol:begin (written by ./run.sh bench --netpol; kept by the benchmark) -->"
SECTION_END = "<!-- netpol:end -->"
SECTION = MarkedSection(SECTION_BEGIN, SECTION_END)


def say(message: str) -> None:
    print(f"[bench netpol {datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


def step_seconds(summary: Mapping[str, Any]) -> list[float]:
    """Every scenario step's time in force (the canary's excluded), from a ``summary.json``."""
    return [
        float(table["seconds"])
        for test in summary.get("tests") or ()
        if "test_network_policy[" in str(test.get("nodeid"))
        for table in test.get("truth_tables") or ()
    ]


def measure_once(lab: Any, out_dir: Path) -> dict[str, Any]:
    """One serial run of the family on ``lab`` (a `bench.runner.Lab`)."""
    from bench.runner import run_suite

    result = run_suite(lab, "netpol", out_dir)
    summary = json.loads((out_dir / "summary.json").read_text())
    result["step_seconds"] = step_seconds(summary)
    result["cells"] = sum(
        int(table.get("cells", 0))
        for test in summary.get("tests") or ()
        for table in test.get("truth_tables") or ()
    )
    return result


def run(runs: int, *, out: Path = BENCH, facts: Mapping[str, Any] | None = None) -> int:
    """The family ``runs`` times on one fresh 3-node lab; write the section."""
    from bench.runner import booted_lab

    began = time.monotonic()
    found: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="netconform-bench-netpol-") as scratch,
        booted_lab(NODES) as lab,
    ):
        for index in range(runs):
            out_dir = Path(scratch) / f"run-{index}"
            out_dir.mkdir()
            found.append(measure_once(lab, out_dir))
            say(f"run {index + 1}: {found[-1]['wall_s']:.1f} s, exit {found[-1]['exit_code']}")
    all_facts = {**(facts or {}), "runs": runs, "elapsed_s": round(time.monotonic() - began, 1)}
    write(found, all_facts, out)
    return 0 if all(r["exit_code"] == 0 for r in found) else 1


def render_section(found: Sequence[Mapping[str, Any]], facts: Mapping[str, Any]) -> str:
    walls = Spread.of([float(r["wall_s"]) for r in found])
    steps = Spread.of([s for r in found for s in r["step_seconds"]])
    checks = max((int(r["checks_run"]) for r in found), default=0)
    cells = max((int(r["cells"]) for r in found), default=0)
    exits = sorted({int(r["exit_code"]) for r in found})
    worst = walls.maximum
    verdict = "met" if worst <= TARGET_S else "NOT met"
    lines = [
        f"\n{SECTION_BEGIN}",
        f"## NetworkPolicy family ({NODES} nodes, serial)",
        "",
        f"`./run.sh bench --netpol --runs {facts.get('runs')}` on "
        f"{facts.get('date', '?')}, commit {str(facts.get('git_commit', '?'))[:12]}, load"
        f" average {facts.get('load_before')} at start: `pytest -m netpol` on one fresh {NODES}-node lab, each run deploying"
        " the model (3 namespaces x 3 pods), the canary, 18 scenarios and deleting the model."
        " Step in force: from the API's answer to a step's change until the end of the first"
        " sweep that saw its expected table (a sweep of every cell takes about a second: denied"
        " cells wait out their 1 s probe).",
        "",
        "| runs | wall time median / max | checks run | cells judged per run | step in force"
        " median / p95 / max (n) | exit codes |",
        "| ---: | ---: | ---: | ---: | ---: | --- |",
        f"| {len(found)} | {walls.median:.1f} / {walls.maximum:.1f} s | {checks} | {cells} |"
        f" {steps.median:.2f} / {steps.p95:.2f} / {steps.maximum:.2f} s ({steps.count}) |"
        f" {', '.join(map(str, exits))} |",
        "",
        f"Target (issue 24): the family in at most {TARGET_S:.0f} s serial on {NODES} nodes:"
        f" {verdict} (worst run {worst:.1f} s).",
        SECTION_END,
        "",
    ]
    return "\n".join(lines)


def write(found: Sequence[Mapping[str, Any]], facts: Mapping[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "netpol.json").write_text(
        json.dumps({"machine": dict(facts), "runs": list(found)}, indent=1, default=str) + "\n"
    )
    document = out / "results.md"
    text = document.read_text() if document.exists() else ""
    document.write_text(SECTION.replaced(text, render_section(found, facts)))
    say(f"wrote {out / 'netpol.json'} and the section of {document}")
