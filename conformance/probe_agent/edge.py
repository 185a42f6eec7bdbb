"""The edge server (``serve --edge-control``): this agent on a host outside the cluster,
serving only ``info`` and ``connect`` to allowed addresses, and the ``relay`` that a probe
pod makes to it.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
import time
from typing import TYPE_CHECKING, Any

from .netinfo import resolve
from .protocol import (
    EDGE_OPS,
    MAX_BATCH_RESPONSE_BYTES,
    MAX_CONTROL_CLIENTS,
    RequestError,
    brief,
    describe_os_error,
    errno_name,
    log,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Protocol

    JSONDict = dict[str, Any]

    class Agent(Protocol):
        """What the edge control listener needs of the agent (``dispatch.Agent``): its ports,
        the edge flag and one request answered (a Protocol here: dispatch imports this module
        for ``relay``)."""

        edge: JSONDict | None
        ports: JSONDict

        def handle(self, request: object) -> JSONDict: ...

# --------------------------------------------------------------------------------------------
# The edge server: this agent on a host outside the cluster (``serve --edge-control``). Pods
# reach its TCP and UDP listeners (and the host's kernel answers their ICMP echoes); for the
# NodePort-from-outside checks a probe pod relays one request at a time (op ``relay``) to its
# control listener, which makes the connection from the outside host and answers what it saw.


def parse_host_port(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` or ``[IPv6]:PORT`` with ADDR an IP literal; ``ValueError`` otherwise."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r} is not ADDR:PORT (PORT 1..65535)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, [ADDR]:PORT")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    return host, int(port_text)


def parse_networks(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """``CIDR[,CIDR...]`` (a bare address is its own /32 or /128); ``ValueError`` otherwise."""
    networks = []
    for item in text.split(","):
        if item.strip():
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
    if not networks:
        raise ValueError("no address or CIDR given")
    return networks


def host_port_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class EdgeControl:
    """What the edge control listener serves: `EDGE_OPS` only, and ``connect`` only to an IP
    address inside ``allowed`` (the nodes the user named). Anything else is answered ok false
    with ``edge_refused``, so a relaying pod can tell a refusal from a network failure."""

    def __init__(
        self, agent: Agent, allowed: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
    ) -> None:
        self.agent = agent
        self.allowed = tuple(allowed)

    def refusal(self, request: object) -> str | None:
        """Why ``request`` is not served here (None: it is)."""
        op = request.get("op") if isinstance(request, dict) else None
        if op not in EDGE_OPS:
            return f"the edge server takes only {', '.join(EDGE_OPS)}, not {brief(op)}"
        if op != "connect":
            return None
        assert isinstance(request, dict)
        host = request.get("host")
        try:
            address = ipaddress.ip_address(str(host))
        except ValueError:
            return f"the edge server connects to IP addresses only, not {brief(host)}"
        if not any(address in network for network in self.allowed):
            shown = ", ".join(str(network) for network in self.allowed)
            return f"{address} is outside the edge server's --allow-connect ({shown})"
        return None

    def handle(self, request: object) -> JSONDict:
        why = self.refusal(request)
        if why is None and isinstance(request, dict) and request.get("op") == "info":
            # Only what a relaying pod needs: no hostname, environment or resolver of the host.
            return {"ok": True, "op": "info", "edge": self.agent.edge, "ports": self.agent.ports}
        if why is None:
            return self.agent.handle(request)
        op = request.get("op") if isinstance(request, dict) else None
        log(f"edge control refused {brief(op)}: {why}")
        return {
            "ok": False,
            "op": op if isinstance(op, str) else None,
            "error": why,
            "edge_refused": True,
        }


def open_edge_control(host: str, port: int) -> socket.socket:
    """The edge control listener: TCP, bound to ``host`` alone (the address the user gave)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(MAX_CONTROL_CLIENTS)
    except OSError:
        sock.close()
        raise
    return sock


def relay(host: str, port: int, request: JSONDict, timeout: float) -> JSONDict:
    """``request`` made by the edge server at ``host``:``port``: its answer, with
    ``relayed_by``; ok false with ``relay_error`` when the edge server could not be asked or
    refused the request (no verdict on the network: the server was not reached, or not
    started for this)."""
    where = f"edge server {host_port_text(host, port)}"
    try:
        family, sockaddr = resolve(host, port, socket.SOCK_STREAM)
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            (answer,) = exchange_batch(sock, [request], timeout)
    except RequestError as exc:
        return {
            "ok": False,
            "error": f"{where}: {exc}",
            "errno": exc.errno_name,
            "relay_error": f"{where}: {exc}",
        }
    except (OSError, ValueError) as exc:
        text = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
        name = errno_name(exc.errno) if isinstance(exc, OSError) else None
        if isinstance(exc, socket.timeout):  # not TimeoutError on Python < 3.10
            text, name = f"no answer within {timeout}s", "ETIMEDOUT"
        return {
            "ok": False,
            "error": f"{where}: {text}",
            "errno": name,
            "relay_error": f"{where}: {text}",
        }
    if not isinstance(answer, dict):
        text = f"{where} answered {brief(answer)}, not a response"
        return {"ok": False, "error": text, "relay_error": text}
    if answer.get("edge_refused"):
        text = f"{where} refused: {answer.get('error')}"
        return {"ok": False, "error": text, "relay_error": text}
    found = {key: value for key, value in answer.items() if key != "op"}
    found["relayed_by"] = host_port_text(host, port)
    return found


def exchange_batch(
    sock: socket.socket, requests: Sequence[object], timeout: float, parallel: int | None = None
) -> list[JSONDict]:
    """Send requests to a serve process over the connected stream ``sock`` (as a plain list,
    or as a parallel batch when ``parallel`` is given) and read its answer; ``OSError`` when it
    does not answer."""
    body: object = list(requests)
    if parallel is not None:
        body = {"parallel": parallel, "requests": list(requests)}
    sock.settimeout(timeout)
    sock.sendall(json.dumps(body).encode())
    sock.shutdown(socket.SHUT_WR)
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) <= 2 * MAX_BATCH_RESPONSE_BYTES:  # far above any answer it may send
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise OSError(errno.ETIMEDOUT, f"no answer within {timeout:.0f}s")
        sock.settimeout(remaining)
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        data += chunk
    if not data:
        raise OSError(errno.ECONNRESET, "the serve process closed the connection without answer")
    responses = json.loads(data.decode("utf-8"))
    if not isinstance(responses, list):
        raise OSError(errno.EPROTO, "the serve process answered something else than a list")
    return responses
