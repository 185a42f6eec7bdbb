"""``./run.sh bench --real-k8s``: the 3-node suite on the genuine Kubernetes fixture
(``../shared/realk8s``, or ``$NETCONFORM_REALK8S``), with young and warm kubelets, serial and
``-n 2``, the deploy phase apart; its section of ``bench/results.md`` and ``bench/realk8s.json``.

Each measurement brings a fresh cluster up (``tests/support/realk8s.py``), runs the suite the
moment the nodes are Ready (young kubelets: a CNI vendor's CI creating a cluster and testing it
at once), waits until the kubelets are `WARM_AGE` seconds old and runs the same mode again
(warm), then takes the cluster down. The deploy phase is the suite's own figure
(``summary.json`` ``run.deployment_seconds``). Bounded: every run has a deadline, and the
cluster goes down whatever happens.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.sections import MarkedSection
from bench.stats import Spread

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT / "tests" / "support"))  # the fixture and the suite, as tests run them

from realk8s import RealCluster, cluster, install, locate  # noqa: E402
from suite_runs import SuiteRunError, run_suite  # noqa: E402

#: Kubelets older than the longest probe period the suite ever used (60 s) no longer jitter.
WARM_AGE = 90.0
MODES: Mapping[str, tuple[str, ...]] = {"serial": (), "n2": ("-n", "2")}
MODE_LABELS = {"serial": "serial", "n2": "-n 2"}
SUITE_TIMEOUT = 600
#: Issue 22: "3 nodes serial at most 20 s with young kubelets".
YOUNG_SERIAL_TARGET = 20.0
SECTION_BEGIN = (
    "<!-- realk8s:begin (written by ./run.sh bench --real-k8s; kept by the benchmark) -->"
)
SECTION_END = "<!-- realk8s:end -->"
SECTION = MarkedSection(SECTION_BEGIN, SECTION_END)


def say(message: str) -> None:
    print(f"[bench realk8s {datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


@dataclass(frozen=True)
class Measurement:
    """One run of the suite on the genuine cluster."""

    mode: str
    kubelets: str  # "young" or "warm"
    kubelet_age_s: float
    wall_s: float
    deploy_s: float | None
    exit_code: int
    checks_run: int
    failed: int
    load: float


def measure(cluster_: RealCluster, mode: str, kubelets: str, out: Path) -> Measurement:
    age = cluster_.age()
    load = os.getloadavg()[0]
    try:
        result = run_suite(cluster_.kubeconfig, out, *MODES[mode], timeout=SUITE_TIMEOUT)
    except SuiteRunError as error:
        say(f"{mode} {kubelets}: {error}")
        return Measurement(mode, kubelets, age, math_nan(), None, -1, 0, 0, load)
    run = result.summary.get("run") or {}
    deploy = run.get("deployment_seconds") if isinstance(run, dict) else None
    found = Measurement(
        mode=mode,
        kubelets=kubelets,
        kubelet_age_s=round(age, 1),
        wall_s=round(result.seconds, 2),
        deploy_s=float(deploy) if isinstance(deploy, int | float) else None,
        exit_code=result.returncode,
        checks_run=result.ran,
        failed=len(result.ids("failed")) + len(result.ids("error")),
        load=round(load, 2),
    )
    say(
        f"{MODE_LABELS[mode]}, {kubelets} kubelets ({age:.0f} s old): {found.wall_s:.1f} s,"
        f" deploy {found.deploy_s} s, exit {found.exit_code}, load {load:.1f}"
    )
    return found


def math_nan() -> float:
    return float("nan")


def run(runs: int, *, out: Path = BENCH, facts: dict[str, Any] | None = None) -> int:
    """Measure every mode ``runs`` times with young and warm kubelets; write the results."""
    fixture, why = locate()
    if fixture is None:
        say(f"no measurement: {why}")
        return 2
    say(f"install.sh: {install(fixture):.0f} s")
    began = time.monotonic()
    found: list[Measurement] = []
    ups: list[float] = []
    with tempfile.TemporaryDirectory(prefix="netconform-bench-realk8s-") as scratch:
        for index in range(runs):
            for mode in MODES:
                with cluster(fixture, 3) as running:
                    ups.append(running.up_seconds)
                    say(f"{mode} #{index + 1}: cluster up in {running.up_seconds:.0f} s")
                    found.append(
                        measure(running, mode, "young", Path(scratch) / f"{mode}-{index}-y")
                    )
                    threading.Event().wait(max(0.0, WARM_AGE - running.age()))
                    found.append(
                        measure(running, mode, "warm", Path(scratch) / f"{mode}-{index}-w")
                    )
    facts = {**(facts or {}), "runs": runs, "wall_s": round(time.monotonic() - began, 1)}
    facts["up_s"] = Spread.of(ups).as_dict()
    write(found, facts, out)
    return 0 if all(m.exit_code == 0 for m in found) else 1


def summarize(found: Sequence[Measurement]) -> list[dict[str, Any]]:
    """Per mode and kubelet age: the wall time and deploy time spreads, exit codes, load."""
    rows = []
    for mode in MODES:
        for kubelets in ("young", "warm"):
            these = [m for m in found if m.mode == mode and m.kubelets == kubelets]
            if not these:
                continue
            rows.append(
                {
                    "mode": mode,
                    "kubelets": kubelets,
                    "runs": len(these),
                    "wall": Spread.of([m.wall_s for m in these if m.wall_s == m.wall_s]).as_dict(),
                    "deploy": Spread.of(
                        [m.deploy_s for m in these if m.deploy_s is not None]
                    ).as_dict(),
                    "exit_codes": sorted({m.exit_code for m in these}),
                    "checks_run": max(m.checks_run for m in these),
                    "kubelet_age": Spread.of([m.kubelet_age_s for m in these]).as_dict(),
                    "load": Spread.of([m.load for m in these]).as_dict(),
                }
            )
    return rows


def _s(value: Any) -> str:
    return "-" if not isinstance(value, int | float) or value != value else f"{value:.1f}"


def render_section(found: Sequence[Measurement], facts: Mapping[str, Any]) -> str:
    """The genuine-cluster section of ``bench/results.md``."""
    rows = summarize(found)
    young_serial = next(
        (r for r in rows if r["mode"] == "serial" and r["kubelets"] == "young"), None
    )
    observed = young_serial["wall"]["median"] if young_serial else None
    verdict = (
        "met" if isinstance(observed, float) and observed <= YOUNG_SERIAL_TARGET else "NOT met"
    )
    lines = [
        f"\n{SECTION_BEGIN}",
        "## Genuine Kubernetes (v1.28.4, 3 nodes)",
        "",
        f"`./run.sh bench --real-k8s --runs {facts.get('runs')}`: per run a fresh cluster of"
        " `../shared/realk8s` (upstream kube-apiserver, kubelet, kube-proxy, containerd), the"
        " suite the moment the nodes are Ready (young kubelets), then again once they are"
        f" {WARM_AGE:.0f} s old (warm). Deploy: from creating the run namespace until every probe"
        f" pod was Ready (`summary.json` `run.deployment_seconds`). {facts.get('date', '')},"
        f" git {str(facts.get('git_commit', ''))[:10]}, {facts.get('cores')} cores, load average"
        f" {facts.get('load_before')} at start; cluster up median"
        f" {_s(facts.get('up_s', {}).get('median'))} s; {facts.get('wall_s')} s in all.",
        "",
        "| mode | kubelets | runs | wall median (min-max) | deploy median (min-max) |"
        " exit codes | checks run | load (1 min) |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for row in rows:
        wall, deploy = row["wall"], row["deploy"]
        lines.append(
            f"| {MODE_LABELS[row['mode']]} | {row['kubelets']} | {row['runs']} |"
            f" {_s(wall['median'])} s ({_s(wall['minimum'])}-{_s(wall['maximum'])}) |"
            f" {_s(deploy['median'])} s ({_s(deploy['minimum'])}-{_s(deploy['maximum'])}) |"
            f" {', '.join(str(c) for c in row['exit_codes'])} | {row['checks_run']} |"
            f" {_s(row['load']['median'])} |"
        )
    lines += [
        "",
        "| target | goal | observed | verdict |",
        "| --- | --- | --- | --- |",
        f"| 3-node suite, serial, young kubelets (#22) | <= {YOUNG_SERIAL_TARGET:.0f} s |"
        f" {_s(observed)} s | {verdict} |",
        "",
        SECTION_END,
        "",
    ]
    return "\n".join(lines)


def write(found: Sequence[Measurement], facts: Mapping[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "realk8s.json").write_text(
        json.dumps(
            {
                "machine": dict(facts),
                "runs": [asdict(m) for m in found],
                "summary": summarize(found),
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    document = out / "results.md"
    previous = document.read_text() if document.exists() else "# Benchmark results\n"
    section = render_section(found, facts)
    document.write_text(SECTION.replaced(previous, section))
    print(section, flush=True)
