"""``netlab up / down / status / faults``: start, stop and inspect local labs.

``up`` starts the lab daemon (``python -m netlab.lab``) detached, waits until it is ready or
failed, and prints the kubeconfig path as the last line of stdout. Progress and errors go to
stderr; bad input is one line on stderr, a non-zero exit and nothing left behind.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from netlab.api.admin import add_api_faults_command
from netlab.dataplane.cleanup import lab_netns_names, process_alive, process_started_before, sweep
from netlab.dataplane.outside import external_host_values
from netlab.dataplane.topology import check_topology_faults
from netlab.faults import describe_faults
from netlab.lab import default_kubeconfig
from netlab.spec import (
    FAILED_FILE,
    INFO_FILE,
    IP_FAMILIES,
    LOG_FILE,
    PID_FILE,
    READY_FILE,
    STATE_ROOT,
    LabSpec,
    LabSpecError,
)

CNI_PLUGIN_DIR = Path("/usr/lib/cni")
REQUIRED_CNI_PLUGINS = ("bridge", "host-local", "loopback")
REQUIRED_TOOLS = ("runc", "nsenter", "iptables-restore", "nft")
TOOL_PACKAGES = {"nsenter": "util-linux", "iptables-restore": "iptables", "nft": "nftables"}
UP_TIMEOUT = 60.0  # seconds for the daemon to report ready or failed
DOWN_TIMEOUT = 60.0  # seconds for the daemon to tear down after SIGTERM before SIGKILL
POLL_INTERVAL = 0.1
LOG_TAIL_LINES = 15


class UsageError(Exception):
    """Bad input or an unusable machine; the message is the one line the user sees."""


def say(message: str) -> None:
    print(f"netlab: {message}", file=sys.stderr, flush=True)


# --- daemon bookkeeping ------------------------------------------------------------------------


def daemon_pid(state_dir: Path) -> int | None:
    """The live lab daemon's pid from its pid file, or None (no file, dead, or a reused pid)."""
    pid_file = state_dir / PID_FILE
    try:
        pid = int(pid_file.read_text().strip())
        written = pid_file.stat().st_mtime
    except (OSError, ValueError):
        return None
    if process_alive(pid) and process_started_before(pid, written):
        return pid
    return None


def _wait_for(condition: Any, timeout: float) -> Any:
    """Poll ``condition()`` until it returns something truthy or ``timeout`` passes; return its
    last result (falsy on timeout)."""
    poll = Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(POLL_INTERVAL),
        retry=retry_if_result(lambda result: not result),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
    )
    return poll(condition)


# --- up ----------------------------------------------------------------------------------------


def check_machine() -> None:
    if os.geteuid() != 0:
        raise UsageError("netlab needs root (it creates network namespaces); run it as root")
    for tool in REQUIRED_TOOLS:
        if shutil.which(tool) is None:
            package = TOOL_PACKAGES.get(tool, tool)
            raise UsageError(
                f"{tool} is not installed (install it, e.g. apt-get install {package})"
            )
    for plugin in REQUIRED_CNI_PLUGINS:
        if not (CNI_PLUGIN_DIR / plugin).exists():
            raise UsageError(
                f"CNI plugin {CNI_PLUGIN_DIR / plugin} is missing (apt-get install containernetworking-plugins)"
            )


def spec_from_args(args: argparse.Namespace) -> LabSpec:
    try:
        spec = LabSpec(
            name=args.name,
            nodes=getattr(args, "nodes", 3),
            ip_family=getattr(args, "ip_family", "ipv4"),
            faults=frozenset(getattr(args, "fault", [])),
            api_faults=tuple(getattr(args, "api_fault", [])),
            network_policy=not getattr(args, "no_network_policy", False),
            state_root=args.state_root,
            images=tuple(path.absolute() for path in getattr(args, "image", [])),
        )
        check_topology_faults(spec)
    except LabSpecError as error:
        raise UsageError(str(error)) from None
    return spec


@dataclass
class _LogFollower:
    """Echoes the daemon's progress lines (logger ``netlab.lab``) from its log to stderr."""

    path: Path
    offset: int = 0

    def echo_new_lines(self) -> None:
        try:
            with self.path.open("rb") as log_file:
                log_file.seek(self.offset)
                chunk = log_file.read()
        except OSError:
            return
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            if " netlab.lab INFO " in line:
                say(line.split(" netlab.lab INFO ", 1)[1])


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(f"  {line}" for line in lines[-LOG_TAIL_LINES:])


