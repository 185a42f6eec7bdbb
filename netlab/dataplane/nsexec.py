"""Run things inside a named network namespace (``/run/netns/<name>``).

Commands go through ``nsenter --net=PATH`` so that only the child process changes namespace;
``in_netns_thread`` runs a Python callable on a short-lived thread that joins the namespace
(network namespaces are per thread), which is how sysctls under ``/proc/sys/net`` are written
without forking. ``communicate_within`` bounds the lab's asynchronous commands (CNI plugins,
iptables-restore, runc) by a deadline.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from pyroute2 import netns as pyroute2_netns

NETNS_RUN_DIR = Path("/run/netns")
NSENTER = "nsenter"
CLONE_NEWNET = 0x40000000
MNT_DETACH = 2
DEFAULT_COMMAND_TIMEOUT = 20.0  # seconds; every command here is short (iptables, sysctl, runc)

T = TypeVar("T")


class NetnsCommandError(RuntimeError):
    """A command run inside a lab namespace failed; the message carries its stderr."""


def netns_path(netns: str) -> Path:
    """Where ``ip netns`` / pyroute2 pin the namespace called ``netns``."""
    return NETNS_RUN_DIR / netns


def netns_exists(netns: str) -> bool:
    return netns_path(netns).exists()


def nsenter_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """``argv`` prefixed so that it runs in ``netns`` (network namespace only)."""
    return [NSENTER, f"--net={netns_path(netns)}", "--", *argv]


def run_in_netns(
    netns: str,
    argv: Sequence[str],
    *,
    input_text: str | None = None,
    timeout: float = DEFAULT_COMMAND_TIMEOUT,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion in ``netns``; raise NetnsCommandError on failure if ``check``."""
    if not netns_exists(netns):
        # nsenter on a missing path would fail anyway; say which namespace is missing.
        raise NetnsCommandError(f"network namespace {netns} does not exist")
    completed = subprocess.run(
        nsenter_argv(netns, argv),
        input=input_text,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and completed.returncode != 0:
        detail = (completed.stderr or completed.stdout).strip().splitlines()
        raise NetnsCommandError(
            f"{' '.join(argv)} in {netns} exited {completed.returncode}: "
            f"{detail[-1] if detail else 'no output'}"
        )
    return completed


def popen_in_netns(
    netns: str, argv: Sequence[str], **popen_kwargs: object
) -> subprocess.Popen[str]:
    """Start ``argv`` in ``netns`` without waiting (the caller owns and reaps the process)."""
    if not netns_exists(netns):
        raise NetnsCommandError(f"network namespace {netns} does not exist")
    return subprocess.Popen(nsenter_argv(netns, argv), text=True, **popen_kwargs)  # type: ignore[call-overload, no-any-return]


async def communicate_within(
    process: asyncio.subprocess.Process, timeout: float, stdin: bytes | None = None
) -> tuple[bytes, bytes]:
    """``process.communicate(stdin)``, for at most ``timeout`` s: past that the process is
    killed and reaped (nothing left running, no zombie) and `TimeoutError` raised."""
    try:
        async with asyncio.timeout(timeout):
            return await process.communicate(stdin)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise


def in_netns_thread(netns: str, function: Callable[[], T], *, timeout: float = 10.0) -> T:
    """Call ``function`` on a fresh thread that has joined ``netns``; return its result.

    setns(2) with CLONE_NEWNET changes only the calling thread, so the rest of the process
    (and the event loop) never leaves the root namespace.
    """

    def body() -> T:
        namespace_fd = os.open(netns_path(netns), os.O_RDONLY)
        try:
            pyroute2_netns.setns(namespace_fd, flags=0, fork=False)
        finally:
            os.close(namespace_fd)
        return function()

    return _run_on_thread(f"in-netns-{netns}", body, timeout=timeout)


def _run_on_thread(name: str, function: Callable[[], T], *, timeout: float = 10.0) -> T:
    """Run ``function`` on a fresh thread (whose namespaces it may change); return its result
    or re-raise its exception here."""
    outcome: dict[str, T] = {}
    failure: list[BaseException] = []

    def body() -> None:
        try:
            outcome["value"] = function()
        except BaseException as error:  # handed to the caller's thread, re-raised there
            failure.append(error)

    worker = threading.Thread(target=body, name=name, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise NetnsCommandError(f"{name} did not finish within {timeout} s")
    if failure:
        raise failure[0]
    return outcome["value"]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def create_netns(netns: str) -> None:
    """Create and pin a new network namespace ``netns``, without forking.

    A thread unshares its network namespace and pins it (``/proc/<tid>/ns/net``) at
    ``/run/netns/<netns>``. pyroute2's own ``netns.create`` forks and then signals the child,
    and a forked child shares asyncio's signal wakeup pipe: the lab daemon would read that
    child's SIGTERM as its own.
    """
    if netns_exists(netns):
        raise NetnsCommandError(f"network namespace {netns} already exists")

    def body() -> None:
        if _libc().unshare(CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"unshare(CLONE_NEWNET) for {netns}: {os.strerror(error)}")
        pyroute2_netns.attach(netns, threading.get_native_id())

    _run_on_thread(f"create-{netns}", body)


def remove_netns(netns: str) -> bool:
    """Unpin ``netns`` (it dies with its last user). False if it did not exist."""
    path = netns_path(netns)
    if not path.exists():
        return False
    _libc().umount2(str(path).encode(), MNT_DETACH)  # EINVAL if not a mount: fine
    path.unlink(missing_ok=True)
    return True


def write_sysctls_here(values: dict[str, str]) -> None:
    """Set sysctls (dotted names, e.g. ``net.ipv4.ip_forward``) in the calling thread's
    network namespace."""
    for name, value in values.items():
        Path("/proc/sys", *name.split(".")).write_text(value)


def write_sysctls(netns: str, values: dict[str, str]) -> None:
    """Set sysctls (dotted names, e.g. ``net.ipv4.ip_forward``) inside ``netns``."""
    in_netns_thread(netns, lambda: write_sysctls_here(values))


def read_sysctl(netns: str, name: str) -> str:
    """One sysctl's value as seen inside ``netns``."""
    return in_netns_thread(netns, lambda: Path("/proc/sys", *name.split(".")).read_text().strip())
