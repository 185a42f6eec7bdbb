"""``./run.sh bench --soak N``: the whole suite N times under each control-plane fault, on a
healthy 3-node lab, and under a data-plane fault with API faults on top; are its verdicts
honest?

For every run: the exit code, the checks that could not test, the false failures (a check that
failed although no rule the lab breaks is its rule: must be 0), the false passes (a check of
the broken rule that passed: must be 0) and what was left behind (the run's namespaces and
pods in the cluster; after each lab's teardown, its network namespaces, mounts and processes:
must be 0). One lab per case, booted with its faults, ``--parallel`` labs at a time; between
runs the lab's API faults are set again with a new ``seed`` (``netlab api-faults --set``), so
each run meets other faults. The table goes into ``bench/results.md`` (its own section, kept
when the other benchmarks rewrite the file) and the raw figures into ``bench/soak.json``.

Bounded: every run has the suite's own deadline (``labrun.SUITE_TIMEOUT``), every lab is torn
down in a ``finally``, and ``--deadline`` stops the whole soak (labs torn down).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.sections import MarkedSection

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT / "tests" / "support"))  # labrun and what it shares with tests

import labrun  # noqa: E402  (tests/support: the one way a lab runs the suite)
from kubernetes.client.exceptions import ApiException  # noqa: E402
from labrun import (  # noqa: E402
    NETLAB,
    CaseResult,
    LabCase,
    LabError,
    cluster_leftovers,
    run_suite,
    running_lab,
    summary_exitstatus,
)
from tenacity import (  # noqa: E402
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_delay,
    wait_fixed,
)
from urllib3.exceptions import HTTPError  # noqa: E402

PROBE_SELECTOR = "app.kubernetes.io/name=netconform-probe"
SECTION_BEGIN = "<!-- soak:begin (written by ./run.sh bench --soak; kept by the benchmark) -->"
SECTION_END = "<!-- soak:end -->"
SECTION = MarkedSection(SECTION_BEGIN, SECTION_END)
DEADLINE = 3 * 3600.0
PARALLEL = 3  # labs at once: the 2-core CI machine's sweet spot (as the detection matrix)
LEFTOVER_GRACE = 60.0  # seconds for a run's deleted namespace to finish terminating

_FAMILY = r"(?:ipv\d-)?"
#: The checks ``snat-cross-node`` breaks (as tests/e2e/test_detection_matrix.py states them):
#: every cross-node pair of test_no_snat, every protocol, and every node's cluster IP spread.
SNAT_CROSS_NODE = (
    rf"test_no_snat::test_no_snat\[{_FAMILY}(?:tcp|udp|icmp)"
    r"-node-(?P<s>\d+)->node-(?!(?P=s)\])\d+\]"
    # A cluster IP's spread reaches the other nodes' endpoints, which see the node's address.
    r"|test_services::test_cluster_ip\["
)
#: The checks ``lossy-pair`` breaks (node-2's pods lose 20 % of their packets to node-3's pods):
#: both ordered pairs of node-2 and node-3 of test_no_snat, every protocol (as the detection
#: matrix states them); and those whose verdict the loss leaves to chance (``LOSSY_PAIR_MAY``).
LOSSY_PAIR = (
    rf"test_no_snat::test_no_snat\[{_FAMILY}(?:tcp|udp|icmp)-node-(?:2->node-3|3->node-2)\]"
)
LOSSY_PAIR_MAY = (
    rf"test_full_size::test_full_size_packets\[{_FAMILY}(?:tcp|udp|icmp)-node-(?:2->node-3|3->node-2)\]"
    rf"|test_services::test_(?:cluster_ip|hairpin)\[{_FAMILY}tcp-node-(?:2|3)\]"
    rf"|test_services::test_node_port_from_pods\[{_FAMILY}tcp-node-(?:2->node-2|3->node-2)\]"
)
#: The checks ``service-resets`` breaks (30 % of new TCP connections to a Service reset): every
#: TCP spread through a cluster IP (hairpin included) or a NodePort, from every node.
SERVICE_RESETS = (
    rf"test_services::test_(?:cluster_ip|hairpin)\[{_FAMILY}tcp-node-\d+\]"
    rf"|test_services::test_node_port_from_(?:pods|hosts)\[{_FAMILY}tcp-node-\d+->node-\d+\]"
)


@dataclass(frozen=True)
class SoakCase:
    """One lab of the soak: its API faults, and the data-plane faults with the checks they
    must fail (a regular expression over ``module::name[id]``)."""

    name: str
    api_faults: tuple[str, ...] = ()
    faults: tuple[str, ...] = ()
    must_fail: str = ""
    #: Checks whose verdict the fault leaves to chance: neither a false failure nor a false pass.
    may_fail: str = ""

    def lab_case(self) -> LabCase:
        return LabCase(faults=self.faults, api_faults=self.api_faults)


#: Every control-plane fault of `netlab api-faults` (forbid aside: a 403 is a refusal by
#: design, whose honest verdict is covered by the install tests), one lab each; then a
#: data-plane fault under a busy API server.
CASES: tuple[SoakCase, ...] = (
    SoakCase("healthy (no API fault)"),
    SoakCase("throttle", ("throttle=0.1",)),
    SoakCase("server-error", ("server-error=0.05",)),
    SoakCase("slow", ("slow=0.2:1",)),
    SoakCase("cut-streams", ("cut-streams=0.2",)),
    SoakCase("evict", (f"evict={PROBE_SELECTOR}@12s",)),
    SoakCase("delete", (f"delete={PROBE_SELECTOR}@12s",)),
    SoakCase("restart", ("restart=15:3",)),
    SoakCase("exec-v4-only", ("exec-v4-only",)),
    SoakCase("sa-delay", ("sa-delay=3:6",)),
    SoakCase(
        "snat-cross-node + busy API",
        ("throttle=0.1", "server-error=0.05", "cut-streams=0.1"),
        ("snat-cross-node",),
        SNAT_CROSS_NODE,
    ),
    # Issue 21: loss that TCP retransmissions and UDP resends hide, and a Service resetting a
    # share of its connections: caught every run, nothing else failed.
    SoakCase("lossy-pair", (), ("lossy-pair",), LOSSY_PAIR, LOSSY_PAIR_MAY),
    SoakCase("service-resets", (), ("service-resets",), SERVICE_RESETS),
)


@dataclass(frozen=True)
class RunVerdict:
    """What one run of the suite did, judged against the faults of its lab."""

    exit_code: int | None
    checks: int
    could_not_test: tuple[str, ...] = ()
    false_failures: tuple[str, ...] = ()
    false_passes: tuple[str, ...] = ()
    #: Checks of the broken rule that failed (data-plane cases only).
    caught: int = 0
    broken_rule: bool = False
    leftovers: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def honest(self) -> bool:
        """No false failure, no false pass, nothing left, and an exit code that says the same:
        2 or (healthy lab) 0 or (broken rule, caught) 1; never 1 without a caught failure,
        never 0 under a data-plane fault."""
        if self.false_failures or self.false_passes or self.leftovers:
            return False
        if self.exit_code == 1:
            return self.caught > 0
        return self.exit_code == 2 or (self.exit_code == 0 and not self.broken_rule)


def judge(
    cases: Sequence[CaseResult],
    exit_code: int | None,
    must_fail: str = "",
    *,
    leftovers: Iterable[str] = (),
    seconds: float = 0.0,
    may_fail: str = "",
) -> RunVerdict:
    """One run's verdict: every error is a could-not-test; a failed check is false unless it
    matches ``must_fail`` or ``may_fail``; a check matching ``must_fail`` that passed is a
    false pass."""
    pattern = re.compile(must_fail) if must_fail else None
    chance = re.compile(may_fail) if may_fail else None
    expected = [c for c in cases if pattern is not None and pattern.search(c.test_id)]
    return RunVerdict(
        exit_code=exit_code,
        checks=len(cases),
        could_not_test=tuple(c.test_id for c in cases if c.outcome == "error"),
        false_failures=tuple(
            c.test_id
            for c in cases
            if c.outcome == "failed"
            and c not in expected
            and not (chance is not None and chance.search(c.test_id))
        ),
        false_passes=tuple(c.test_id for c in expected if c.outcome == "passed"),
        caught=sum(1 for c in expected if c.outcome == "failed"),
        broken_rule=pattern is not None,
        leftovers=tuple(leftovers),
        seconds=seconds,
    )


def say(message: str) -> None:
    print(f"[soak {datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


# --- leftovers ---------------------------------------------------------------------------------


def settled_leftovers(kubeconfig: Path, grace: float = LEFTOVER_GRACE) -> list[str]:
    """The suite's namespaces and pods still in the cluster once a run ended, given ``grace``
    seconds for a deleted namespace to finish terminating (looked at every second)."""
    left: list[str] = Retrying(
        retry=retry_if_result(bool),
        stop=stop_after_delay(grace),
        wait=wait_fixed(1.0),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else [],
    )(cluster_leftovers, kubeconfig)
    return left


def lab_residue(name: str) -> list[str]:
    """What lab ``name`` left on the machine after its teardown: network namespaces, mounts,
    state, and processes whose command line, root or working directory is the lab's."""
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    found += [
        f"netns {line.split()[0]}"
        for line in netns.stdout.splitlines()
        if line.split() and line.split()[0].startswith(f"netlab-{name}-")
    ]
    marks = (f"/run/netlab/{name}/", f"/run/netlab/{name} ", f"netlab-{name}-")
    for line in Path("/proc/self/mounts").read_text().splitlines():
        if any(mark in line + " " for mark in marks):
            found.append(f"mount {line.split()[1]}")
    if Path(f"/run/netlab/{name}").exists():
        found.append(f"state /run/netlab/{name}")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            places = [os.readlink(proc / "root"), os.readlink(proc / "cwd")]
        except OSError:
            continue  # gone meanwhile, or a kernel thread
        if f"--name {name} " in cmdline + " " or any(
            p.startswith(f"/run/netlab/{name}/") for p in places
        ):
            found.append(f"process {proc.name}: {cmdline.strip()[:120]}")
    return found