def command_up(args: argparse.Namespace) -> int:
    check_machine()
    spec = spec_from_args(args)
    for image in spec.images:
        if not image.is_file():
            raise UsageError(f"image archive {image} does not exist")
    state_dir = spec.state_dir
    running = daemon_pid(state_dir)
    if running is not None:
        raise UsageError(
            f"lab {spec.name} is already running (pid {running}); "
            f"`netlab down --name {spec.name}` first"
        )
    kubeconfig: Path = (args.kubeconfig or default_kubeconfig(spec)).absolute()
    if kubeconfig.exists() and not kubeconfig.is_relative_to(state_dir):
        raise UsageError(f"{kubeconfig} exists; netlab will not overwrite it, choose another path")

    sweep(spec.name, spec.state_root)  # leftovers of a lab that died without `down`
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / LOG_FILE
    argv = [sys.executable, "-m", "netlab.lab", "--name", spec.name, "--nodes", str(spec.nodes)]
    argv += ["--ip-family", spec.ip_family]
    for fault in sorted(spec.faults):
        argv += ["--fault", fault]
    for api_fault in spec.api_faults:
        argv += ["--api-fault", api_fault]
    for image in spec.images:
        argv += ["--image", str(image)]
    if not spec.network_policy:
        argv.append("--no-network-policy")
    argv += ["--kubeconfig", str(kubeconfig), "--state-root", str(spec.state_root)]
    say(
        f"starting lab {spec.name}: {spec.nodes} nodes, {spec.ip_family}, "
        f"faults {sorted(spec.faults) or 'none'}, API faults {list(spec.api_faults) or 'none'}"
        + ("" if spec.network_policy else ", NetworkPolicy not enforced")
    )
    with log_path.open("ab") as log_file:
        daemon = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives this command and the terminal
            cwd="/",
        )
    follower = _LogFollower(log_path)

    def outcome() -> str | None:
        follower.echo_new_lines()
        if (state_dir / READY_FILE).exists():
            return "ready"
        if (state_dir / FAILED_FILE).exists() or daemon.poll() is not None:
            return "failed"
        return None

    try:
        result = _wait_for(outcome, UP_TIMEOUT)
    except KeyboardInterrupt:
        # Ctrl-C while waiting: do not leave a half-started lab running detached.
        say(f"interrupted; stopping lab {spec.name}")
        _stop_daemon(daemon.pid, timeout=DOWN_TIMEOUT)
        daemon.wait(timeout=5)
        sweep(spec.name, spec.state_root)
        return 130
    if result == "ready":
        hosts = " ".join(f"--external-host {value}" for value in external_host_values(spec))
        say(
            f"outside host {', '.join(spec.outside_addresses)} ({spec.outside_netns}) runs the "
            f"edge server; run the suite with {hosts}"
        )
        say(f"lab {spec.name} is up; `netlab down --name {spec.name}` stops it")
        print(kubeconfig, flush=True)
        return 0

    if result is None:
        reason = f"not ready after {UP_TIMEOUT:.0f} s"
    else:
        try:
            reason = (state_dir / FAILED_FILE).read_text().strip()
        except OSError:
            reason = f"the lab daemon exited with code {daemon.poll()}"
    say(f"lab {spec.name} failed to start: {reason}")
    tail = _log_tail(log_path)
    if tail:
        print(f"last lines of {log_path}:\n{tail}", file=sys.stderr)
    _stop_daemon(daemon.pid, timeout=DOWN_TIMEOUT if daemon.poll() is None else 0.0)
    daemon.wait(timeout=5)
    sweep(spec.name, spec.state_root)
    return 1


# --- down --------------------------------------------------------------------------------------


