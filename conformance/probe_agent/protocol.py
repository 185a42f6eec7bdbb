"""The agent's protocol: bounds, request fields and their validation, nonces, the digest of
deterministic content, errors, the log line, and the time budget of a ``call``.

The kit imports this module alone (through ``conformance.probe_agent``): what it must agree
with the agent on, without the rest of the program.
"""

from __future__ import annotations

import errno
import hashlib
import os
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    JSONDict = dict[str, Any]


DEFAULT_SOCKET = "/tmp/netconform-agent.sock"
DEFAULT_TCP_PORT = 8080
DEFAULT_UDP_PORT = 8081
ENV_KEYS = ("POD_NAME", "POD_NAMESPACE", "NODE_NAME", "POD_IP", "HOST_IP")

# Bounds: every buffer, list, thread pool and wait in the agent has one, so a misbehaving peer
# or a malformed request cannot grow it.
MAX_CONTROL_BYTES = 1 << 20  # one batch on the control socket (and on `call`'s stdin)
CONTROL_READ_SECONDS = 30.0  # to read one batch from a control client
MAX_BATCH_REQUESTS = 4096
MAX_BATCH_RESPONSE_BYTES = 32 << 20  # a batch's encoded responses; beyond, ok false each
MAX_PARALLEL = 64  # "parallel" of one batch
MAX_BATCH_WORKERS = 256  # extra worker threads of all parallel batches at once
MAX_NONCE_LENGTH = 128
MAX_PREFIX_LENGTH = 64
MAX_EXPECT_NONCES = 20000
MAX_RECORDS = 20000
MAX_FILE_BYTES = 256 << 20
MAX_TIMEOUT = 120.0
MAX_CAPTURE_SECONDS = 300.0
MAX_SPREAD_TRIES = 4096  # connections of one spread
MAX_SPREAD_PARALLEL = 32  # connections of one spread at once
MAX_SPREAD_SERVERS = 4096  # expected servers of one spread
MAX_PROBE_COUNT = 1000  # probes of one measured connect or icmp request
DEFAULT_PROBE_INTERVAL = 0.01  # seconds between a measured request's probes
MIN_PROBE_INTERVAL = 0.001
DEFAULT_PROBE_PARALLEL = 8  # measured TCP connections open at once
MAX_PROBE_PARALLEL = 64
MAX_ERROR_EXAMPLES = 3
SO_RXQ_OVFL = 40  # the drop count of a socket, delivered with each datagram
SPREAD_SECONDS = MAX_TIMEOUT  # a spread starts no try after this long
MAX_NAME_LENGTH = 253  # a DNS name to resolve
MAX_CAPTURES = 32
MAX_PACKETS_PER_CAPTURE = 200  # a capture by `nonce`
MAX_PACKETS_PER_PREFIX_CAPTURE = 20000  # a capture by `nonce_prefix`; beyond: `dropped`
MAX_CONTROL_CLIENTS = 16
#: The only ops the edge control listener takes (`EdgeControl`); `connect` only to allowed
#: addresses. Nothing that reads files, captures, spreads or relays further.
EDGE_OPS = ("info", "connect")
RELAY_TIMEOUT = 8.0  # default seconds for one relayed request, the inner one's own included
MAX_TCP_CLIENTS = 256  # tens of sources transferring at once; 64 KiB buffer each
TCP_BACKLOG = 512  # clients beyond MAX_TCP_CLIENTS wait here, not refused
LISTENER_READ_TIMEOUT = 5.0  # for a header line, and the longest silence inside a transfer
MAX_TRANSFER_BYTES = 64 << 20
TRANSFER_MAX_SECONDS = MAX_TIMEOUT  # one transfer on the listener side
TRANSFER_MAGIC = b"NETCONFORM-TRANSFER"
UDP_RESEND_INTERVAL = 0.5
UDP_RECEIVE_BYTES = 1 << 16  # every UDP datagram fits
LISTENER_RECEIVE_BUFFER = 4 << 20  # asked for the UDP listeners' sockets
MAX_IP_PACKET = 65535
EPHEMERAL_BIND_ATTEMPTS = 16  # port 0: IPv4 picks, IPv6 binds the same port or we retry
FILE_CHUNK = 64 << 10
INTERFACE_CACHE_SECONDS = 1.0

