"""peng3dnet.ext.sync.wire, value by value (pure: no sockets, threads or
sleeps): the checksum's input, the batch's map header and sharing, every
check of decode_snapshot with its message, the defaults of absent fields,
and decode_input's and encoded_size's edge cases."""

from __future__ import annotations

import zlib

import msgpack
import pytest

from peng3dnet.ext.sync.wire import (
    InputMessage,
    MalformedSnapshotError,
    SnapshotBatch,
    SnapshotMessage,
    ack_message,
    checksum,
    decode_input,
    decode_snapshot,
    encoded_size,
    input_message,
    resync_message,
)


def unpack(body: bytes):
    return msgpack.unpackb(body, raw=False)


def test_checksum_is_the_crc32_of_the_canonical_form():
    view = {"b": {"y": 2, "x": 1.5}, "a": {}}
    assert checksum(view) == zlib.crc32(msgpack.packb([["a", []], ["b", [["x", 1.5], ["y", 2]]]]))
    assert checksum({}) == zlib.crc32(msgpack.packb([]))


# --- SnapshotBatch ------------------------------------------------------------------------------


def test_batch_remembers_its_tick():
    assert SnapshotBatch(12).tick == 12


def test_an_unchanged_view_is_a_five_field_snapshot():
    view = {"e": {"x": 1.0}}
    body = SnapshotBatch(3).encode(view, {"e": {"x": 1.0}}, 2, 7, "e")
    assert body[0] == 0x85
    assert unpack(body) == {"t": 3, "b": 2, "cs": checksum(view), "ai": 7, "you": "e"}


def test_a_delta_with_every_part_is_a_nine_field_snapshot():
    base = {"a": {"x": 1, "y": 2}, "gone": {}}
    view = {"a": {"x": 3}, "new": {"x": 0}}
    body = SnapshotBatch(5).encode(view, base, 4, -1, None)
    assert body[0] == 0x89
    assert unpack(body) == {
        "t": 5,
        "b": 4,
        "cs": checksum(view),
        "ai": -1,
        "you": None,
        "n": {"new": {"x": 0}},
        "u": {"a": {"x": 3}},
        "k": {"a": ["y"]},
        "d": ["gone"],
    }


def test_a_full_snapshot_has_base_minus_one_whatever_base_tick_says():
    view = {"e": {"x": 1}}
    assert unpack(SnapshotBatch(9).encode(view, None, 8, 0, "e")) == {
        "t": 9, "b": -1, "cs": checksum(view), "ai": 0, "you": "e", "n": view,
    }


def test_batch_encodes_each_view_and_each_view_base_pair_once():
    view = {"e": {"x": 1}}
    twin = {"e": {"x": 1}}  # equal but another object: recognised by identity only
    base1, base2 = {"e": {"x": 0}}, {}
    batch = SnapshotBatch(2)
    bodies = [
        batch.encode(view, None, -1, 1, "e"),
        batch.encode(view, None, -1, 2, None),
        batch.encode(view, base1, 1, 3, "e"),
        batch.encode(view, base2, 1, 4, "e"),
        batch.encode(twin, base1, 1, 5, "e"),
    ]
    assert len(batch._sums) == 2 and len(batch._parts) == 4
    got = [unpack(b) for b in bodies]
    assert [(m["b"], m["ai"], m["you"]) for m in got] == [(-1, 1, "e"), (-1, 2, None), (1, 3, "e"), (1, 4, "e"), (1, 5, "e")]
    assert got[0]["n"] == got[1]["n"] == view and got[2]["u"] == got[4]["u"] == {"e": {"x": 1}}
    assert got[3]["n"] == view and "u" not in got[3]


# --- decode_snapshot ----------------------------------------------------------------------------


def test_absent_fields_of_a_snapshot_get_their_defaults():
    assert decode_snapshot({"t": 4}) == SnapshotMessage(tick=4, base=-1, checksum=None, acked_input=None, you=None, delta={})


