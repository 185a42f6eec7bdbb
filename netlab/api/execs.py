"""pods/exec over WebSocket, speaking the channel protocols (v5, v4 and base64 variants).

Every message is one channel byte then data: 0 stdin, 1 stdout, 2 stderr, 3 error (a v1
Status when the command ends), 4 resize; v5 adds 255 "close" (client closes its stdin).
SPDY is not spoken: a request without a WebSocket upgrade gets a 400 Status saying so.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from typing import Any

from aiohttp import WSMsgType, web

from netlab.api.cluster import Cluster
from netlab.api.containers import node_of, resolve_container
from netlab.api.errors import ApiError
from netlab.contract import ExecProcess, RuntimeError_

JSONDict = dict[str, Any]
log = logging.getLogger(__name__)

V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
V4_BASE64 = "v4.base64.channel.k8s.io"
BASE64 = "base64.channel.k8s.io"
V1 = "channel.k8s.io"
PROTOCOLS = (V5, V4, V4_BASE64, BASE64, V1)
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
MAX_FRAME = 1 << 20


def exit_status(code: int, command: list[str]) -> JSONDict:
    """The error-channel Status kubelet writes when a command ends (v4 and later)."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    if code < 0:  # killed by a signal: the container runtime reports 128+signal
        code = 128 - code
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: error executing command {_go_list(command)}, exit code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def _go_list(command: list[str]) -> str:
    return "[" + " ".join(command) + "]"


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true")


class ExecSession:
    """One upgraded exec connection."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.protocol = ws.ws_protocol or V1
        self.base64 = "base64" in self.protocol

    async def send(self, channel: int, data: bytes) -> None:
        if self.ws.closed:
            return
        if self.base64:
            await self.ws.send_str(str(channel) + base64.b64encode(data).decode())
        else:
            await self.ws.send_bytes(bytes([channel]) + data)

    def decode(self, message: Any) -> tuple[int, bytes] | None:
        """(channel, data) of a client message, or None for a frame that means nothing."""
        try:
            if self.base64 and message.type == WSMsgType.TEXT and message.data:
                return int(message.data[0]), base64.b64decode(message.data[1:], validate=True)
            if not self.base64 and message.type in (WSMsgType.BINARY, WSMsgType.TEXT):
                # The real server reads text frames as bytes too (the Python client sends them).
                raw = message.data.encode() if isinstance(message.data, str) else message.data
                return (raw[0], bytes(raw[1:])) if raw else None
        except (ValueError, TypeError):
            return None
        return None

    async def pump_out(
        self, stream: asyncio.StreamReader | None, channel: int, forward: bool
    ) -> None:
        """Copy a process stream to a channel (or drain it, unasked for, so it cannot block)."""
        if stream is None:
            return
        while chunk := await stream.read(32768):
            if forward:
                await self.send(channel, chunk)

    async def pump_in(self, process: ExecProcess, stdin: bool) -> None:
        """Client frames: stdin data into the process; v5 close ends its stdin."""
        async for message in self.ws:
            if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.ERROR):
                break
            decoded = self.decode(message)
            if decoded is None or not stdin or process.stdin is None:
                continue
            channel, data = decoded
            if channel == STDIN and data:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    process.stdin.write(data)
                    await process.stdin.drain()
            elif channel == CLOSE and self.protocol == V5 and data[:1] == bytes([STDIN]):
                with contextlib.suppress(ConnectionError, RuntimeError, OSError):
                    process.stdin.close()
        # The client went away (or closed): a v4 client has no other way to end stdin.
        if process.stdin is not None and not process.stdin.is_closing():
            with contextlib.suppress(ConnectionError, RuntimeError, OSError):
                process.stdin.close()


async def serve_exec(request: web.Request, cluster: Cluster, pod: JSONDict) -> web.StreamResponse:
    command = request.query.getall("command", [])
    if not command:
        raise ApiError(400, "you must specify at least 1 command")
    stdin, stdout, stderr, tty = (_flag(request, n) for n in ("stdin", "stdout", "stderr", "tty"))
    if not (stdin or stdout or stderr):
        raise ApiError(400, "you must specify at least 1 of stdin, stdout, stderr")
    container = resolve_container(pod, request.query.get("container"))
    phase = pod.get("status", {}).get("phase")
    if phase in ("Succeeded", "Failed"):
        raise ApiError(
            400, f"cannot exec into a container in a completed pod; current phase is {phase}"
        )
    agent = cluster.agents.get(node_of(pod, container))
    if agent is None:
        raise ApiError(
            400,
            f'container "{container}" in pod "{pod["metadata"]["name"]}" is waiting to start: ContainerCreating',
        )
    # Checked after the request itself, so that kubectl's SPDY fallback (taken whenever the
    # WebSocket upgrade fails) still shows the real reason above.
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise ApiError(
            400,
            "Upgrade request required: this API server (netlab) serves exec over WebSocket only "
            f"(subprotocols {', '.join(PROTOCOLS)}); SPDY is not supported",
        )
    # timeout: how long close() waits for the client's close frame (short: stop() waits on it).
    ws = web.WebSocketResponse(protocols=PROTOCOLS, max_msg_size=MAX_FRAME, timeout=1.0)
    await ws.prepare(request)
    session = ExecSession(ws)
    try:
        process = await agent.exec(
            pod["metadata"]["uid"], container, list(command), stdin=stdin, tty=tty
        )
    except (RuntimeError_, OSError) as error:  # e.g. no such executable in the container
        await session.send(
            ERROR,
            json.dumps(
                {
                    "metadata": {},
                    "status": "Failure",
                    "message": str(error),
                    "reason": "InternalError",
                    "code": 500,
                }
            ).encode(),
        )
        await ws.close()
        return ws
    loop = asyncio.get_running_loop()
    inbound = loop.create_task(session.pump_in(process, stdin))
    finished = loop.create_task(_run_to_end(session, process, list(command), stdout, stderr))
    try:
        # The inbound side ends first only when the client has gone away.
        await asyncio.wait({inbound, finished}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (inbound, finished):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if process.returncode is None:  # client left mid-command: do not leak the process
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(process.wait(), 5)
        if not ws.closed:
            await ws.close()
    return ws


async def _run_to_end(
    session: ExecSession, process: ExecProcess, command: list[str], stdout: bool, stderr: bool
) -> None:
    await asyncio.gather(
        session.pump_out(process.stdout, STDOUT, stdout),
        session.pump_out(process.stderr, STDERR, stderr),
    )
    code = await process.wait()
    await session.send(ERROR, json.dumps(exit_status(code, command)).encode())
