"""Peak memory of a process tree from /proc: the root's own VmHWM (the kernel's high-water
mark) and the peak of the tree's summed VmRSS, sampled in the background; and the CPU time the
tree used."""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
SAMPLE_INTERVAL = 0.25  # seconds between samples of the tree
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def parse_status(text: str) -> dict[str, int]:
    """The ``kB`` fields of a /proc/PID/status text, in KiB (``{"VmHWM": 51234, ...}``)."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            fields[key] = int(parts[0])
    return fields


def status_of(pid: int) -> dict[str, int]:
    """The memory fields of ``pid`` (empty once it is gone)."""
    try:
        return parse_status((PROC / str(pid) / "status").read_text())
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}


def parent_of(stat: str) -> int:
    """The ppid from a /proc/PID/stat line (the command name may hold spaces and parentheses)."""
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def descendants(root: int) -> list[int]:
    """``root`` and every live process below it, from one pass over /proc."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = parent_of((entry / "stat").read_text())
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


@dataclass
class TreePeak:
    """What the sampler saw: the root's VmHWM, the peak of the tree's summed RSS, and the
    largest VmHWM of any one process in the tree (all KiB)."""

    root_vmhwm_kib: int = 0
    tree_rss_peak_kib: int = 0
    largest_vmhwm_kib: int = 0
    max_processes: int = 0
    samples: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "daemon_vmhwm_kib": self.root_vmhwm_kib,
            "tree_rss_peak_kib": self.tree_rss_peak_kib,
            "largest_process_vmhwm_kib": self.largest_vmhwm_kib,
            "max_processes": self.max_processes,
            "samples": self.samples,
        }


class TreeSampler:
    """Samples the tree under ``root`` every `SAMPLE_INTERVAL` until stopped (context manager)."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.peak = TreePeak()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"memory-{root}", daemon=True)

    def sample(self) -> None:
        pids = descendants(self.root)
        statuses = [status_of(pid) for pid in pids]
        peak = self.peak
        peak.root_vmhwm_kib = max(peak.root_vmhwm_kib, statuses[0].get("VmHWM", 0))
        peak.tree_rss_peak_kib = max(
            peak.tree_rss_peak_kib, sum(s.get("VmRSS", 0) for s in statuses)
        )
        peak.largest_vmhwm_kib = max(peak.largest_vmhwm_kib, *(s.get("VmHWM", 0) for s in statuses))
        peak.max_processes = max(peak.max_processes, sum(1 for s in statuses if s))
        peak.samples += 1

    def _loop(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(SAMPLE_INTERVAL):
                return

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def cpu_seconds_of(stat: str) -> float:
    """utime + stime + cutime + cstime of a /proc/PID/stat line, in seconds: the process's own
    CPU and that of the children it has reaped."""
    fields = stat[stat.rindex(")") + 2 :].split()
    # Fields 14-17 of stat(5); fields[0] here is field 3 (state).
    ticks = sum(int(value) for value in fields[11:15])
    return ticks / CLOCK_TICKS


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by ``root`` and everything below it (live processes' own time
    plus whatever each of them reaped: a short-lived exec counts once, in its parent)."""
    total = 0.0
    for pid in descendants(root):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
            total += cpu_seconds_of((PROC / str(pid) / "stat").read_text())
    return total
