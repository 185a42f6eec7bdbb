"""The genuine Kubernetes fixture (``../shared/realk8s/``, its README says what it is) as the
project's tests use it: find it, install what it needs, bring a cluster up for the length of a
``with`` block and down again whatever happened, and run commands inside a node's network
namespace (``rk-node-N``), where a fault of that node is made.

The fixture's scripts own the cluster: ``install.sh`` (idempotent), ``up.sh`` (prints the admin
kubeconfig as its last line) and ``down.sh`` (stops exactly what ``up.sh`` recorded). Only one
genuine cluster can run on a machine; whoever uses this module owns it for the time being.
Every script runs in its own session, so a Ctrl-C reaches the test process, whose ``finally``
then takes the cluster down, and never a script halfway through.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Where the fixture is looked for unless `FIXTURE_VARIABLE` says otherwise.
DEFAULT_FIXTURE = ROOT.parent / "shared" / "realk8s"
#: A folder holding the fixture (install.sh, up.sh, down.sh), to use instead of the default.
FIXTURE_VARIABLE = "NETCONFORM_REALK8S"
SCRIPTS = ("install.sh", "up.sh", "down.sh")
#: The fixture's own defaults (its scripts' ``RK_RUN``, ``RK_ETC``, ``RK_STATE``, ``BRIDGE``).
RK_RUN = Path(os.environ.get("RK_RUN", "/run/rk"))
RK_ETC = Path(os.environ.get("RK_ETC", "/etc/rk"))
RK_STATE = Path(os.environ.get("RK_STATE", "/var/lib/rk"))
BRIDGE = os.environ.get("BRIDGE", "rkbr0")
NODE_NETNS_PREFIX = "rk-node-"

# Bounds (seconds). install.sh takes about 90 s on a clean machine (debootstrap of the probe
# image), up.sh 30 to 60 s, down.sh up to 15 s per process it stops.
INSTALL_TIMEOUT = 900
UP_TIMEOUT = 300
DOWN_TIMEOUT = 300
NODE_COMMAND_TIMEOUT = 30


class RealK8sError(RuntimeError):
    """A fixture script failed, outlived its bound, or left something behind."""


@dataclass(frozen=True)
class Fixture:
    """The fixture's folder."""

    directory: Path

    def script(self, name: str) -> Path:
        return self.directory / name


def locate() -> tuple[Fixture | None, str]:
    """The fixture (``$NETCONFORM_REALK8S``, else ``../shared/realk8s`` next to the checkout)
    and an empty string, or None and one line saying why there is none here."""
    configured = os.environ.get(FIXTURE_VARIABLE)
    directory = Path(configured) if configured else DEFAULT_FIXTURE
    where = f"${FIXTURE_VARIABLE}={configured}" if configured else str(directory)
    hint = f"(set ${FIXTURE_VARIABLE} to its folder)"
    if not directory.is_dir():
        return None, f"no genuine Kubernetes fixture at {where} {hint}"
    missing = [name for name in SCRIPTS if not (directory / name).is_file()]
    if missing:
        return None, f"the fixture at {where} lacks {', '.join(missing)} {hint}"
    return Fixture(directory), ""


