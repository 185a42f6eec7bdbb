"""pods/exec over WebSocket, speaking the channel protocols (v5, v4 and base64 variants), and
over SPDY/3.1 with the v4 protocol (client-go before 1.29, kubectl's fallback).

Every WebSocket message is one channel byte then data: 0 stdin, 1 stdout, 2 stderr, 3 error
(a v1 Status when the command ends), 4 resize; v5 adds 255 "close" (client closes its stdin).
Over SPDY each channel is a stream of its own (netlab.api.spdy). A request with neither
upgrade gets a 400 Status saying so.

As on a real node, a command whose argument is longer than Linux allows (MAX_ARG_STRLEN) cannot
start; with the ``exec-v4-only`` API fault only the protocols of API servers before 1.30 are
offered; with ``cut-streams`` the connection may drop part-way (netlab.api.injector).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
import shutil
from typing import Any

from aiohttp import WSMsgType, web

from netlab.api.cluster.nodes import NodeRegistry
from netlab.api.containers import node_of, resolve_container
from netlab.api.errors import ApiError
from netlab.api.faults import ApiFaults
from netlab.api.injector import STREAM_CUT, StreamCut, drop_connection
from netlab.api.spdy import GOAWAY, RST_STREAM, SYN_STREAM, FrameParser, HeaderCodec, SpdyConnection
from netlab.contract import ExecProcess, JSONDict, KubeletAPI, RuntimeError_

log = logging.getLogger(__name__)
fault_log = logging.getLogger("netlab.api.faults")

V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
V4_BASE64 = "v4.base64.channel.k8s.io"
BASE64 = "base64.channel.k8s.io"
V1 = "channel.k8s.io"
PROTOCOLS = (V5, V4, V4_BASE64, BASE64, V1)
PRE_1_30_PROTOCOLS = (V4, V4_BASE64, BASE64, V1)  # what exec-v4-only offers
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
SPDY_UPGRADE = "SPDY/3.1"
SPDY_PROTOCOL_HEADER = "X-Stream-Protocol-Version"
# SPDY carries each channel on its own stream, named by the stream's ``streamtype`` header.
SPDY_STREAM_TYPES = {STDIN: "stdin", STDOUT: "stdout", STDERR: "stderr", ERROR: "error"}
STREAM_CREATION_TIMEOUT = 30.0  # kubelet's: seconds for the client to open its streams
MAX_FRAME = 1 << 20
# Linux's limit on one execve argument, its terminating NUL included (32 pages).
MAX_ARG_STRLEN = 32 * 4096
# The PATH a container gets when neither its image nor its spec sets one (containerd's default).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


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


def internal_error(cause: str) -> JSONDict:
    """The error-channel Status of a command that could not run (apierrors.NewInternalError,
    as kubelet's streaming server writes it)."""
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"Internal error occurred: {cause}",
        "reason": "InternalError",
        "details": {"causes": [{"message": cause}]},
        "code": 500,
    }


def argument_too_long(command: list[str], path: str = DEFAULT_PATH) -> str | None:
    """containerd's words for an exec whose argument Linux refuses (E2BIG), or None. ``path``
    is the container's PATH (lab containers see the host's files, so it resolves here)."""
    if not any(len(arg.encode()) + 1 > MAX_ARG_STRLEN for arg in command):
        return None
    # runc resolves the program first, so the message names its path.
    program = command[0]
    if "/" not in program:
        program = shutil.which(program, path=path) or program
    return (
        "error executing command in container: failed to exec in container: failed to start "
        f'exec "{secrets.token_hex(32)}": OCI runtime exec failed: exec failed: unable to '
        f"start container process: exec {program}: argument list too long: unknown"
    )


def offered_protocols(request: web.Request) -> list[str]:
    return [
        protocol.strip()
        for header in request.headers.getall("Sec-WebSocket-Protocol", [])
        for protocol in header.split(",")
        if protocol.strip()
    ]


def _container_path(pod: JSONDict, container: str) -> str:
    """The PATH the container's spec sets, else the default."""
    spec = pod.get("spec", {})
    for group in ("containers", "initContainers"):
        for candidate in spec.get(group) or []:
            if candidate.get("name") == container:
                for variable in candidate.get("env") or []:
                    if variable.get("name") == "PATH" and variable.get("value"):
                        return str(variable["value"])
    return DEFAULT_PATH


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true")


class _Cut(Exception):
    """The cut-streams fault's moment has come: drop the connection."""


