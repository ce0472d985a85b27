"""peng3dnet.ext.sync.wire: the checksum, the shared snapshot encoder, and
decoders that turn anything a peer sends into a message, ``None`` or a typed
error (pure: no sockets, threads or sleeps)."""

from __future__ import annotations

import enum
import os

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peng3dnet.errors import RemoteProtocolError
from peng3dnet.ext.sync import apply_delta, checksum, diff_views
from peng3dnet.ext.sync.wire import (
    InputMessage,
    MalformedSnapshotError,
    SnapshotBatch,
    ack_message,
    decode_input,
    decode_snapshot,
    encoded_size,
    input_message,
    resync_message,
)
from tests.ext.test_sync_algebra import flat_views
from tests.test_layering import imported_modules


def unpack(body: bytes):
    return msgpack.unpackb(body, raw=False, strict_map_key=True)


def test_checksum_ignores_order_but_not_values():
    a = {"p1": {"x": 1.0, "y": 2.0}, "p2": {"s": 3}}
    b = {"p2": {"s": 3}, "p1": {"y": 2.0, "x": 1.0}}
    assert checksum(a) == checksum(b)
    assert checksum(a) != checksum({**a, "p2": {"s": 4}})


def test_checksum_follows_the_encoding():
    class Kind(enum.IntEnum):
        A = 1

    assert len({checksum({"e": {"v": v}}) for v in (1, 1.0, True)}) == 3
    assert checksum({"e": {"v": 0.0}}) != checksum({"e": {"v": -0.0}})
    # what the wire makes equal checksums equal (what the client gets back)
    assert checksum({"e": {"v": (1, 2)}}) == checksum({"e": {"v": [1, 2]}})
    assert checksum({"e": {"v": Kind.A}}) == checksum({"e": {"v": 1}})


@settings(max_examples=300, deadline=None)
@given(flat_views, flat_views, st.integers(0, 2**31), st.integers(-1, 2**31), st.none() | st.text(max_size=3))
def test_batch_encodes_what_the_client_decodes(base, view, tick, ai, you):
    batch = SnapshotBatch(tick)
    full = batch.encode(view, None, 99, ai, you)
    delta = batch.encode(view, base, tick - 1, ai, you)
    # the hand-assembled bodies are ordinary msgpack maps
    assert unpack(full) == {"t": tick, "b": -1, "cs": checksum(view), "ai": ai, "you": you, "n": view}
    got = decode_snapshot(unpack(delta))
    assert (got.tick, got.base, got.checksum, got.acked_input, got.you) == (tick, tick - 1, checksum(view), ai, you)
    assert got.delta == diff_views(base, view)
    assert checksum(apply_delta(base, got.delta)) == got.checksum
    assert decode_snapshot(unpack(full)).delta == {"n": view}


def test_batch_shares_work_between_clients():
    view = {"a": {"x": 1.0}}
    base = {"a": {"x": 0.0}}
    batch = SnapshotBatch(7)
    one = batch.encode(view, base, 6, 3, "a")
    two = batch.encode(view, base, 6, 5, None)
    assert len(batch._sums) == 1 and len(batch._parts) == 1
    assert unpack(one)["u"] == unpack(two)["u"] == {"a": {"x": 1.0}}
    assert (unpack(one)["ai"], unpack(two)["you"]) == (3, None)


@pytest.mark.parametrize("msg", [None, 5, "t", [], {}, {"t": "1"}, {"t": None}, {"tick": 1}])
def test_decode_snapshot_ignores_what_is_not_a_snapshot(msg):
    assert decode_snapshot(msg) is None


@pytest.mark.parametrize(
    "extra",
    [
        {"b": "0"},
        {"you": 5},
        {"you": ["p"]},
        {"n": []},
        {"n": {"e": 1}},
        {"n": {"e": {1: 2}}},
        {"u": {"e": None}},
        {"k": {"e": "x"}},
        {"k": {"e": [["x"]]}},
        {"k": []},
        {"d": "e"},
        {"d": [["e"]]},
        {"d": {"e": 1}},
    ],
)
def test_decode_snapshot_rejects_malformed_fields(extra):
    with pytest.raises(MalformedSnapshotError):
        decode_snapshot({"t": 1, "b": -1, "cs": 0, **extra})
    assert issubclass(MalformedSnapshotError, RemoteProtocolError)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.sampled_from(["t", "b", "n", "u", "k", "d", "e", "x"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["t", "b", "cs", "ai", "you", "n", "u", "k", "d", "e", "x"]), inner, max_size=5),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(msgpack_values, st.integers(0, 100))
def test_decode_snapshot_never_lets_junk_through(msg, tick):
    if isinstance(msg, dict) and "t" not in msg:
        msg = {**msg, "t": tick}
    try:
        got = decode_snapshot(msg)
    except MalformedSnapshotError:
        return
    if got is not None:
        view = apply_delta({"e": {"x": 1}}, got.delta)  # the algebra never sees a malformed delta
        checksum(view)


def test_decode_input_reads_only_its_own_keys():
    assert decode_input({"ack": 4, "seq": 2, "in": {"dx": 1}}) == InputMessage(4, 2, True, {"dx": 1}, False)
    assert decode_input({"resync": True}) == InputMessage(None, None, False, None, True)
    for fake in ({"_leave": True}, {"_join": True}, {"_leave": True, "_join": True, "_x": 1}):
        assert decode_input(fake) == InputMessage(None, None, False, None, False)
    assert decode_input({"ack": "4", "seq": 1.0, "in": None}) == InputMessage(None, None, True, None, False)
    assert decode_input([1, 2]) is None and decode_input(None) is None


def test_message_builders_and_size():
    assert decode_input(input_message(3, 9, {"a": 1})) == InputMessage(3, 9, True, {"a": 1}, False)
    assert decode_input(ack_message(5)).ack == 5
    assert decode_input(resync_message()).resync
    assert encoded_size({"in": "x" * 100}) == len(msgpack.packb({"in": "x" * 100}))
    assert encoded_size({"in": object()}) is None


def test_only_the_wire_imports_msgpack():
    import peng3dnet.ext.sync as pkg

    d = os.path.dirname(pkg.__file__)
    users = {name for name in os.listdir(d) if name.endswith(".py") and "msgpack" in imported_modules(os.path.join(d, name))}
    assert users == {"wire.py"}
