"""Talks to the probe agent through the Kubernetes API: one exec of ``agent.py call`` per batch,
a JSON list of requests on stdin, the JSON list of responses on stdout.

The runner never routes to pod IPs; everything goes through exec.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from time import monotonic
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import stream
from kubernetes.stream.ws_client import ERROR_CHANNEL, V5_CHANNEL_PROTOCOL
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from conformance.kit.probes import AGENT_PATH, agent_socket
from conformance.kit.settings import Timeouts

AgentResponse = dict[str, Any]


class AgentError(Exception):
    """Talking to an agent failed: the check could not be made (a setup problem, not a verdict)."""

    def __init__(self, message: str, *, pod: str, container: str, stderr: str = "") -> None:
        detail = f"{message} [pod {pod}, container {container}]"
        if stderr.strip():
            detail += f"\nstderr:\n{stderr.strip()[-2000:]}"
        super().__init__(detail)
        self.pod = pod
        self.container = container
        self.stderr = stderr


class AgentExecError(AgentError):
    """The exec could not be opened, timed out, or the command exited non-zero."""


class AgentProtocolError(AgentError):
    """The agent's output was not the JSON list the protocol promises."""


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


def _retryable_open(exc: BaseException) -> bool:
    # Opening the stream failed before the command ran: safe to retry, except when the server
    # answered the handshake with a 4xx (forbidden, not found): that will not change.
    if not isinstance(exc, ApiException) or exc.status != 0:
        return False
    return "Handshake status 4" not in str(exc.reason)


