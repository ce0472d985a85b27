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
        b"\x81\x80\x02",  # a map as a map key (no dict can have one)
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


# --- map keys: int keys accepted, tuple keys round-trip, str/bytes for 0.1.x peers -----------------

from peng3dnet.protocol.codec import check_keys  # noqa: E402

_keys = st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=5), st.binary(max_size=5), st.booleans(),
                  st.none(), st.floats(allow_nan=False))


@given(st.dictionaries(_keys, st.integers(-(2**63), 2**64 - 1), max_size=8))
def test_any_dict_with_scalar_keys_round_trips(d):
    assert unpack(pack(d)) == d


def test_int_keys_are_accepted_and_arrays_or_maps_as_keys_are_malformed():
    assert unpack(msgpack.packb({1: "x", 2: {3: [4]}})) == {1: "x", 2: {3: [4]}}
    # a map key that is a map (\x80) or an array (a tuple key, \x92...): arrays
    # of colliding ints would make a quadratic dict (hash flooding)
    for body in (b"\x81\x80\x01", pack({(1, (2, 3)): "nested"})):
        with pytest.raises(DecodeError) as info:
            unpack(body)
        assert info.value.reason == "invalidmsgpack"


def test_colliding_int_keys_stay_cheap():
    # ints that share a hash (x mod 2**61 - 1): at most a handful in 64 bits
    m = 2**61 - 1
    keys = [5 + i * m for i in range(8) if 5 + i * m < 2**64]
    assert len({hash(k) for k in keys}) == 1 and len(keys) <= 9
    assert unpack(pack(dict.fromkeys(keys, 0))) == dict.fromkeys(keys, 0)


def test_check_keys_finds_a_key_0_1_peers_refuse_anywhere_in_the_message():
    check_keys({"a": [{"b": b"c"}, ({b"d": 1},)], "e": None})  # str and bytes keys only: fine
    for bad in ({1: "x"}, {"a": [{"b": {2.5: 1}}]}, [({"ok": 1}, {None: 2})], ({(1, 2): 3},)):
        with pytest.raises(LocalProtocolError, match="map key"):
            check_keys(bad)


def _bad_key_anywhere(value) -> bool:
    """The reference: a straightforward recursive walk."""
    if isinstance(value, dict):
        return any(not isinstance(k, (str, bytes)) or _bad_key_anywhere(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_bad_key_anywhere(v) for v in value)
    return False


_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=3),
                     st.binary(max_size=3))
_messages = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=2), st.binary(max_size=2), st.integers(), st.none()), inner,
                        max_size=3),
    ),
    max_leaves=12,
)


@given(_messages)
def test_check_keys_agrees_with_a_plain_walk(value):
    """The fast paths (a scalar, a flat array of scalars) skip nothing: a
    map anywhere, also as the last item of an array, is checked."""
    if _bad_key_anywhere(value):
        with pytest.raises(LocalProtocolError, match="map key"):
            check_keys(value)
    else:
        check_keys(value)


def test_check_keys_fast_paths_still_look_inside():
    check_keys([1, "x", b"y", None, 2.5, True])
    for bad in ([1, "x", {3: 4}], (1, [{"a": {None: 1}}]), [1] * 20 + [{5: 6}]):
        with pytest.raises(LocalProtocolError, match="map key"):
            check_keys(bad)

    class Text(str):
        pass

    check_keys(Text("a subclass takes the full walk"))


def test_a_limit_of_zero_decompresses_nothing():
    # zlib's max_length=0 means "unlimited": the codec must not pass it on
    with pytest.raises(FrameTooLargeError):
        decompress_body(zlib.compress(b"x" * 1000), 0)


# --- what the errors say; the options that matter ----------------------------------------------


def test_error_messages_name_the_problem():
    with pytest.raises(LocalProtocolError, match=r"^cannot encode message: can not serialize 'object' object$"):
        pack(object())
    with pytest.raises(DecodeError, match=r"^malformed msgpack body: \w+Error: ") as ei:
        unpack(b"\xc1")
    assert ei.value.reason == "invalidmsgpack"
    with pytest.raises(LocalProtocolError, match=r"^map key 7 \(int\): this peer \(protocol 2 without the mapkeys "
                       r"extension, e\.g\. peng3dnet 0\.1\.x\) accepts only str or bytes keys and would close the connection"):
        check_keys({7: "x"})
    with pytest.raises(FrameTooLargeError, match=r"^no room to decompress into \(limit 0\)$") as ei2:
        decompress_body(zlib.compress(b"x"), 0)
    assert ei2.value.reason == "packettoolarge"


def test_a_limit_of_one_byte_is_a_limit():
    assert decompress_body(zlib.compress(b"x"), 1) == b"x"
    with pytest.raises(FrameTooLargeError):
        decompress_body(zlib.compress(b"xy"), 1)


def test_strings_and_bytes_keep_their_types():
    # raw=False: str stays str, bytes stay bytes (the original library's defaults)
    assert unpack(pack({"s": "text", "b": b"\xff\x00"})) == {"s": "text", "b": b"\xff\x00"}
    assert type(unpack(pack("x"))) is str and type(unpack(pack(b"x"))) is bytes


def test_the_compression_level_is_used():
    data = pack(list(range(3000)))
    for level in (1, 9):
        framed = frame_body(64, data, compress=True, threshold=0, level=level)
        assert framed[10:] == zlib.compress(data, level)  # (after the 10-byte prefix and header)


@pytest.mark.parametrize(
    ("body", "limit", "error", "reason", "message"),
    [
        (zlib.compress(b"hello" * 100)[:-5], 10_000, DecodeError, "invalidcompression", "^truncated zlib body$"),
        (zlib.compress(b"x") + b"junk", 10_000, DecodeError, "invalidcompression",
         "^trailing data after the zlib stream$"),
        (b"not zlib at all", 10_000, DecodeError, "invalidcompression", "^malformed zlib body: "),
        (zlib.compress(b"x" * 1000), 50, FrameTooLargeError, "packettoolarge",
         "^compressed body expands beyond 50 bytes$"),
        (zlib.compress(b"y" * 101), 100, FrameTooLargeError, "packettoolarge",
         "^compressed body expands beyond 100 bytes$"),  # exactly the limit, with one byte more to come
    ],
)
def test_every_decompression_failure_says_what_it_is(body, limit, error, reason, message):
    with pytest.raises(error, match=message) as ei:
        decompress_body(body, limit)
    assert ei.value.reason == reason


def test_frame_body_refuses_an_id_the_header_cannot_hold():
    for pid in (-1, 2**32):
        with pytest.raises(LocalProtocolError, match=f"^invalid packet id {pid} or flags 0$"):
            frame_body(pid, b"\xc0", compress=False, threshold=0, level=6)
    assert frame_body(2**32 - 1, b"\xc0", compress=False, threshold=0, level=6)[4:8] == b"\xff\xff\xff\xff"
