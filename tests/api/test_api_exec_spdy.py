"""exec over SPDY/3.1 with the v4 channel protocol, as client-go before 1.29 (the upstream e2e
framework of 1.28) and kubectl's fallback speak it: through kubectl with WebSockets switched
off, and frame by frame: a SYN_REPLY for every stream the client opens, stdin until its FIN,
PINGs echoed, stdout and the v4 exit Status on their streams, FINs, then GOAWAY."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from live_api import LiveServer, pod_body, wait_ready

from netlab.api import execs
from netlab.api.spdy import (
    FLAG_FIN,
    GOAWAY,
    PING,
    SYN_REPLY,
    SYN_STREAM,
    Frame,
    FrameParser,
    HeaderCodec,
    control_frame,
    data_frame,
)

KUBECTL = shutil.which("kubectl")
V4 = "v4.channel.k8s.io"


@pytest.fixture(scope="module")
def running(live: LiveServer) -> Iterator[tuple[str, str]]:
    ns = f"sp-{uuid.uuid4().hex[:8]}"
    live.core.create_namespace({"metadata": {"name": ns}})
    live.core.create_namespaced_pod(ns, pod_body("solo"))
    wait_ready(live, ns, "solo")
    yield ns, "solo"
    live.request("DELETE", f"/api/v1/namespaces/{ns}")


@pytest.fixture
def spdy_sessions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The commands the server ran over SPDY (the WebSocket path leaves this empty)."""
    seen: list[str] = []
    serve = execs._serve_spdy

    async def counted(*args: Any, **kwargs: Any) -> Any:
        seen.append(" ".join(args[4]))
        return await serve(*args, **kwargs)

    monkeypatch.setattr(execs, "_serve_spdy", counted)
    return seen


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_kubectl_over_spdy(
    live: LiveServer, running: tuple[str, str], spdy_sessions: list[str]
) -> None:
    ns, pod = running
    assert KUBECTL is not None
    result = subprocess.run(
        [KUBECTL, "--kubeconfig", str(live.kubeconfig), "exec", "-i", "-n", ns, pod, "--",
         "sh", "-c", "cat; echo err >&2; exit 3"],
        input="hello over spdy\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false"},
    )  # fmt: skip
    assert spdy_sessions == ["sh -c cat; echo err >&2; exit 3"], "kubectl did not speak SPDY"
    assert result.stdout == "hello over spdy\n"
    assert "err" in result.stderr
    assert result.returncode == 3, result.stderr


class RawSpdy:
    """A SPDY/3.1 exec client over one TLS connection, frame by frame."""

    def __init__(self, live: LiveServer, path: str, protocols: tuple[str, ...] = (V4,)) -> None:
        host, port = live.server.url.removeprefix("https://").split(":")
        context = ssl.create_default_context(cafile=str(live.server.ca_path))
        self.sock = context.wrap_socket(
            socket.create_connection((host, int(port)), timeout=10), server_hostname=host
        )
        lines = [
            f"POST {path} HTTP/1.1",
            f"Host: {host}:{port}",
            f"Authorization: Bearer {live.server.token}",
            "Connection: Upgrade",
            "Upgrade: SPDY/3.1",
            *(f"X-Stream-Protocol-Version: {p}" for p in protocols),
            "Content-Length: 0",
            "",
            "",
        ]
        self.sock.sendall("\r\n".join(lines).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(65536)
            assert chunk, f"the server closed before answering: {head!r}"
            head += chunk
        self.head, rest = head.split(b"\r\n\r\n", 1)
        self.codec = HeaderCodec()
        self.parser = FrameParser(HeaderCodec())
        self.parser.feed_data(rest)

    @property
    def status(self) -> int:
        return int(self.head.split(b" ", 2)[1])

    def open(self, stream_id: int, kind: str) -> None:
        body = struct.pack(">IIBB", stream_id, 0, 0, 0) + self.codec.encode({"streamtype": [kind]})
        self.sock.sendall(control_frame(SYN_STREAM, 0, body))

    def frames(self) -> list[Frame]:
        """Every frame until the server ends the connection."""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except (ssl.SSLError, OSError):
                chunk = b""
            if not chunk:
                self.parser.feed_eof()
                break
            self.parser.feed_data(chunk)
        frames = []
        while (frame := self.parser.frames.get_nowait()) is not None:
            frames.append(frame)
        return frames


def exec_path(running: tuple[str, str], query: str) -> str:
    """The exec path of the ``running`` pod (namespace, name) with ``query``."""
    ns, pod = running
    return f"/api/v1/namespaces/{ns}/pods/{pod}/exec?{query}"


def test_raw_frames_stdin_ping_status_fin_goaway(
    live: LiveServer, running: tuple[str, str]
) -> None:
    client = RawSpdy(live, exec_path(running, "command=cat&stdin=true&stdout=true&stderr=true"))
    assert client.status == 101
    assert b"x-stream-protocol-version: v4.channel.k8s.io" in client.head.lower()
    for stream_id, kind in ((1, "error"), (3, "stdin"), (5, "stdout"), (7, "stderr")):
        client.open(stream_id, kind)
    client.sock.sendall(control_frame(PING, 0, struct.pack(">I", 1)))
    client.sock.sendall(data_frame(3, 0, b"ping-"))
    client.sock.sendall(data_frame(3, FLAG_FIN, b"pong"))
    frames = client.frames()
    client.sock.close()
    assert {f.stream_id for f in frames if f.kind == SYN_REPLY} == {1, 3, 5, 7}
    assert any(f.kind == PING and f.data == struct.pack(">I", 1) for f in frames)
    data = {
        sid: b"".join(f.data for f in frames if f.kind == 0 and f.stream_id == sid)
        for sid in (1, 5, 7)
    }
    assert data[5] == b"ping-pong"
    assert data[7] == b""
    assert json.loads(data[1]) == {"metadata": {}, "status": "Success"}
    finished = {f.stream_id for f in frames if f.kind == 0 and f.fin}
    assert {1, 5, 7} <= finished
    assert frames[-1].kind == GOAWAY


def test_a_failing_command_reports_its_exit_code(
    live: LiveServer, running: tuple[str, str]
) -> None:
    query = "command=sh&command=-c&command=exit%207&stdout=true"
    client = RawSpdy(live, exec_path(running, query))
    client.open(1, "error")
    client.open(3, "stdout")
    frames = client.frames()
    client.sock.close()
    status = json.loads(b"".join(f.data for f in frames if f.kind == 0 and f.stream_id == 1))
    assert status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "7"}]


def test_a_client_without_v4_is_refused_as_kubelet_refuses_it(
    live: LiveServer, running: tuple[str, str]
) -> None:
    client = RawSpdy(
        live,
        exec_path(running, "command=true&stdout=true"),
        protocols=("v3.channel.k8s.io", "v2.channel.k8s.io"),
    )
    client.sock.close()
    assert client.status == 403
