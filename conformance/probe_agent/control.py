"""The control socket: batches (a list, or ``{"parallel": N, "requests": [...]}``) read,
run and answered within their bounds.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from .listeners import accept_loop
from .protocol import (
    CONTROL_READ_SECONDS,
    MAX_BATCH_REQUESTS,
    MAX_BATCH_RESPONSE_BYTES,
    MAX_BATCH_WORKERS,
    MAX_CONTROL_BYTES,
    MAX_CONTROL_CLIENTS,
    MAX_PARALLEL,
    RequestError,
    brief,
    describe_os_error,
    field_int,
    log,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .dispatch import Agent
    from .edge import EdgeControl

    JSONDict = dict[str, Any]

# --------------------------------------------------------------------------------------------
# Batches: a list (one request after another) or {"parallel": N, "requests": [...]}.


def batch_requests(body: object) -> tuple[list[object], int]:
    """The requests of a batch and how many may run at once. ``RequestError`` on a bad batch
    object or too many requests; any other value is taken as a batch of one request."""
    if isinstance(body, list):
        requests, parallel = body, 1
    elif isinstance(body, dict) and "requests" in body:
        requests = body["requests"]
        if not isinstance(requests, list):
            raise RequestError("field 'requests' of a batch must be a list of requests")
        parallel = field_int(body, "parallel", 1, 1, MAX_PARALLEL)
    else:
        requests, parallel = [body], 1
    if len(requests) > MAX_BATCH_REQUESTS:
        raise RequestError(
            f"a batch holds at most {MAX_BATCH_REQUESTS} requests, got {len(requests)}"
        )
    return requests, parallel


class ResponseBytes:
    """Encodes a batch's responses as they finish, within ``MAX_BATCH_RESPONSE_BYTES``."""

    def __init__(self, limit: int = MAX_BATCH_RESPONSE_BYTES) -> None:
        self._lock = threading.Lock()
        self._left = limit

    def encode(self, response: JSONDict) -> bytes:
        # default=str: an odd value in a response must not cost the whole batch.
        encoded = json.dumps(response, default=str).encode()
        with self._lock:
            if len(encoded) <= self._left:
                self._left -= len(encoded)
                return encoded
        return json.dumps(
            {
                "ok": False,
                "op": response.get("op"),
                "error": f"response dropped: the batch's responses exceed "
                f"{MAX_BATCH_RESPONSE_BYTES} bytes",
            }
        ).encode()


# Extra threads of every parallel batch at once; the handler thread itself always works too,
# so a batch runs (perhaps less parallel) even when the pool is empty.
_batch_workers = threading.BoundedSemaphore(MAX_BATCH_WORKERS)


def run_batch(agent: Agent | EdgeControl, requests: Sequence[object], parallel: int) -> bytes:
    """The JSON list of responses, in request order; at most ``parallel`` run at once."""
    encoder = ResponseBytes()
    encoded: list[bytes] = [b""] * len(requests)
    pending = iter(range(len(requests)))
    pending_lock = threading.Lock()

    def work() -> None:
        while True:
            with pending_lock:
                index = next(pending, None)
            if index is None:
                return
            encoded[index] = encoder.encode(agent.handle(requests[index]))

    def helper() -> None:
        try:
            work()
        finally:
            _batch_workers.release()

    helpers: list[threading.Thread] = []
    for _ in range(min(parallel, len(requests)) - 1):
        if not _batch_workers.acquire(blocking=False):
            break
        thread = threading.Thread(target=helper, daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": fewer helpers, same answers
            _batch_workers.release()
            log(f"batch runs with {len(helpers) + 1} workers: {exc}")
            break
        helpers.append(thread)
    work()
    for thread in helpers:
        thread.join()
    return b"[" + b",".join(encoded) + b"]\n"


def answer_batch(agent: Agent | EdgeControl, data: bytes) -> bytes:
    """The encoded answer to the bytes of one control request."""
    try:
        if len(data) > MAX_CONTROL_BYTES:
            raise RequestError(f"batch larger than {MAX_CONTROL_BYTES} bytes")
        try:
            body = json.loads(data.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise RequestError(f"batch is not JSON: {brief(str(exc), 200)}") from exc
        requests, parallel = batch_requests(body)
    except RequestError as exc:
        # "refused": the batch as a whole, not one of its requests (the client exits 2).
        refusal = {"ok": False, "op": None, "error": str(exc), "refused": True}
        return json.dumps([refusal]).encode() + b"\n"
    return run_batch(agent, requests, parallel)


# --------------------------------------------------------------------------------------------
# The control socket (unix, per container; the edge server's TCP listeners take the same).


def _socket_answers(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            probe.connect(path)
    except OSError:
        return False
    return True


def open_control_socket(path: str) -> socket.socket:
    if os.path.exists(path):
        if _socket_answers(path):
            raise RequestError(f"another serve process already answers on {path}")
        os.unlink(path)  # left by a killed process
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(16)
    return sock


def serve_control(sock: socket.socket, agent: Agent | EdgeControl, stop: threading.Event) -> None:
    slots = threading.BoundedSemaphore(MAX_CONTROL_CLIENTS)

    def handle(conn: socket.socket) -> None:
        try:
            with conn:
                deadline = time.monotonic() + CONTROL_READ_SECONDS
                data = b""
                while len(data) <= MAX_CONTROL_BYTES:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise socket.timeout("no whole batch in time")  # noqa: UP041
                    conn.settimeout(remaining)
                    chunk = conn.recv(1 << 16)
                    if not chunk:
                        break
                    data += chunk
                answer = answer_batch(agent, data)
                conn.settimeout(CONTROL_READ_SECONDS)
                conn.sendall(answer)
        except OSError as exc:
            log(f"control connection: {describe_os_error(exc)}")
        finally:
            slots.release()

    accept_loop(sock, stop, slots, "control", lambda conn, _address: (conn,), handle)
