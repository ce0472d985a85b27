"""Values a peer may send that decode fine and are still hostile: a msgpack
value 1,000 levels deep (msgpack decodes up to 1,024; ``repr()`` of it
raises ``RecursionError``), strings of megabytes in fields that end up in
messages or stay on the connection, echoed bodies.  The core refuses them
with a reason, bounded work and bounded memory (fault hunt, 2026-12-02)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from peng3dnet.constants import (
    CREDENTIALS_KEY,
    EXTENSIONS_KEY,
    INTERNAL_PACKET_IDS,
    PID_CALL,
    PID_CALL_REPLY,
    PID_CLOSECONN,
    PID_HANDSHAKE,
    PID_HEARTBEAT,
    PID_HEARTBEAT_ACK,
    PID_HELLO,
    PID_SESSION_ACK,
    PID_SETTYPE,
    RESUME_KEY,
    SESSION_KEY,
    SIDE_CLIENT,
    SIDE_SERVER,
)
from peng3dnet.errors import UnhandledPacketError
from peng3dnet.protocol import connection as connection_mod
from peng3dnet.protocol.connection import (
    MAX_HEARTBEAT_BODY,
    ConnectionClosed,
    PacketReceived,
    ProtocolConnection,
)
from peng3dnet.protocol.describe import MAX_DESCRIBED, describe, fits
from peng3dnet.protocol.framing import FrameDecoder, encode_frame
from peng3dnet.version import PROTOVERSION
from tests.helpers import ConnectionPair, make_registry

DEEP = b"\x91" * 1000 + b"\x01"  # [[[...[1]...]]], 1,000 levels: msgpack decodes it
HUGE = "x" * (4 << 20)


def deep_value():
    return msgpack.unpackb(DEEP)


def frames_of(data: bytes) -> list:
    out: list = []
    FrameDecoder(1 << 30).feed(data, out)
    return [(pid, flags, msgpack.unpackb(body, raw=False, strict_map_key=False)) for pid, flags, body in out]


def pair(ext=("calls", "resume", "heartbeat")) -> ConnectionPair:
    p = ConnectionPair()
    p.server = ProtocolConnection(SIDE_SERVER, registry=p.sreg, extensions=set(ext))
    p.client = ProtocolConnection(SIDE_CLIENT, registry=p.creg, extensions=set(ext))
    p.start()
    return p


def closed_of(outs) -> ConnectionClosed:
    (closed,) = [o for o in outs if isinstance(o, ConnectionClosed)]
    return closed


# --- describe() and fits() ------------------------------------------------------------------------

@pytest.mark.parametrize("value", [deep_value(), HUGE, HUGE.encode(), [HUGE] * 3, {HUGE: HUGE},
                                   msgpack.ExtType(5, HUGE.encode()), list(range(10**6))])
def test_describe_is_short_and_never_raises(value):
    text = describe(value)
    assert 0 < len(text) <= MAX_DESCRIBED


def test_describe_shows_small_values_as_repr_does():
    assert describe("settype") == "'settype'"
    assert describe(b"ab") == "b'ab'"
    assert describe([1, "a", None]) == "[1, 'a', None]"
    assert describe({"a": 1}) == "{'a': 1}"
    assert describe("x" * 100) == "'" + "x" * 21 + "..." + "x" * 22 + "'"
    assert describe(b"y" * 100) == "b'" + "y" * 48 + "'..."
    assert describe([[[[[1]]]]]) == "[[[[...]]]]"


def test_describe_of_a_value_whose_repr_raises():
    class Bad:
        def __repr__(self):
            raise ValueError("no")

    assert describe(Bad()).startswith("<Bad")


@pytest.mark.parametrize(("value", "size"), [
    (None, 1), (7, 1), ("", 1), ("abc", 4), (b"ab", 3), ([], 1), ([1, 2], 3), ({"a": 1}, 4),
    ({"t": 1.5}, 4), ([["a"]], 4), ((1,), 2), ({"ab": [1, "c"]}, 8),
])
def test_fits_counts_strings_and_items(value, size):
    assert fits(value, size)
    assert not fits(value, size - 1)


def test_fits_refuses_huge_and_deep_values_at_once():
    assert not fits(HUGE, 1024)
    assert not fits(list(range(10**6)), 1024)
    assert not fits(deep_value(), 512)
    assert fits(deep_value(), 1001)  # 1,000 lists and the 1
    assert not fits(deep_value(), 1000)


@given(st.recursive(st.none() | st.integers() | st.text(max_size=20) | st.binary(max_size=20),
                    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=5), kids, max_size=5),
                    max_leaves=30), st.integers(min_value=0, max_value=400))
def test_fits_agrees_with_a_plain_count(value, limit):
    def size(v):
        if isinstance(v, (str, bytes)):
            return 1 + len(v)
        if isinstance(v, dict):
            return 1 + sum(size(k) + size(x) for k, x in v.items())
        if isinstance(v, list):
            return 1 + sum(size(x) for x in v)
        return 1

    assert fits(value, limit) == (size(value) <= limit)
    text = describe(value)
    assert len(text) <= MAX_DESCRIBED


# --- the core: deep values in fields it reads ---------------------------------------------------

def test_a_closeconn_with_a_deep_reason_closes_with_a_short_reason():
    p = pair()
    p.server.receive_data(encode_frame(PID_CLOSECONN, 0, b"\x81\xa6reason" + DEEP))
    closed = closed_of(p.server.drain_received())
    assert closed.by_peer and isinstance(closed.reason, str) and len(closed.reason) <= MAX_DESCRIBED
    assert closed.reason.startswith("[[[")


@pytest.mark.parametrize(("pid", "body", "reason"), [
    (PID_SESSION_ACK, DEEP, "invalidpacket"),
    (PID_CALL, b"\x93" + DEEP + b"\x40\xc0", "invalidpacket"),
    (PID_CALL_REPLY, b"\x93\x01" + DEEP + b"\xc0", "invalidpacket"),
])
def test_a_deep_value_in_a_checked_field_is_refused_with_its_reason(pid, body, reason):
    p = pair()
    p.server.receive_data(encode_frame(pid, 0, body))
    closed = closed_of(p.server.drain_received())
    assert closed.reason == reason and not closed.by_peer
    assert not isinstance(closed.error, UnhandledPacketError)  # refused by its check, not by the catch-all
    assert len(str(closed.error)) < 400


def test_a_settype_with_a_deep_conntype_is_refused():
    s = ProtocolConnection(SIDE_SERVER)
    s.initiate()
    s.drain_received()
    s.receive_data(encode_frame(PID_SETTYPE, 0, b"\x81\xa8conntype" + DEEP))
    closed = closed_of(s.drain_received())
    assert closed.reason == "invalidpacket" and "malformed settype" in str(closed.error)


def test_a_hello_with_a_deep_protoversion_is_a_version_mismatch():
    c = ProtocolConnection(SIDE_CLIENT)
    c.receive_data(encode_frame(PID_HELLO, 0, b"\x82\xa7version\xa11\xacprotoversion" + DEEP))
    closed = closed_of(c.drain_received())
    assert closed.reason == "protoversionmismatch" and len(str(closed.error)) < 400


def test_an_exception_handling_a_frame_closes_that_connection_with_its_cause(monkeypatch):
    p = pair()

    def broken(self, pid, flags, body):
        raise KeyError("a bug")

    monkeypatch.setattr(connection_mod.ProtocolConnection, "_handle_frame", broken)
    p.server.receive_data(encode_frame(PID_HEARTBEAT, 0, msgpack.packb({"t": 1})))
    outs = p.server.drain_received()
    closed = closed_of(outs)
    assert closed.reason == "invalidpacket" and isinstance(closed.error, UnhandledPacketError)
    assert isinstance(closed.error.__cause__, KeyError) and "a bug" in str(closed.error)
    assert frames_of(p.server.data_to_send())[-1] == (PID_CLOSECONN, 0, {"reason": "invalidpacket"})
    assert p.server.closed


def test_frames_before_the_unhandled_one_are_delivered_first(monkeypatch):
    p = pair()
    real = connection_mod.ProtocolConnection._handle_frame

    def broken(self, pid, flags, body):
        if pid == PID_HEARTBEAT:
            raise RecursionError("deep")
        real(self, pid, flags, body)

    monkeypatch.setattr(connection_mod.ProtocolConnection, "_handle_frame", broken)
    p.server.receive_data(encode_frame(64, 0, msgpack.packb(1)) + encode_frame(PID_HEARTBEAT, 0, msgpack.packb({})))
    outs = p.server.drain_received()
    assert [o.msg for o in outs if isinstance(o, PacketReceived)] == [1]
    assert closed_of(outs).reason == "invalidpacket"


# --- echoed heartbeats ----------------------------------------------------------------------------

def test_a_heartbeat_up_to_the_limit_is_echoed_one_over_it_is_refused():
    p = pair()
    ok = "y" * (MAX_HEARTBEAT_BODY - 1)  # fits(): 1 + len
    p.server.receive_data(encode_frame(PID_HEARTBEAT, 0, msgpack.packb(ok)))
    assert p.server.drain_received() == []
    assert frames_of(p.server.data_to_send()) == [(PID_HEARTBEAT_ACK, 0, ok)]
    p.server.receive_data(encode_frame(PID_HEARTBEAT, 0, msgpack.packb(ok + "y")))
    closed = closed_of(p.server.drain_received())
    assert closed.reason == "invalidpacket" and "heartbeat" in str(closed.error)
    assert frames_of(p.server.data_to_send()) == [(PID_CLOSECONN, 0, {"reason": "invalidpacket"})]


def test_our_own_heartbeat_probe_fits():
    p = pair()
    assert p.client.send_heartbeat({"t": 1.7e9})
    p.pump()
    assert not p.server.closed and p.server.is_open


# --- what a connection keeps ---------------------------------------------------------------------

def test_settype_keeps_only_the_keys_it_reads():
    s = ProtocolConnection(SIDE_SERVER, extensions={"auth", "resume"})
    s.initiate()
    s.drain_received()
    settype = {"conntype": "classic", EXTENSIONS_KEY: ["auth"], CREDENTIALS_KEY: {"u": "a"},
               RESUME_KEY: {"token": "t"}, "junk": HUGE}
    s.receive_data(encode_frame(PID_SETTYPE, 0, msgpack.packb(settype)))
    s.drain_received()
    assert s.peer_settype == {k: v for k, v in settype.items() if k != "junk"}
    assert s.peer_credentials == {"u": "a"}


def test_hello_keeps_only_the_keys_it_reads_and_a_short_version():
    c = ProtocolConnection(SIDE_CLIENT)
    hello = {"version": "v" * 1000, "protoversion": PROTOVERSION, "junk": HUGE}
    c.receive_data(encode_frame(PID_HELLO, 0, msgpack.packb(hello)))
    c.drain_received()
    assert c.peer_hello == {"version": "v" * 64, "protoversion": PROTOVERSION}
    assert c.peer_version == "v" * 64


def test_of_the_extensions_offered_only_the_known_names_are_kept():
    """(2,000,000 empty maps in the list: 2 MiB on the wire, 166 MiB held.)"""
    c = ProtocolConnection(SIDE_CLIENT, extensions={"calls"})
    offered = ["resume", "calls", "x" * 100_000, *([{}] * 100_000), "nosuch", 5]
    c.receive_data(encode_frame(PID_HELLO, 0, msgpack.packb(
        {"version": 7, "protoversion": PROTOVERSION, EXTENSIONS_KEY: offered})))
    c.drain_received()
    assert c.peer_hello == {"version": None, "protoversion": PROTOVERSION, EXTENSIONS_KEY: ["calls", "resume"]}
    assert c.negotiated == {"calls"}


@pytest.mark.parametrize(("value", "kept"), [
    ({"token": "t" * 100, "received": 5}, {"token": "t" * 100, "received": 5}),
    ({"token": "t" * 2000, "received": 5}, None),  # too large to be a session: kept as none
])
def test_a_session_value_is_kept_only_when_small(value, kept):
    s = ProtocolConnection(SIDE_SERVER, extensions={"resume"})
    s.initiate()
    s.drain_received()
    s.receive_data(encode_frame(PID_SETTYPE, 0, msgpack.packb(
        {"conntype": "classic", EXTENSIONS_KEY: ["resume"], RESUME_KEY: value})))
    s.drain_received()
    assert s.peer_settype[RESUME_KEY] == kept
    p = ConnectionPair()
    p.auto_handshake = False
    p.start()
    p.server.begin_handshake(p.sreg.mapping(), {SESSION_KEY: value})
    p.pump()
    assert p.client.peer_handshake[SESSION_KEY] == kept


def test_a_registry_mismatch_names_a_few_of_a_million_names():
    c = ProtocolConnection(SIDE_CLIENT, registry=make_registry("app:a"))
    c.receive_data(encode_frame(PID_HELLO, 0, msgpack.packb({"version": "x", "protoversion": PROTOVERSION})))
    c.drain_received()
    c.data_to_send()
    names = {f"n{i:07d}": 64 + i for i in range(200_000)}
    names["long:" + "y" * 100_000] = 1_000_000
    names.update(INTERNAL_PACKET_IDS)
    c.receive_data(encode_frame(PID_HANDSHAKE, 0, msgpack.packb(
        {"version": "x", "protoversion": PROTOVERSION, "registry": names})))
    (closed,) = [o for o in c.drain_received() if isinstance(o, ConnectionClosed)]
    assert closed.reason == "packetregmismatch"
    assert str(closed.error) == ("packet registries differ: only ours ['app:a'], only theirs "
                                 "['long:yyyyyyyyyyyyyyyy...yyyyyyyyyyyyyyyyyyyyyy', 'n0000000', 'n0000001', "
                                 "'n0000002', 'n0000003', 'n0000004'] and 199995 more")


def test_handshake_keeps_only_the_keys_it_reads():
    p = ConnectionPair()
    p.auto_handshake = False
    p.start()
    session = {"token": "t", "received": 0}
    p.server.begin_handshake(p.sreg.mapping(), {SESSION_KEY: session, "junk": HUGE})
    p.pump()
    assert p.client.is_open
    assert p.client.peer_handshake == {"version": p.server.version, "protoversion": PROTOVERSION,
                                       SESSION_KEY: session}  # (the registry is applied, not kept)


# --- before settype ----------------------------------------------------------------------------

def test_before_settype_a_compressed_packet_inflates_to_1_mib_at_most():
    """A new connection's decompression budget is full: without a cap of
    its own, reconnecting would buy a fresh 16 MiB inflate per bomb."""
    import zlib

    from peng3dnet.constants import FLAG_COMPRESSED
    from peng3dnet.protocol.connection import MAX_EARLY_INFLATE

    for pad, closed_with in ((MAX_EARLY_INFLATE - 100, None), (MAX_EARLY_INFLATE, "packettoolarge")):
        s = ProtocolConnection(SIDE_SERVER)
        s.inflate_budget = 16 << 20  # (as a server's peer sets it: full)
        s.initiate()
        s.drain_received()
        body = msgpack.packb({"conntype": "classic", "pad": "x" * pad})  # (+ 27 bytes of the rest)
        s.receive_data(encode_frame(PID_SETTYPE, FLAG_COMPRESSED, zlib.compress(body)))
        outs = s.drain_received()
        closed = [o for o in outs if isinstance(o, ConnectionClosed)]
        assert [c.reason for c in closed] == ([closed_with] if closed_with else []), (pad, closed)


def test_on_a_ping_connection_a_compressed_request_inflates_to_1_mib_at_most():
    import zlib

    from peng3dnet.constants import FLAG_COMPRESSED, PID_PING_REQUEST
    from peng3dnet.protocol.connection import MAX_EARLY_INFLATE

    for conntype, pad, closed_with in (("ping", MAX_EARLY_INFLATE - 100, None),
                                       ("ping", MAX_EARLY_INFLATE, "packettoolarge"),
                                       ("custom", MAX_EARLY_INFLATE, None)):  # (its own packets may be large)
        s = ProtocolConnection(SIDE_SERVER)
        s.inflate_budget = 16 << 20
        s.initiate()
        s.receive_data(encode_frame(PID_SETTYPE, 0, msgpack.packb({"conntype": conntype})))
        s.drain_received()
        body = msgpack.packb({"time": 1.0, "pad": "x" * pad})
        s.receive_data(encode_frame(PID_PING_REQUEST, FLAG_COMPRESSED, zlib.compress(body)))
        closed = [o.reason for o in s.drain_received() if isinstance(o, ConnectionClosed)]
        assert closed == ([closed_with] if closed_with else []), (conntype, pad, closed)


# --- describe() and fits() at their edges (mutation run, 2026-12-02) -------------------------------

def test_describe_shows_an_ext_type_by_code_and_data():
    assert describe(msgpack.ExtType(5, b"ab")) == "ExtType(5, b'ab')"


def test_describe_of_a_value_its_own_helpers_cannot_show_is_its_type_name():
    class ExtType:  # (named like msgpack's, without its code and data)
        pass

    assert describe(ExtType()) == "<ExtType>"


def test_describe_cuts_at_exactly_its_width():
    assert describe("abc", 5) == "'abc'"  # 5 characters: as it is
    assert describe("abcd", 5) == "'a..."  # 6: cut to 5, the ellipsis included


def test_bytes_are_marked_cut_only_when_they_were():
    assert describe(b"x" * 48) == "b'" + "x" * 48 + "'"
    assert describe(b"x" * 49) == "b'" + "x" * 48 + "'..."


def test_fits_takes_a_map_at_exactly_its_limit():
    assert fits({"": None}, 3)  # the map, its key, its value
    assert not fits({"": None}, 2)