# --- running ----------------------------------------------------------------------------------


def set_api_faults(lab: str, faults: Sequence[str], seed: int) -> None:
    """The lab's API faults again, with another seed (the admin endpoint, as users switch;
    asked again for up to a minute while a ``restart`` fault has the API down)."""
    argv = [*NETLAB, "api-faults", "--name", lab]
    if faults:
        argv += [arg for fault in (*faults, f"seed={seed}") for arg in ("--set", fault)]
    else:
        argv.append("--clear")
    for attempt in Retrying(
        retry=retry_if_exception_type(subprocess.CalledProcessError),
        stop=stop_after_delay(60),
        wait=wait_fixed(1.0),
        reraise=True,
    ):
        with attempt:
            subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)


@dataclass
class CaseRuns:
    """Every run of one case, and what its lab left after teardown."""

    case: SoakCase
    lab: str = ""
    runs: list[RunVerdict] = field(default_factory=list)
    residue: list[str] = field(default_factory=list)
    error: str | None = None


def soak_case(case: SoakCase, runs: int, out_dir: Path, stop: Callable[[], bool]) -> CaseRuns:
    """Boot the case's lab, run the suite ``runs`` times (another fault seed each time), tear
    the lab down and look for residue."""
    found = CaseRuns(case)
    try:
        with running_lab(case.lab_case()) as (lab, kubeconfig):
            found.lab = lab
            for index in range(runs):
                if stop():
                    break
                if case.api_faults:
                    set_api_faults(lab, case.api_faults, seed=index + 1)
                report_dir = out_dir / f"{lab}-{index + 1}"
                started = time.monotonic()
                results, _, _ = run_suite(kubeconfig, report_dir)
                seconds = time.monotonic() - started
                left = settled_leftovers(kubeconfig)
                verdict = judge(
                    results,
                    summary_exitstatus(report_dir),
                    case.must_fail,
                    leftovers=left,
                    seconds=seconds,
                    may_fail=case.may_fail,
                )
                found.runs.append(verdict)
                say(
                    f"{case.name} run {index + 1}/{runs}: exit {verdict.exit_code}, "
                    f"{len(verdict.could_not_test)} could not test, "
                    f"{len(verdict.false_failures)} false failures, "
                    f"{len(verdict.false_passes)} false passes, {len(left)} left, "
                    f"{seconds:.0f} s"
                )
    except (LabError, subprocess.SubprocessError, OSError, ApiException, HTTPError) as error:
        # A lab that would not boot or go down, a run that overran: reported, not hidden.
        found.error = f"{type(error).__name__}: {error}"
        say(f"{case.name}: {found.error}")
    if found.lab:
        found.residue = lab_residue(found.lab)
    return found


