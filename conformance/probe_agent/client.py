#!/usr/bin/env python3
"""The probe agent's client: the small program every exec of the suite and every startup
probe of kubelet runs in a probe container, next to the agent (``agent.py serve``).

It is shipped in ConfigMap ``netconform-agent`` (key ``client.py``) beside the agent, runs on
the probe image's own ``python3`` (**3.8 or newer**, like the agent) and imports only what a
socket round trip needs: Python starts it in a third of the agent's time, and on a genuine
cluster every exec starts one (with runc, containerd and kubelet's stream) on a node that may
be busy. Requests are checked, run and bounded by the agent; the client only carries them.

``call [--socket PATH] [--timeout SECONDS]``
    Reads a batch on stdin: a JSON list of requests (run one after another), one request, or
    ``{"parallel": N, "requests": [...]}`` (run at most N at a time); sends it to the serve
    process, writes its JSON list of responses (request order) on stdout and exits 0. Exits 2
    on input that is not a batch (the reason on stderr, the agent's own when it refused the
    batch as a whole) and 3 when no serve process answers.
``ping [--socket PATH] [--timeout SECONDS] [--wait SECONDS]``
    Exit 0 when the serve process answers (and was not marked unready), 1 otherwise; with
    ``--wait``, keep trying that long for a serve process still starting (the startup probe).
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time

DEFAULT_SOCKET = "/tmp/netconform-agent.sock"
#: The agent's bounds (agent.py; a unit test keeps them equal).
MAX_CONTROL_BYTES = 1 << 20
MAX_BATCH_RESPONSE_BYTES = 32 << 20
#: A call without ``--timeout``: the longest any request may wait (a capture: 300 s), and more.
DEFAULT_CALL_TIMEOUT = 330.0
DEFAULT_PING_TIMEOUT = 3.0
USAGE = "usage: client.py {call,ping} [--socket PATH] [--timeout SECONDS] [--wait SECONDS]"


class Refused(Exception):
    """The serve process refused the batch as a whole (its answer says why)."""


def send_batch(path: str, body: bytes, timeout: float) -> list[dict[str, object]]:
    """Send one encoded batch to the serve process on ``path``; its list of responses.
    ``OSError`` when it does not answer, `Refused` when it refused the batch whole."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(body)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        size = 0
        deadline = time.monotonic() + timeout
        while size <= 2 * MAX_BATCH_RESPONSE_BYTES:  # far above any answer it may send
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OSError(110, f"no answer within {timeout:.0f}s")  # ETIMEDOUT
            sock.settimeout(remaining)
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    if not chunks:
        raise OSError(104, "the serve process closed the connection without answer")  # ECONNRESET
    responses: list[dict[str, object]] = json.loads(b"".join(chunks).decode("utf-8"))
    if not isinstance(responses, list):
        raise OSError(71, "the serve process answered something else than a list")  # EPROTO
    if len(responses) == 1 and isinstance(responses[0], dict) and responses[0].get("refused"):
        raise Refused(str(responses[0].get("error")))
    return responses


def send_requests(
    path: str,
    requests: list[object] | tuple[object, ...],
    timeout: float,
    parallel: int | None = None,
) -> list[dict[str, object]]:
    """`send_batch` of ``requests`` (a plain list, or a parallel batch when ``parallel`` is
    given), for a Python caller."""
    body: object = list(requests)
    if parallel is not None:
        body = {"parallel": parallel, "requests": list(requests)}
    return send_batch(path, json.dumps(body).encode(), timeout)


def _describe(exc: Exception) -> str:
    if isinstance(exc, OSError):
        import errno  # only on the way out

        name = errno.errorcode.get(exc.errno or 0, "")
        text = exc.strerror or str(exc)
        return f"{name}: {text}" if name else text
    return str(exc)


def _options(argv: list[str]) -> dict[str, str]:
    """``--name value`` pairs (``--name=value`` too); `ValueError` on anything else."""
    options: dict[str, str] = {}
    words = iter(argv)
    for word in words:
        name, sep, value = word.partition("=")
        if name not in ("--socket", "--timeout", "--wait"):
            raise ValueError(f"unknown argument {word!r}")
        options[name[2:]] = value if sep else next(words, "")
    return options


def run_call(options: dict[str, str]) -> int:
    raw = sys.stdin.buffer.read(MAX_CONTROL_BYTES + 1)
    if len(raw) > MAX_CONTROL_BYTES:
        sys.stderr.write(f"agent call: stdin holds more than {MAX_CONTROL_BYTES} bytes\n")
        return 2
    try:
        body = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        sys.stderr.write(f"agent call: stdin is not JSON: {str(exc)[:200]}\n")
        return 2
    if not isinstance(body, (list, dict)):
        sys.stderr.write(
            "agent call: stdin must be a JSON list of requests, one request, or "
            '{"parallel": N, "requests": [...]}\n'
        )
        return 2
    path = options.get("socket") or DEFAULT_SOCKET
    try:
        timeout = float(options.get("timeout") or DEFAULT_CALL_TIMEOUT)
        responses = send_batch(path, raw, timeout)
    except Refused as exc:
        sys.stderr.write(f"agent call: {exc}\n")
        return 2
    except (OSError, ValueError) as exc:
        sys.stderr.write(
            f"agent call: no answer from a serve process on {path}: {_describe(exc)}\n"
        )
        return 3
    sys.stdout.write(json.dumps(responses) + "\n")
    return 0


def run_ping(options: dict[str, str]) -> int:
    # --wait: a startup probe run right at container start waits (bounded) for the serve
    # process, so the pod turns Ready at once and is never probed again.
    path = options.get("socket") or DEFAULT_SOCKET
    deadline = time.monotonic() + max(0.0, float(options.get("wait") or 0))
    timeout = float(options.get("timeout") or DEFAULT_PING_TIMEOUT)
    while True:
        try:
            responses = send_batch(path, b'[{"op": "info"}]', timeout)
            break
        except (OSError, ValueError, Refused) as exc:
            if time.monotonic() < deadline:
                select.select([], [], [], 0.05)  # a pause without importing threading
                continue
            sys.stderr.write(
                f"agent ping: no answer from a serve process on {path}: {_describe(exc)}\n"
            )
            return 1
    if not responses or not isinstance(responses[0], dict) or not responses[0].get("ok"):
        sys.stderr.write(f"agent ping: unexpected answer {responses!r}\n")
        return 1
    if responses[0].get("ready") is False:
        sys.stderr.write("agent ping: the agent was marked unready (set_ready)\n")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("call", "ping"):
        sys.stderr.write(USAGE + "\n")
        return 2
    try:
        options = _options(args[1:])
        return run_call(options) if args[0] == "call" else run_ping(options)
    except ValueError as exc:  # a bad option value
        sys.stderr.write(f"{USAGE}\n{exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
