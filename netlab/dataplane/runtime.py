"""runc as the lab's container runtime: root filesystems, OCI bundles, run, exec, kill.

The image of every container is the host itself. Each lab holds one non-recursive bind of ``/``
at ``<state>/rootfs`` (runc cannot pivot_root into ``/`` itself) and one tmpfs at
``<state>/layers``. A container's root is an overlay at ``<state>/bundles/<id>/rootfs``: the
host view as its lower layer, ``layers/<id>`` as its upper one, so the mount points runc
creates for volumes land in the tmpfs and never in the host's own directories; runc mounts the
root read-only and gives every container a private tmpfs on ``/tmp``. runc keeps its state
under ``<state>/runc``. So a SIGKILLed lab leaves only things the sweep finds by path.

App containers run as ``runc run`` in the foreground, one asyncio child each, so the exit code
of the container is the exit code of that child (128+signal when killed, as kubelet reports).
What goes into a container (pod spec to ``ContainerConfig``, volumes, /etc files) is the
kubelet's business: ``netlab.kubelet.containers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import json
import logging
import os
import resource
import shutil
import signal
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tenacity import (
    AsyncRetrying,
    RetryError,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_delay,
    wait_fixed,
)

from netlab.dataplane.nsexec import communicate_within
from netlab.spec import LabSpec

log = logging.getLogger(__name__)

RUNC = "runc"
RUNC_TIMEOUT = 20.0  # seconds for one short runc command (create, kill, delete)
START_TIMEOUT = 20.0  # seconds from `runc run` to the container's pid file
MNT_DETACH = 2
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

# containerd's default capability set (oci.WithDefaults / cri's defaultUnixCaps).
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)
# Every capability by number (linux/capability.h); privileged gets those the kernel knows.
ALL_CAPABILITIES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
]
# containerd's defaults for unprivileged containers.
MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class ContainerRuntimeError(RuntimeError):
    """runc failed; the message carries runc's own error line."""


class ContainerStartError(ContainerRuntimeError):
    """runc could not start the process (kubelet: terminated, reason StartError, code 128)."""


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- mounts ------------------------------------------------------------------------------------


def _mount(source: str, target: Path, fstype: str | None, flags: int, data: str | None) -> None:
    result = _libc.mount(
        source.encode(),
        str(target).encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"mount {source} on {target}: {os.strerror(code)}")


def unmount(target: Path) -> None:
    """Lazily unmount ``target``; a path that is not a mount point is fine."""
    if _libc.umount2(str(target).encode(), MNT_DETACH) != 0:
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOENT):
            raise OSError(code, f"umount {target}: {os.strerror(code)}")


def mount_points_under(root: Path) -> list[Path]:
    """Mount points at or below ``root``, deepest first (from /proc/self/mountinfo)."""
    prefix = str(root).rstrip("/")
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = line.split()[4].replace("\\040", " ")
        if target == prefix or target.startswith(prefix + "/"):
            found.append(Path(target))
    return sorted(found, key=lambda path: len(path.parts), reverse=True)


def mount_tmpfs(target: Path, *, mode: str = "0777") -> None:
    target.mkdir(parents=True, exist_ok=True)
    _mount("tmpfs", target, "tmpfs", 0, f"mode={mode}")


_rootfs_lock = threading.Lock()
_rootfs_users: dict[Path, int] = {}


def acquire_rootfs(spec: LabSpec) -> Path:
    """The lab's read-only view of the host (made on first use; one per lab, counted), and
    the tmpfs ``layers`` beside it that holds every container's writable overlay layer."""
    rootfs = spec.state_dir / "rootfs"
    layers = spec.state_dir / "layers"
    with _rootfs_lock:
        mounted = mount_points_under(spec.state_dir)
        if rootfs not in mounted:
            rootfs.mkdir(parents=True, exist_ok=True)
            # Non-recursive: the view is the root filesystem only, not /proc, /run/netns, ...
            _mount("/", rootfs, None, MS_BIND, None)
            _mount("none", rootfs, None, MS_PRIVATE, None)
        if layers not in mounted:
            mount_tmpfs(layers, mode="0700")
        _rootfs_users[rootfs] = _rootfs_users.get(rootfs, 0) + 1
    return rootfs


