"""The pure part of the benchmark: statistics, JUnit and tool-output parsing, the targets, and
the Markdown and JSON the run writes. Nothing here touches a lab."""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MODES = ("serial", "n4")
MODE_LABELS = {"serial": "serial", "n4": "-n 4"}


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in [0, 1]) of a non-empty sample."""
    if not values:
        raise ValueError("percentile of an empty sample")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction {fraction} outside [0, 1]")
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Spread:
    """Median, p95 and range of a sample, in the sample's unit."""

    count: int
    median: float
    p95: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        ordered = sorted(values)
        if not ordered:
            return cls(0, math.nan, math.nan, math.nan, math.nan)
        middle = len(ordered) // 2
        median = (
            ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
        )
        return cls(len(ordered), median, percentile(ordered, 0.95), ordered[0], ordered[-1])

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class JUnitCounts:
    """What a JUnit report says about one suite run."""

    tests: int
    failures: int
    errors: int
    skipped: int
    # (test id, seconds) of every case, slowest first: where the wall time went.
    durations: tuple[tuple[str, float], ...]

    @property
    def checks_run(self) -> int:
        return self.tests - self.skipped

    @property
    def failed(self) -> int:
        """Failures plus errors: checks that did not pass."""
        return self.failures + self.errors


def read_junit(path: Path) -> JUnitCounts:
    """Counts and per-case durations from a pytest JUnit XML file (one or more testsuites)."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    tests = failures = errors = skipped = 0
    durations: list[tuple[str, float]] = []
    for suite in suites:
        tests += int(suite.get("tests", 0))
        failures += int(suite.get("failures", 0))
        errors += int(suite.get("errors", 0))
        skipped += int(suite.get("skipped", 0))
        for case in suite.iter("testcase"):
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            durations.append((name, float(case.get("time", 0.0))))
    durations.sort(key=lambda item: item[1], reverse=True)
    return JUnitCounts(tests, failures, errors, skipped, tuple(durations))


_LIST_LINE = re.compile(r"list (\d+) pods as (\w+): median ([\d.]+) ms")


def parse_api_bench(output: str) -> dict[str, Any]:
    """The list figures from ``bench/api_bench.py``'s output: ``{"JSON": {"pods": 1000,
    "median_ms": 12.3}, ...}`` (empty when its format changed: the raw output is kept too)."""
    found: dict[str, Any] = {}
    for count, label, median in _LIST_LINE.findall(output):
        found[label] = {"pods": int(count), "median_ms": float(median)}
    return found


# --- targets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One target of issue #7 and whether this run met it (None: not measured)."""

    name: str
    goal: str
    observed: str
    met: bool | None

    @property
    def verdict(self) -> str:
        return {True: "met", False: "NOT met", None: "not measured"}[self.met]


def _run(results: Mapping[str, Any], nodes: int) -> Mapping[str, Any] | None:
    for run in results.get("runs", []):
        if run.get("nodes") == nodes:
            return run  # type: ignore[no-any-return]
    return None


def _wall(run: Mapping[str, Any] | None, mode: str) -> float | None:
    if run is None:
        return None
    suite = run.get("suite", {}).get(mode)
    return None if suite is None else float(suite["wall_s"])


def _below(name: str, goal: str, value: float | None, limit: float, fmt: str) -> Target:
    if value is None or math.isnan(value):
        return Target(name, goal, "-", None)
    return Target(name, goal, fmt.format(value), value < limit)


def evaluate_targets(results: Mapping[str, Any]) -> list[Target]:
    """Issues #7's and #13's targets against the figures in ``results`` (the structure
    `results.json` holds)."""
    small, large = _run(results, 3), _run(results, 30)
    targets = [
        _below("3-node suite, serial", "< 60 s", _wall(small, "serial"), 60.0, "{:.1f} s"),
        _below("3-node suite, -n 4", "< 30 s", _wall(small, "n4"), 30.0, "{:.1f} s"),
        # Issue #13: every ordered pair, same-node on every node, host network, full size.
        _below("3-node suite, serial (#13)", "<= 15 s", _wall(small, "serial"), 15.0, "{:.1f} s"),
        _below(
            "30-node all-pairs suite, serial (#13)",
            "<= 120 s",
            _wall(large, "serial"),
            120.0,
            "{:.1f} s",
        ),
    ]
    for mode in MODES:
        ratio = None
        if small is not None and mode in small.get("suite", {}):
            ratio = small["suite"][mode].get("ratio_to_floor")
        targets.append(
            _below(f"3-node suite / floor, {MODE_LABELS[mode]}", "< 10", ratio, 10.0, "{:.1f}")
        )
    for mode in MODES:
        low, high = _wall(small, mode), _wall(large, mode)
        growth = None if low is None or high is None or low <= 0 else high / low
        name = f"30-node / 3-node suite time, {MODE_LABELS[mode]}"
        if growth is None:
            targets.append(Target(name, "<= 4x", "-", None))
        else:
            targets.append(Target(name, "<= 4x", f"{growth:.2f}x", growth <= 4.0))
    up = None if small is None else small.get("lab_up_s")
    targets.append(_below("3-node netlab up", "< 5 s", up, 5.0, "{:.2f} s"))
    # Lab figures at every measured size: the worst one decides.
    runs = list(results.get("runs", []))
    starts = [r["pod_start"]["median"] for r in runs if r.get("pod_start", {}).get("count")]
    execs = [r["exec_rtt"]["median"] * 1000 for r in runs if r.get("exec_rtt", {}).get("count")]
    targets.append(
        _below(
            "pod create-to-Running median (worst size)",
            "< 1 s",
            max(starts) if starts else None,
            1.0,
            "{:.2f} s",
        )
    )
    targets.append(
        _below(
            "exec round trip median (worst size)",
            "< 100 ms",
            max(execs) if execs else None,
            100.0,
            "{:.0f} ms",
        )
    )
    return targets