# Characters of a nonce found inside bytes (prefix matching): printable ASCII without space,
# '"' and '\\' (those end a JSON string, and the listeners' replies carry nonces in JSON).
NONCE_TOKEN_BYTES = frozenset(range(0x21, 0x7F)) - {0x22, 0x5C}

_log_lock = threading.Lock()


def log(message: str) -> None:
    """One line on stderr, which becomes the container log."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with _log_lock:
        sys.stderr.write(f"{stamp} netconform-agent[{os.getpid()}] {message}\n")
        sys.stderr.flush()


class RequestError(Exception):
    """A request that cannot be served; becomes ``ok: false`` with this text, the errno name
    and ``details`` (fields a person needs to judge the failure, e.g. the sizes tried)."""

    def __init__(
        self, message: str, errno_name: str | None = None, details: JSONDict | None = None
    ) -> None:
        super().__init__(message)
        self.errno_name = errno_name
        self.details: JSONDict = details or {}


# --------------------------------------------------------------------------------------------
# Deterministic content (the suite computes the same digest without a pod).


def iter_deterministic_chunks(seed: str, size: int) -> Iterator[bytes]:
    """The bytes of ``deterministic_bytes(seed, size)``, in chunks of at most 64 KiB."""
    for index, start in enumerate(range(0, size, FILE_CHUNK)):
        length = min(FILE_CHUNK, size - start)
        yield hashlib.shake_256(f"netconform:{seed}:{index}".encode()).digest(length)


def deterministic_bytes(seed: str, size: int) -> bytes:
    """``size`` bytes that depend only on ``seed`` (what ``write_file`` writes)."""
    return b"".join(iter_deterministic_chunks(seed, size))


def expected_sha256(seed: str, size: int) -> str:
    """The sha256 hex digest of ``deterministic_bytes(seed, size)``: what ``write_file``
    reports, and what a ``transfer`` of ``size`` bytes with nonce ``seed`` must arrive as."""
    digest = hashlib.sha256()
    for chunk in iter_deterministic_chunks(seed, size):
        digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Request fields.


def field_str(request: JSONDict, name: str, default: str | None = None) -> str:
    value = request.get(name, default)
    if value is None:
        raise RequestError(f"missing field {name!r}")
    if not isinstance(value, str):
        raise RequestError(f"field {name!r} must be a string, got {type(value).__name__}")
    return value


def field_number(request: JSONDict, name: str, default: float, low: float, high: float) -> float:
    value = request.get(name, default)
    # bool is an int in Python; "timeout": true is a client bug, not 1 second.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"field {name!r} must be a number, got {brief(value)}")
    if not low <= value <= high:
        raise RequestError(f"field {name!r} must be between {low} and {high}, got {value}")
    return float(value)


def field_int(request: JSONDict, name: str, default: int | None, low: int, high: int) -> int:
    value = request.get(name, default)
    if value is None:
        raise RequestError(f"missing field {name!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"field {name!r} must be an integer, got {brief(value)}")
    if not low <= value <= high:
        raise RequestError(f"field {name!r} must be between {low} and {high}, got {value}")
    return value


def field_bool(request: JSONDict, name: str, default: bool) -> bool:
    value = request.get(name, default)
    if not isinstance(value, bool):
        raise RequestError(f"field {name!r} must be true or false, got {brief(value)}")
    return value


def field_proto(request: JSONDict) -> str:
    proto = field_str(request, "proto")
    if proto not in ("tcp", "udp"):
        raise RequestError(f"field 'proto' must be 'tcp' or 'udp', got {brief(proto)}")
    return proto


def is_valid_nonce(nonce: object) -> bool:
    """Nonces are 1..128 printable characters without spaces (one line, matched as bytes)."""
    return (
        isinstance(nonce, str)
        and 0 < len(nonce) <= MAX_NONCE_LENGTH
        and nonce.isprintable()
        and " " not in nonce
    )


def field_nonce(request: JSONDict, name: str = "nonce") -> str:
    nonce = field_str(request, name)
    # The TCP listener reads one line and the capture matches raw bytes: keep nonces plain.
    if not is_valid_nonce(nonce):
        raise RequestError(
            f"field {name!r} must be 1..{MAX_NONCE_LENGTH} printable characters without spaces"
        )
    return nonce


def field_nonce_prefix(request: JSONDict) -> str:
    prefix = field_str(request, "nonce_prefix")
    if not 0 < len(prefix) <= MAX_PREFIX_LENGTH or not all(
        ord(char) in NONCE_TOKEN_BYTES for char in prefix
    ):
        raise RequestError(
            f"field 'nonce_prefix' must be 1..{MAX_PREFIX_LENGTH} printable ASCII characters "
            "without spaces, '\"' or '\\'"
        )
    return prefix


def field_nonce_or_prefix(request: JSONDict) -> tuple[str | None, str | None]:
    """(nonce, None) or (None, nonce_prefix): a request names exactly one of the two."""
    if "nonce" in request and "nonce_prefix" in request:
        raise RequestError("give only one of the fields 'nonce' and 'nonce_prefix'")
    if "nonce" not in request and "nonce_prefix" not in request:
        raise RequestError("missing field 'nonce' (or 'nonce_prefix')")
    if "nonce" in request:
        return field_nonce(request), None
    return None, field_nonce_prefix(request)


def field_expect_nonces(request: JSONDict, prefix: str | None) -> list[str]:
    """The ``expect_nonces`` list (only with ``nonce_prefix``; each starts with the prefix)."""
    value = request.get("expect_nonces")
    if value is None:
        return []
    if prefix is None:
        raise RequestError("field 'expect_nonces' needs 'nonce_prefix'")
    if not isinstance(value, list) or len(value) > MAX_EXPECT_NONCES:
        raise RequestError(f"field 'expect_nonces' must be a list of at most {MAX_EXPECT_NONCES}")
    for nonce in value:
        if not is_valid_nonce(nonce) or not nonce.startswith(prefix):
            raise RequestError(
                f"field 'expect_nonces' holds {brief(nonce)}, not a nonce starting with {prefix!r}"
            )
    return list(dict.fromkeys(value))


def field_packet_size(request: JSONDict) -> int | str | None:
    """``size``: None (a small packet, as before), ``"mtu"`` or an IP packet size in bytes."""
    value = request.get("size")
    if value is None or value == "mtu":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_IP_PACKET:
        raise RequestError(
            f"field 'size' must be \"mtu\" or an IP packet size 1..{MAX_IP_PACKET}, "
            f"got {brief(value)}"
        )
    return value


def field_probes(request: JSONDict) -> tuple[int, float]:
    """``count`` (probes of a measured request, 1: a plain one) and ``interval`` (seconds
    between their starts); all probes start within `MAX_TIMEOUT`."""
    count = field_int(request, "count", 1, 1, MAX_PROBE_COUNT)
    interval = field_number(
        request, "interval", DEFAULT_PROBE_INTERVAL, MIN_PROBE_INTERVAL, MAX_TIMEOUT
    )
    if count * interval > MAX_TIMEOUT:
        raise RequestError(
            f"{count} probes {interval}s apart take longer than {MAX_TIMEOUT:.0f}s to start"
        )
    return count, interval


def field_packet(request: JSONDict) -> tuple[int | str | None, bool, int, float]:
    """A probe's packet and its measurement: ``size``, ``df`` (Don't Fragment), ``count`` and
    ``interval`` (`field_probes`); a measured request (count above 1) sends plain probes."""
    size = field_packet_size(request)
    df = field_bool(request, "df", False)
    count, interval = field_probes(request)
    if count > 1 and (size is not None or df):
        raise RequestError("fields 'size' and 'df' do not go with 'count'")
    return size, df, count, interval


def field_seed(request: JSONDict) -> str:
    seed = request.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, (str, int)):
        raise RequestError(f"field 'seed' must be a string or an integer, got {brief(seed)}")
    return str(seed)


def brief(value: object, limit: int = 80) -> str:
    """A request value for an error text, never longer than ``limit``."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def printable(value: object, limit: int = 80) -> str:
    """A value for a log line: printable text as it is, anything else as its repr (one line,
    whatever a peer sent), never longer than ``limit``."""
    text = value if isinstance(value, str) and value.isprintable() else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def errno_name(code: int | None) -> str | None:
    if code is None:
        return None
    return errno.errorcode.get(code, str(code))