class AgentClient:
    """Runs agent request batches in probe containers of one namespace."""

    def __init__(self, core: client.CoreV1Api, namespace: str, timeouts: Timeouts) -> None:
        self.core = core
        self.namespace = namespace
        self.timeouts = timeouts
        # Closing stdin needs the v5 exec protocol; older servers get the payload as argv.
        self._stdin_close: bool | None = None

    def for_thread(self) -> AgentClient:
        """A client with its own API client (same configuration), for use in another thread.

        The kubernetes client's ``stream`` swaps ``call_api`` on the API client during each
        exec, so two threads must never exec through one API client at once. Close it with
        `close`.
        """
        api = client.ApiClient(self.core.api_client.configuration)
        twin = AgentClient(client.CoreV1Api(api), self.namespace, self.timeouts)
        twin._stdin_close = self._stdin_close
        return twin

    def close(self) -> None:
        """Release the API client's connections (for clients made by `for_thread`)."""
        self.core.api_client.close()

    def _open(self, pod: str, container: str, command: list[str], stdin: bool) -> Any:
        for attempt in Retrying(
            retry=retry_if_exception(_retryable_open),
            stop=stop_after_delay(self.timeouts.api_retry),
            wait=wait_exponential(multiplier=0.5, max=5),
            reraise=True,
        ):
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

        Raises `AgentExecError` when the exec cannot be opened, outlives ``timeout``, or the
        command cannot start. A non-zero exit is returned, not raised.
        """
        argv = list(command)
        use_argv_payload = stdin is not None and self._stdin_close is False
        if use_argv_payload:
            argv = self._argv_payload_command(argv, stdin or "")
        try:
            resp = self._open(pod, container, argv, stdin is not None and not use_argv_payload)
        except ApiException as exc:
            raise AgentExecError(
                f"exec {' '.join(command)!r} could not start: {exc.reason}",
                pod=pod,
                container=container,
            ) from exc
        try:
            if stdin is not None and not use_argv_payload:
                if resp.subprotocol == V5_CHANNEL_PROTOCOL:
                    self._stdin_close = True
                    resp.write_stdin(stdin)
                    resp.close_channel(0)
                else:
                    self._stdin_close = False
                    resp.close()
                    return self.exec(pod, container, command, timeout=timeout, stdin=stdin)
            return self._collect(resp, pod, container, command, timeout)
        finally:
            resp.close()

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
                raise AgentExecError(
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
        code, message = parse_exec_status(resp.read_channel(ERROR_CHANNEL, timeout=0) or "")
        if code is None:
            raise AgentExecError(
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
        timeout: float | None = None,
    ) -> list[AgentResponse]:
        """Send ``requests`` to the agent in one exec; the responses come back in order.

        The default deadline allows each request its probe and capture time in sequence.
        """
        if not requests:
            return []
        budget = timeout if timeout is not None else self.timeouts.exec_budget(len(requests))
        payload = json.dumps(list(requests))
        command = ["python3", AGENT_PATH, "call", "--socket", agent_socket(container)]
        result = self.exec(pod, container, command, timeout=budget, stdin=payload)
        if result.returncode != 0:
            raise AgentExecError(
                f"agent call exited {result.returncode}",
                pod=pod,
                container=container,
                stderr=result.stderr,
            )
        try:
            responses = json.loads(result.stdout)
        except json.JSONDecodeError as exc:
            raise AgentProtocolError(
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
            raise AgentProtocolError(
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
    ) -> AgentResponse:
        """One request; see `call`."""
        return self.call(pod, container, [request], timeout=timeout)[0]


def require_ok(response: AgentResponse, *, pod: str, container: str, what: str) -> AgentResponse:
    """``response`` when ok; else `AgentError` (for requests whose failure means could-not-test)."""
    if not response.get("ok"):
        raise AgentError(
            f"{what}: agent answered error {response.get('error')!r}", pod=pod, container=container
        )
    return response


# --- higher-level exchanges the checks share -------------------------------------------------


def address_of_family(addresses: Sequence[str], family: int) -> str | None:
    """The first address of IP version ``family`` in ``addresses`` (prefixes allowed)."""
    for text in addresses:
        try:
            if ipaddress.ip_interface(text).version == family:
                return str(ipaddress.ip_interface(text).ip)
        except ValueError:
            continue
    return None


def normalize_ip(text: str | None) -> str | None:
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


@dataclass(frozen=True)
class Exchange:
    """What one probed connection showed, from both ends."""

    proto: str
    source: str  # "pod/container"
    destination: str  # "pod/container"
    target: str  # address:port or address the source aimed at
    attempts: int
    client_response: AgentResponse  # the last connect/icmp response
    listener_peers: tuple[str, ...]  # sources the destination's listeners recorded
    captured_sources: tuple[str, ...]  # sources of captured packets holding the nonce
    capture_error: str | None = None

    @property
    def reached(self) -> bool:
        return bool(self.client_response.get("ok"))

    @property
    def peer_seen(self) -> str | None:
        """The source address the destination reported back to the client."""
        return normalize_ip(self.client_response.get("peer_seen"))

    def describe(self) -> str:
        return (
            f"{self.proto} {self.source} -> {self.destination} at {self.target}: "
            f"{'reached' if self.reached else 'NOT reached'} after {self.attempts} attempt(s); "
            f"client said {json.dumps(self.client_response, sort_keys=True)}; "
            f"listener recorded {list(self.listener_peers) or 'nothing'}; "
            f"capture saw {list(self.captured_sources) or 'nothing'}"
            + (f" (capture failed: {self.capture_error})" if self.capture_error else "")
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (shared between xdist workers); `from_dict` reads it back."""
        return {
            "proto": self.proto,
            "source": self.source,
            "destination": self.destination,
            "target": self.target,
            "attempts": self.attempts,
            "client_response": self.client_response,
            "listener_peers": list(self.listener_peers),
            "captured_sources": list(self.captured_sources),
            "capture_error": self.capture_error,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Exchange:
        return cls(
            proto=str(raw["proto"]),
            source=str(raw["source"]),
            destination=str(raw["destination"]),
            target=str(raw["target"]),
            attempts=int(raw["attempts"]),
            client_response=dict(raw["client_response"]),
            listener_peers=tuple(raw["listener_peers"]),
            captured_sources=tuple(raw["captured_sources"]),
            capture_error=raw.get("capture_error"),
        )


def probe_request(
    proto: str, host: str, port: int | None, nonce: str, timeout: float
) -> dict[str, Any]:
    """The agent request of one network attempt: an ICMP (ICMPv6 for an IPv6 ``host``) echo, or
    a TCP/UDP exchange with the listener at ``host``:``port``."""
    if proto == "icmp":
        return {"op": "icmp", "host": host, "nonce": nonce, "timeout": timeout}
    return {
        "op": "connect",
        "proto": proto,
        "host": host,
        "port": port,
        "nonce": nonce,
        "timeout": timeout,
    }


def target_text(proto: str, host: str, port: int | None) -> str:
    """``host:port`` (``[v6]:port``) for tcp/udp, the bare address for icmp."""
    if proto == "icmp":
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def collect_queries(
    nonce: str, capture_id: str | None, *, reached: bool, capture_wait: float
) -> list[dict[str, Any]]:
    """The destination's queries after probing: listener records, then the capture's packets.

    Waits only when the probe was answered: a packet that never came will not come later.
    """
    # ICMP is recorded by a raw socket beside the kernel's echo: give the record a moment.
    seen_wait = min(1.0, capture_wait) if reached else 0.0
    queries: list[dict[str, Any]] = [{"op": "seen", "nonce": nonce, "wait": seen_wait}]
    if capture_id is not None:
        queries.append(
            {
                "op": "capture_result",
                "capture_id": capture_id,
                "wait": capture_wait if reached else 0.0,
            }
        )
    return queries


def exchange_from_answers(
    *,
    proto: str,
    source: tuple[str, str],
    destination: tuple[str, str],
    host: str,
    port: int | None,
    attempts: int,
    response: AgentResponse,
    answers: Sequence[AgentResponse],
    captured: bool,
) -> Exchange:
    """Build the `Exchange` from the client's last response and the destination's answers to
    `collect_queries` (``captured``: a capture was running, so ``answers[1]`` is its result).

    `AgentError` when the listener records cannot be read (could not test)."""
    dst_pod, dst_container = destination
    seen = require_ok(
        answers[0], pod=dst_pod, container=dst_container, what="read listener records"
    )
    peers = tuple(
        sorted(
            {
                normalize_ip(r.get("peer")) or str(r.get("peer"))
                for r in seen.get("records", [])
                if str(r.get("proto", "")).startswith(proto)  # icmp covers icmpv6
            }
        )
    )
    packets: tuple[str, ...] = ()
    capture_error: str | None = None
    if captured:
        result = answers[1]
        if result.get("ok"):
            packets = tuple(
                sorted(
                    {
                        normalize_ip(p.get("src")) or str(p.get("src"))
                        for p in result.get("packets", [])
                        if normalize_ip(p.get("dst")) == normalize_ip(host)
                    }
                )
            )
        else:
            capture_error = str(result.get("error"))
    return Exchange(
        proto=proto,
        source="/".join(source),
        destination="/".join(destination),
        target=target_text(proto, host, port),
        attempts=attempts,
        client_response=response,
        listener_peers=peers,
        captured_sources=packets,
        capture_error=capture_error,
    )


def exchange(
    agents: AgentClient,
    *,
    proto: str,
    source: tuple[str, str],
    destination: tuple[str, str],
    host: str,
    port: int | None,
    nonce: str,
    capture: bool = True,
) -> Exchange:
    """Send ``nonce`` from ``source`` (pod, container) to ``host`` (``port`` for tcp/udp) where
    ``destination``'s agent listens, with a packet capture running on the destination.

    "Eventually reachable": up to ``Timeouts.reach_attempts`` tries; a refusal to start the
    capture is a could-not-test error (`AgentError`), not a verdict.
    """
    timeouts = agents.timeouts
    src_pod, src_container = source
    dst_pod, dst_container = destination
    capture_id: str | None = None
    if capture:
        budget = timeouts.reach_attempts * (timeouts.probe + 1) + timeouts.capture_wait + 10
        started = agents.call_one(
            dst_pod,
            dst_container,
            {"op": "capture_start", "nonce": nonce, "timeout": budget},
        )
        require_ok(started, pod=dst_pod, container=dst_container, what="start packet capture")
        capture_id = str(started["capture_id"])
    request = probe_request(proto, host, port, nonce, timeouts.probe)
    response: AgentResponse = {}
    attempts = 0
    for attempts in range(1, timeouts.reach_attempts + 1):  # noqa: B007 - reported below
        response = agents.call_one(src_pod, src_container, request)
        if response.get("ok"):
            break
    queries = collect_queries(
        nonce, capture_id, reached=bool(response.get("ok")), capture_wait=timeouts.capture_wait
    )
    answers = agents.call(dst_pod, dst_container, queries)
    return exchange_from_answers(
        proto=proto,
        source=source,
        destination=destination,
        host=host,
        port=port,
        attempts=attempts,
        response=response,
        answers=answers,
        captured=capture_id is not None,
    )