class ChannelSession:
    """One upgraded exec connection, whatever carries its channels; with ``cut``, it drops
    after that much output."""

    def __init__(self, request: web.Request, cut: StreamCut | None = None) -> None:
        self.request = request
        self.cut = cut
        self._output = 0  # stdout and stderr bytes sent

    @property
    def closed(self) -> bool:
        raise NotImplementedError

    async def _send_frame(self, channel: int, data: bytes) -> None:
        raise NotImplementedError

    async def pump_in(self, process: ExecProcess, stdin: bool) -> None:
        """The client's side until it ends: stdin into the process, its end closing stdin."""
        raise NotImplementedError

    def cut_now(self) -> None:
        fault_log.info("api fault: exec stream cut after %d output bytes", self._output)
        drop_connection(self.request)
        raise _Cut

    async def send(self, channel: int, data: bytes) -> None:
        if self.closed:
            return
        if self.cut is not None and channel in (STDOUT, STDERR):
            room = self.cut.output_bytes - self._output
            if len(data) >= room:
                if room > 0:
                    await self._send_frame(channel, data[:room])
                    self._output += room
                self.cut_now()
            self._output += len(data)
        await self._send_frame(channel, data)

    async def pump_out(
        self, stream: asyncio.StreamReader | None, channel: int, forward: bool
    ) -> None:
        """Copy a process stream to a channel (or drain it, unasked for, so it cannot block)."""
        if stream is None:
            return
        while chunk := await stream.read(32768):
            if forward:
                await self.send(channel, chunk)


class ExecSession(ChannelSession):
    """Exec over WebSocket: every message is a channel byte and data (base64 text in the
    base64 protocols)."""

    def __init__(
        self, ws: web.WebSocketResponse, request: web.Request, cut: StreamCut | None = None
    ) -> None:
        super().__init__(request, cut)
        self.ws = ws
        self.protocol = ws.ws_protocol or V1
        self.base64 = "base64" in self.protocol

    @property
    def closed(self) -> bool:
        return self.ws.closed

    async def _send_frame(self, channel: int, data: bytes) -> None:
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


async def serve_exec(
    request: web.Request, nodes: NodeRegistry, pod: JSONDict, faults: ApiFaults | None = None
) -> web.StreamResponse:
    faults = faults or ApiFaults()
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
    kubelet = nodes.kubelet_of(node_of(pod, container))
    if kubelet is None:
        raise ApiError(
            400,
            f'container "{container}" in pod "{pod["metadata"]["name"]}" is waiting to start: ContainerCreating',
        )
    protocols = PRE_1_30_PROTOCOLS if faults.exec_v4_only else PROTOCOLS
    upgrade = request.headers.get("Upgrade", "").lower()
    if upgrade == SPDY_UPGRADE.lower():
        return await _serve_spdy(
            request, kubelet, pod, container, list(command), stdin, stdout, stderr, tty
        )
    # Checked after the request itself, so that kubectl's SPDY fallback (taken whenever the
    # WebSocket upgrade fails) still shows the real reason above.
    if upgrade != "websocket":
        raise ApiError(
            400,
            "Upgrade request required: this API server (netlab) serves exec over WebSocket "
            f"(subprotocols {', '.join(protocols)}) and {SPDY_UPGRADE} ({V4})",
        )
    offered = offered_protocols(request)
    if offered and not set(offered) & set(protocols):
        # The WebSocket handshake's refusal (golang.org/x/net/websocket): 403, no body.
        return web.Response(status=403)
    # timeout: how long close() waits for the client's close frame (short: stop() waits on it).
    ws = web.WebSocketResponse(protocols=protocols, max_msg_size=MAX_FRAME, timeout=1.0)
    await ws.prepare(request)
    session = ExecSession(ws, request, request.get(STREAM_CUT))
    too_long = argument_too_long(list(command), _container_path(pod, container))
    if too_long is not None:  # the command cannot start: E2BIG from execve
        await session.send(ERROR, json.dumps(internal_error(too_long)).encode())
        await ws.close()
        return ws
    try:
        process = await kubelet.exec(
            pod["metadata"]["uid"], container, list(command), stdin=stdin, tty=tty
        )
    except (RuntimeError_, OSError) as error:  # e.g. no such executable in the container
        cause = f"error executing command in container: {error}"
        await session.send(ERROR, json.dumps(internal_error(cause)).encode())
        await ws.close()
        return ws
    try:
        await _drive(session, process, list(command), stdin, stdout, stderr)
    finally:
        if not ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.close()
    return ws