def release_rootfs(spec: LabSpec) -> None:
    """Undo one acquire_rootfs; the last user unmounts the view and the layers."""
    rootfs = spec.state_dir / "rootfs"
    with _rootfs_lock:
        users = _rootfs_users.get(rootfs, 0) - 1
        if users > 0:
            _rootfs_users[rootfs] = users
            return
        _rootfs_users.pop(rootfs, None)
        for path in (spec.state_dir / "layers", rootfs):
            unmount(path)
            with contextlib.suppress(OSError):
                path.rmdir()


def mount_container_rootfs(
    lower: Path, layer: Path, target: Path, *, image: Path | None = None
) -> None:
    """An overlay of the host view (under an imported image's files, when given) with a
    private upper layer: runc creates missing mount points (volume mountPaths) there instead
    of in the host's own directories."""
    (layer / "upper").mkdir(parents=True, exist_ok=True)
    (layer / "work").mkdir(parents=True, exist_ok=True)
    target.mkdir(parents=True, exist_ok=True)
    lowers = f"{image}:{lower}" if image is not None else str(lower)
    options = f"lowerdir={lowers},upperdir={layer / 'upper'},workdir={layer / 'work'}"
    _mount("overlay", target, "overlay", 0, options)


# --- OCI spec (pure) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    destination: str
    source: str
    type: str = "bind"
    options: tuple[str, ...] = ("rbind", "rprivate")

    def as_oci(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "type": self.type,
            "source": self.source,
            "options": list(self.options),
        }


def bind(source: Path | str, destination: str, *, readonly: bool = False) -> Mount:
    options = ("rbind", "rprivate", "ro") if readonly else ("rbind", "rprivate")
    return Mount(destination=destination, source=str(source), options=options)


@dataclass(frozen=True)
class ContainerConfig:
    """What a container needs from runc: process, namespaces and mounts."""

    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES
    privileged: bool = False
    no_new_privileges: bool = False
    hostname: str | None = None  # set only when the container owns a new UTS namespace
    # namespace type -> path to join, or None for a new one
    namespaces: Mapping[str, str | None] = field(default_factory=dict)
    mounts: tuple[Mount, ...] = ()
    # An imported image's files (netlab.dataplane.images): a lower layer above the host view.
    image_rootfs: Path | None = None


def _base_mounts(privileged: bool) -> list[dict[str, Any]]:
    sys_options = ["nosuid", "noexec", "nodev"] + ([] if privileged else ["ro"])
    return [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": []},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_options},
        # The host view is read-only; /tmp is the container's own scratch space.
        {
            "destination": "/tmp",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777"],
        },
    ]


def known_capabilities() -> list[str]:
    """What privileged means: every capability the runtime itself holds (containerd's
    WithAllCurrentCapabilities), which may be fewer than the kernel knows."""
    try:
        fields = dict(
            line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
        )
        held = int(fields["CapEff"].strip(), 16)
    except (OSError, KeyError, ValueError):
        held = (1 << len(ALL_CAPABILITIES)) - 1
    return [name for bit, name in enumerate(ALL_CAPABILITIES) if held >> bit & 1]


