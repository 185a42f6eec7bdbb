"""The real probe agent served by local processes (no cluster, no pod): a `ProbeClient` whose
exec runs the command on this machine, and agents "a" and "b" listening on 127.0.0.1 as two
containers of one pod would. `OfflineProbeClient`, their base, serves other fakes too."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tenacity import Retrying, stop_after_delay, wait_fixed

from conformance.kit.probes.client import ExecResult, ProbeClient

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "conformance" / "probe_agent" / "agent.py"
CLIENT = ROOT / "conformance" / "probe_agent" / "client.py"
#: The programs the pods' ConfigMap holds, by the name a pod runs them with.
PROGRAMS = {"/netconform/agent.py": AGENT, "/netconform/client.py": CLIENT}


class OfflineProbeClient(ProbeClient):
    """A `ProbeClient` whose exec opens no stream to any cluster: a subclass answers each exec
    itself (`answer_exec`, told the pod it went to); everything above exec (batching, payload
    splits, retries, parsing) is the real client's. It holds no API connection, so the one
    client serves every thread."""

    def exec(
        self,
        pod: str,
        container: str,
        command: Sequence[str],
        *,
        timeout: float,
        stdin: str | None = None,
    ) -> ExecResult:
        return self.answer_exec(pod, list(command), stdin, timeout)

    def answer_exec(
        self, pod: str, command: list[str], stdin: str | None, timeout: float
    ) -> ExecResult:
        raise NotImplementedError

    def for_thread(self) -> ProbeClient:
        return self

    def close(self) -> None:
        pass


class LocalProbeClient(OfflineProbeClient):
    """Runs the exec'd command here: ``python3 /netconform/client.py ...`` -> the file here."""

    def answer_exec(
        self, pod: str, command: list[str], stdin: str | None, timeout: float
    ) -> ExecResult:
        argv = [sys.executable, str(PROGRAMS[command[1]]), *command[2:]]
        done = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
        return ExecResult(done.stdout, done.stderr, done.returncode)


@dataclass(frozen=True)
class LocalAgent:
    """One serving agent: its control socket and listener ports."""

    container: str
    socket: Path
    tcp_port: int
    udp_port: int


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving_agents(directory: Path, containers: Sequence[str]) -> Iterator[dict[str, LocalAgent]]:
    """``agent.py serve`` for each container, sockets in ``directory``; stopped on exit."""
    agents = {
        name: LocalAgent(
            name,
            directory / f"{name}.sock",
            free_port(socket.SOCK_STREAM),
            free_port(socket.SOCK_DGRAM),
        )
        for name in containers
    }
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                str(AGENT),
                "serve",
                "--tcp-port",
                str(agent.tcp_port),
                "--udp-port",
                str(agent.udp_port),
                "--socket",
                str(agent.socket),
            ],
            stderr=subprocess.DEVNULL,
        )
        for agent in agents.values()
    ]
    try:
        for attempt in Retrying(stop=stop_after_delay(20), wait=wait_fixed(0.1), reraise=True):
            with attempt:
                for agent in agents.values():
                    assert agent.socket.exists(), f"agent {agent.container} not serving yet"
        yield agents
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(10)