def describe_os_error(exc: OSError) -> str:
    name = errno_name(exc.errno)
    text = exc.strerror or str(exc)
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{name}: {text}{where}" if name else f"{text}{where}"


# --------------------------------------------------------------------------------------------
# Nonces inside bytes.


def nonce_token_at(data: bytes, start: int) -> str:
    """The nonce beginning at ``data[start]``: nonce characters up to 128 of them."""
    end = start
    limit = min(len(data), start + MAX_NONCE_LENGTH)
    while end < limit and data[end] in NONCE_TOKEN_BYTES:
        end += 1
    return data[start:end].decode("ascii")


def find_nonce(data: bytes, prefix: bytes) -> str | None:
    """The first nonce in ``data`` that begins with ``prefix``, or None."""
    start = data.find(prefix)
    return None if start < 0 else nonce_token_at(data, start)


def one_line_traceback() -> str:
    return traceback.format_exc().rstrip().replace("\n", " | ")


# --------------------------------------------------------------------------------------------
# The time a ``call`` may take: the kit gives each exec this budget (`call_budget`).


# Which ops spend their `timeout` / `wait` inside the serve process before answering.
_OP_WAIT_FIELDS: dict[str, tuple[str | None, float]] = {
    "seen": ("wait", 0.0),
    "connect": ("timeout", 3.0),
    "icmp": ("timeout", 3.0),
    "transfer": ("timeout", 10.0),
    "capture_result": ("wait", 2.0),
    "resolve": ("timeout", 5.0),
    "relay": ("timeout", RELAY_TIMEOUT),
    # Not a field: the first capture imports scapy and waits for the sniffer to listen.
    "capture_start": (None, 10.0),
}
CALL_MARGIN = 10.0