# --- the table ---------------------------------------------------------------------------------


def exit_codes(runs: Sequence[RunVerdict]) -> str:
    counts = Counter(str(r.exit_code) for r in runs)
    return ", ".join(f"{n} x {code}" for code, n in sorted(counts.items())) or "-"


def render_section(results: Sequence[CaseRuns], runs: int, facts: dict[str, Any]) -> str:
    """The Markdown section of ``bench/results.md``, between its markers."""
    lines = [
        SECTION_BEGIN,
        "## Soak under control-plane faults",
        "",
        f"`./run.sh bench --soak {runs}`: the whole suite {runs} times per case, one 3-node lab "
        "per case booted with its faults, another fault seed per run. Could not test: runs "
        "with any check reported COULD NOT TEST, and the checks in all. False failures: failed "
        "checks of rules the lab does not break; false passes: passed checks of the rule the "
        "data-plane fault breaks; leftovers: the suite's namespaces and pods after each run, "
        "and the lab's network namespaces, mounts and processes after its teardown. All three "
        f"must be 0. {facts['date']}, git {facts['git_commit'][:10]}"
        f"{' (dirty)' if facts['git_dirty'] else ''}, {facts['cores']} cores, "
        f"{facts['wall_s']:.0f} s in all, {facts['parallel']} labs at a time.",
        "",
        "| case | API faults | data-plane fault | runs | exit codes | could not test (runs / "
        "checks) | false failures | false passes | caught (of the broken rule) | leftovers | "
        "median run |",
        "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for found in results:
        case, done = found.case, found.runs
        cnt = [len(r.could_not_test) for r in done]
        left = sum(len(r.leftovers) for r in done) + len(found.residue)
        seconds = statistics.median([r.seconds for r in done]) if done else 0.0
        caught = f"{min(r.caught for r in done)}-{max(r.caught for r in done)}" if done else "-"
        lines.append(
            f"| {case.name} | {', '.join(f'`{f}`' for f in case.api_faults) or '-'} | "
            f"{', '.join(f'`{f}`' for f in case.faults) or '-'} | {len(done)} | "
            f"{exit_codes(done)} | {sum(1 for n in cnt if n)} / {sum(cnt)} | "
            f"{sum(len(r.false_failures) for r in done)} | "
            f"{sum(len(r.false_passes) for r in done)} | "
            f"{caught if case.must_fail else '-'} | {left} | {seconds:.0f} s |"
        )
    problems = [  # the first line: the whole text is in soak.json
        f"- {found.case.name}: {found.error.splitlines()[0]}"
        for found in results
        if found.error is not None
    ]
    problems += [
        f"- {found.case.name}: residue after teardown: {', '.join(found.residue)}"
        for found in results
        if found.residue
    ]
    if problems:
        lines += ["", "Problems:", "", *problems]
    lines += ["", SECTION_END, ""]
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------


def run(
    runs: int,
    *,
    out: Path = BENCH,
    cases: Sequence[SoakCase] = CASES,
    parallel: int = PARALLEL,
    deadline: float = DEADLINE,
    facts: dict[str, Any] | None = None,
) -> int:
    """Soak every case ``runs`` times; write the section and ``soak.json``. Exit status 0 when
    every run was honest and nothing was left, else 1."""
    began = time.monotonic()
    # Soak labs are named hs + 6 hex digits unless the caller chose a prefix.
    labrun.LAB_PREFIX = os.environ.get("NETLAB_TEST_LAB_PREFIX", "hs")

    def stop() -> bool:
        return time.monotonic() - began > deadline

    say(f"{len(cases)} cases x {runs} runs, {parallel} labs at a time")
    with (
        tempfile.TemporaryDirectory(prefix="netconform-soak-") as scratch,
        ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="soak") as pool,
    ):
        futures = [
            pool.submit(soak_case, case, runs, Path(scratch) / f"case-{i}", stop)
            for i, case in enumerate(cases)
        ]
        results = [future.result() for future in futures]
    wall = time.monotonic() - began
    facts = {**(facts or {}), "wall_s": wall, "parallel": parallel, "runs": runs}
    facts.setdefault("date", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    facts.setdefault("git_commit", "")
    facts.setdefault("git_dirty", False)
    facts.setdefault("cores", os.cpu_count())
    out.mkdir(parents=True, exist_ok=True)
    document = out / "results.md"
    previous = document.read_text() if document.exists() else "# Benchmarks\n"
    document.write_text(SECTION.replaced(previous, render_section(results, runs, facts)))
    (out / "soak.json").write_text(
        json.dumps(
            {
                "machine": facts,
                "cases": [
                    {
                        "case": asdict(found.case),
                        "lab": found.lab,
                        "error": found.error,
                        "residue": found.residue,
                        "runs": [asdict(r) for r in found.runs],
                    }
                    for found in results
                ],
            },
            indent=2,
        )
        + "\n"
    )
    honest = all(
        not found.error and not found.residue and all(r.honest for r in found.runs)
        for found in results
    )
    say(f"done in {wall:.0f} s: {'every run honest' if honest else 'DISHONEST OR LEFT SOMETHING'}")
    print(render_section(results, runs, facts), flush=True)
    return 0 if honest else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("runs", type=int, help="suite runs per case")
    parser.add_argument("--parallel", type=int, default=PARALLEL)
    parser.add_argument("--only", default="", help="comma-separated case names to run")
    parser.add_argument("--out", type=Path, default=BENCH)
    parser.add_argument("--deadline", type=float, default=DEADLINE)
    args = parser.parse_args(argv)
    cases = [c for c in CASES if not args.only or c.name in args.only.split(",")]
    return run(args.runs, out=args.out, cases=cases, parallel=args.parallel, deadline=args.deadline)


if __name__ == "__main__":
    sys.exit(main())