def _run_script(
    fixture: Fixture,
    name: str,
    *args: str,
    timeout: float,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``bash SCRIPT ARGS`` in its own session, bounded; on a timeout or an interrupt the
    script's whole session is killed before the error propagates."""
    process = subprocess.Popen(
        ["bash", str(fixture.script(name)), *args],
        cwd=fixture.directory,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def install(fixture: Fixture) -> float:
    """``install.sh`` (idempotent: fast when everything is in place); its seconds."""
    started = time.monotonic()
    done = _run_script(fixture, "install.sh", timeout=INSTALL_TIMEOUT)
    if done.returncode != 0:
        raise RealK8sError(f"install.sh exited {done.returncode}:\n{done.stderr[-3000:]}")
    return time.monotonic() - started


@dataclass(frozen=True)
class RealCluster:
    """A running genuine cluster: its admin kubeconfig, nodes, and when ``up.sh`` returned
    (every node Ready and untainted; ``time.monotonic()``)."""

    fixture: Fixture
    kubeconfig: Path
    nodes: int
    ready_at: float
    up_seconds: float
    node_names: tuple[str, ...] = field(default=())

    def netns(self, node: int) -> str:
        """The network namespace of node ``node`` (1-based): ``rk-node-N``."""
        if not 1 <= node <= self.nodes:
            raise ValueError(f"node {node} is not one of 1..{self.nodes}")
        return f"{NODE_NETNS_PREFIX}{node}"

    def age(self) -> float:
        """Seconds since the nodes were Ready (the kubelets are about that old)."""
        return time.monotonic() - self.ready_at


def down(fixture: Fixture, nodes: int, *, purge: bool = False) -> subprocess.CompletedProcess[str]:
    """``down.sh`` for ``nodes`` nodes (stops what ``up.sh`` recorded; safe when nothing runs);
    with ``purge`` also its state (etcd data, PKI, logs): the next cluster starts empty."""
    args = ("--purge",) if purge else ()
    return _run_script(fixture, "down.sh", *args, timeout=DOWN_TIMEOUT, env={"NODES": str(nodes)})


def _down_whatever_happens(
    fixture: Fixture, nodes: int, *, purge: bool = False
) -> subprocess.CompletedProcess[str]:
    """`down`, finished even through a Ctrl-C (one more would leave a half-torn cluster)."""
    try:
        return down(fixture, nodes, purge=purge)
    except KeyboardInterrupt:
        return down(fixture, nodes, purge=purge)


def recorded_pids() -> dict[str, int]:
    """The processes ``up.sh`` recorded (name -> pid)."""
    pids: dict[str, int] = {}
    path = RK_RUN / "pids"
    if path.is_file():
        for line in path.read_text().splitlines():
            name, _, pid = line.partition(" ")
            if pid.strip().isdigit():
                pids[name] = int(pid)
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fixture_processes() -> list[str]:
    """Processes whose command line names the fixture's run or state folders (containerd, its
    shims, kubelets), as ``pid command``."""
    markers = [str(path).encode() for path in (RK_RUN, RK_ETC, RK_STATE)]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if any(marker in cmdline for marker in markers):
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name} {command}")
    return found


def leftovers(pids: dict[str, int] | None = None) -> list[str]:
    """What of a cluster is still on the machine: node namespaces, the bridge, node cgroups,
    processes of the fixture (``pids``: those recorded before ``down.sh`` emptied the list)."""
    found: list[str] = []
    netns_dir = Path("/run/netns")
    if netns_dir.is_dir():
        found += [
            f"netns {p.name}" for p in netns_dir.iterdir() if p.name.startswith(NODE_NETNS_PREFIX)
        ]
    if Path("/sys/class/net", BRIDGE).exists():
        found.append(f"bridge {BRIDGE}")
    found += [f"cgroup {path}" for path in Path("/sys/fs/cgroup").glob(f"*/{NODE_NETNS_PREFIX}*")]
    found += [f"process {name} ({pid})" for name, pid in (pids or {}).items() if _alive(pid)]
    found += [f"process {line[:200]}" for line in _fixture_processes()]
    return found


@contextmanager
def cluster(fixture: Fixture, nodes: int = 3) -> Iterator[RealCluster]:
    """A fresh genuine cluster of ``nodes`` nodes: whatever ran before is taken down first and
    its state purged (``up.sh`` would bring back every object an earlier cluster left in etcd,
    and the kubelets are young when the block starts), ``up.sh`` brings it up, and ``down.sh``
    takes it down on the way out, also on a failure or Ctrl-C, keeping its logs to read; then
    nothing of it may be left running (`leftovers`), else `RealK8sError`."""
    _down_whatever_happens(fixture, nodes, purge=True)
    pids: dict[str, int] = {}
    started = time.monotonic()
    try:
        up = _run_script(fixture, "up.sh", timeout=UP_TIMEOUT, env={"NODES": str(nodes)})
        ready_at = time.monotonic()
        pids = recorded_pids()
        if up.returncode != 0:
            raise RealK8sError(f"up.sh exited {up.returncode}:\n{up.stderr[-4000:]}")
        kubeconfig = Path(up.stdout.strip().splitlines()[-1])
        yield RealCluster(
            fixture=fixture,
            kubeconfig=kubeconfig,
            nodes=nodes,
            ready_at=ready_at,
            up_seconds=ready_at - started,
            node_names=tuple(f"node-{i}" for i in range(1, nodes + 1)),
        )
    finally:
        pids = pids or recorded_pids()
        done = _down_whatever_happens(fixture, nodes)
        left = leftovers(pids)
        if done.returncode != 0 or left:
            raise RealK8sError(
                f"down.sh exited {done.returncode} and left {left}:\n{done.stderr[-2000:]}"
            )


def in_node(
    cluster: RealCluster,
    node: int,
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = NODE_COMMAND_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """``argv`` inside node ``node``'s network namespace (``ip netns exec rk-node-N``), where a
    fault of that node is made (iptables, ``ip link``, ``tc``). With ``check``, a non-zero exit
    is a `RealK8sError` quoting its stderr."""
    ip = shutil.which("ip") or "/usr/sbin/ip"
    done = subprocess.run(
        [ip, "netns", "exec", cluster.netns(node), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        raise RealK8sError(
            f"in {cluster.netns(node)}: {' '.join(argv)} exited {done.returncode}: "
            f"{done.stderr.strip()[-1000:]}"
        )
    return done