async def _serve_spdy(
    request: web.Request,
    kubelet: KubeletAPI,
    pod: JSONDict,
    container: str,
    command: list[str],
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
) -> web.StreamResponse:
    """Exec over SPDY/3.1 (client-go before 1.29): the v4 channel protocol, one SPDY stream
    per channel, as kubelet's remotecommand server speaks it behind the API server."""
    offered = [
        protocol.strip()
        for header in request.headers.getall(SPDY_PROTOCOL_HEADER, [])
        for protocol in header.split(",")
        if protocol.strip()
    ]
    if V4 not in offered:
        # kubelet's handshake refusal, as the API server passes it on (text, not a Status).
        return web.Response(
            status=403,
            text=f"unable to upgrade: unable to negotiate protocol: client supports "
            f"[{' '.join(offered)}], server accepts [{V4}]\n",
        )
    codec = HeaderCodec()
    parser = FrameParser(codec)
    # The rest of the connection is SPDY: frames go to our parser, not to the HTTP one.
    request.protocol.set_parser(parser)  # type: ignore[arg-type]
    response = web.StreamResponse(
        status=101,
        reason="Switching Protocols",
        headers={
            "Connection": "Upgrade",
            "Upgrade": SPDY_UPGRADE,
            SPDY_PROTOCOL_HEADER: V4,
        },
    )
    await response.prepare(request)
    transport = request.transport
    assert transport is not None
    connection = SpdyConnection(transport, codec, parser)
    session = SpdySession(connection, request, request.get(STREAM_CUT))
    try:
        wanted = {"error"} | {
            name
            for name, asked in (
                ("stdin", stdin),
                ("stdout", stdout),
                ("stderr", stderr and not tty),
                ("resize", tty),
            )
            if asked
        }
        try:
            async with asyncio.timeout(STREAM_CREATION_TIMEOUT):
                await session.accept_streams(wanted)
        except TimeoutError:
            log.info(
                "exec over SPDY: the client opened %s of %s",
                sorted(session.streams),
                sorted(wanted),
            )
            return response
        if session.ended:
            return response
        too_long = argument_too_long(command, _container_path(pod, container))
        if too_long is not None:
            await session.send(ERROR, json.dumps(internal_error(too_long)).encode())
            return response
        try:
            process = await kubelet.exec(
                pod["metadata"]["uid"], container, command, stdin=stdin, tty=tty
            )
        except (RuntimeError_, OSError) as error:
            cause = f"error executing command in container: {error}"
            await session.send(ERROR, json.dumps(internal_error(cause)).encode())
            return response
        await _drive(session, process, command, stdin, stdout, stderr)
    finally:
        session.finish()
    return response


async def _drive(
    session: ChannelSession,
    process: ExecProcess,
    command: list[str],
    stdin: bool,
    stdout: bool,
    stderr: bool,
) -> None:
    """Run one exec to its end over ``session``: the client's input in, the output and the
    exit status out; a client that leaves kills the command."""
    loop = asyncio.get_running_loop()
    inbound = loop.create_task(session.pump_in(process, stdin))
    finished = loop.create_task(_run_to_end(session, process, command, stdout, stderr))
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


class SpdySession(ChannelSession):
    """Exec over SPDY: each channel is a stream the client opened, named by ``streamtype``."""

    def __init__(
        self, connection: SpdyConnection, request: web.Request, cut: StreamCut | None = None
    ) -> None:
        super().__init__(request, cut)
        self.connection = connection
        self.streams: dict[str, int] = {}  # streamtype -> stream id
        self.ended = False  # the client went away (or broke the protocol)

    @property
    def closed(self) -> bool:
        return self.ended or self.connection.closed

    async def accept_streams(self, wanted: set[str]) -> None:
        """Answer the client's SYN_STREAMs until every wanted channel has its stream."""
        while not wanted <= set(self.streams):
            frame = await self.connection.next_frame()
            if frame is None or frame.kind == GOAWAY:
                self.ended = True
                return
            if frame.kind == SYN_STREAM:
                kind = (frame.headers.get("streamtype") or [""])[0]
                self.streams[kind] = frame.stream_id
                self.connection.reply(frame.stream_id)

    async def _send_frame(self, channel: int, data: bytes) -> None:
        stream = self.streams.get(SPDY_STREAM_TYPES.get(channel, ""))
        if stream is not None:
            self.connection.send(stream, data)
            await self.connection.drain()

    async def pump_in(self, process: ExecProcess, stdin: bool) -> None:
        stdin_stream = self.streams.get("stdin")
        while True:
            frame = await self.connection.next_frame()
            if frame is None or frame.kind == GOAWAY:
                break
            if frame.stream_id != stdin_stream or process.stdin is None:
                continue  # resize and anything else: read, not acted on
            if frame.kind == 0 and frame.data:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    process.stdin.write(frame.data)
                    await process.stdin.drain()
            if frame.fin or frame.kind == RST_STREAM:
                with contextlib.suppress(ConnectionError, RuntimeError, OSError):
                    process.stdin.close()
        self.ended = True
        if process.stdin is not None and not process.stdin.is_closing():
            with contextlib.suppress(ConnectionError, RuntimeError, OSError):
                process.stdin.close()

    def finish(self) -> None:
        """Our directions end (a FIN on each stream we write), then the connection."""
        if not self.connection.closed:
            for kind in ("stdout", "stderr", "error"):
                if kind in self.streams:
                    self.connection.send(self.streams[kind], b"", fin=True)
        self.connection.close()


async def _run_to_end(
    session: ChannelSession, process: ExecProcess, command: list[str], stdout: bool, stderr: bool
) -> None:
    cut = False
    try:
        async with asyncio.TaskGroup() as pumps:  # a cut in one pump stops the other
            pumps.create_task(session.pump_out(process.stdout, STDOUT, stdout))
            pumps.create_task(session.pump_out(process.stderr, STDERR, stderr))
        code = await process.wait()
        if session.cut is not None:  # the output was shorter than the cut: lose the status
            session.cut_now()
    except* _Cut:
        cut = True
    if not cut:
        await session.send(ERROR, json.dumps(exit_status(code, command)).encode())
