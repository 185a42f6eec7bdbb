"""Talks to the probe agent through the Kubernetes API: one exec of ``agent.py call`` per batch,
the requests as JSON on stdin, the JSON list of responses on stdout.

The runner never routes to pod IPs; everything goes through exec.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from time import monotonic
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import stream
from kubernetes.stream.ws_client import ERROR_CHANNEL, V5_CHANNEL_PROTOCOL
from tenacity import (
    Retrying,
    retry_base,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)
from websocket import WebSocketException

from conformance.kit.base.errors import (
    ProbeCallError,
    ProbeExecError,
    ProbeProtocolError,
    ProbeStreamError,
)
from conformance.kit.base.settings import Timeouts
from conformance.kit.cluster.permissions import explain_forbidden
from conformance.kit.probes.layout import CLIENT_PATH, agent_socket

ProbeResponse = dict[str, Any]

#: Largest JSON payload of one exec. API servers before 1.30 speak only the v4 exec protocol,
#: where stdin cannot be closed and the payload travels as an argument: Linux limits one
#: argument to 128 KiB (MAX_ARG_STRLEN), so a batch is split well below that.
MAX_PAYLOAD_BYTES = 96 * 1024
#: The agent runs at most this many requests of one batch at once.
MAX_PARALLEL_REQUESTS = 64
#: Seconds the agent's own deadline stays below the exec's.
AGENT_TIMEOUT_MARGIN = 5.0


def split_by_payload(
    requests: Sequence[Mapping[str, Any]], limit: int
) -> list[list[Mapping[str, Any]]]:
    """``requests`` in order, cut into runs whose JSON stays under ``limit`` bytes (a request
    larger than the limit alone is its own run; the agent refuses what it cannot take)."""
    chunks: list[list[Mapping[str, Any]]] = []
    current: list[Mapping[str, Any]] = []
    size = 64  # the envelope: brackets, the parallel field
    for request in requests:
        length = len(json.dumps(request)) + 2
        if current and size + length > limit:
            chunks.append(current)
            current, size = [], 64
        current.append(request)
        size += length
    if current:
        chunks.append(current)
    return chunks


@dataclass(frozen=True)
class ExecResult:
    stdout: str
    stderr: str
    returncode: int


def parse_exec_status(raw: str) -> tuple[int | None, str]:
    """Exit code and message from the exec error channel (a ``v1.Status`` as JSON).

    ``Success`` is 0; ``NonZeroExitCode`` carries the code in a cause of reason ``ExitCode``;
    anything else (the command could not start) has no code and a message.
    """
    if not raw.strip():
        return None, "no exec status received"
    try:
        status = json.loads(raw)
    except json.JSONDecodeError:
        return None, raw.strip()
    if status.get("status") == "Success":
        return 0, ""
    message = str(status.get("message", ""))
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            try:
                return int(cause.get("message", "")), message
            except ValueError:
                break
    return None, message or raw.strip()


def vanished_pod(handshake_error: str, pod: str) -> str | None:
    """When an exec handshake was refused 404 because the pod no longer exists, one line saying
    so (a probe evicted or deleted mid-run: its checks could not test); else None."""
    if "Handshake status 404" not in handshake_error:
        return None
    body = handshake_error.rsplit("-+-+-", 1)[-1].strip()
    try:
        message = str(json.loads(body).get("message") or "")
    except (ValueError, AttributeError):
        message = ""
    said = f" (the API server: {message})" if message else ""
    return f"probe pod {pod} is gone: it was evicted or deleted during the run{said}"


def _retryable_open(exc: BaseException) -> bool:
    # Opening the stream failed before the command ran: safe to retry, except when the server
    # answered the handshake with a 4xx (forbidden, not found): that will not change.
    if not isinstance(exc, ApiException) or exc.status != 0:
        return False
    return "Handshake status 4" not in str(exc.reason)


@dataclass
class ExecProtocol:
    """What the API server's exec speaks, learned on the first exec and shared by a client and
    its thread twins: whether stdin can be closed (the v5 protocol, Kubernetes 1.30 and later).
    Older servers get the payload as an argument; a twin that had to learn it again would pay
    a wasted exec (an agent started for nothing) per call."""

    stdin_close: bool | None = None
    learning: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


class ProbeClient:
    """Runs agent request batches in probe containers of one namespace."""

    def __init__(
        self,
        core: client.CoreV1Api,
        namespace: str,
        timeouts: Timeouts,
        protocol: ExecProtocol | None = None,
    ) -> None:
        self.core = core
        self.namespace = namespace
        self.timeouts = timeouts
        self.protocol = protocol or ExecProtocol()

    def for_thread(self) -> ProbeClient:
        """A client with its own API client (same configuration), for use in another thread.

        The kubernetes client's ``stream`` swaps ``call_api`` on the API client during each
        exec, so two threads must never exec through one API client at once. Close it with
        `close`.
        """
        api = client.ApiClient(self.core.api_client.configuration)
        return ProbeClient(client.CoreV1Api(api), self.namespace, self.timeouts, self.protocol)

    def close(self) -> None:
        """Release the API client's connections (for clients made by `for_thread`)."""
        self.core.api_client.close()

    def _api_retries(self, retry: retry_base) -> Retrying:
        """Attempts while ``retry`` says the failure is worth another, with back-off, within
        the API retry budget; the last failure is raised as it was."""
        return Retrying(
            retry=retry,
            stop=stop_after_delay(self.timeouts.api_retry),
            wait=wait_exponential(multiplier=0.5, max=5),
            reraise=True,
        )

    def _open(self, pod: str, container: str, command: list[str], stdin: bool) -> Any:
        for attempt in self._api_retries(retry_if_exception(_retryable_open)):
            with attempt:
                return stream(
                    self.core.connect_get_namespaced_pod_exec,
                    pod,
                    self.namespace,
                    container=container,
                    command=command,
                    stdin=stdin,
                    stdout=True,
                    stderr=True,
                    tty=False,
                    _preload_content=False,
                    _request_timeout=self.timeouts.api_request,
                )
        raise AssertionError("unreachable")  # pragma: no cover

    def exec(
        self,
        pod: str,
        container: str,
        command: Sequence[str],
        *,
        timeout: float,
        stdin: str | None = None,
    ) -> ExecResult:
        """Run ``command`` in the container, feeding ``stdin`` (then closing it) when given.

        Raises `ProbeExecError` when the exec cannot be opened, outlives ``timeout``, or the
        command cannot start. A non-zero exit is returned, not raised.
        """
        learning = stdin is not None and self.protocol.stdin_close is None
        # Parallel first calls learn the protocol once: the others wait for the first handshake.
        with self.protocol.learning if learning else contextlib.nullcontext():
            argv = list(command)
            use_argv_payload = stdin is not None and self.protocol.stdin_close is False
            if use_argv_payload:
                argv = self._argv_payload_command(argv, stdin or "")
            resp = self._handshake(pod, container, command, argv, stdin, use_argv_payload)
        try:
            if stdin is not None and not use_argv_payload:
                if resp.subprotocol == V5_CHANNEL_PROTOCOL:
                    resp.write_stdin(stdin)
                    resp.close_channel(0)
                else:
                    resp.close()
                    return self.exec(pod, container, command, timeout=timeout, stdin=stdin)
            return self._collect(resp, pod, container, command, timeout)
        except (WebSocketException, OSError) as exc:
            raise ProbeStreamError(
                f"exec {' '.join(command)!r}: the stream broke ({type(exc).__name__}: {exc})",
                pod=pod,
                container=container,
            ) from exc
        finally:
            resp.close()

    def _handshake(
        self,
        pod: str,
        container: str,
        command: Sequence[str],
        argv: list[str],
        stdin: str | None,
        use_argv_payload: bool,
    ) -> Any:
        """The opened exec stream of ``argv``; with a payload for stdin, what the server speaks
        is learned from the stream's subprotocol."""
        try:
            resp = self._open(pod, container, argv, stdin is not None and not use_argv_payload)
        except ApiException as exc:
            explained = explain_forbidden(str(exc.reason))  # a 403 in the handshake's text
            gone = vanished_pod(str(exc.reason), pod)  # a 404: the probe pod is no more
            raise ProbeExecError(
                gone
                or f"exec {' '.join(command)!r} could not start: {exc.reason}"
                + (f"; {explained}" if explained else ""),
                pod=pod,
                container=container,
            ) from exc
        if stdin is not None and not use_argv_payload:
            self.protocol.stdin_close = resp.subprotocol == V5_CHANNEL_PROTOCOL
        return resp

    @staticmethod
    def _argv_payload_command(command: list[str], payload: str) -> list[str]:
        # Without a closable stdin, a shell pipes the payload (an argument) into the command;
        # printf, not echo, so it arrives byte for byte.
        script = 'p="$1"; shift; printf "%s" "$p" | "$@"'
        return ["/bin/sh", "-c", script, "netconform-call", payload, *command]

    def _collect(
        self, resp: Any, pod: str, container: str, command: Sequence[str], timeout: float
    ) -> ExecResult:
        stdout: list[str] = []
        stderr: list[str] = []
        deadline = monotonic() + timeout
        while resp.is_open():
            remaining = deadline - monotonic()
            if remaining <= 0:
                raise ProbeExecError(
                    f"exec {' '.join(command)!r} still running after {timeout:.0f}s",
                    pod=pod,
                    container=container,
                    stderr="".join(stderr),
                )
            resp.update(timeout=min(1.0, remaining))
            stdout.append(resp.read_stdout(timeout=0) or "")
            stderr.append(resp.read_stderr(timeout=0) or "")
        stdout.append(resp.read_stdout(timeout=0) or "")
        stderr.append(resp.read_stderr(timeout=0) or "")
        raw_status = resp.read_channel(ERROR_CHANNEL, timeout=0) or ""
        code, message = parse_exec_status(raw_status)
        if not raw_status.strip():
            raise ProbeStreamError(
                f"exec {' '.join(command)!r}: the stream ended without an exit status",
                pod=pod,
                container=container,
                stderr="".join(stderr),
            )
        if code is None:
            raise ProbeExecError(
                f"exec {' '.join(command)!r} failed: {message}",
                pod=pod,
                container=container,
                stderr="".join(stderr),
            )
        return ExecResult(stdout="".join(stdout), stderr="".join(stderr), returncode=code)

    def call(
        self,
        pod: str,
        container: str,
        requests: Sequence[Mapping[str, Any]],
        *,
        parallel: int | None = None,
        timeout: float | None = None,
        renew: Callable[[Sequence[Mapping[str, Any]]], Sequence[Mapping[str, Any]]] | None = None,
    ) -> list[ProbeResponse]:
        """Send ``requests`` to the agent in ``container``; the responses come back in order.

        With ``parallel``, the agent runs up to that many requests at once (independent
        requests only: probes to many destinations); else one after another. Requests go in as
        few execs as the payload limit allows (`MAX_PAYLOAD_BYTES`), one after another. The
        default deadline of an exec allows its requests their probe and capture time.
        ``renew``: what a batch becomes before it is sent again after a broken stream (for
        requests whose traces must not be mistaken for the new try's: fresh nonces).
        """
        responses: list[ProbeResponse] = []
        for chunk in split_by_payload(requests, MAX_PAYLOAD_BYTES):
            # A broken stream leaves unknown whether the batch ran; every request the suite
            # sends may run twice (a probe is one more try, a capture result is asked again),
            # so the batch is sent again, within the API retry budget.
            batch: Sequence[Mapping[str, Any]] = chunk
            for attempt in self._api_retries(retry_if_exception_type(ProbeStreamError)):
                with attempt:
                    if renew is not None and attempt.retry_state.attempt_number > 1:
                        batch = renew(batch)
                    answers = self._call_once(pod, container, batch, parallel, timeout)
            responses.extend(answers)
        return responses

    def _call_once(
        self,
        pod: str,
        container: str,
        requests: Sequence[Mapping[str, Any]],
        parallel: int | None,
        timeout: float | None,
    ) -> list[ProbeResponse]:
        lanes = max(1, min(parallel or 1, MAX_PARALLEL_REQUESTS))
        budget = timeout if timeout is not None else self.timeouts.exec_budget(len(requests), lanes)
        batch: Any = list(requests)
        if parallel:
            batch = {"parallel": lanes, "requests": batch}
        command = [
            "python3",
            CLIENT_PATH,
            "call",
            "--socket",
            agent_socket(container),
            # The agent gives up a little before the exec does, so its answer still arrives.
            "--timeout",
            f"{max(1.0, budget - AGENT_TIMEOUT_MARGIN):.0f}",
        ]
        result = self.exec(pod, container, command, timeout=budget, stdin=json.dumps(batch))
        if result.returncode != 0:
            raise ProbeExecError(
                f"agent call exited {result.returncode}",
                pod=pod,
                container=container,
                stderr=result.stderr,
            )
        try:
            responses = json.loads(result.stdout)
        except json.JSONDecodeError as exc:
            raise ProbeProtocolError(
                f"agent call printed no JSON ({exc}); stdout: {result.stdout[:500]!r}",
                pod=pod,
                container=container,
                stderr=result.stderr,
            ) from exc
        if (
            not isinstance(responses, list)
            or len(responses) != len(requests)
            or not all(isinstance(r, dict) and "ok" in r for r in responses)
        ):
            raise ProbeProtocolError(
                f"agent call answered {len(responses) if isinstance(responses, list) else 'non-list'}"
                f" responses for {len(requests)} requests, or a response lacks 'ok': "
                f"{result.stdout[:500]!r}",
                pod=pod,
                container=container,
                stderr=result.stderr,
            )
        return [dict(r) for r in responses]

    def call_one(
        self,
        pod: str,
        container: str,
        request: Mapping[str, Any],
        *,
        timeout: float | None = None,
    ) -> ProbeResponse:
        """One request; see `call`."""
        return self.call(pod, container, [request], timeout=timeout)[0]


def require_ok(response: ProbeResponse, *, pod: str, container: str, what: str) -> ProbeResponse:
    """``response`` when ok; else `ProbeCallError` (for requests whose failure means could-not-test)."""
    if not response.get("ok"):
        raise ProbeCallError(
            f"{what}: agent answered error {response.get('error')!r}", pod=pod, container=container
        )
    return response


# --- addresses ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1 << 16)
def _interface_address(text: str) -> tuple[int, str] | None:
    # Planners ask for the same few hundred addresses hundreds of thousands of times on large
    # clusters: parse each once.
    try:
        interface = ipaddress.ip_interface(text)
    except ValueError:
        return None
    return interface.version, str(interface.ip)


def address_of_family(addresses: Sequence[str], family: int) -> str | None:
    """The first address of IP version ``family`` in ``addresses`` (prefixes allowed)."""
    for text in addresses:
        found = _interface_address(text)
        if found is not None and found[0] == family:
            return found[1]
    return None


def canonical_ip(text: str | None) -> str | None:
    """``text`` as a canonical IP (IPv4-mapped IPv6 unwrapped, zone and port-less); None if not
    an IP."""
    if not text:
        return None
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)
