"""``./run.sh bench``: for each node count, boot a netlab, measure the lab, run the whole suite
serially and with ``-n 4`` as a user does, and tear the lab down; then write results.json,
results.md and wall_time.png in ``bench/``.

Bounded: every step has a deadline (see the constants), and each lab is taken down in a
``finally`` (also on a failure, Ctrl-C or SIGTERM), then checked for leftover namespaces.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from time import monotonic
from typing import Any

from kubernetes import client, config

from bench.memory import TreeSampler, tree_cpu_seconds
from bench.pods import EXEC_METHOD, delete_wave, exec_round_trips, plain_pod, run_wave
from bench.stats import MODES, Spread, parse_api_bench, read_junit, render_markdown, write_json
from conformance.kit.base.settings import Timeouts
from conformance.kit.cluster.api import name_of
from conformance.kit.cluster.namespace import wait_for_default_service_account
from conformance.kit.probes.model import deployed_pod_count

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
VENV_BIN = Path(sys.executable).parent
NETLAB = [sys.executable, "-m", "netlab"]
#: Lab names start with this ($NETCONFORM_BENCH_LAB_PREFIX: runs sharing a machine keep apart).
LAB_PREFIX = os.environ.get("NETCONFORM_BENCH_LAB_PREFIX", "hb")
BENCH_NAMESPACE = "netbench"

# Deadlines (seconds). A healthy 3-node run takes about two minutes; see README.
UP_TIMEOUT = 300
DOWN_TIMEOUT = 300
WAVE_TIMEOUT = 180
SUITE_TIMEOUT = 1200
API_BENCH_TIMEOUT = 300
IDLE_WINDOW = 10.0  # seconds of an empty lab's CPU use, measured after boot
DEADLINE = 3 * 3600.0  # the whole run, whatever the node counts
INTERRUPT_GRACE = 60  # for pytest to clean its namespace after Ctrl-C

#: The suite's modes; the NetworkPolicy family is measured apart (``--netpol``: bench/netpol.py),
#: so the suite rows stay comparable with the runs before it existed.
SUITE_MODES: dict[str, list[str]] = {
    "serial": ["-m", "not netpol"],
    "n4": ["-n", "4", "-m", "not netpol"],
    "netpol": ["-m", "netpol"],
}


def say(message: str) -> None:
    print(f"[bench {datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


# --- machine ---------------------------------------------------------------------------------


def _git(*argv: str) -> str:
    done = subprocess.run(
        ["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
    )
    return done.stdout.strip()


def machine_facts() -> dict[str, Any]:
    """Cores, kernel, date, git commit: what a figure needs next to it to mean anything."""
    return {
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "memory_total_kib": _meminfo_total(),
    }


def _meminfo_total() -> int | None:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return None


# --- lab -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lab:
    name: str
    nodes: int
    kubeconfig: str
    up_seconds: float
    daemon_pid: int


def leftover_namespaces(name: str) -> list[str]:
    listing = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=30, check=True
    )
    return [
        line.split()[0]
        for line in listing.stdout.splitlines()
        if line.split() and line.split()[0].startswith(f"netlab-{name}-")
    ]


@contextlib.contextmanager
def booted_lab(nodes: int) -> Iterator[Lab]:
    """A fresh lab of ``nodes`` nodes named ``hb<nodes>-<hex>``, down again on exit whatever
    happened (the down is bounded; leftovers are reported)."""
    name = f"{LAB_PREFIX}{nodes}-{secrets.token_hex(3)}"[:12]
    say(f"{nodes} nodes: netlab up --name {name}")
    started = monotonic()
    try:
        up = subprocess.run(
            [*NETLAB, "up", "--nodes", str(nodes), "--name", name],
            capture_output=True,
            text=True,
            timeout=UP_TIMEOUT,
            check=False,
        )
        up_seconds = monotonic() - started
        if up.returncode != 0:
            raise RuntimeError(f"netlab up --nodes {nodes} failed: {up.stderr.strip()[-2000:]}")
        kubeconfig = up.stdout.strip().splitlines()[-1]
        pid = int((Path("/run/netlab") / name / "daemon.pid").read_text().strip())
        say(f"{nodes} nodes: up in {up_seconds:.2f} s (daemon pid {pid})")
        yield Lab(name, nodes, kubeconfig, up_seconds, pid)
    finally:
        began = monotonic()
        down = subprocess.run(
            [*NETLAB, "down", "--name", name, "--quiet"],
            capture_output=True,
            text=True,
            timeout=DOWN_TIMEOUT,
            check=False,
        )
        left = leftover_namespaces(name)
        say(
            f"{nodes} nodes: netlab down in {monotonic() - began:.1f} s (exit {down.returncode})"
            + (f"; LEFTOVER namespaces: {' '.join(left)}" if left else "; nothing left")
        )


def core_api(kubeconfig: str) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(kubeconfig))  # type: ignore[no-untyped-call]


def lab_figures(lab: Lab, *, waves: int, execs: int) -> dict[str, Any]:
    """The floor (one wave of as many pods as the suite deploys), pod start spread over
    ``waves`` waves, and the exec round trip on the last wave's pods."""
    core = core_api(lab.kubeconfig)
    before = tree_cpu_seconds(lab.daemon_pid)
    threading.Event().wait(IDLE_WINDOW)
    idle_cpu = (tree_cpu_seconds(lab.daemon_pid) - before) / IDLE_WINDOW
    say(f"{lab.nodes} nodes: idle lab uses {idle_cpu:.2f} CPU ({IDLE_WINDOW:.0f} s window)")
    nodes = sorted(name_of(n) for n in core.list_node().items)
    count = deployed_pod_count(nodes)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=BENCH_NAMESPACE)))
    # As the suite does: pods wait for the namespace's ServiceAccount (the lab makes it late,
    # as kube-controller-manager does); the wait is not part of any figure.
    wait_for_default_service_account(core, BENCH_NAMESPACE, Timeouts())
    wave_seconds: list[float] = []
    starts: list[float] = []
    deletes: list[float] = []
    rtt = python_rtt = Spread.of([])
    for index in range(waves):
        labels = {"bench": "floor", "wave": str(index)}
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        pods = [
            plain_pod(f"floor-{index}-{i}", nodes[i % len(nodes)], labels) for i in range(count)
        ]
        wave = run_wave(core, BENCH_NAMESPACE, pods, timeout=WAVE_TIMEOUT)
        wave_seconds.append(wave.all_ready_seconds)
        starts.extend(wave.start_seconds)
        say(
            f"{lab.nodes} nodes: wave {index + 1}/{waves}: {count} pods Ready in "
            f"{wave.all_ready_seconds:.2f} s (create-to-Running median "
            f"{Spread.of(wave.start_seconds).median:.2f} s)"
        )
        if index == waves - 1 and execs:
            names = [name_of(p) for p in pods]
            rtt = exec_round_trips(core, BENCH_NAMESPACE, names, execs)
            say(
                f"{lab.nodes} nodes: exec round trip median {rtt.median * 1000:.0f} ms, "
                f"p95 {rtt.p95 * 1000:.0f} ms ({rtt.count} execs)"
            )
            # What every suite exec pays on top: a Python interpreter starting in the pod.
            python_rtt = exec_round_trips(
                core, BENCH_NAMESPACE, names, max(1, execs // 3), ("python3", "-c", "pass")
            )
            say(
                f"{lab.nodes} nodes: exec of python3 -c pass: median "
                f"{python_rtt.median * 1000:.0f} ms, p95 {python_rtt.p95 * 1000:.0f} ms"
            )
        deletes.append(
            delete_wave(
                core,
                BENCH_NAMESPACE,
                selector,
                [name_of(p) for p in pods],
                timeout=WAVE_TIMEOUT,
            )
        )
    core.delete_namespace(BENCH_NAMESPACE)
    floor = Spread.of(wave_seconds)
    return {
        "floor_pods": count,
        "floor_s": floor.median,
        "floor_waves_s": wave_seconds,
        "pod_start": Spread.of(starts).as_dict(),
        "wave_delete_s": deletes,
        "exec_rtt": rtt.as_dict(),
        "exec_python_rtt": python_rtt.as_dict(),
        "exec_method": EXEC_METHOD,
        "idle_lab_cpu": idle_cpu,
    }


# --- suite -----------------------------------------------------------------------------------


def _stop_group(process: subprocess.Popen[bytes], first: signal.Signals, grace: float) -> None:
    """Signal pytest's process group, then SIGKILL it if it outlives ``grace``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, first)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def run_suite(
    lab: Lab, mode: str, out_dir: Path, *, profile_to: Path | None = None
) -> dict[str, Any]:
    """Run the whole suite as a user does (``pytest --kubeconfig KC --junitxml X``, plus
    ``-n 4`` in mode n4) from the repository root; wall time, JUnit counts, peak memory."""
    junit = out_dir / f"junit-{lab.nodes}-{mode}.xml"
    log = out_dir / f"pytest-{lab.nodes}-{mode}.log"
    pytest = [str(VENV_BIN / "pytest")]
    if profile_to is not None:
        pytest = [sys.executable, "-m", "cProfile", "-o", str(profile_to), "-m", "pytest"]
    argv = [
        *pytest,
        "--kubeconfig",
        lab.kubeconfig,
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        *SUITE_MODES[mode],
    ]
    say(f"{lab.nodes} nodes: suite {mode}: {' '.join(argv[-5:])}")
    timed_out = threading.Event()
    with log.open("wb") as output:
        started = monotonic()
        # Own session so a timeout can stop pytest and its xdist workers together.
        process = subprocess.Popen(
            argv, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )

        def expire() -> None:
            timed_out.set()
            _stop_group(process, signal.SIGTERM, 30)

        timer = threading.Timer(SUITE_TIMEOUT, expire)
        timer.start()
        lab_cpu = tree_cpu_seconds(lab.daemon_pid)
        try:
            with TreeSampler(process.pid) as sampler:
                _, status, usage = os.wait4(process.pid, 0)
                wall = monotonic() - started
                lab_cpu = tree_cpu_seconds(lab.daemon_pid) - lab_cpu
        except BaseException:
            # Ctrl-C or SIGTERM: pytest never saw it (own session); let it clean up, then go.
            _stop_group(process, signal.SIGINT, INTERRUPT_GRACE)
            raise
        finally:
            timer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
    result: dict[str, Any] = {
        "command": " ".join(argv),
        "exit_code": process.returncode,
        "timed_out": timed_out.is_set(),
        "wall_s": wall,
        # wait4: the larger of pytest's own peak and its largest reaped child's (xdist worker).
        "pytest_maxrss_kib": usage.ru_maxrss,
        "pytest_tree": sampler.peak.as_dict(),
        "cpu_user_s": usage.ru_utime,
        "cpu_system_s": usage.ru_stime,
        # What the lab (daemon, runc, containers, execs) burnt meanwhile.
        "lab_cpu_s": lab_cpu,
    }
    if not junit.exists():
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"suite {mode} on {lab.nodes} nodes wrote no JUnit; output:\n{tail}")
    counts = read_junit(junit)
    result.update(
        tests=counts.tests,
        checks_run=counts.checks_run,
        failures=counts.failed,
        skipped=counts.skipped,
        slowest=[[name, round(seconds, 3)] for name, seconds in counts.durations[:10]],
        case_seconds_total=round(sum(s for _, s in counts.durations), 3),
    )
    summary_path = junit.parent / "summary.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        summary = json.loads(summary_path.read_text())
        result["probe_pods"] = deployed_pod_count(summary["cluster"]["nodes_tested"])
        # The reachability sweep's size and pace: every exchange the run made, and how fast.
        exchanges = summary["exchanges"]
        result["exchanges"] = int(exchanges["planned"])
        result["exchange_attempts"] = int(exchanges["attempts"])
        result["sweep_s"] = float(exchanges["seconds"])
    say(
        f"{lab.nodes} nodes: suite {mode}: {wall:.1f} s, {counts.checks_run} checks run, "
        f"{counts.failed} failed, exit {process.returncode}, pytest peak "
        f"{usage.ru_maxrss / 1024:.0f} MiB, CPU pytest {usage.ru_utime + usage.ru_stime:.0f} s, "
        f"lab {lab_cpu:.0f} s"
    )
    return result


def profile_summary(path: Path, limit: int = 30) -> str:
    """The top of a cProfile dump by cumulative time, plus call counts of the suspects."""
    import io
    import pstats

    text = io.StringIO()
    stats = pstats.Stats(str(path), stream=text)
    stats.sort_stats("cumulative").print_stats(limit)
    stats.sort_stats("tottime").print_stats(15)
    # The suite's own functions (kit and checks) and the costs suspected in issue #7.
    stats.sort_stats("cumulative").print_stats(r"conformance/|scapy|ssl", 40)
    return text.getvalue()


# --- whole run -------------------------------------------------------------------------------


def api_list_figures() -> dict[str, Any]:
    """``bench/api_bench.py`` as a subprocess (fake agents, no lab): its list figures."""
    say("API list of 1,000 pods: python bench/api_bench.py")
    done = subprocess.run(
        [sys.executable, str(BENCH / "api_bench.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=API_BENCH_TIMEOUT,
        check=False,
    )
    figures = parse_api_bench(done.stdout)
    failed = f"failed (exit {done.returncode}): {done.stderr.strip()[-300:]}"
    say(
        "API list: "
        + (", ".join(f"{k} {v['median_ms']:.0f} ms" for k, v in figures.items()) or failed)
    )
    return {"exit_code": done.returncode, "figures": figures, "output": done.stdout.strip()}


def node_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--nodes takes counts like 3,10,30, not {text!r}"
        ) from None
    if not counts or any(not 1 <= n <= 64 for n in counts):
        raise argparse.ArgumentTypeError(f"--nodes: each count must be 1..64, got {text!r}")
    return counts


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def kept_sections(document: str) -> str:
    """The sections of ``results.md`` other runs write (the soak, the genuine cluster, the
    NetworkPolicy family), each empty when there is none."""
    from bench import netpol, realk8s, soak

    return "".join(module.SECTION.found_in(document) for module in (soak, realk8s, netpol))


def write_outputs(results: dict[str, Any], out: Path, *, plot: bool) -> None:
    write_json(out / "results.json", results)
    document = out / "results.md"
    # The soak's (--soak N) and the genuine cluster's (--real-k8s) sections stay: they are
    # written by their own runs.
    text = document.read_text() if document.exists() else ""
    kept = kept_sections(text)
    document.write_text(render_markdown(results) + kept)
    if plot and results["runs"]:
        from bench.plot import plot_wall_time

        plot_wall_time(results, out / "wall_time.png")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="./run.sh bench",
        description="Benchmark the suite and netlab per node count; write bench/results.*.",
    )
    parser.add_argument("--nodes", type=node_counts, default=[3, 10, 30], help="e.g. 3,10")
    parser.add_argument("--modes", default="serial,n4", help="suite modes: serial,n4")
    parser.add_argument("--waves", type=int, default=3, help="floor waves per lab (default 3)")
    parser.add_argument("--execs", type=int, default=30, help="exec round trips per lab")
    parser.add_argument("--no-api", action="store_true", help="skip the API list benchmark")
    parser.add_argument("--no-plot", action="store_true", help="skip wall_time.png")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also run the serial suite once under cProfile on the first lab (bench/profile.txt)",
    )
    parser.add_argument("--out", type=Path, default=BENCH, help="where results go (bench/)")
    parser.add_argument(
        "--deadline",
        type=float,
        default=DEADLINE,
        help=f"stop (tearing the lab down) after this many seconds (default {DEADLINE:.0f})",
    )
    parser.add_argument(
        "--soak",
        type=int,
        metavar="N",
        help="instead: the suite N times under each control-plane fault (bench/soak.py)",
    )
    parser.add_argument(
        "--real-k8s",
        action="store_true",
        help="instead: the 3-node suite on the genuine Kubernetes fixture, young and warm"
        " kubelets, serial and -n 2 (bench/realk8s.py)",
    )
    parser.add_argument(
        "--netpol",
        action="store_true",
        help="instead: the NetworkPolicy family alone (-m netpol), serial, --runs times on one"
        " 3-node lab (bench/netpol.py)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=3,
        help="with --real-k8s: fresh clusters per mode; with --netpol: runs (default 3)",
    )
    args = parser.parse_args(argv)
    if args.real_k8s:
        if os.geteuid() != 0:
            parser.error("the genuine cluster needs root")
        from bench import realk8s  # imports tests/support: only when asked for

        return realk8s.run(args.runs, out=args.out, facts=machine_facts())
    if args.netpol:
        if os.geteuid() != 0:
            parser.error("the benchmark boots a lab: run it as root")
        from bench import netpol

        return netpol.run(args.runs, out=args.out, facts=machine_facts())
    if args.soak is not None:
        if os.geteuid() != 0:
            parser.error("the soak boots labs: run it as root")
        from bench import soak  # imports the lab runner of tests/support: only when asked for

        return soak.run(args.soak, out=args.out, deadline=args.deadline, facts=machine_facts())
    modes = [m for m in args.modes.split(",") if m]
    if unknown := [m for m in modes if m not in MODES]:
        parser.error(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
    if os.geteuid() != 0:
        parser.error("the benchmark boots labs: run it as root")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    # The whole run is bounded: at the deadline, the same path as Ctrl-C (labs torn down).
    deadline = threading.Timer(args.deadline, os.kill, (os.getpid(), signal.SIGTERM))
    deadline.daemon = True
    deadline.start()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "command": "./run.sh bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_facts(),
        "runs": [],
    }
    began = monotonic()
    say(f"nodes {args.nodes}, modes {modes}, {args.waves} waves, {args.execs} execs per lab")
    try:
        if not args.no_api:
            results["api_list"] = api_list_figures()
        with tempfile.TemporaryDirectory(prefix="netconform-bench-") as scratch:
            for nodes in args.nodes:
                run: dict[str, Any] = {"nodes": nodes, "suite": {}}
                with booted_lab(nodes) as lab:
                    run["lab_name"] = lab.name
                    run["lab_up_s"] = lab.up_seconds
                    with TreeSampler(lab.daemon_pid) as lab_memory:
                        run.update(lab_figures(lab, waves=args.waves, execs=args.execs))
                        for mode in modes:
                            out_dir = Path(scratch) / f"{nodes}-{mode}"
                            out_dir.mkdir()
                            suite = run_suite(lab, mode, out_dir)
                            suite["ratio_to_floor"] = suite["wall_s"] / run["floor_s"]
                            run["suite"][mode] = suite
                        if args.profile and nodes == args.nodes[0]:
                            out_dir = Path(scratch) / f"{nodes}-profile"
                            out_dir.mkdir()
                            dump = out_dir / "suite.prof"
                            run["profiled_serial"] = run_suite(
                                lab, "serial", out_dir, profile_to=dump
                            )
                            (args.out / "profile.txt").write_text(profile_summary(dump))
                            say(f"profile of one serial run: {args.out / 'profile.txt'}")
                    run["lab_memory"] = lab_memory.peak.as_dict()
                say(
                    f"{nodes} nodes: lab daemon VmHWM {run['lab_memory']['daemon_vmhwm_kib'] / 1024:.0f} MiB, "
                    f"lab tree peak RSS {run['lab_memory']['tree_rss_peak_kib'] / 1024:.0f} MiB"
                )
                results["runs"].append(run)
                write_outputs(results, args.out, plot=False)
    finally:
        deadline.cancel()
        results["elapsed_s"] = monotonic() - began
        if results["runs"]:
            write_outputs(results, args.out, plot=not args.no_plot)
            say(f"wrote {args.out / 'results.json'}, results.md, wall_time.png")
    say(f"done in {results['elapsed_s']:.0f} s")
    print((args.out / "results.md").read_text(), flush=True)
    failed = [
        f"{run['nodes']} nodes {mode}"
        for run in results["runs"]
        for mode, suite in run["suite"].items()
        if suite["exit_code"] != 0
    ]
    if failed:
        say(f"suite runs with a non-zero exit: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