def test_decoded_snapshot_fields():
    msg = {"t": 4, "b": 3, "cs": "any", "ai": 8, "you": "p", "n": {"e": {}}, "u": {}, "k": {"e": []}, "d": [], "x": 1}
    got = decode_snapshot(msg)
    assert got == SnapshotMessage(4, 3, "any", 8, "p", {"n": {"e": {}}, "u": {}, "k": {"e": []}, "d": []})


@pytest.mark.parametrize("ai", ["8", 8.0, None, [8]])
def test_an_ai_that_is_not_an_int_reads_as_none(ai):
    assert decode_snapshot({"t": 1, "ai": ai}).acked_input is None


@pytest.mark.parametrize(
    "extra,message",
    [
        ({"b": "0"}, "snapshot: b is not an int"),
        ({"b": None}, "snapshot: b is not an int"),
        ({"you": 5}, "snapshot: you is not a str"),
        ({"n": []}, "snapshot: n is not a map of entity states"),
        ({"n": {1: {}}}, "snapshot: n is not a map of entity states"),
        ({"n": {"e": []}}, "snapshot: n is not a map of entity states"),
        ({"n": {"e": {1: 2}}}, "snapshot: n is not a map of entity states"),
        ({"u": {"e": {"x": 1}, "f": {2: 1}}}, "snapshot: u is not a map of entity states"),
        ({"u": "e"}, "snapshot: u is not a map of entity states"),
        ({"k": ["e"]}, "snapshot: k is not a map of key lists"),
        ({"k": {1: ["x"]}}, "snapshot: k is not a map of key lists"),
        ({"k": {"e": "x"}}, "snapshot: k is not a map of key lists"),
        ({"k": {"e": ("x",)}}, "snapshot: k is not a map of key lists"),
        ({"k": {"e": ["x", 1]}}, "snapshot: k is not a map of key lists"),
        ({"d": "e"}, "snapshot: d is not a list of entity ids"),
        ({"d": ("e",)}, "snapshot: d is not a list of entity ids"),
        ({"d": ["e", 1]}, "snapshot: d is not a list of entity ids"),
    ],
)
def test_each_malformed_field_is_named_in_the_error(extra, message):
    with pytest.raises(MalformedSnapshotError) as info:
        decode_snapshot({"t": 1, **extra})
    assert str(info.value) == message


@pytest.mark.parametrize(
    "extra",
    [{"n": {}}, {"n": {"e": {}}}, {"u": {"e": {"x": [1]}}}, {"k": {}}, {"k": {"e": []}}, {"d": []}, {"you": None}],
)
def test_well_formed_parts_pass(extra):
    got = decode_snapshot({"t": 1, **extra})
    assert got is not None and got.you is None
    assert got.delta == {k: v for k, v in extra.items() if k != "you"}


# --- inputs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value,resync", [(1, True), ("yes", True), (0, False), ("", False), (None, False)])
def test_resync_is_the_truth_of_the_value(value, resync):
    assert decode_input({"resync": value}).resync is resync


def test_an_input_of_none_is_still_an_input():
    assert decode_input({"seq": 1, "in": None}) == InputMessage(None, 1, True, None, False)
    assert decode_input({"seq": 1}) == InputMessage(None, 1, False, None, False)


def test_message_builders_are_exact():
    assert input_message(3, 9, {"a": 1}) == {"ack": 3, "seq": 9, "in": {"a": 1}}
    assert ack_message(5) == {"ack": 5}
    assert resync_message() == {"resync": True}


@pytest.mark.parametrize("msg", [{"in": object()}, {"in": 2**64}, {"in": "\ud800"}])
def test_encoded_size_of_what_msgpack_refuses_is_none(msg):
    assert encoded_size(msg) is None


def test_encoded_size_is_the_msgpack_length():
    assert encoded_size({}) == 1
    assert encoded_size({"in": "x" * 40}) == 1 + 3 + 2 + 40
