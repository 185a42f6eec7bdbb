"""bench/netpol.py's pure part: the family's section of bench/results.md, kept by the benchmark."""

from __future__ import annotations

from pathlib import Path

from bench.netpol import (
    SECTION,
    SECTION_BEGIN,
    SECTION_END,
    render_section,
    step_seconds,
)

RUNS = [
    {"wall_s": 74.0, "checks_run": 19, "cells": 3456, "exit_code": 0, "step_seconds": [1.5, 2.0]},
    {"wall_s": 81.5, "checks_run": 19, "cells": 3456, "exit_code": 0, "step_seconds": [1.4]},
]
FACTS = {"runs": 2, "date": "2026-12-05T01:00:00Z", "git_commit": "abc", "load_before": [1.0]}


def test_the_section_states_the_figures_and_the_target() -> None:
    section = render_section(RUNS, FACTS)
    assert section.strip().startswith(SECTION_BEGIN)
    assert section.strip().endswith(SECTION_END)
    assert "| 2 | 77.8 / 81.5 s | 19 | 3456 | 1.50 / " in section
    assert "at most 120 s serial on 3 nodes: met (worst run 81.5 s)" in section
    slow = [{**RUNS[0], "wall_s": 130.0}]
    assert "NOT met (worst run 130.0 s)" in render_section(slow, FACTS)


def test_the_section_replaces_its_old_self_and_is_kept(tmp_path: Path) -> None:
    document = "# Benchmark results\n\nrows\n"
    once = SECTION.replaced(document, render_section(RUNS, FACTS))
    twice = SECTION.replaced(once, render_section(RUNS[:1], FACTS))
    assert twice.count(SECTION_BEGIN) == 1
    assert "| 1 | 74.0 / 74.0 s" in twice
    assert SECTION.found_in(twice).strip() == render_section(RUNS[:1], FACTS).strip()
    assert SECTION.found_in(document) == ""


def test_step_seconds_come_from_the_scenarios_only() -> None:
    summary = {
        "tests": [
            {"nodeid": "t.py::test_network_policy_enforced", "truth_tables": [{"seconds": 9.0}]},
            {"nodeid": "t.py::test_network_policy[a]", "truth_tables": [{"seconds": 1.25}]},
            {"nodeid": "t.py::test_other", "truth_tables": None},
        ]
    }
    assert step_seconds(summary) == [1.25]