def oci_spec(config: ContainerConfig, *, rootfs: Path, cgroups_path: str) -> dict[str, Any]:
    """The config.json of a bundle for ``config`` (runc spec defaults, containerd's policy)."""
    capabilities = known_capabilities() if config.privileged else list(config.capabilities)
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    process: dict[str, Any] = {
        "terminal": False,
        "user": {"uid": config.uid, "gid": config.gid},
        "args": list(config.args),
        "env": list(config.env),
        "cwd": config.cwd or "/",
        "capabilities": {
            "bounding": capabilities,
            "effective": capabilities,
            "permitted": capabilities,
        },
        # containerd raises NOFILE to 1048576; here the lab may not exceed its own hard limit.
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
        "noNewPrivileges": config.no_new_privileges,
    }
    if config.additional_gids:
        process["user"]["additionalGids"] = list(config.additional_gids)
    linux: dict[str, Any] = {
        "namespaces": [
            {"type": kind, **({"path": path} if path else {})}
            for kind, path in config.namespaces.items()
        ],
        "cgroupsPath": cgroups_path,
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
    }
    if not config.privileged:
        linux["maskedPaths"] = list(MASKED_PATHS)
        linux["readonlyPaths"] = list(READONLY_PATHS)
    spec: dict[str, Any] = {
        "ociVersion": "1.0.2-dev",
        "process": process,
        "root": {"path": str(rootfs), "readonly": True},
        "mounts": _base_mounts(config.privileged) + [m.as_oci() for m in config.mounts],
        "linux": linux,
    }
    if config.hostname is not None:
        spec["hostname"] = config.hostname
    return spec


# --- runc --------------------------------------------------------------------------------------


@dataclass
class RunningContainer:
    """A container started by ``runc run`` in the foreground; its exit code is the child's."""

    id: str
    pid: int
    started_at: str
    process: asyncio.subprocess.Process

    async def wait(self) -> int:
        return await self.process.wait()

    @property
    def exited(self) -> bool:
        return self.process.returncode is not None


