"""netlab.api.spdy: the SPDY/3 header dictionary is the protocol's, header blocks survive a
round trip through one zlib stream per direction, and frames split and join at any boundary."""

from __future__ import annotations

import struct
import zlib

from netlab.api.spdy import (
    DICTIONARY,
    FLAG_FIN,
    GOAWAY,
    PING,
    SYN_STREAM,
    FrameParser,
    HeaderCodec,
    control_frame,
    data_frame,
)


def test_the_dictionary_is_spdy3s() -> None:
    assert len(DICTIONARY) == 1423
    # Every SPDY/3 header stream opens with zlib's header (a preset dictionary) and this id.
    assert zlib.adler32(DICTIONARY) == 0xE3C6A7C2
    opening = HeaderCodec().encode({"streamtype": ["error"]})
    assert opening[0] == 0x78
    assert opening[1] & 0x20, "FDICT set"
    assert opening[2:6] == bytes.fromhex("e3c6a7c2")


def test_header_blocks_round_trip_across_one_stream() -> None:
    ours, theirs = HeaderCodec(), HeaderCodec()
    for headers in (
        {"streamtype": ["error"]},
        {"streamtype": ["stdout"], "x-multi": ["a", "b"]},
        {},
    ):
        assert theirs.decode(ours.encode(headers)) == headers


def test_frames_parse_whatever_the_chunking() -> None:
    sender = HeaderCodec()
    syn = struct.pack(">IIBB", 3, 0, 0, 0) + sender.encode({"streamtype": ["stdin"]})
    wire = (
        control_frame(SYN_STREAM, 0, syn)
        + data_frame(3, 0, b"hello")
        + data_frame(3, FLAG_FIN, b"")
        + control_frame(PING, 0, struct.pack(">I", 7))
        + control_frame(GOAWAY, 0, struct.pack(">II", 3, 0))
    )
    for size in (1, 5, len(wire)):
        parser = FrameParser(HeaderCodec())
        for start in range(0, len(wire), size):
            parser.feed_data(wire[start : start + size])
        parser.feed_eof()
        frames = []
        while (frame := parser.frames.get_nowait()) is not None:
            frames.append(frame)
        assert [(f.kind, f.stream_id) for f in frames] == [
            (SYN_STREAM, 3),
            (0, 3),
            (0, 3),
            (PING, 0),
            (GOAWAY, 0),
        ]
        assert frames[0].headers == {"streamtype": ["stdin"]}
        assert frames[1].data == b"hello"
        assert frames[2].fin
        assert frames[3].data == struct.pack(">I", 7)


def test_a_broken_peer_ends_the_parse() -> None:
    parser = FrameParser(HeaderCodec())
    parser.feed_data(control_frame(SYN_STREAM, 0, struct.pack(">IIBB", 1, 0, 0, 0) + b"junk"))
    assert parser.error is not None
    assert parser.frames.get_nowait() is None
