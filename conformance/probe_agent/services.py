"""Services: spreads over a virtual IP, names through the pod's resolver, the network
namespace's identity, and binding tries.
"""

from __future__ import annotations

import platform
import socket
import struct
import threading
import time
from typing import TYPE_CHECKING, Any

from .exchanges import connect_tcp, connect_udp
from .netinfo import family_of, normalize_ip
from .protocol import (
    MAX_NAME_LENGTH,
    MAX_SPREAD_SERVERS,
    SPREAD_SECONDS,
    RequestError,
    describe_os_error,
    errno_name,
    field_str,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    JSONDict = dict[str, Any]

UNNAMED_SERVER = "(unnamed)"  # a listener whose agent has no POD_NAME


def spread(
    proto: str,
    host: str,
    port: int,
    nonce: str,
    expect: Sequence[str],
    max_tries: int,
    timeout: float,
    parallel: int,
    min_tries: int = 1,
) -> JSONDict:
    """Connect to ``host``:``port`` again and again (a Service's address: each connection may
    reach another endpoint), ``parallel`` tries at a time, until every server of ``expect``
    answered at least once and ``min_tries`` tries were started (with none expected: every try
    is made), ``max_tries`` tries were started, or `SPREAD_SECONDS` passed. Each try is a ``connect`` with its own nonce
    (``<nonce>.<n>``) and ``timeout``; the answer counts who answered (the listener's pod name),
    the source addresses each server saw, and how the failed tries failed."""
    lock = threading.Lock()
    servers: dict[str, int] = {}
    peers: dict[str, list[str]] = {}
    errors: dict[str, int] = {}
    examples: list[str] = []
    wanted = set(expect)
    all_answered = threading.Event()
    started_at = time.monotonic()
    deadline = started_at + SPREAD_SECONDS
    tries = [0]

    def next_try() -> int | None:
        with lock:
            enough = all_answered.is_set() and tries[0] >= min_tries
            if enough or tries[0] >= max_tries or time.monotonic() > deadline:
                return None
            tries[0] += 1
            return tries[0]

    def work() -> None:
        while True:
            index = next_try()
            if index is None:
                return
            try_nonce = f"{nonce}.{index}"
            try:
                if proto == "tcp":
                    answer = connect_tcp(host, port, try_nonce, timeout)
                else:
                    answer = connect_udp(host, port, try_nonce, timeout)
            except RequestError as exc:
                kind, text = exc.errno_name or "EPROTO", str(exc)
            except OSError as exc:
                kind, text = errno_name(exc.errno) or "OSError", describe_os_error(exc)
            else:
                name = answer.get("server")
                server = name if isinstance(name, str) and name else UNNAMED_SERVER
                with lock:
                    servers[server] = servers.get(server, 0) + 1
                    seen = peers.setdefault(server, [])
                    if answer["peer_seen"] not in seen and len(seen) < 16:
                        seen.append(answer["peer_seen"])
                    if wanted and wanted <= set(servers):
                        all_answered.set()
                continue
            with lock:
                errors[kind] = errors.get(kind, 0) + 1
                if len(examples) < 3:
                    examples.append(text)

    helpers: list[threading.Thread] = []
    for _ in range(min(parallel, max_tries) - 1):
        thread = threading.Thread(target=work, daemon=True)
        try:
            thread.start()
        except RuntimeError:  # "can't start new thread": fewer at once, same tries
            break
        helpers.append(thread)
    work()
    for thread in helpers:
        thread.join()
    return {
        "tries": tries[0],
        "servers": servers,
        "peers": {server: sorted(seen) for server, seen in peers.items()},
        "errors": errors,
        "error_examples": examples,
        "missing": sorted(wanted - set(servers)),
        "seconds": round(time.monotonic() - started_at, 3),
    }


#: SO_NETNS_COOKIE (Linux 5.14): the network namespace's 64-bit id, never reused while the
#: machine runs (a namespace's inode number can be, once it is freed); the generic value, as
#: Python before 3.12 has no name for it.
SO_NETNS_COOKIE = getattr(socket, "SO_NETNS_COOKIE", 71)


def netns_cookie() -> int | None:
    """This process's network namespace cookie; None where the kernel has none (before 5.14)
    or the option has another number (sparc, parisc)."""
    if platform.machine().startswith(("sparc", "parisc")):
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    except OSError:
        return None
    return int(struct.unpack("=Q", raw)[0]) if len(raw) == 8 else None


RESOLV_CONF = "/etc/resolv.conf"


def read_resolv_conf(path: str = RESOLV_CONF) -> JSONDict | None:
    """The pod's resolver configuration as kubelet wrote it: ``nameservers``, ``search`` and
    ``options`` (None when the file cannot be read)."""
    found: JSONDict = {"nameservers": [], "search": [], "options": []}
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read(64 << 10).splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) < 2:
            continue
        if fields[0] == "nameserver":
            found["nameservers"].append(fields[1])
        elif fields[0] in ("search", "domain"):
            found["search"] = fields[1:]  # the last search or domain line wins
        elif fields[0] == "options":
            found["options"].extend(fields[1:])
    return found