class RuncExecProcess:
    """A ``runc exec`` process; ``kill()`` also kills the process inside the container (a
    SIGKILLed runc cannot forward the signal, and the command would run on)."""

    def __init__(self, process: asyncio.subprocess.Process, pid_file: Path) -> None:
        self.process = process
        self.pid_file = pid_file
        self.stdin = process.stdin
        self.stdout = process.stdout
        self.stderr = process.stderr

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def pid(self) -> int:
        return self.process.pid

    async def wait(self) -> int:
        try:
            return await self.process.wait()
        finally:
            self.pid_file.unlink(missing_ok=True)

    async def communicate(self, data: bytes | None = None) -> tuple[bytes, bytes]:
        try:
            return await self.process.communicate(data)
        finally:
            self.pid_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL the command inside the container, then runc itself."""
        with contextlib.suppress(OSError, ValueError, LookupError, RetryError):
            os.kill(self._container_pid(), signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()

    def _container_pid(self) -> int:
        # runc writes the pid file only after the command started: a command that already
        # printed may not have it yet. Wait for it briefly (bounded), unless runc is gone.
        for attempt in Retrying(
            stop=stop_after_delay(1.0),
            wait=wait_fixed(0.01),
            retry=retry_if_exception_type((OSError, ValueError)),
        ):
            with attempt:
                if self.process.returncode is not None and not self.pid_file.exists():
                    raise LookupError("runc exited before writing the pid file")
                return int(self.pid_file.read_text().strip())
        raise AssertionError("unreachable: tenacity either returns or raises")


class ContainerRuntime:
    """runc for one lab: bundles, state and cgroups named after the lab."""

    def __init__(self, spec: LabSpec) -> None:
        self.spec = spec
        self.runc_root = spec.state_dir / "runc"
        self.bundles = spec.state_dir / "bundles"
        self._rootfs: Path | None = None
        self._exec_count = 0

    def start(self) -> None:
        self.runc_root.mkdir(parents=True, exist_ok=True)
        self.bundles.mkdir(parents=True, exist_ok=True)
        if self._rootfs is None:
            self._rootfs = acquire_rootfs(self.spec)

    def close(self) -> None:
        if self._rootfs is not None:
            self._rootfs = None
            release_rootfs(self.spec)

    @property
    def rootfs(self) -> Path:
        if self._rootfs is None:
            raise ContainerRuntimeError("runtime not started")
        return self._rootfs

    def _runc(self, *argv: str) -> list[str]:
        return [RUNC, "--root", str(self.runc_root), *argv]

    def bundle_dir(self, container_id: str) -> Path:
        return self.bundles / container_id

    def write_bundle(self, container_id: str, config: ContainerConfig) -> Path:
        bundle = self.bundle_dir(container_id)
        bundle.mkdir(parents=True, exist_ok=True)
        rootfs = bundle / "rootfs"
        if rootfs not in mount_points_under(rootfs):
            layer = self.spec.state_dir / "layers" / container_id
            mount_container_rootfs(self.rootfs, layer, rootfs, image=config.image_rootfs)
        # Flat cgroup name with the lab prefix: runc delete removes it whole, a sweep finds it.
        document = oci_spec(
            config, rootfs=rootfs, cgroups_path=f"/netlab-{self.spec.name}-{container_id}"
        )
        (bundle / "config.json").write_text(json.dumps(document))
        (bundle / "pid").unlink(missing_ok=True)
        return bundle

    def remove_bundle(self, container_id: str) -> None:
        bundle = self.bundle_dir(container_id)
        unmount(bundle / "rootfs")
        shutil.rmtree(bundle, ignore_errors=True)
        shutil.rmtree(self.spec.state_dir / "layers" / container_id, ignore_errors=True)

    async def _command(self, *argv: str, check: bool = True) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            *self._runc(*argv),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            output, _ = await communicate_within(process, RUNC_TIMEOUT)
        except TimeoutError:
            raise ContainerRuntimeError(f"runc {argv[0]} timed out") from None
        text = output.decode(errors="replace").strip()
        code = process.returncode if process.returncode is not None else -1
        if check and code != 0:
            raise ContainerRuntimeError(f"runc {' '.join(argv[:1])} {argv[-1]}: {_last(text)}")
        return code, text

    async def _wait_pid_file(
        self, container_id: str, process: asyncio.subprocess.Process | None
    ) -> int:
        pid_file = self.bundle_dir(container_id) / "pid"

        async def read_pid() -> int | None:
            try:
                return int(pid_file.read_text().strip())
            except (FileNotFoundError, ValueError):
                if process is not None and process.returncode is not None:
                    return -1  # runc ended without starting the process
                return None

        # runc writes the pid file once the process runs; a short poll is cheaper than inotify.
        retrying = AsyncRetrying(
            retry=retry_if_result(lambda value: value is None),
            wait=wait_fixed(0.005),
            stop=stop_after_delay(START_TIMEOUT),
        )
        try:
            pid: int = await retrying(read_pid)
        except RetryError:
            raise ContainerStartError(f"{container_id}: no pid within {START_TIMEOUT}s") from None
        return pid

    async def run(
        self, container_id: str, config: ContainerConfig, log_path: Path
    ) -> RunningContainer:
        """Start a container whose output is appended to ``log_path``; returns once its process
        runs. Raises ContainerStartError (with runc's reason) when the process cannot start."""
        bundle = self.write_bundle(container_id, config)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        runc_log = bundle / "runc.log"
        with log_path.open("ab") as output:
            # The log file is handed straight to the container (runc passes stdio through).
            process = await asyncio.create_subprocess_exec(
                *self._runc(
                    "--log",
                    str(runc_log),
                    "--log-format",
                    "json",
                    "run",
                    "--bundle",
                    str(bundle),
                    "--pid-file",
                    str(bundle / "pid"),
                    container_id,
                ),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                # Own session: a Ctrl-C to the lab must not reach containers through runc.
                start_new_session=True,
            )
        pid = await self._wait_pid_file(container_id, process)
        if pid < 0:
            await process.wait()
            raise ContainerStartError(
                _runc_error(runc_log) or f"runc run exited {process.returncode}"
            )
        return RunningContainer(id=container_id, pid=pid, started_at=now_rfc3339(), process=process)

    async def run_detached(self, container_id: str, config: ContainerConfig) -> int:
        """Start a long-lived helper (the pause container) in the background; returns its pid."""
        bundle = self.write_bundle(container_id, config)
        runc_log = bundle / "runc.log"
        # Detached runc hands its stdio to the container: no pipes, or they would never close.
        process = await asyncio.create_subprocess_exec(
            *self._runc(
                "--log", str(runc_log), "--log-format", "json", "run", "-d", "--bundle", str(bundle)
            ),
            "--pid-file",
            str(bundle / "pid"),
            container_id,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            await communicate_within(process, RUNC_TIMEOUT)  # no pipes: waits for the exit
        except TimeoutError:
            raise ContainerStartError(f"pause {container_id}: runc run -d timed out") from None
        if process.returncode != 0:
            raise ContainerStartError(f"pause {container_id}: {_runc_error(runc_log)}")
        return int((bundle / "pid").read_text().strip())

    async def kill(self, container_id: str, signal_number: int) -> None:
        """Signal the container's init; a container already gone is fine."""
        await self._command("kill", container_id, str(int(signal_number)), check=False)

    async def stop(self, running: RunningContainer, grace_seconds: float) -> int:
        """SIGTERM, up to ``grace_seconds`` for it to exit, then SIGKILL. Returns the exit code."""
        if not running.exited:
            await self.kill(running.id, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(grace_seconds, 0.0)):
                    return await running.wait()
            await self.kill(running.id, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RUNC_TIMEOUT):
                    return await running.wait()
            # runc itself is stuck: take it down, the state is removed by delete below.
            running.process.kill()
        code = await running.wait()
        return code

    async def delete(self, container_id: str, pid: int | None = None) -> None:
        """Remove the container (killing it if needed) and its bundle.

        With the init ``pid`` known, SIGKILL and a pidfd wait replace ``delete --force``,
        which polls the dying process every 100 ms."""
        if pid is not None:
            await self.kill(container_id, signal.SIGKILL)
            with contextlib.suppress(TimeoutError, OSError):
                await wait_pid_exit(pid, RUNC_TIMEOUT)
        await self._command("delete", "--force", container_id, check=False)
        self.remove_bundle(container_id)

    async def exec(
        self,
        container_id: str,
        argv: Sequence[str],
        *,
        env: Sequence[str] = (),
        cwd: str | None = None,
        stdin: bool = False,
    ) -> RuncExecProcess:
        """``runc exec`` in the container. runc takes the process user, capabilities and env
        from the bundle's config.json; ``env`` entries are added, ``cwd`` overrides."""
        options: list[str] = []
        for entry in env:
            options += ["--env", entry]
        if cwd:
            options += ["--cwd", cwd]
        self._exec_count += 1
        pid_file = self.bundle_dir(container_id) / f"exec-{self._exec_count}.pid"
        process = await asyncio.create_subprocess_exec(
            *self._runc("exec", "--pid-file", str(pid_file), *options, container_id, *argv),
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        return RuncExecProcess(process, pid_file)

    async def list_ids(self) -> list[str]:
        """Container ids runc knows under this lab's root."""
        code, text = await self._command("list", "--quiet", check=False)
        return text.split() if code == 0 else []


async def wait_pid_exit(pid: int, timeout: float) -> None:
    """Wait until process ``pid`` (any process, not only a child) has exited."""
    try:
        descriptor = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    exited = loop.create_future()
    # A pidfd turns readable when its process exits: no polling.

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(descriptor, on_exit)
    try:
        async with asyncio.timeout(timeout):
            await exited
    finally:
        loop.remove_reader(descriptor)
        os.close(descriptor)


def _last(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _runc_error(runc_log: Path) -> str:
    """The last error runc logged (JSON lines with ``msg``)."""
    try:
        lines = runc_log.read_text().splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            if line.strip():
                return line.strip()
            continue
        if entry.get("level") in ("error", "fatal"):
            return str(entry.get("msg", "")).strip()
    return ""
