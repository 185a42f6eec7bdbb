"""The benchmark's pure parts: statistics, JUnit and tool-output parsing, targets, the Markdown
table and the JSON file. Nothing here boots a lab."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.memory import parent_of, parse_status
from bench.stats import (
    Spread,
    evaluate_targets,
    parse_api_bench,
    percentile,
    read_junit,
    render_markdown,
    write_json,
)


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.95) == 95.0
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([3.0, 1.0, 2.0], 0.0) == 1.0


def test_percentile_rejects_empty_and_bad_fraction() -> None:
    with pytest.raises(ValueError, match="empty"):
        percentile([], 0.5)
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 1.5)


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=200))
def test_spread_is_ordered(values: list[float]) -> None:
    spread = Spread.of(values)
    assert spread.count == len(values)
    assert spread.minimum <= spread.median <= spread.maximum
    assert spread.minimum <= spread.p95 <= spread.maximum
    assert spread.p95 >= percentile(values, 0.5)


def test_spread_median_even_and_empty() -> None:
    assert Spread.of([4.0, 1.0, 3.0, 2.0]).median == 2.5
    empty = Spread.of([])
    assert empty.count == 0
    assert math.isnan(empty.median)


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="2" skipped="3" tests="10" time="40.1">
<testcase classname="conformance.test_no_snat" name="test_no_snat[tcp-node-1-&gt;node-2]" time="3.5"/>
<testcase classname="conformance.test_pod_ips" name="test_pod_ips_unique" time="0.25"/>
<testcase classname="conformance.test_sandbox" name="test_sandbox_survives_container_restart" time="12.0"/>
</testsuite></testsuites>
"""


def test_read_junit_counts_and_slowest_first(tmp_path: Path) -> None:
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT)
    counts = read_junit(path)
    assert (counts.tests, counts.failures, counts.errors, counts.skipped) == (10, 2, 1, 3)
    assert counts.checks_run == 7
    assert counts.failed == 3
    assert counts.durations[0] == (
        "conformance.test_sandbox::test_sandbox_survives_container_restart",
        12.0,
    )
    assert [seconds for _, seconds in counts.durations] == [12.0, 3.5, 0.25]


def test_parse_api_bench_takes_the_list_lines_only() -> None:
    output = (
        "create 1000 pods (50 in flight): 2.10s (476 pods/s)\n"
        "list 1000 pods as JSON: median 45.2 ms, min 40.0 ms, max 50.0 ms (5 runs)\n"
        "list 1000 pods as Table: median 30.5 ms (5 runs)\n"
        "list 1000 pods as JSON in pages of 500: median 50.0 ms\n"
    )
    assert parse_api_bench(output) == {
        "JSON": {"pods": 1000, "median_ms": 45.2},
        "Table": {"pods": 1000, "median_ms": 30.5},
    }
    assert parse_api_bench("something else entirely") == {}


def suite(wall: float, floor: float) -> dict[str, Any]:
    return {
        "wall_s": wall,
        "checks_run": 40,
        "failures": 0,
        "probe_pods": 8,
        "ratio_to_floor": wall / floor,
        "pytest_maxrss_kib": 90_000,
    }


def run(
    nodes: int, serial: float, n4: float, *, up: float = 2.0, start: float = 0.5
) -> dict[str, Any]:
    return {
        "nodes": nodes,
        "lab_up_s": up,
        "floor_s": 4.0,
        "pod_start": Spread.of([start, start, start]).as_dict(),
        "exec_rtt": Spread.of([0.05, 0.06, 0.07]).as_dict(),
        "lab_memory": {"daemon_vmhwm_kib": 200_000, "tree_rss_peak_kib": 900_000},
        "suite": {"serial": suite(serial, 4.0), "n4": suite(n4, 4.0)},
    }


def verdicts(results: dict[str, Any]) -> dict[str, bool | None]:
    return {t.name: t.met for t in evaluate_targets(results)}