def _spread_wait(request: JSONDict) -> float:
    """A spread's longest run: its waves of tries, each up to ``timeout``, at most
    `SPREAD_SECONDS` of starting tries and then the last tries' ``timeout``."""
    values = [request.get(k, d) for k, d in (("timeout", 3.0), ("max_tries", 1), ("parallel", 8))]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values):
        return 0.0
    timeout, max_tries, parallel = (float(v) for v in values)
    timeout = min(timeout, MAX_TIMEOUT)
    waves = -(-max_tries // parallel)
    return min(waves * timeout, SPREAD_SECONDS + timeout)


def request_wait(request: object) -> float:
    """Seconds one request may spend in the serve process before answering (0 for most)."""
    if not isinstance(request, dict):
        return 0.0
    op = request.get("op")
    if op == "spread":
        return _spread_wait(request)
    if not isinstance(op, str) or op not in _OP_WAIT_FIELDS:
        return 0.0
    key, default = _OP_WAIT_FIELDS[op]
    if key is None:
        return default
    value = request.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return 0.0
    wait = min(max(float(value), 0.0), MAX_CAPTURE_SECONDS)
    if op in ("connect", "icmp"):
        # A measured request: its last probe starts count * interval after the first.
        count, interval = request.get("count", 1), request.get("interval", DEFAULT_PROBE_INTERVAL)
        numbers = all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in (count, interval)
        )
        if numbers and count > 1:
            wait += min(max(float(count) * float(interval), 0.0), MAX_TIMEOUT)
    return wait


def call_budget(requests: Sequence[object], parallel: int = 1) -> float:
    """Seconds a batch may take: 10 s of margin plus, for waits w_i run at most N at a time,
    sum(w_i) / N + (1 - 1/N) * max(w_i) (a sequential list, N = 1: the plain sum). That is
    the longest any greedy N-worker schedule of the batch can take."""
    waits = [request_wait(request) for request in requests]
    if not waits:
        return CALL_MARGIN
    workers = max(1, parallel)
    return CALL_MARGIN + sum(waits) / workers + (1 - 1 / workers) * max(waits)