def _stop_daemon(pid: int, *, timeout: float) -> bool:
    """SIGTERM, wait up to ``timeout``, then SIGKILL its whole session. True if it went
    by itself."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    if timeout > 0 and _wait_for(lambda: not process_alive(pid), timeout):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # the daemon leads its session (start_new_session)
    return False


def command_down(args: argparse.Namespace) -> int:
    try:
        spec = LabSpec(name=args.name, state_root=args.state_root)
    except LabSpecError as error:
        raise UsageError(str(error)) from None
    if os.geteuid() != 0:
        raise UsageError("netlab needs root (it removes network namespaces); run it as root")
    pid = daemon_pid(spec.state_dir)
    if pid is not None:
        if not args.quiet:
            say(f"stopping lab {spec.name} (pid {pid})")
        if not _stop_daemon(pid, timeout=DOWN_TIMEOUT):
            say(f"lab {spec.name} did not stop within {DOWN_TIMEOUT:.0f} s; killed it")
    report = sweep(spec.name, spec.state_root)
    if report.problems:
        say(report.summary())
        return 1
    if not args.quiet:
        if pid is None and not report.found_anything:
            say(f"no lab named {spec.name}")
        elif pid is None:
            say(f"lab {spec.name} was not running; removed its leftovers")
        else:
            say(f"lab {spec.name} is down")
    return 0


# --- status ------------------------------------------------------------------------------------


def _pod_count(kubeconfig: Path) -> str:
    """Pods in the lab, asked of its API with the kubeconfig's credentials (loopback only)."""
    try:
        config = yaml.safe_load(kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        request = urllib.request.Request(f"{cluster['server']}/api/v1/pods?limit=500")
        if user.get("token"):
            request.add_header("Authorization", f"Bearer {user['token']}")
        context = ssl.create_default_context()
        if cluster.get("insecure-skip-tls-verify"):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif cluster.get("certificate-authority-data"):
            context.load_verify_locations(
                cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
            )
        with urllib.request.urlopen(request, timeout=2, context=context) as response:
            return str(len(json.load(response).get("items", [])))
    except (OSError, ValueError, KeyError, TypeError, IndexError, yaml.YAMLError) as error:
        return f"unknown ({type(error).__name__})"


def command_status(args: argparse.Namespace) -> int:
    root: Path = args.state_root
    if args.name:
        names = [args.name]
    else:
        names = sorted(entry.name for entry in root.iterdir()) if root.is_dir() else []
    if not names:
        say("no labs")
        return 0
    for name in names:
        state_dir = root / name
        pid = daemon_pid(state_dir)
        if pid is None:
            leftovers = state_dir.exists() or lab_netns_names(name)
            print(
                f"{name}: not running"
                + (" (leftovers; `netlab down` removes them)" if leftovers else "")
            )
            continue
        try:
            info = json.loads((state_dir / INFO_FILE).read_text())
        except (OSError, ValueError):
            print(f"{name}: starting (pid {pid})")
            continue
        pods = _pod_count(Path(info["kubeconfig"]))
        print(
            f"{name}: running (pid {pid}), {info['nodes']} nodes, "
            f"{info.get('ip_family', 'ipv4')}, API {info['api_url']}, "
            f"pods {pods}, faults {', '.join(info['faults']) or 'none'}, "
            f"outside host {' '.join(info.get('external_hosts', [])) or 'none'}, "
            f"kubeconfig {info['kubeconfig']}"
        )
    return 0


def command_faults(args: argparse.Namespace) -> int:
    print(describe_faults())
    return 0


# --- entry point -------------------------------------------------------------------------------


class OneLineArgumentParser(argparse.ArgumentParser):
    """Usage errors as one line (the full usage stays behind ``--help``)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="netlab", description=__doc__.splitlines()[0])
    parser.add_argument("--state-root", type=Path, default=STATE_ROOT, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="start a lab and print its kubeconfig path")
    up.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    up.add_argument(
        "--ip-family",
        choices=list(IP_FAMILIES),
        default="ipv4",
        help="pod, node and service address families (default ipv4; dual is IPv4-primary)",
    )
    up.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME",
        help="break one network rule (repeatable; `netlab faults` lists them)",
    )
    up.add_argument(
        "--api-fault",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="a control-plane fault (repeatable; `netlab api-faults` lists them)",
    )
    up.add_argument(
        "--image",
        action="append",
        default=[],
        type=Path,
        metavar="ARCHIVE",
        help="an OCI image archive whose files containers of that image see over the host's "
        "(repeatable)",
    )
    up.add_argument(
        "--no-network-policy",
        action="store_true",
        help="serve NetworkPolicies but enforce none (as a CNI without policy support)",
    )
    up.add_argument("--name", default="default", help="lab name (default 'default')")
    up.add_argument(
        "--kubeconfig",
        type=Path,
        help="where to write the kubeconfig (default /run/netlab/NAME/kubeconfig)",
    )
    up.set_defaults(handler=command_up)

    down = commands.add_parser("down", help="stop a lab and remove everything it made")
    down.add_argument("--name", default="default")
    down.add_argument("--quiet", action="store_true", help="print nothing unless it fails")
    down.set_defaults(handler=command_down)

    status = commands.add_parser("status", help="show labs")
    status.add_argument("--name")
    status.set_defaults(handler=command_status)

    faults = commands.add_parser("faults", help="list the fault modes")
    faults.set_defaults(handler=command_faults)
    add_api_faults_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except UsageError as error:
        say(str(error))
        return 2
