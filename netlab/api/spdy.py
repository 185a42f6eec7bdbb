"""SPDY/3.1 as Kubernetes streams speak it (k8s.io/apimachinery httpstream/spdy over
moby/spdystream): the framing, the header blocks and one server-side connection.

client-go before 1.29 (and every kubectl up to 1.30 as its fallback) runs ``exec`` over an
HTTP/1.1 connection upgraded to ``SPDY/3.1``: the client opens one stream per channel with a
SYN_STREAM whose ``streamtype`` header names it (error, stdin, stdout, stderr, resize), the
server answers each with a SYN_REPLY, and bytes travel in DATA frames, a FIN ending a
direction. Only what those streams use is spoken here: SYN_STREAM, SYN_REPLY, DATA, PING
(echoed), RST_STREAM, GOAWAY; SETTINGS and WINDOW_UPDATE are read and ignored (spdystream
sends without waiting for windows, and so does this server).

Header blocks (name/value pairs, 32-bit lengths) are compressed with one zlib stream per
direction for the whole connection, primed with the SPDY/3 dictionary (draft-mbelshe-httpbis-
spdy-00, section 2.6.10.1) and sync-flushed after each block. The dictionary is built below
from its definition: the listed header names, each with its 32-bit length, then a fixed tail.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from dataclasses import dataclass, field

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = (
    1,
    2,
    3,
    4,
    6,
    7,
    8,
    9,
)
FLAG_FIN = 0x01
RST_PROTOCOL_ERROR = 1
GOAWAY_OK = 0
MAX_FRAME = (1 << 24) - 1
MAX_HEADER_BLOCK = 1 << 20  # a decompressed header block larger than this is refused

_DICTIONARY_NAMES = (
    *[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
    ],
    "200 OK",
    *["version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin"],
)
_DICTIONARY_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
DICTIONARY = (
    b"".join(struct.pack(">I", len(name)) + name.encode() for name in _DICTIONARY_NAMES)
    + _DICTIONARY_TAIL.encode()
)
# 1423 bytes, Adler-32 0xe3c6a7c2: the dictionary id that opens every SPDY/3 header block
# (tests/unit/test_spdy.py checks both).


class SpdyError(Exception):
    """The peer broke the protocol; the connection ends."""


@dataclass(frozen=True)
class Frame:
    """One frame: a control frame has ``kind`` (its type) and the stream it concerns (0 for
    connection frames); a DATA frame has kind 0."""

    kind: int
    stream_id: int
    flags: int
    data: bytes = b""
    headers: dict[str, list[str]] = field(default_factory=dict)

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


class HeaderCodec:
    """The two zlib streams of one connection (ours out, the peer's in)."""

    def __init__(self) -> None:
        self._compressor = zlib.compressobj(
            9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY
        )
        self._decompressor = zlib.decompressobj(15, zdict=DICTIONARY)

    def encode(self, headers: dict[str, list[str]]) -> bytes:
        block = struct.pack(">I", len(headers))
        for name, values in headers.items():
            raw_name = name.lower().encode()
            raw_value = b"\x00".join(value.encode() for value in values)
            block += struct.pack(">I", len(raw_name)) + raw_name
            block += struct.pack(">I", len(raw_value)) + raw_value
        return self._compressor.compress(block) + self._compressor.flush(zlib.Z_SYNC_FLUSH)

    def decode(self, compressed: bytes) -> dict[str, list[str]]:
        try:
            block = self._decompressor.decompress(compressed, MAX_HEADER_BLOCK)
        except zlib.error as error:
            raise SpdyError(f"header block does not decompress: {error}") from None
        if self._decompressor.unconsumed_tail:
            raise SpdyError("header block too large")
        headers: dict[str, list[str]] = {}
        try:
            (count,) = struct.unpack_from(">I", block, 0)
            offset = 4
            for _ in range(count):
                (length,) = struct.unpack_from(">I", block, offset)
                name = block[offset + 4 : offset + 4 + length].decode()
                offset += 4 + length
                (length,) = struct.unpack_from(">I", block, offset)
                value = block[offset + 4 : offset + 4 + length].decode()
                offset += 4 + length
                headers.setdefault(name.lower(), []).extend(value.split("\x00"))
        except (struct.error, UnicodeDecodeError) as error:
            raise SpdyError(f"malformed header block: {error}") from None
        return headers


def control_frame(kind: int, flags: int, body: bytes) -> bytes:
    return struct.pack(">HHI", 0x8000 | VERSION, kind, (flags << 24) | len(body)) + body


def data_frame(stream_id: int, flags: int, data: bytes) -> bytes:
    return struct.pack(">II", stream_id & 0x7FFFFFFF, (flags << 24) | len(data)) + data


class FrameParser:
    """Bytes in, frames out: aiohttp's payload-parser interface (``feed_data``,
    ``feed_eof``) over the upgraded connection, frames queued for the session (None at the
    end of the connection or on a protocol error, kept in ``error``)."""

    def __init__(self, codec: HeaderCodec) -> None:
        self.codec = codec
        self.frames: asyncio.Queue[Frame | None] = asyncio.Queue()
        self.error: SpdyError | None = None
        self._buffer = bytearray()
        self._ended = False

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._ended:
            return True, b""
        self._buffer += data
        try:
            while (frame := self._next()) is not None:
                self.frames.put_nowait(frame)
        except SpdyError as error:
            self.error = error
            self.feed_eof()
            return True, b""
        return False, b""

    def feed_eof(self) -> None:
        if not self._ended:
            self._ended = True
            self.frames.put_nowait(None)

    def _next(self) -> Frame | None:
        if len(self._buffer) < 8:
            return None
        first, second = struct.unpack_from(">II", self._buffer, 0)
        flags, length = second >> 24, second & 0xFFFFFF
        if len(self._buffer) < 8 + length:
            return None
        body = bytes(self._buffer[8 : 8 + length])
        del self._buffer[: 8 + length]
        if not first & 0x80000000:
            return Frame(0, first & 0x7FFFFFFF, flags, body)
        version, kind = (first >> 16) & 0x7FFF, first & 0xFFFF
        if version != VERSION:
            raise SpdyError(f"SPDY version {version} (only 3 is spoken)")
        if kind == SYN_STREAM:
            if len(body) < 10:
                raise SpdyError("short SYN_STREAM")
            (stream_id,) = struct.unpack_from(">I", body, 0)
            return Frame(kind, stream_id & 0x7FFFFFFF, flags, headers=self.codec.decode(body[10:]))
        if kind in (SYN_REPLY, HEADERS):
            (stream_id,) = struct.unpack_from(">I", body[:4].rjust(4, b"\x00"), 0)
            return Frame(kind, stream_id & 0x7FFFFFFF, flags, headers=self.codec.decode(body[4:]))
        if kind in (RST_STREAM, WINDOW_UPDATE, PING, GOAWAY):
            (value,) = struct.unpack_from(">I", body[:4].rjust(4, b"\x00"), 0)
            stream_id = value & 0x7FFFFFFF if kind in (RST_STREAM, WINDOW_UPDATE) else 0
            return Frame(kind, stream_id, flags, body)
        return Frame(kind, 0, flags, body)  # SETTINGS and anything newer: read, not acted on


class SpdyConnection:
    """Our side of one upgraded connection: writes frames to ``transport``, reads the peer's
    from ``parser``; answers PINGs itself."""

    def __init__(self, transport: asyncio.Transport, codec: HeaderCodec, parser: FrameParser):
        self.transport = transport
        self.codec = codec
        self.parser = parser
        self.last_stream = 0

    @property
    def closed(self) -> bool:
        return self.transport.is_closing()

    def _write(self, frame: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(frame)

    def reply(self, stream_id: int, headers: dict[str, list[str]] | None = None) -> None:
        self._write(
            control_frame(
                SYN_REPLY, 0, struct.pack(">I", stream_id) + self.codec.encode(headers or {})
            )
        )

    def send(self, stream_id: int, data: bytes, *, fin: bool = False) -> None:
        for start in range(0, len(data), MAX_FRAME):
            last = start + MAX_FRAME >= len(data)
            self._write(
                data_frame(
                    stream_id, FLAG_FIN if fin and last else 0, data[start : start + MAX_FRAME]
                )
            )
        if not data and fin:
            self._write(data_frame(stream_id, FLAG_FIN, b""))

    def reset(self, stream_id: int, status: int = RST_PROTOCOL_ERROR) -> None:
        self._write(control_frame(RST_STREAM, 0, struct.pack(">II", stream_id, status)))

    async def drain(self) -> None:
        """Wait (bounded by the peer) while the transport's write buffer is large."""
        if self.transport.get_write_buffer_size() > 1 << 20 and not self.transport.is_closing():
            protocol = self.transport.get_protocol()
            drain = getattr(protocol, "_drain_helper", None)
            if drain is not None:
                await drain()

    async def next_frame(self) -> Frame | None:
        """The peer's next stream frame (PINGs answered on the way); None at the end."""
        while True:
            frame = await self.parser.frames.get()
            if frame is None:
                return None
            if frame.kind == PING:
                self._write(control_frame(PING, 0, frame.data[:4]))
                continue
            if frame.kind in (SETTINGS, WINDOW_UPDATE, HEADERS):
                continue
            if frame.kind == SYN_STREAM:
                self.last_stream = max(self.last_stream, frame.stream_id)
            return frame

    def close(self) -> None:
        """GOAWAY (the last stream we accepted), then the connection ends."""
        self._write(control_frame(GOAWAY, 0, struct.pack(">II", self.last_stream, GOAWAY_OK)))
        if not self.transport.is_closing():
            self.transport.close()
