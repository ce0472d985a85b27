"""Framing: encoder, incremental decoder, limits, and the original's real bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peng3dnet.errors import DecodeError, FrameTooLargeError, RemoteProtocolError
from peng3dnet.protocol.framing import FrameDecoder, encode_frame
from tests.helpers import load_vectors

MAX = 1 << 20


def decode_all(data: bytes, chunks: list[int] | None = None, max_size: int = MAX):
    dec = FrameDecoder(max_size)
    out: list = []
    if chunks is None:
        dec.feed(data, out)
    else:
        pos = 0
        for c in chunks:
            dec.feed(data[pos : pos + c], out)
            pos += c
        dec.feed(data[pos:], out)
    return out, dec


def test_encode_layout():
    assert encode_frame(64, 1, b"xyz") == b"\x00\x00\x00\x09" + b"\x00\x00\x00\x40" + b"\x00\x01" + b"xyz"


def test_decode_many_in_one_read():
    frames = [(64 + i, 0, bytes([i]) * i) for i in range(50)]
    data = b"".join(encode_frame(*f) for f in frames)
    out, dec = decode_all(data)
    assert out == frames
    assert dec.buffered == 0


def test_decode_byte_by_byte_every_split_point():
    frames = [(1, 0, b"\x80"), (65, 1, b"x" * 300), (70000, 0, b"")]
    data = b"".join(encode_frame(*f) for f in frames)
    out, _ = decode_all(data, [1] * len(data))
    assert out == frames
    for split in range(len(data) + 1):
        out, _ = decode_all(data, [split])
        assert out == frames, split


def test_partial_frame_is_kept_not_lost():
    data = encode_frame(64, 0, b"hello")
    dec = FrameDecoder(MAX)
    out: list = []
    dec.feed(data[:3], out)  # inside the length prefix
    assert out == [] and dec.buffered == 3
    dec.feed(data[3:12], out)
    assert out == []
    dec.feed(data[12:], out)
    assert out == [(64, 0, b"hello")]


def test_length_above_limit_refused_before_buffering():
    dec = FrameDecoder(1000)
    out: list = []
    with pytest.raises(FrameTooLargeError) as ei:
        dec.feed(b"\xff\xff\xff\xff", out)  # a 4 GiB announcement, nothing else
    assert ei.value.reason == "packettoolarge"
    assert dec.buffered == 0


def test_length_below_header_is_malformed():
    with pytest.raises(DecodeError):
        decode_all(b"\x00\x00\x00\x05" + b"\x00" * 5)


@pytest.mark.parametrize("flags", [2, 4, 0x8000, 3])
def test_unknown_flags_are_malformed(flags):
    with pytest.raises(DecodeError) as ei:
        decode_all(encode_frame(64, flags, b"\xc0"))
    assert ei.value.reason == "invalidflags"


def test_frames_before_error_are_delivered_and_decoder_poisoned():
    good = encode_frame(64, 0, b"\xc0")
    dec = FrameDecoder(MAX)
    out: list = []
    with pytest.raises(DecodeError):
        dec.feed(good + b"\x00\x00\x00\x01\x00", out)
    assert out == [(64, 0, b"\xc0")]
    with pytest.raises(DecodeError):
        dec.feed(good, [])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2**32 - 1), st.sampled_from([0, 1]), st.binary(max_size=300)), max_size=20),
    st.lists(st.integers(1, 50), max_size=40),
)
def test_roundtrip_any_chunking(frames, chunks):
    data = b"".join(encode_frame(*f) for f in frames)
    out, dec = decode_all(data, chunks)
    assert out == frames
    assert dec.buffered == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(1, 64), max_size=30))
def test_garbage_raises_only_remote_protocol_errors(data, chunks):
    dec = FrameDecoder(4096)
    out: list = []
    pos = 0
    try:
        for c in [*chunks, len(data)]:
            dec.feed(data[pos : pos + c], out)
            pos += c
    except RemoteProtocolError:
        pass
    # The decoder never holds more than one frame of at most max+4 bytes.
    assert dec.buffered <= 4096 + 4


@pytest.mark.parametrize("session", ["classic", "ping"])
@pytest.mark.parametrize("direction", ["c2s", "s2c"])
def test_original_streams_decode_whole_and_bytewise(session, direction):
    v = load_vectors()[session]
    data = bytes.fromhex(v[f"{direction}_hex"])
    expected = [(p["pid"], p["flags"], p["body_len"]) for p in v[f"{direction}_packets"]]
    for chunks in (None, [1] * len(data), [7] * (len(data) // 7)):
        out, dec = decode_all(data, chunks)
        assert [(pid, fl, len(b)) for pid, fl, b in out] == expected
        assert dec.buffered == 0


# --- exact boundaries and the messages a user reads ---------------------------------------


def test_a_frame_exactly_at_the_limit_passes_and_one_byte_more_is_refused():
    limit = 6 + 10
    at = encode_frame(64, 0, b"x" * 10)  # length prefix == limit
    out, _ = decode_all(at, max_size=limit)
    assert out == [(64, 0, b"x" * 10)]
    with pytest.raises(FrameTooLargeError, match=r"peer announced a packet of 17 bytes, the limit is 16") as ei:
        decode_all(encode_frame(64, 0, b"x" * 11), max_size=limit)
    assert ei.value.reason == "packettoolarge"


def test_the_smallest_limit_is_a_bare_header():
    out, _ = decode_all(encode_frame(64, 0, b""), max_size=6)
    assert out == [(64, 0, b"")]
    with pytest.raises(ValueError, match="^max_frame_size must be at least 6$"):
        FrameDecoder(5)


def test_malformed_frames_say_what_is_wrong():
    with pytest.raises(DecodeError, match="^length prefix 5 is smaller than the 6-byte header$"):
        decode_all(b"\x00\x00\x00\x05" + b"\x00" * 5)
    with pytest.raises(DecodeError, match="^packet 64 has unknown flag bits 0x0002$"):
        decode_all(encode_frame(64, 2, b"\xc0"))


def test_encoding_refuses_what_the_header_cannot_hold():
    from peng3dnet.errors import LocalProtocolError

    for pid, flags in ((-1, 0), (2**32, 0), (64, 2**16)):
        with pytest.raises(LocalProtocolError, match=f"^invalid packet id {pid!r} or flags {flags!r}$"):
            encode_frame(pid, flags, b"")


def test_a_frame_that_ends_exactly_at_the_read_end_leaves_nothing_buffered():
    frame = encode_frame(64, 0, b"abc")
    out, dec = decode_all(frame)
    assert out == [(64, 0, b"abc")] and dec.buffered == 0
    out, dec = decode_all(frame + frame[:3])  # a prefix cut inside: kept
    assert out == [(64, 0, b"abc")] and dec.buffered == 3


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_a_body_is_a_copy_that_outlives_the_read_buffer(kind):
    """The transport reuses one read buffer and feeds a memoryview of it:
    a decoded body must be its own bytes (one whole frame, two frames,
    and a frame completed across two reads)."""
    frame = encode_frame(64, 0, b"abc")
    for data, expected in ((frame, [(64, 0, b"abc")]), (frame + frame, [(64, 0, b"abc")] * 2)):
        buf = bytearray(data)
        dec, out = FrameDecoder(MAX), []
        dec.feed(kind(buf) if kind is not bytes else bytes(buf), out)
        buf[:] = b"\xff" * len(buf)
        assert out == expected and all(type(body) is bytes for _, _, body in out)
    dec, out = FrameDecoder(MAX), []
    dec.feed(kind(frame[:5]), out)
    dec.feed(kind(frame[5:]), out)
    assert out == [(64, 0, b"abc")] and type(out[0][2]) is bytes


def test_a_held_partial_frame_is_never_bypassed_by_a_read_that_parses_as_a_frame_alone():
    """The one-whole-frame fast path is for an empty buffer only: here the
    rest of a frame, read after its first 5 bytes, happens to parse as a
    complete frame by itself (bytes 5-8 of the first read's frame, 00 00
    01 00, announce exactly what follows)."""
    body = b"\xaa" * 3 + b"\x00\x00" + b"\xbb" * 250  # 255 bytes; its bytes 3-4 make valid flags for the impostor
    frame = encode_frame(1, 0, body)
    rest = frame[5:]
    impostor, _ = decode_all(rest)
    assert len(impostor) == 1 and impostor != [(1, 0, body)]  # (the premise: the rest alone is a frame)
    dec, out = FrameDecoder(MAX), []
    dec.feed(frame[:5], out)
    dec.feed(rest, out)
    assert out == [(1, 0, body)] and dec.buffered == 0


def test_a_frame_exactly_at_the_limit_passes_also_in_pieces_and_behind_another():
    limit = 6 + 10
    at = encode_frame(64, 0, b"x" * 10)
    small = encode_frame(65, 0, b"")
    for chunks in ([1] * len(at), [3, 9]):  # cut anywhere: the general path's test
        out, _ = decode_all(at, chunks, max_size=limit)
        assert out == [(64, 0, b"x" * 10)]
    out, _ = decode_all(small + at, max_size=limit)  # two frames in one read
    assert out == [(65, 0, b""), (64, 0, b"x" * 10)]
    with pytest.raises(FrameTooLargeError):
        decode_all(small + encode_frame(64, 0, b"x" * 11), max_size=limit)


# --- one_frame(): feed()'s common case, taken by the core before feed() ------------------------

def test_one_frame_returns_exactly_one_whole_frame_as_its_own_bytes():
    frame = encode_frame(64, 1, b"abc")
    buf = bytearray(frame)
    dec = FrameDecoder(MAX)
    got = dec.one_frame(memoryview(buf))
    buf[:] = b"\xff" * len(buf)
    assert got == (64, 1, b"abc") and type(got[2]) is bytes and dec.buffered == 0
    assert FrameDecoder(MAX).one_frame(encode_frame(70000, 0, b"")) == (70000, 0, b"")  # the smallest frame: 10 bytes


def test_one_frame_takes_a_frame_exactly_at_the_limit_and_not_one_byte_more():
    assert FrameDecoder(6 + 10).one_frame(encode_frame(64, 0, b"x" * 10)) == (64, 0, b"x" * 10)
    dec = FrameDecoder(6 + 10)
    too_big = encode_frame(64, 0, b"x" * 11)
    assert dec.one_frame(too_big) is None
    with pytest.raises(FrameTooLargeError):  # feed() then refuses it
        dec.feed(too_big, [])


@pytest.mark.parametrize("case", ["short", "two frames", "frame and a part", "part", "unknown flags", "held", "failed"])
def test_one_frame_leaves_everything_else_to_feed_and_takes_nothing(case):
    frame = encode_frame(64, 0, b"abc")
    dec = FrameDecoder(MAX)
    data = {"short": frame[:9], "two frames": frame + frame, "frame and a part": frame + frame[:4],
            "part": frame[:-1], "unknown flags": encode_frame(64, 0x8000, b"abc"), "held": frame,
            "failed": frame}[case]
    if case == "held":
        dec.feed(frame[:3], [])
    if case == "failed":
        with pytest.raises(DecodeError):
            dec.feed(b"\x00\x00\x00\x01", [])  # a length below the header's
    held = dec.buffered
    assert dec.one_frame(data) is None
    assert dec.buffered == held  # nothing taken


_frames = st.builds(encode_frame, st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 0x8000]), st.binary(max_size=12))
_streams = st.one_of(st.binary(max_size=30), _frames, st.tuples(_frames, st.binary(max_size=12)).map(b"".join),
                     _frames.map(lambda f: f[:-1]))


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.just(b""), st.binary(max_size=14), _frames.map(lambda f: f[:5])), _streams)
def test_one_frame_agrees_with_feed(before, data):
    """Whatever came before (held bytes, an error), one_frame() gives a
    frame only when feed() would give exactly that one frame and hold
    nothing; otherwise it takes nothing."""
    one, ref = FrameDecoder(20), FrameDecoder(20)
    for dec in (one, ref):
        try:
            dec.feed(before, [])
        except RemoteProtocolError:
            pass
    held = one.buffered
    got = one.one_frame(data)
    out: list = []
    try:
        ref.feed(data, out)
    except RemoteProtocolError:
        assert got is None
        return
    if got is not None:
        assert out == [got] and ref.buffered == 0 and one.buffered == 0
    else:
        assert one.buffered == held and not (len(out) == 1 and ref.buffered == 0 and held == 0)
