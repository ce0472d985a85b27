"""Timestamp map keys cannot flood a dict (the fault hunt of 2026-12-02:
msgpack's ``Timestamp.__hash__`` is ``hash((seconds, nanoseconds))``, and
a peer can choose pairs whose tuple hashes are all the same: 8,000 such
keys, 128 KB, took 5 s to decode on the network thread)."""

from __future__ import annotations

import struct

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from peng3dnet.protocol import codec
from peng3dnet.protocol.timestamp_hash import ORIGINAL_HASH, install, keyed_hash

_M = (1 << 64) - 1
_P1, _P2, _P5 = 11400714785074694791, 14029467366897019727, 2870177450012600261


def _rotr(x: int) -> int:
    return ((x >> 31) | (x << 33)) & _M


def colliding(n: int, target: int = 0x123456789ABCDEF) -> list[tuple[int, int]]:
    """(seconds, nanoseconds) pairs whose 2-tuples all hash to ``target``
    (CPython's tuple hash, inverted for its first item)."""
    p1i, p2i = pow(_P1, -1, 1 << 64), pow(_P2, -1, 1 << 64)
    acc1_plus = _rotr(((target - (2 ^ (_P5 ^ 3527539))) & _M) * p1i & _M)
    out: list[tuple[int, int]] = []
    ns = 0
    while len(out) < n:
        lane = ((_rotr(((acc1_plus - ns * _P2) & _M) * p1i & _M) - _P5) * p2i) & _M
        s = lane - (1 << 64) if lane >= 1 << 63 else lane
        if -((1 << 61) - 1) < s < (1 << 61) - 1 and s != -1:
            out.append((s, ns))
        ns += 1
    return out


def _map_body(pairs: list[tuple[int, int]]) -> bytes:
    keys = b"".join(b"\xc7\x0c\xff" + struct.pack("!Iq", ns, s) + b"\xc0" for s, ns in pairs)  # timestamp96: nil
    return b"\xdf" + struct.pack("!I", len(pairs)) + keys


def test_the_crafted_keys_collide_under_msgpacks_hash_and_not_under_ours():
    keys = [msgpack.Timestamp(s, ns) for s, ns in colliding(500)]
    assert len(set(keys)) == 500
    assert len({ORIGINAL_HASH(k) for k in keys}) == 1  # the attack is real
    assert msgpack.Timestamp.__hash__ is keyed_hash
    assert len({hash(k) for k in keys}) == 500


def test_a_map_of_colliding_timestamp_keys_decodes_whole():
    pairs = colliding(3000)
    got = codec.unpack(_map_body(pairs))
    assert len(got) == 3000 and set(got) == {msgpack.Timestamp(s, ns) for s, ns in pairs}
    assert all(v is None for v in got.values())


@given(st.integers(-(1 << 63), (1 << 63) - 1), st.integers(0, 999_999_999))
def test_equal_timestamps_hash_equal_and_a_decoded_key_is_found(seconds, nanoseconds):
    mine = msgpack.Timestamp(seconds, nanoseconds)
    decoded = codec.unpack(msgpack.packb({mine: 1}))
    (key,) = decoded
    assert key == mine and hash(key) == hash(mine) and decoded[mine] == 1


def test_a_timestamp_to_bytes_cannot_pack_keeps_msgpacks_hash():
    huge = msgpack.Timestamp(1 << 70, 0)  # (only a program makes one: beyond the 96-bit format)
    assert hash(huge) == ORIGINAL_HASH(huge)


def test_install_is_idempotent():
    install()
    install()
    assert msgpack.Timestamp.__hash__ is keyed_hash
