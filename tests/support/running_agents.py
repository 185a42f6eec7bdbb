"""The probe agent run for real as a local ``serve`` process, and how tests talk to it (the
unit tests on loopback, the lab tests in network namespaces they build): `start_agent` starts
one and waits until it answers, `RunningAgent` sends it batches through its control socket."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from polling import eventually

from conformance.probe_agent import AGENT_FILE, agent_files
from conformance.probe_agent import client as agent_client

AGENT = AGENT_FILE.resolve()
CLIENT = Path(agent_client.__file__).resolve()
# Lab pods run the agent with the image's python3 (Debian's, with python3-scapy); use it for
# the namespace tests when it is there, so both interpreters are exercised.
IMAGE_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable

Response = dict[str, Any]

#: The agent sends ICMP with a raw socket (root), or a ping socket where
#: net.ipv4.ping_group_range allows the user's group (Debian allows none by default).
NEEDS_NET_RAW = pytest.mark.needs_root("the agent sends ICMP echo with NET_RAW")


def nonce() -> str:
    return f"nc-{secrets.token_hex(6)}"


@dataclass
class RunningAgent:
    """A ``serve`` process and how to talk to it through ``client.py call``."""

    name: str
    process: subprocess.Popen[bytes]
    socket_path: Path
    log_path: Path
    python: str
    tcp_port: int
    udp_port: int
    agent_path: Path = AGENT

    def call(self, *requests: object, timeout: float = 30.0) -> list[Response]:
        """One batch through the control socket, in process (the `call` CLI has its own tests,
        and a Python start per request would dominate this module's runtime)."""
        try:
            responses = agent_client.send_requests(str(self.socket_path), requests, timeout)
        except OSError as exc:
            pytest.fail(f"agent {self.name} did not answer: {exc}\n{self.log()}")
        assert len(responses) == len(requests)
        return responses

    def call_cli(self, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [self.python, str(CLIENT), "call", "--socket", str(self.socket_path)],
            input=stdin,
            capture_output=True,
            timeout=30,
            check=False,
        )

    def one(self, request: object) -> Response:
        (response,) = self.call(request)
        return response

    def ok(self, request: object) -> Response:
        response = self.one(request)
        assert response["ok"], f"{request} -> {response}\n{self.log()}"
        return response

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ping(self) -> bool:
        try:
            (info,) = agent_client.send_requests(str(self.socket_path), [{"op": "info"}], 1.0)
        except OSError:
            return False
        return bool(info.get("ok"))

    def ping_cli(self) -> int:
        done = subprocess.run(
            [self.python, str(CLIENT), "ping", "--socket", str(self.socket_path)],
            capture_output=True,
            timeout=20,
            check=False,
        )
        return done.returncode

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(timeout=5)


def start_agent(
    workdir: Path,
    name: str,
    *,
    tcp_port: int,
    udp_port: int,
    netns: str | None = None,
    python: str = sys.executable,
    agent_path: Path = AGENT,
    prefix: Sequence[str] = (),
    data_dirs: Sequence[Path] = (),
) -> RunningAgent:
    """Start ``serve`` and wait (bounded) until ``ping`` answers; ports 0 are replaced by the
    ports the agent picked (``info``'s ``ports``)."""
    socket_path = workdir / f"{name}.sock"
    log_path = workdir / f"{name}.log"
    command = [
        *prefix,
        python,
        str(agent_path),
        "serve",
        "--tcp-port",
        str(tcp_port),
        "--udp-port",
        str(udp_port),
        "--socket",
        str(socket_path),
    ]
    for directory in data_dirs:
        command += ["--data-dir", str(directory)]
    if netns is not None:
        command = ["nsenter", f"--net=/run/netns/{netns}", *command]
    env = {**os.environ, "POD_NAME": name, "POD_NAMESPACE": "netconform-test", "NODE_NAME": "n1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=env)
    agent = RunningAgent(
        name, process, socket_path, log_path, python, tcp_port, udp_port, agent_path
    )

    def answers() -> bool:
        if process.poll() is not None:
            pytest.fail(f"agent {name} exited with {process.returncode}:\n{agent.log()}")
        return agent.ping()

    if not eventually(answers, 15):
        agent.stop()
        pytest.fail(f"agent {name} never answered ping:\n{agent.log()}")
    ports = agent.ok({"op": "info"})["ports"]
    agent.tcp_port, agent.udp_port = ports["tcp"], ports["udp"]
    return agent


def free_port_pair() -> tuple[int, int]:
    """A TCP port and a UDP port free on every address right now (loopback agent only)."""
    ports: list[int] = []
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET6, kind) as probe:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            probe.bind(("::", 0))
            ports.append(probe.getsockname()[1])
    return ports[0], ports[1]


def measure(
    agent: RunningAgent, proto: str, port: int | None, host: str = "127.0.0.1", **fields: Any
) -> Response:
    """``agent``'s answer to one ``icmp`` request (``proto`` "icmp") or ``connect`` over
    ``proto`` to ``host``:``port``, with a fresh nonce and a 2 s timeout unless ``fields`` say
    otherwise (``count``: a loss measurement)."""
    request: dict[str, Any] = {"host": host, "nonce": nonce(), "timeout": 2, **fields}
    if proto == "icmp":
        request["op"] = "icmp"
    else:
        request.update(op="connect", proto=proto, port=port)
    return agent.one(request)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A module's directory for its agents' control sockets, logs and files (a fixture every
    tier gets: ``tests/conftest.py`` loads this module as a plugin)."""
    # Unix socket paths are limited to 108 bytes: keep them short.
    return tmp_path_factory.mktemp("agent")


@contextmanager
def accepting(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A TCP listener on 127.0.0.1 handing each accepted connection to ``handle`` (in its
    serving thread) until the block ends; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            handle(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


@contextmanager
def round_robin(ports: list[int]) -> Iterator[int]:
    """A TCP forwarder on 127.0.0.1 sending each new connection to the next of ``ports`` (a
    Service's virtual address in miniature); yields its port."""
    turn = iter(range(1 << 30))

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        with suppress(OSError):
            while data := source.recv(4096):
                sink.sendall(data)
        with suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def forward(client: socket.socket) -> None:
        backend = socket.create_connection(("127.0.0.1", ports[next(turn) % len(ports)]))
        for a, b in ((client, backend), (backend, client)):
            threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    with accepting(forward) as port:
        yield port


def write_shipped_files(directory: Path) -> Path:
    """The ConfigMap's files written into ``directory``, as its mount holds them; the agent's
    entry point there."""
    for name, text in agent_files().items():
        (directory / name).write_text(text)
        (directory / name).chmod(0o644)
    return directory / AGENT_FILE.name
