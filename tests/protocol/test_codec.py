"""Body codec: msgpack options, compression threshold, bounded decompression."""

from __future__ import annotations

import zlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peng3dnet.constants import FLAG_COMPRESSED
from peng3dnet.errors import DecodeError, FrameTooLargeError, LocalProtocolError
from peng3dnet.protocol.codec import decode_body, decompress_body, frame_body, pack, unpack
from peng3dnet.protocol.framing import FrameDecoder


def encode_body(value, *, compress, threshold, level):
    """(flags, body) as the library frames a value: frame_body, decoded back."""
    frames: list = []
    FrameDecoder(1 << 30).feed(frame_body(64, pack(value), compress=compress, threshold=threshold, level=level), frames)
    ((pid, flags, body),) = frames
    assert pid == 64
    return flags, body

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(msgpack_values, st.booleans(), st.integers(0, 100))
def test_roundtrip(value, compress, threshold):
    flags, body = encode_body(value, compress=compress, threshold=threshold, level=6)
    assert decode_body(flags, body, 1 << 20) == value


def test_same_bytes_as_msgpack_defaults():
    value = {"i": 0, "x": 1.5, "name": "p0", "b": b"\x00\x01"}
    assert pack(value) == msgpack.packb(value)


def test_threshold_is_strictly_greater():
    body = pack("a" * 100)
    flags, out = encode_body("a" * 100, compress=True, threshold=len(body), level=6)
    assert flags == 0 and out == body
    flags, out = encode_body("a" * 100, compress=True, threshold=len(body) - 1, level=6)
    assert flags == FLAG_COMPRESSED and zlib.decompress(out) == body


def test_compression_disabled():
    flags, _ = encode_body("a" * 100000, compress=False, threshold=10, level=6)
    assert flags == 0


def test_zlib_bomb_is_refused_after_the_limit():
    bomb = zlib.compress(b"\0" * (64 << 20), 9)  # 64 MiB from ~64 KiB
    assert len(bomb) < 100_000
    with pytest.raises(FrameTooLargeError):
        decompress_body(bomb, 1 << 20)


def test_decompressed_exactly_at_limit_is_fine():
    data = b"x" * 1000
    assert decompress_body(zlib.compress(data), 1000) == data
    with pytest.raises(FrameTooLargeError):
        decompress_body(zlib.compress(data), 999)


@pytest.mark.parametrize(
    "body", [b"not zlib", zlib.compress(b"abc")[:-3], zlib.compress(b"abc") + b"trailing"]
)
def test_bad_zlib(body):
    with pytest.raises(DecodeError):
        decompress_body(body, 1 << 20)


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",  # never used byte
        b"\x92\x01",  # truncated array
        b"\x01\x02",  # two values
        b"\x81\x01\x02",  # int map key (strict_map_key)
        b"\xa2\xff\xfe",  # invalid utf-8 str
        b"",
    ],
)
def test_bad_msgpack(body):
    with pytest.raises(DecodeError):
        unpack(body)


def test_unencodable_value_is_local_error():
    with pytest.raises(LocalProtocolError):
        pack(object())
