"""The ``serve`` command: its arguments, and the process that opens the listeners, the
control socket (and edge control listeners) and runs them until SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import itertools
import os
import platform
import signal
import socket
import threading
from typing import TYPE_CHECKING, Any

from .control import open_control_socket, serve_control
from .dispatch import Agent
from .edge import EdgeControl, host_port_text, open_edge_control, parse_host_port, parse_networks
from .files import DataDirectories
from .listeners import (
    RecordBook,
    open_icmp_recorders,
    open_listeners,
    serve_icmp_records,
    serve_tcp,
    serve_udp,
)
from .protocol import (
    DEFAULT_SOCKET,
    DEFAULT_TCP_PORT,
    DEFAULT_UDP_PORT,
    RequestError,
    describe_os_error,
    log,
    one_line_traceback,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line) and serve; the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.edge_control and not args.allow_connect:
        parser.error("--edge-control needs --allow-connect: the addresses it may connect to")
    return run_serve(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agent.py", description="netconform probe agent")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the listeners and the control socket")
    serve.add_argument(
        "--tcp-port", type=_port, default=DEFAULT_TCP_PORT, help="0: a free port (see info)"
    )
    serve.add_argument(
        "--udp-port", type=_port, default=DEFAULT_UDP_PORT, help="0: a free port (see info)"
    )
    serve.add_argument("--socket", default=DEFAULT_SOCKET, help="control unix socket path")
    serve.add_argument(
        "--data-dir",
        action="append",
        default=[],
        help="a directory write_file/read_file may use (repeatable); none: file requests refused",
    )
    serve.add_argument(
        "--edge-control",
        type=_host_port,
        action="append",
        default=[],
        metavar="ADDR:PORT",
        help="also serve as the edge server: a TCP control listener on this address alone, "
        "taking only info and connect (to --allow-connect addresses) from relaying pods; "
        "repeatable (one per address of the host)",
    )
    serve.add_argument(
        "--allow-connect",
        type=_networks,
        action="append",
        default=[],
        metavar="CIDR[,CIDR...]",
        help="addresses the edge server may connect to (the nodes); repeatable; needed with "
        "--edge-control",
    )
    return parser


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535 (0: pick a free one), got {port}")
    return port


def _host_port(text: str) -> tuple[str, int]:
    try:
        return parse_host_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _networks(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    try:
        return parse_networks(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run_serve(args: argparse.Namespace) -> int:
    stop = threading.Event()
    book = RecordBook()
    try:
        listen_sockets, listeners, ports = open_listeners(args.tcp_port, args.udp_port)
        control = open_control_socket(args.socket)
        edges = [open_edge_control(host, port) for host, port in args.edge_control]
    except (OSError, RequestError) as exc:
        text = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
        log(f"serve cannot start: {text}")
        return 1
    recorders = open_icmp_recorders()
    listeners["icmp"] = ["ipv6" if sock.family == socket.AF_INET6 else "ipv4" for sock in recorders]
    agent = Agent(book, listeners, ports, DataDirectories(args.data_dir))
    threads: list[tuple[Callable[..., None], tuple[Any, ...]]] = [
        (serve_control, (control, agent, stop))
    ]
    if edges:
        allowed = [network for group in args.allow_connect for network in group]
        agent.edge = {
            "control": [host_port_text(host, port) for host, port in args.edge_control],
            "allow_connect": [str(network) for network in allowed],
        }
        edge_control = EdgeControl(agent, allowed)
        threads.extend((serve_control, (edge, edge_control, stop)) for edge in edges)
    for sock in listen_sockets:
        target = serve_tcp if sock.type == socket.SOCK_STREAM else serve_udp
        threads.append((target, (sock, book, stop)))
    threads.extend((serve_icmp_records, (sock, book, stop)) for sock in recorders)

    def request_stop(signum: int, _frame: object) -> None:
        log(f"signal {signum}: stopping")
        stop.set()

    # As PID 1 of a container the process gets no default SIGTERM action: handle it.
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    log(
        f"serving tcp={listeners['tcp']} udp={listeners['udp']} icmp={listeners['icmp']} "
        f"ports={ports} data_dirs={agent.data.roots} control={args.socket} "
        f"edge={agent.edge} python={platform.python_version()}"
    )
    for target, thread_args in threads:
        threading.Thread(target=_guarded, args=(target, thread_args, stop), daemon=True).start()

    try:
        while not stop.wait(1.0):
            pass
    finally:
        with contextlib.suppress(OSError):
            os.unlink(args.socket)
    return 0


def _guarded(target: Callable[..., None], args: tuple[Any, ...], stop: threading.Event) -> None:
    """Run a listener loop; a bug in it is logged and the loop restarted, not left dead."""
    for restart in itertools.count():
        try:
            target(*args)
            return
        except Exception:
            log(f"{target.__name__} crashed (restart {restart + 1}): " + one_line_traceback())
        if stop.wait(min(0.1 * (restart + 1), 2.0)):
            return