# --- output ----------------------------------------------------------------------------------


def _num(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def render_markdown(results: Mapping[str, Any]) -> str:
    """The short Markdown report: suite table, lab table, API list figure, targets."""
    machine = results.get("machine", {})
    lines = [
        "# Benchmark results",
        "",
        f"Written by `{results.get('command', './run.sh bench')}` on {machine.get('date', '?')}, "
        f"commit {str(machine.get('git_commit', '?'))[:12]}"
        f"{' (dirty tree)' if machine.get('git_dirty') else ''}, "
        f"{machine.get('cores', '?')} cores, kernel {machine.get('kernel', '?')}, "
        f"load average {machine.get('load_before', '?')} at start. Raw figures: `results.json`; "
        "plot: `wall_time.png`.",
        "",
        "## Suite",
        "",
        "Floor: one wave of as many plain pods as the suite deploys, created at once, until all "
        "are Ready (median of the waves, same lab, same run).",
        "",
        "Exchanges: every network exchange of the run's reachability sweep (pod to pod, host to "
        "pod, full-size, localhost, Services); per second over the sweep's own wall time.",
        "",
        "| nodes | mode | probe pods | checks run | failures | wall time | exchanges (sweep s, per s) | floor | suite / floor | pytest peak RSS | CPU pytest / lab |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in results.get("runs", []):
        for mode in MODES:
            suite = run.get("suite", {}).get(mode)
            if suite is None:
                continue
            lines.append(
                f"| {run['nodes']} | {MODE_LABELS[mode]} | {_num(suite.get('probe_pods'), '{}')} "
                f"| {suite['checks_run']} | {suite['failures']} | {suite['wall_s']:.1f} s "
                f"| {_exchanges(suite)} "
                f"| {_num(run.get('floor_s'), '{:.2f} s')} "
                f"| {_num(suite.get('ratio_to_floor'), '{:.1f}')} "
                f"| {_num(_mib(suite.get('pytest_maxrss_kib')), '{:.0f} MiB')} "
                f"| {_num(_cpu(suite), '{:.0f}')} / {_num(suite.get('lab_cpu_s'), '{:.0f} s')} |"
            )
    lines += [
        "",
        "## Lab",
        "",
        "Pod start: create request sent to Running seen on a watch opened before the creates. "
        "Exec: official Python client stream (websocket, as the suite execs), `true` in a pod; "
        "in brackets the same for `python3 -c pass`, which every suite exec starts.",
        "",
        "| nodes | netlab up | pod start median / p95 (n) | exec median / p95 (n) | lab daemon VmHWM | lab tree peak RSS | idle lab CPU |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in results.get("runs", []):
        start, rtt, memory = (
            run.get("pod_start", {}),
            run.get("exec_rtt", {}),
            run.get("lab_memory", {}),
        )
        python = run.get("exec_python_rtt", {})
        lines.append(
            f"| {run['nodes']} | {_num(run.get('lab_up_s'), '{:.2f} s')} "
            f"| {_num(start.get('median'), '{:.2f}')} / {_num(start.get('p95'), '{:.2f} s')} ({start.get('count', 0)}) "
            f"| {_num(_ms(rtt.get('median')), '{:.0f}')} / {_num(_ms(rtt.get('p95')), '{:.0f} ms')} ({rtt.get('count', 0)}) "
            f"[{_num(_ms(python.get('median')), '{:.0f}')} / {_num(_ms(python.get('p95')), '{:.0f} ms')}] "
            f"| {_num(_mib(memory.get('daemon_vmhwm_kib')), '{:.0f} MiB')} "
            f"| {_num(_mib(memory.get('tree_rss_peak_kib')), '{:.0f} MiB')} "
            f"| {_num(run.get('idle_lab_cpu'), '{:.2f} cores')} |"
        )
    api = results.get("api_list", {})
    if api.get("figures"):
        figures = ", ".join(
            f"{label} {f['median_ms']:.0f} ms" for label, f in sorted(api["figures"].items())
        )
        count = next(iter(api["figures"].values()))["pods"]
        lines += ["", f"API list of {count} pods (`bench/api_bench.py`, fake agents): {figures}."]
    lines += [
        "",
        "## Targets",
        "",
        "| target | goal | observed | verdict |",
        "| --- | --- | --- | --- |",
    ]
    for target in evaluate_targets(results):
        lines.append(f"| {target.name} | {target.goal} | {target.observed} | {target.verdict} |")
    return "\n".join(lines) + "\n"


def _cpu(suite: Mapping[str, Any]) -> float | None:
    if "cpu_user_s" not in suite:
        return None
    return float(suite["cpu_user_s"]) + float(suite.get("cpu_system_s", 0.0))


def _ms(seconds: Any) -> float | None:
    return None if seconds is None else float(seconds) * 1000


def _exchanges(suite: Mapping[str, Any]) -> str:
    """``5544 (31.2 s, 178/s)``, or a dash when the run recorded no sweep."""
    count, seconds = suite.get("exchanges"), suite.get("sweep_s")
    if count is None or not seconds:
        return "-"
    return f"{count} ({seconds:.1f} s, {count / seconds:.0f}/s)"


def _mib(kib: Any) -> float | None:
    return None if kib is None else float(kib) / 1024


def write_json(path: Path, results: Mapping[str, Any]) -> Path:
    """Write ``results`` as indented JSON (NaN written as null), atomically."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_finite(results), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