#: getaddrinfo's error codes by value (``EAI_NONAME``...), as far as this libc has them.
EAI_NAMES = {
    getattr(socket, name): name
    for name in sorted(dir(socket), reverse=True)
    if name.startswith("EAI_") and isinstance(getattr(socket, name), int)
}
FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6, 0: socket.AF_UNSPEC}


def resolve_name(name: str, family: int, timeout: float) -> JSONDict:
    """``name``'s addresses through the pod's own resolver (getaddrinfo: /etc/hosts, then DNS
    with the search list and ndots of /etc/resolv.conf), of IP version ``family`` (0: both);
    ``RequestError`` with the resolver's error (``EAI_NONAME``...), or ETIMEDOUT when the
    resolver has not answered within ``timeout``."""
    found: JSONDict = {}

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(name, None, FAMILIES[family], socket.SOCK_STREAM)
            found["addresses"] = sorted({normalize_ip(str(info[4][0])) for info in infos})
        except socket.gaierror as exc:
            found["error"] = (exc.strerror or str(exc), EAI_NAMES.get(exc.errno, "EAI_FAIL"))
        except (UnicodeError, ValueError) as exc:
            found["error"] = (str(exc), "EAI_NONAME")

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout)
    where = f"resolve {name}" + (f" (IPv{family})" if family else "")
    if thread.is_alive():  # the lookup thread ends when the resolver gives up
        raise RequestError(f"{where}: no answer from the resolver within {timeout}s", "ETIMEDOUT")
    if "error" in found:
        text, code = found["error"]
        raise RequestError(f"{where}: {text}", code)
    return {"name": name, "family": family, "addresses": found["addresses"]}


def field_name(request: JSONDict) -> str:
    name = field_str(request, "name")
    if not 0 < len(name) <= MAX_NAME_LENGTH or not name.isprintable() or " " in name:
        raise RequestError(
            f"field 'name' must be 1..{MAX_NAME_LENGTH} printable characters without spaces"
        )
    return name


def field_servers(request: JSONDict) -> list[str]:
    servers = request.get("expect_servers", [])
    if (
        not isinstance(servers, list)
        or len(servers) > MAX_SPREAD_SERVERS
        or not all(isinstance(s, str) and 0 < len(s) <= 253 for s in servers)
    ):
        raise RequestError(
            f"field 'expect_servers' must be a list of at most {MAX_SPREAD_SERVERS} pod names"
        )
    return list(dict.fromkeys(servers))


def try_bind(proto: str, host: str, port: int) -> JSONDict:
    family = family_of(host)
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    # No SO_REUSEADDR: the question is whether the port is free in this network namespace.
    with socket.socket(family, kind) as sock:
        try:
            sock.bind((host or "0.0.0.0", port))
        except OSError as exc:
            return {"bound": False, "errno": errno_name(exc.errno)}
    return {"bound": True, "errno": None}
