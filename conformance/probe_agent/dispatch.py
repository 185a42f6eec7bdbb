"""The `Agent`: one request in, one response out, by op; every failure becomes an ok false
response, never a crash of the serve process.
"""

from __future__ import annotations

import os
import platform
import socket
import time
from typing import TYPE_CHECKING, Any

from .captures import CaptureBook
from .edge import relay
from .exchanges import connect_tcp, connect_udp, send_icmp_echo, transfer
from .files import DataDirectories
from .measured import listen_drops, measure_icmp, measure_tcp, measure_udp, udp_socket_drops
from .netinfo import default_interface, list_interfaces
from .protocol import (
    DEFAULT_PROBE_PARALLEL,
    ENV_KEYS,
    MAX_CAPTURE_SECONDS,
    MAX_EXPECT_NONCES,
    MAX_FILE_BYTES,
    MAX_NONCE_LENGTH,
    MAX_PACKETS_PER_PREFIX_CAPTURE,
    MAX_PROBE_PARALLEL,
    MAX_SPREAD_PARALLEL,
    MAX_SPREAD_TRIES,
    MAX_TIMEOUT,
    MAX_TRANSFER_BYTES,
    RELAY_TIMEOUT,
    RequestError,
    brief,
    describe_os_error,
    errno_name,
    field_expect_nonces,
    field_int,
    field_nonce,
    field_nonce_or_prefix,
    field_number,
    field_packet,
    field_proto,
    field_seed,
    field_str,
    is_valid_nonce,
    log,
    one_line_traceback,
    printable,
)
from .services import (
    FAMILIES,
    field_name,
    field_servers,
    netns_cookie,
    read_resolv_conf,
    resolve_name,
    spread,
    try_bind,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from .listeners import RecordBook

    JSONDict = dict[str, Any]


class Agent:
    """Dispatches control requests; every failure becomes a response, never a crash."""

    def __init__(
        self,
        book: RecordBook,
        listeners: JSONDict,
        ports: JSONDict | None = None,
        data: DataDirectories | None = None,
    ) -> None:
        self.book = book
        self.listeners = listeners
        self.ports = ports or {}
        self.data = data or DataDirectories(())
        self.captures = CaptureBook()
        # What `ping` (the readiness probe) reports; `set_ready` flips it.
        self.ready = True
        # The edge control listener and what it may connect to (``serve --edge-control``).
        self.edge: JSONDict | None = None
        self._ops: dict[str, Callable[[JSONDict], JSONDict]] = {
            "info": self.op_info,
            "addresses": self.op_addresses,
            "try_bind": self.op_try_bind,
            "connect": self.op_connect,
            "icmp": self.op_icmp,
            "transfer": self.op_transfer,
            "seen": self.op_seen,
            "capture_start": self.op_capture_start,
            "capture_result": self.op_capture_result,
            "write_file": self.op_write_file,
            "read_file": self.op_read_file,
            "spread": self.op_spread,
            "resolve": self.op_resolve,
            "env": self.op_env,
            "set_ready": self.op_set_ready,
            "relay": self.op_relay,
            "drops": self.op_drops,
        }

    def handle(self, request: object) -> JSONDict:
        started = time.monotonic()
        op = request.get("op") if isinstance(request, dict) else None
        # Echo the op only as a short string: a request must not make the response huge.
        if not isinstance(op, str) or len(op) > 64:
            op = None if not isinstance(op, str) else op[:64]
        response: JSONDict = {"ok": True, "op": op}
        try:
            if not isinstance(request, dict):
                raise RequestError(f"a request must be a JSON object, got {type(request).__name__}")
            handler = self._ops.get(op) if op is not None else None
            if handler is None:
                raise RequestError(
                    f"unknown op {brief(request.get('op'))}; known ops: "
                    f"{', '.join(sorted(self._ops))}"
                )
            response.update(handler(request))
        except RequestError as exc:
            response = dict(exc.details)
            response.update({"ok": False, "op": op, "error": str(exc)})
            if exc.errno_name is not None:
                response["errno"] = exc.errno_name
        except OSError as exc:
            response = {"ok": False, "op": op, "error": describe_os_error(exc)}
            if exc.errno is not None:
                response["errno"] = errno_name(exc.errno)
        except Exception as exc:  # a bug in the agent must not take the serve process down
            log(one_line_traceback())
            response = {"ok": False, "op": op, "error": f"agent bug: {type(exc).__name__}: {exc}"}
        elapsed_ms = (time.monotonic() - started) * 1000
        summary = _request_summary(request)
        outcome = _response_summary(response)
        log(f"request op={op} {summary}{outcome} {elapsed_ms:.0f}ms")
        return response

    def op_info(self, request: JSONDict) -> JSONDict:
        try:
            netns: str | None = os.readlink("/proc/self/ns/net")
        except OSError:
            netns = None
        return {
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "netns": netns,
            "netns_cookie": netns_cookie(),
            "env": {key: os.environ.get(key) for key in ENV_KEYS},
            "listeners": self.listeners,
            "ports": self.ports,
            "data_dirs": self.data.roots,
            "python": platform.python_version(),
            "ready": self.ready,
            "resolver": read_resolv_conf(),
            "edge": self.edge,
        }

    def op_addresses(self, request: JSONDict) -> JSONDict:
        return {"interfaces": list_interfaces()}

    def op_try_bind(self, request: JSONDict) -> JSONDict:
        return try_bind(
            field_proto(request),
            field_str(request, "host", ""),
            field_int(request, "port", None, 0, 65535),
        )

    def op_connect(self, request: JSONDict) -> JSONDict:
        proto = field_proto(request)
        host = field_str(request, "host")
        port = field_int(request, "port", None, 1, 65535)
        nonce = field_nonce(request)
        timeout = field_number(request, "timeout", 3.0, 0.05, MAX_TIMEOUT)
        size, df, count, interval = field_packet(request)
        if count > 1:
            if proto == "udp":
                return measure_udp(host, port, nonce, count, interval, timeout)
            parallel = field_int(request, "parallel", DEFAULT_PROBE_PARALLEL, 1, MAX_PROBE_PARALLEL)
            return measure_tcp(host, port, nonce, count, interval, timeout, parallel)
        if proto == "tcp" and (size is not None or df):
            raise RequestError("fields 'size' and 'df' are for udp; use op transfer for tcp")
        # Timed, so that the suite can tell a refusal at once from one after seconds of ARP.
        started = time.monotonic()
        try:
            if proto == "tcp":
                answer = connect_tcp(host, port, nonce, timeout)
            else:
                answer = connect_udp(host, port, nonce, timeout, size, df)
        except RequestError as exc:
            exc.details["seconds"] = round(time.monotonic() - started, 3)
            raise
        except OSError as exc:
            raise RequestError(
                describe_os_error(exc),
                errno_name(exc.errno),
                {"seconds": round(time.monotonic() - started, 3)},
            ) from exc
        answer["seconds"] = round(time.monotonic() - started, 3)
        return answer

    def op_icmp(self, request: JSONDict) -> JSONDict:
        host = field_str(request, "host")
        nonce = field_nonce(request)
        timeout = field_number(request, "timeout", 3.0, 0.05, MAX_TIMEOUT)
        size, df, count, interval = field_packet(request)
        if count > 1:
            return measure_icmp(host, nonce, count, interval, timeout)
        return send_icmp_echo(host, nonce, timeout, size, df)

    def op_transfer(self, request: JSONDict) -> JSONDict:
        return transfer(
            field_str(request, "host"),
            field_int(request, "port", None, 1, 65535),
            field_nonce(request),
            field_int(request, "size", None, 0, MAX_TRANSFER_BYTES),
            field_number(request, "timeout", 10.0, 0.05, MAX_TIMEOUT),
        )

    def op_seen(self, request: JSONDict) -> JSONDict:
        nonce, prefix = field_nonce_or_prefix(request)
        expect = field_expect_nonces(request, prefix)
        wait = field_number(request, "wait", 0.0, 0.0, MAX_TIMEOUT)
        records, missing = self.book.find(nonce, prefix, expect, wait)
        response: JSONDict = {"records": records}
        if expect:
            response["missing"] = missing
        return response

    def op_capture_start(self, request: JSONDict) -> JSONDict:
        nonce, prefix = field_nonce_or_prefix(request)
        iface = request.get("iface") or default_interface()
        if not isinstance(iface, str):
            raise RequestError("field 'iface' must be a string (no default interface found)")
        timeout = field_number(request, "timeout", 10.0, 0.1, MAX_CAPTURE_SECONDS)
        return self.captures.start(nonce, prefix, iface, timeout)

    def op_capture_result(self, request: JSONDict) -> JSONDict:
        expect = request.get("expect_nonces")
        if expect is not None and (
            not isinstance(expect, list)
            or len(expect) > MAX_EXPECT_NONCES
            or not all(is_valid_nonce(nonce) for nonce in expect)
        ):
            raise RequestError(
                f"field 'expect_nonces' must be a list of at most {MAX_EXPECT_NONCES} nonces"
            )
        return self.captures.result(
            field_str(request, "capture_id"),
            field_number(request, "wait", 2.0, 0.0, MAX_CAPTURE_SECONDS),
            field_int(request, "min_packets", 1, 1, MAX_PACKETS_PER_PREFIX_CAPTURE),
            list(dict.fromkeys(expect or [])),
        )

    def op_write_file(self, request: JSONDict) -> JSONDict:
        path = field_str(request, "path")
        size = field_int(request, "size", None, 0, MAX_FILE_BYTES)
        return self.data.write_file(path, size, field_seed(request))

    def op_read_file(self, request: JSONDict) -> JSONDict:
        return self.data.read_file(field_str(request, "path"))

    def op_spread(self, request: JSONDict) -> JSONDict:
        nonce = field_nonce(request)
        if len(nonce) > MAX_NONCE_LENGTH - 5:  # room for ".<try>"
            raise RequestError(f"field 'nonce' of a spread holds at most {MAX_NONCE_LENGTH - 5}")
        return spread(
            field_proto(request),
            field_str(request, "host"),
            field_int(request, "port", None, 1, 65535),
            nonce,
            field_servers(request),
            field_int(request, "max_tries", None, 1, MAX_SPREAD_TRIES),
            field_number(request, "timeout", 3.0, 0.05, MAX_TIMEOUT),
            field_int(request, "parallel", 8, 1, MAX_SPREAD_PARALLEL),
            field_int(request, "min_tries", 1, 1, MAX_SPREAD_TRIES),
        )

    def op_resolve(self, request: JSONDict) -> JSONDict:
        family = field_int(request, "family", 0, 0, 6)
        if family not in FAMILIES:
            raise RequestError(f"field 'family' must be 4, 6 or 0 (both), got {family}")
        return resolve_name(
            field_name(request), family, field_number(request, "timeout", 5.0, 0.05, MAX_TIMEOUT)
        )

    def op_env(self, request: JSONDict) -> JSONDict:
        prefix = field_str(request, "prefix")
        return {
            "variables": {key: value for key, value in os.environ.items() if key.startswith(prefix)}
        }

    def op_drops(self, request: JSONDict) -> JSONDict:
        udp_port = self.ports.get("udp")
        return {
            "udp": udp_socket_drops(udp_port) if isinstance(udp_port, int) else None,
            "tcp_listen": listen_drops(),
        }

    def op_set_ready(self, request: JSONDict) -> JSONDict:
        ready = request.get("ready")
        if not isinstance(ready, bool):
            raise RequestError(f"field 'ready' must be true or false, got {brief(ready)}")
        self.ready = ready
        return {"ready": ready}

    def op_relay(self, request: JSONDict) -> JSONDict:
        inner = request.get("request")
        if not isinstance(inner, dict):
            raise RequestError(f"field 'request' must be one request object, got {brief(inner)}")
        if inner.get("op") == "relay":
            raise RequestError("a relayed request cannot be a relay itself")
        return relay(
            field_str(request, "host"),
            field_int(request, "port", None, 1, 65535),
            inner,
            field_number(request, "timeout", RELAY_TIMEOUT, 0.05, MAX_TIMEOUT),
        )


def _request_summary(request: object) -> str:
    if not isinstance(request, dict):
        return ""
    shown = [
        f"{key}={printable(request[key], 60)}"
        for key in (
            "proto",
            "host",
            "port",
            "nonce",
            "nonce_prefix",
            "size",
            "df",
            "iface",
            "capture_id",
            "path",
            "name",
            "family",
            "prefix",
            "max_tries",
            "min_tries",
            "count",
            "ready",
        )
        if key in request
    ]
    return " ".join(shown) + " " if shown else ""


def _response_summary(response: JSONDict) -> str:
    if not response["ok"]:
        return f"FAILED {printable(response.get('error'), 300)}"
    shown = [
        f"{key}={response[key]}"
        for key in (
            "peer_seen",
            "server",
            "reply_from",
            "bound",
            "sha256",
            "size",
            "bytes_received",
            "tries",
            "sent",
            "lost",
            "servers",
            "errors",
            "addresses",
            "ready",
        )
        if key in response
    ]
    for key in ("records", "packets", "missing"):
        if key in response:
            shown.append(f"{key}={len(response[key])}")
    return " ".join(["ok", *shown])
