"""Remove everything a lab made, found from its state directory and by its names.

Works after the lab daemon died by SIGKILL: nothing here needs the daemon's memory. Order:
runc containers, then processes (in the lab's namespaces, named in its pid files, or running
with the lab's state directory on their command line), then mounts under the state directory
(deepest first, lazily), then the lab's network namespaces, then the state directory.
Idempotent; never touches another lab (``netlab-a-`` never matches lab ``ab`` or ``a-b``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from netlab.dataplane.nsexec import NETNS_RUN_DIR
from netlab.spec import STATE_ROOT

log = logging.getLogger(__name__)

MNT_DETACH = 2
PROCESS_EXIT_TIMEOUT = 3.0  # seconds to wait for SIGKILLed processes to disappear
RUNC_TIMEOUT = 15.0
# The shapes of namespace names after ``netlab-<lab>-``: the fabric, nodes, the outside host,
# and pods (uid prefix of 8 hex digits, optionally more). Lab names are at most 12 characters,
# so another lab's ``<name>-fabric`` etc. can never be read as one of these suffixes.
NETNS_SUFFIX = re.compile(r"^(fabric|outside|node-[0-9]+|pod-[0-9a-f]{8}(-[0-9a-z-]+)?)$")


@dataclass
class SweepReport:
    """What a sweep removed (empty lists: nothing of the lab was there)."""

    lab: str
    containers: list[str] = field(default_factory=list)
    processes: list[int] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    state_dir_removed: bool = False
    problems: list[str] = field(default_factory=list)  # things that could not be removed

    @property
    def found_anything(self) -> bool:
        return bool(
            self.containers
            or self.processes
            or self.mounts
            or self.namespaces
            or self.state_dir_removed
        )

    def summary(self) -> str:
        """One line for the user."""
        if not self.found_anything and not self.problems:
            return f"lab {self.lab}: nothing to clean up"
        parts = [
            f"{len(self.containers)} containers",
            f"{len(self.processes)} processes",
            f"{len(self.mounts)} mounts",
            f"{len(self.namespaces)} namespaces",
            "state dir" if self.state_dir_removed else "no state dir",
        ]
        text = f"lab {self.lab}: removed " + ", ".join(parts)
        if self.problems:
            text += f"; {len(self.problems)} problems: " + "; ".join(self.problems)
        return text


def lab_netns_names(lab: str, *, netns_dir: Path = NETNS_RUN_DIR) -> list[str]:
    """Every pinned network namespace that belongs to ``lab``, sorted."""
    prefix = f"netlab-{lab}-"
    try:
        names = os.listdir(netns_dir)
    except FileNotFoundError:
        return []
    return sorted(
        name
        for name in names
        if name.startswith(prefix) and NETNS_SUFFIX.match(name.removeprefix(prefix))
    )


# --- processes ---------------------------------------------------------------------------------


def _ancestors_and_self() -> set[int]:
    """This process and its ancestors: never killed, even if their command line names the lab."""
    protected: set[int] = set()
    pid = os.getpid()
    for _ in range(64):  # bounded walk up the tree
        protected.add(pid)
        if pid <= 1:
            break
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return protected


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


def _start_time(pid: int) -> float | None:
    """Wall-clock start time of ``pid`` (None if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    ticks = int(stat.rsplit(")", 1)[1].split()[19])
    return _boot_time() + ticks / os.sysconf("SC_CLK_TCK")


def _namespace_identities(names: Iterable[str]) -> set[tuple[int, int]]:
    identities: set[tuple[int, int]] = set()
    for name in names:
        try:
            status = os.stat(NETNS_RUN_DIR / name)
        except OSError:
            continue
        identities.add((status.st_dev, status.st_ino))
    return identities


def _pids_from_pid_files(state_dir: Path) -> set[int]:
    """Live pids named by ``*.pid`` files under the state dir, skipping reused pids (a process
    that started after its pid file was written cannot be the one it names)."""
    pids: set[int] = set()
    for pid_file in _files_on_this_mount(state_dir, suffix=".pid"):
        try:
            pid = int(pid_file.read_text().strip())
            written = pid_file.stat().st_mtime
        except (OSError, ValueError):
            continue
        if process_started_before(pid, written):
            pids.add(pid)
    return pids


def _files_on_this_mount(directory: Path, *, suffix: str) -> Iterator[Path]:
    """Files ending in ``suffix`` below ``directory``, never descending into a mount point (a
    container rootfs under the state dir is a bind of ``/``). Mount points come from
    mountinfo: a bind mount of the same filesystem looks like a plain directory to stat."""
    mount_points = set(mounts_under(directory))
    for parent, subdirectories, files in os.walk(directory):
        subdirectories[:] = [
            name for name in subdirectories if os.path.join(parent, name) not in mount_points
        ]
        yield from (Path(parent, name) for name in files if name.endswith(suffix))


def lab_processes(lab: str, state_dir: Path, namespaces: Iterable[str]) -> set[int]:
    """Pids that belong to the lab, never including this process or its ancestors."""
    identities = _namespace_identities(namespaces)
    marker = f"{state_dir}/".encode()
    found = _pids_from_pid_files(state_dir)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            namespace = os.stat(f"/proc/{pid}/ns/net")
            if (namespace.st_dev, namespace.st_ino) in identities:
                found.add(pid)
                continue
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile, or a kernel thread
        if any(arg.startswith(marker) for arg in cmdline.split(b"\0")):
            found.add(pid)
    return found - _ancestors_and_self()


def _kill_and_wait(pids: set[int], problems: list[str]) -> list[int]:
    killed = []
    for pid in sorted(pids):
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            continue
    # Bounded wait until they are gone, so their namespaces and mounts are released.
    wait_until_gone = Retrying(
        stop=stop_after_delay(PROCESS_EXIT_TIMEOUT),
        wait=wait_fixed(0.02),
        retry=retry_if_result(bool),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else [],
    )
    still_alive: list[int] = wait_until_gone(lambda: [pid for pid in killed if process_alive(pid)])
    if still_alive:
        problems.append(f"processes still alive after SIGKILL: {still_alive}")
    return killed


def process_started_before(pid: int, moment: float) -> bool:
    """True if ``pid`` runs and started no later than ``moment`` (+1 s of clock slack): the
    test that a pid read from a file written at ``moment`` was not reused since."""
    started = _start_time(pid)
    return started is not None and started <= moment + 1.0


def process_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (our own zombie children are reaped)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


# --- runc, mounts, namespaces ------------------------------------------------------------------


def _delete_runc_containers(runc_root: Path, problems: list[str]) -> list[str]:
    runc = shutil.which("runc")
    if runc is None or not runc_root.is_dir():
        return []
    listing = subprocess.run(
        [runc, "--root", str(runc_root), "list", "-q"],
        capture_output=True,
        text=True,
        timeout=RUNC_TIMEOUT,
        check=False,
    )
    if listing.returncode != 0:
        problems.append(f"runc list in {runc_root}: {listing.stderr.strip()}")
        return []
    deleted = []
    for container in listing.stdout.split():
        deletion = subprocess.run(
            [runc, "--root", str(runc_root), "delete", "-f", container],
            capture_output=True,
            text=True,
            timeout=RUNC_TIMEOUT,
            check=False,
        )
        if deletion.returncode == 0:
            deleted.append(container)
        else:
            problems.append(f"runc delete {container}: {deletion.stderr.strip()}")
    return deleted


def _unescape_mountinfo(field_text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal (\040 ...).
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field_text)


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory``, deepest first (each listed once)."""
    root = str(directory)
    points: set[str] = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = _unescape_mountinfo(line.split()[4])
        if point == root or point.startswith(root + "/"):
            points.add(point)
    return sorted(points, key=lambda point: (-point.count("/"), point))


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _unmount_all(directory: Path, problems: list[str]) -> list[str]:
    libc = _libc()
    unmounted = []
    # Stacked mounts on one point need one umount each; bound the passes.
    for _ in range(16):
        points = mounts_under(directory)
        if not points:
            break
        for point in points:
            if libc.umount2(point.encode(), MNT_DETACH) == 0:
                unmounted.append(point)
            else:
                code = ctypes.get_errno()
                if code not in (errno.EINVAL, errno.ENOENT):
                    problems.append(f"umount {point}: {os.strerror(code)}")
        if problems:
            break
    return unmounted


def _remove_namespaces(names: list[str], problems: list[str]) -> list[str]:
    libc = _libc()
    removed = []
    for name in names:
        path = NETNS_RUN_DIR / name
        libc.umount2(str(path).encode(), MNT_DETACH)  # EINVAL when not a mount: fine
        try:
            path.unlink()
            removed.append(name)
        except FileNotFoundError:
            continue
        except OSError as error:
            problems.append(f"remove netns {name}: {error.strerror}")
    return removed


def sweep(
    spec_name: str, state_root: Path = STATE_ROOT, *, keep: Collection[str] = ()
) -> SweepReport:
    """Remove every container, process, mount, namespace and file of lab ``spec_name``.

    ``keep`` names top-level files of the state dir to leave in place (the daemon keeps the
    log it is writing); with ``keep`` empty the state dir itself is removed.
    """
    state_dir = state_root / spec_name
    report = SweepReport(lab=spec_name)
    report.containers = _delete_runc_containers(state_dir / "runc", report.problems)
    namespaces = lab_netns_names(spec_name)
    report.processes = _kill_and_wait(
        lab_processes(spec_name, state_dir, namespaces), report.problems
    )
    if state_dir.exists():
        report.mounts = _unmount_all(state_dir, report.problems)
    report.namespaces = _remove_namespaces(lab_netns_names(spec_name), report.problems)
    if state_dir.is_dir() and not report.problems and mounts_under(state_dir):
        # Never rmtree through a mount (a container rootfs is a bind of /).
        report.problems.append(f"mounts remain under {state_dir}; left it in place")
    if state_dir.is_dir() and not report.problems:
        if keep:
            for entry in state_dir.iterdir():
                if entry.name in keep:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        else:
            shutil.rmtree(state_dir)
            report.state_dir_removed = True
    if report.found_anything or report.problems:
        log.info("%s", report.summary())
    return report
