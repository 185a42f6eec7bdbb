"""Packet captures by nonce or nonce prefix (scapy, imported on the first capture only)."""

from __future__ import annotations

import itertools
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from .netinfo import IP_PROTOCOL_NAMES
from .protocol import (
    MAX_CAPTURES,
    MAX_PACKETS_PER_CAPTURE,
    MAX_PACKETS_PER_PREFIX_CAPTURE,
    RequestError,
    brief,
    find_nonce,
    log,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    JSONDict = dict[str, Any]
    # (proto, src, dst, iface, nonce) of one captured packet, strings interned.
    PacketRow = tuple[str, str | None, str | None, str | None, str]

CAPTURE_MAX_PACKET_BYTES = 600  # bulk transfers and full-size packets never reach Python
# Only packets that can carry a nonce reach Python: TCP segments with data (PSH: a line the
# agent wrote), UDP datagrams, ICMP/ICMPv6 echoes. A busy pod sees many handshakes and ACKs for
# every nonce; dissecting them all made sniffers fall behind on small machines.
CAPTURE_FILTER = (
    f"less {CAPTURE_MAX_PACKET_BYTES} and ("
    "(ip and ((tcp and tcp[tcpflags] & tcp-push != 0) or udp"
    " or (icmp and (icmp[icmptype] == icmp-echo or icmp[icmptype] == icmp-echoreply))))"
    " or (ip6 and ((ip6[6] == 6 and ip6[53] & 8 != 0) or ip6[6] == 17"
    " or (ip6[6] == 58 and (ip6[40] == 128 or ip6[40] == 129)))))"
)


class CaptureStartError(RequestError):
    """A sniffer that did not start; ``thread_died``: it failed at once (not a slow start)."""

    def __init__(self, message: str, thread_died: bool) -> None:
        super().__init__(message)
        self.thread_died = thread_died


class Capture:
    """One running or finished sniffer, with the packets it matched (bounded)."""

    def __init__(
        self, capture_id: str, needle: str, by_prefix: bool, iface: str | list[str]
    ) -> None:
        self.capture_id = capture_id
        self.needle = needle.encode()
        self.by_prefix = by_prefix
        self.iface = iface
        self.limit = MAX_PACKETS_PER_PREFIX_CAPTURE if by_prefix else MAX_PACKETS_PER_CAPTURE
        self.packets: list[PacketRow] = []
        self.nonces: set[str] = set()
        self.dropped = 0
        self.finished = False
        self.condition = threading.Condition()
        self.sniffer: Any = None

    def add(self, packet: PacketRow) -> None:
        with self.condition:
            if len(self.packets) < self.limit:
                self.packets.append(packet)
            else:
                self.dropped += 1
            if len(self.nonces) < self.limit:
                self.nonces.add(packet[4])
            self.condition.notify_all()

    def mark_finished(self) -> None:
        with self.condition:
            self.finished = True
            self.condition.notify_all()

    def wait(self, min_packets: int, expect: Sequence[str], seconds: float) -> None:
        def done() -> bool:
            if self.finished:
                return True
            if expect:
                return all(nonce in self.nonces for nonce in expect)
            return len(self.packets) >= min_packets

        with self.condition:
            self.condition.wait_for(done, timeout=seconds)


class CaptureBook:
    """The captures of one serve process; scapy is imported once, on the first capture."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._captures: dict[str, Capture] = {}
        self._ids = itertools.count(1)
        self._scapy: dict[str, Any] | None = None
        self._scapy_error: str | None = None

    def _load_scapy(self) -> dict[str, Any]:
        with self._lock:
            if self._scapy is None and self._scapy_error is None:
                started = time.monotonic()
                try:
                    from scapy.config import conf
                    from scapy.layers import l2  # noqa: F401  (link-layer dissectors)
                    from scapy.layers.inet import IP
                    from scapy.layers.inet6 import IPv6
                    from scapy.sendrecv import AsyncSniffer

                    conf.verb = 0
                    self._scapy = {
                        "AsyncSniffer": AsyncSniffer,
                        "IP": IP,
                        "IPv6": IPv6,
                        "filter": self._kernel_filter(),
                    }
                    log(f"scapy imported in {time.monotonic() - started:.1f}s")
                except Exception as exc:  # scapy raises more than ImportError when half-installed
                    self._scapy_error = f"scapy is not usable in this image: {exc}"
            if self._scapy is None:
                raise RequestError(str(self._scapy_error))
            return self._scapy

    @staticmethod
    def _kernel_filter() -> str | None:
        """The BPF filter, if this scapy can compile one (libpcap); else Python filters alone."""
        try:
            from scapy.arch.common import compile_filter
            from scapy.data import DLT_EN10MB

            compile_filter(CAPTURE_FILTER, linktype=DLT_EN10MB)
        except Exception as exc:
            log(f"no kernel packet filter ({exc}); filtering in Python")
            return None
        return CAPTURE_FILTER

    def start(self, nonce: str | None, prefix: str | None, iface: str, timeout: float) -> JSONDict:
        interfaces: str | list[str]
        if iface == "any":
            interfaces = [name for _, name in socket.if_nameindex()]
        else:
            try:
                socket.if_nametoindex(iface)
            except OSError as exc:
                raise RequestError(
                    f"no interface {brief(iface)} in this network namespace"
                ) from exc
            interfaces = iface
        scapy = self._load_scapy()
        with self._lock:
            running = [c for c in self._captures.values() if not c.finished]
            if len(running) >= MAX_CAPTURES:
                raise RequestError(f"{len(running)} captures already running; ask their results")
            # Forget the oldest finished captures (ids are in start order) to stay bounded.
            finished = [i for i, c in self._captures.items() if c.finished]
            for old_id in finished[: max(0, len(self._captures) + 1 - MAX_CAPTURES)]:
                del self._captures[old_id]
            needle = prefix if prefix is not None else str(nonce)
            capture = Capture(f"cap-{next(self._ids)}", needle, prefix is not None, interfaces)
            self._captures[capture.capture_id] = capture
        try:
            self._launch(capture, scapy, scapy["filter"])
        except CaptureStartError as exc:
            if scapy["filter"] is None or not exc.thread_died:
                raise
            # An interface whose link type the filter compiler does not know: Python alone.
            log(f"capture {capture.capture_id} on {iface!r}: retrying without a kernel filter")
            capture.finished = False
            self._launch(capture, scapy, None)

        def watch() -> None:
            # Bound the capture here: scapy >= 2.6 refuses AsyncSniffer(timeout=...).
            capture.sniffer.join(timeout)
            self._stop(capture)

        threading.Thread(target=watch, daemon=True).start()
        return {"capture_id": capture.capture_id, "iface": interfaces}

    def _launch(self, capture: Capture, scapy: dict[str, Any], kernel_filter: str | None) -> None:
        ip_layer, ipv6_layer = scapy["IP"], scapy["IPv6"]
        needle = capture.needle

        def matches(packet: Any) -> bool:
            raw = getattr(packet, "original", None) or bytes(packet)
            return len(raw) <= CAPTURE_MAX_PACKET_BYTES and needle in raw

        def record(packet: Any) -> None:
            raw = getattr(packet, "original", None) or bytes(packet)
            if capture.by_prefix:
                nonce = find_nonce(raw, needle) or needle.decode()
            else:
                nonce = needle.decode()
            # Ask layers by type; proto from the IP header's own protocol field.
            if packet.haslayer(ip_layer):
                layer, number = packet[ip_layer], packet[ip_layer].proto
            elif packet.haslayer(ipv6_layer):
                layer, number = packet[ipv6_layer], packet[ipv6_layer].nh
            else:
                return
            capture.add(
                (
                    IP_PROTOCOL_NAMES.get(int(number), "other"),
                    sys.intern(str(layer.src)),
                    sys.intern(str(layer.dst)),
                    sys.intern(str(getattr(packet, "sniffed_on", None) or "")) or None,
                    sys.intern(nonce),
                )
            )

        started = threading.Event()
        options: JSONDict = {
            "iface": capture.iface,
            "lfilter": matches,
            "prn": record,
            "store": False,
            "started_callback": started.set,
        }
        if kernel_filter is not None:
            options["filter"] = kernel_filter
        sniffer = scapy["AsyncSniffer"](**options)
        capture.sniffer = sniffer
        sniffer.start()
        # The sniffer opens its socket in its own thread: answer only once it listens, so the
        # caller's next packet is not missed; a thread that died (no NET_RAW) fails fast.
        deadline = time.monotonic() + 10.0
        while not started.wait(0.05):
            thread = getattr(sniffer, "thread", None)
            if (thread is not None and not thread.is_alive()) or time.monotonic() > deadline:
                break
        if started.is_set():
            return
        capture.mark_finished()
        self._stop(capture)
        thread = getattr(sniffer, "thread", None)
        where = brief(capture.iface)
        if thread is not None and not thread.is_alive():
            error = getattr(sniffer, "exception", None) or "see the agent log"
            raise CaptureStartError(
                f"capture on {where} failed to start ({error}); capturing needs NET_RAW", True
            )
        raise CaptureStartError(f"capture on {where} did not start within 10s", False)

    @staticmethod
    def _stop(capture: Capture) -> None:
        sniffer = capture.sniffer
        thread = getattr(sniffer, "thread", None)
        alive = thread is None or thread.is_alive()
        if sniffer is not None and getattr(sniffer, "running", False) and alive:
            try:
                sniffer.stop(join=True)
            except Exception as exc:  # scapy raises Scapy_Exception when it already ended
                log(f"capture {capture.capture_id} stop: {exc}")
        capture.mark_finished()

    def result(
        self, capture_id: str, wait: float, min_packets: int, expect: Sequence[str]
    ) -> JSONDict:
        with self._lock:
            capture = self._captures.get(capture_id)
        if capture is None:
            raise RequestError(f"unknown capture_id {brief(capture_id)}")
        if expect and not capture.by_prefix:
            raise RequestError("field 'expect_nonces' needs a capture started with nonce_prefix")
        for nonce in expect:
            if not nonce.startswith(capture.needle.decode()):
                raise RequestError(f"expected nonce {nonce!r} does not start with the prefix")
        capture.wait(min_packets, expect, wait)
        self._stop(capture)
        with capture.condition:
            rows = list(capture.packets)
            seen = set(capture.nonces)
            dropped = capture.dropped
        response: JSONDict = {
            "capture_id": capture_id,
            "packets": [
                {"proto": proto, "src": src, "dst": dst, "iface": iface, "nonce": nonce}
                for proto, src, dst, iface, nonce in rows
            ],
            "dropped": dropped,
        }
        if expect:
            response["missing"] = [nonce for nonce in expect if nonce not in seen]
        return response