def test_targets_met_and_missed() -> None:
    results = {"runs": [run(3, 30.0, 50.0, up=6.0, start=1.5), run(30, 100.0, 150.0)]}
    got = verdicts(results)
    assert got["3-node suite, serial"] is True
    assert got["3-node suite, -n 4"] is False
    assert got["3-node suite / floor, serial"] is True  # 7.5
    assert got["3-node suite / floor, -n 4"] is False  # 12.5
    assert got["30-node / 3-node suite time, serial"] is True  # 3.33x
    assert got["30-node / 3-node suite time, -n 4"] is True  # 3x
    assert got["3-node netlab up"] is False
    assert got["pod create-to-Running median (worst size)"] is False  # 1.5 s at 3 nodes
    assert got["exec round trip median (worst size)"] is True  # 60 ms


def test_targets_not_measured_without_a_30_node_run() -> None:
    got = verdicts({"runs": [run(3, 30.0, 20.0)]})
    assert got["30-node / 3-node suite time, serial"] is None
    assert got["30-node / 3-node suite time, -n 4"] is None
    assert got["3-node suite, -n 4"] is True
    assert verdicts({"runs": []})["3-node netlab up"] is None


def test_growth_over_four_times_is_missed() -> None:
    got = verdicts({"runs": [run(3, 20.0, 10.0), run(30, 81.0, 40.0)]})
    assert got["30-node / 3-node suite time, serial"] is False  # 4.05x
    assert got["30-node / 3-node suite time, -n 4"] is True  # exactly 4x


def test_markdown_has_a_row_per_run_and_mode_and_every_target() -> None:
    results = {
        "command": "./run.sh bench --nodes 3",
        "machine": {"date": "2026-01-01T00:00:00Z", "git_commit": "abc", "cores": 2},
        "runs": [run(3, 30.0, 20.0), run(10, 40.0, 25.0)],
        "api_list": {"figures": {"JSON": {"pods": 1000, "median_ms": 45.0}}},
    }
    text = render_markdown(results)
    assert "| 3 | serial | 8 | 40 | 0 | 30.0 s | - | 4.00 s | 7.5 |" in text
    assert "| 10 | -n 4 | 8 | 40 | 0 | 25.0 s | - | 4.00 s | 6.2 |" in text
    assert "API list of 1000 pods" in text
    assert "| 30-node / 3-node suite time, serial | <= 4x | - | not measured |" in text
    assert "| 3-node suite, serial | < 60 s | 30.0 s | met |" in text
    assert "| 3-node suite, serial (#13) | <= 15 s | 30.0 s | NOT met |" in text
    assert "| 30-node all-pairs suite, serial (#13) | <= 120 s | - | not measured |" in text
    assert text.count("| met |") + text.count("| NOT met |") + text.count("| not measured |") == 11


def test_write_json_round_trips_and_writes_nan_as_null(tmp_path: Path) -> None:
    path = write_json(tmp_path / "results.json", {"a": [1.5, math.nan], "b": {"c": math.inf}})
    assert json.loads(path.read_text()) == {"a": [1.5, None], "b": {"c": None}}
    assert not (tmp_path / "results.tmp").exists()


def test_parse_status_reads_kib_fields() -> None:
    text = "Name:\tpython3\nVmPeak:\t  123456 kB\nVmHWM:\t   51234 kB\nVmRSS:\t   50000 kB\nThreads:\t4\n"
    assert parse_status(text) == {"VmPeak": 123456, "VmHWM": 51234, "VmRSS": 50000}


def test_parent_of_survives_odd_command_names() -> None:
    assert parent_of("42 (python3) S 7 42 42 0 -1") == 7
    assert parent_of("43 (a b) (c)) R 9 43 43 0 -1") == 9


def test_the_api_benchmark_finds_everything_it_imports() -> None:
    # It borrows the API tests' fixtures; a move of what they import once left it empty. In a
    # process of its own: its `conftest` import must not find this folder's.
    script = Path(__file__).parents[2] / "bench" / "api_bench.py"
    done = subprocess.run(
        [sys.executable, "-c", f"import runpy; runpy.run_path({str(script)!r})"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
